"""Answer extraction and scoring: math (boxed + math-verify), GSM8K, multiple choice, arithmetic.

Every scorer takes `(doc, text)` and returns a Score. A scorer never raises on model output:
anything it cannot parse or verify is simply wrong, with `extracted=None` where nothing could
be pulled out, so the runner can count unparseable samples.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from typing import Callable

from ..core.errors import UserError
from .arithmetic import extract_integer
from .exact_pick import score_exact_pick
from .item_count import score_count
from .random_choice import score_random_choice
from .record_lookup import score_record
from .ticket_draw import score_ticket
from .types import Doc, Score

Scorer = Callable[[Doc, str], Score]

# math-verify can spend seconds on adversarial LaTeX (huge exponents, deep nesting).
MATH_VERIFY_TIMEOUT_S = 5
# The longest gold answer in the math sets is ~80 characters; a boxed "answer" far longer is a
# degenerate generation, and parsing it can take seconds, so it is judged wrong unparsed.
MAX_ANSWER_CHARS = 512

_log = logging.getLogger(__name__)
# math-verify logs every timeout at WARNING, with the whole input. Without a handler of its
# own, Python's last-resort handler would print those to stderr mid-run; a NullHandler stops
# that while an application's own logging configuration still receives them.
logging.getLogger("math_verify").addHandler(logging.NullHandler())

# ---------------------------------------------------------------------------
# Boxed-answer extraction
# ---------------------------------------------------------------------------

_BOX_COMMANDS = ("\\boxed", "\\fbox")


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`), braces balanced.

    Also accepts the brace-less `\\boxed 5` form. A box that is never closed (a generation cut
    off by the token limit) counts as no box.
    """
    start = max(text.rfind(cmd) for cmd in _BOX_COMMANDS)
    if start < 0:
        return None
    rest = text[start:]
    cmd = next(c for c in _BOX_COMMANDS if rest.startswith(c))
    after = rest[len(cmd) :].lstrip(" ")
    if after.startswith("{"):
        return _balanced_group(after)
    if len(after) < len(rest) - len(cmd):  # "\boxed 5": a space, then a bare token
        return _unbraced_box(after)
    return None


def _unbraced_box(after: str) -> str | None:
    token = re.match(r"([^\s$]+)", after)
    return token.group(1) if token else None


def _balanced_group(text: str) -> str | None:
    """The content of the brace group that `text` starts with, or None if it never closes."""
    depth = 0
    for i, char in enumerate(text):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[1:i].strip()
    return None


# ---------------------------------------------------------------------------
# math-verify
# ---------------------------------------------------------------------------


def _timeouts() -> int | None:
    # math-verify's timeout is SIGALRM-based, which Python only allows in the main thread.
    return MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _parse_boxed(expr: str) -> list:
    from math_verify import parse

    # Wrapping in \boxed makes math-verify take the whole expression rather than hunting for
    # an anchor inside it (it would otherwise pick "5" out of "x = 5 \text{ or } 7").
    return parse("\\boxed{" + expr + "}", parsing_timeout=_timeouts())


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str) -> list:
    # Every sample of a question is checked against the same gold: parse it once.
    return _parse_boxed(gold)


def math_equal(gold: str, predicted: str) -> bool:
    """Mathematical equivalence by math-verify; gold first, since `verify` is not symmetric.

    Any failure inside math-verify (timeout, parser error) counts as not equal.
    """
    if len(predicted) > MAX_ANSWER_CHARS:
        return False
    try:
        from math_verify import verify

        gold_parsed = _parse_gold(gold)
        pred_parsed = _parse_boxed(predicted)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=_timeouts()))
    except Exception as exc:  # noqa: BLE001 - any verifier failure must score as wrong, not crash a run
        _log.debug("math-verify failed on %r vs %r: %s", gold, predicted, exc)
        return False


# ---------------------------------------------------------------------------
# The MATH string normalisation (Hendrycks et al.), kept as the paper's second metric
# ---------------------------------------------------------------------------


def normalize_math_string(answer: str) -> str:
    """The MATH benchmark's string normalisation, as the AutoDeco eval script compares answers.

    It canonicalises spelling only (\\dfrac -> \\frac, \\frac12 -> \\frac{1}{2}, drops units,
    degrees, \\left/\\right, spaces); it does not know 0.5 = 1/4 + 1/4.
    """
    s = answer.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "")
    s = s.split("\\text{ ")[0]  # "\text{ " with a space only ever introduces units in MATH
    s = s.replace("\\%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s.startswith("."):
        s = "0" + s
    s = _drop_short_lhs(s)
    s = re.sub(r"\\sqrt([^{\\\s])", r"\\sqrt{\1}", s)
    s = s.replace(" ", "")
    s = _brace_frac_args(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _slash_to_frac(s)


def _drop_short_lhs(s: str) -> str:
    # "k = 5" -> "5", but only for a short left side so real equations survive.
    parts = s.split("=")
    if len(parts) == 2 and len(parts[0]) <= 2:
        return parts[1]
    return s


def _brace_frac_args(s: str) -> str:
    s = re.sub(r"\\frac([^{\\])([^{\\])", r"\\frac{\1}{\2}", s)
    return re.sub(r"\\frac([^{\\])\{", r"\\frac{\1}{", s)


_SIMPLE_SLASH = re.compile(r"(-?(?:0|[1-9]\d*))/(-?(?:0|[1-9]\d*))")


def _slash_to_frac(s: str) -> str:
    match = _SIMPLE_SLASH.fullmatch(s)
    return f"\\frac{{{match.group(1)}}}{{{match.group(2)}}}" if match else s


def string_match(gold: str, predicted: str) -> bool:
    return normalize_math_string(predicted) == normalize_math_string(gold)


# ---------------------------------------------------------------------------
# Task scorers
# ---------------------------------------------------------------------------


def score_math(doc: Doc, text: str) -> Score:
    """The last boxed answer, checked by math-verify; `string_match` is the paper's metric."""
    gold = str(doc.gold)
    boxed = last_boxed(text)
    if boxed is None:
        return Score(False, None, {"string_match": 0.0, "boxed": 0.0})
    return Score(
        correct=math_equal(gold, boxed),
        extracted=boxed,
        metrics={"string_match": float(string_match(gold, boxed)), "boxed": 1.0},
    )


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_number(text: str) -> str | None:
    matches = [m.rstrip(",") for m in _NUMBER.findall(text)]
    return matches[-1].replace(",", "") if matches else None


def gsm8k_gold(answer_field: str) -> str:
    """GSM8K's final answer is what follows '####' in the reference solution."""
    _, sep, final = answer_field.rpartition("####")
    if not sep:
        raise UserError("GSM8K answer has no '####' final-answer marker", answer_field[-80:])
    return final.strip().replace(",", "")


def score_gsm8k(doc: Doc, text: str) -> Score:
    """Boxed answer through math-verify; without a box, the last number in the text.

    `correct` uses the fallback (like lm-eval's flexible extract); `strict_boxed` is the
    boxed-only verdict and `boxed` says which path was taken.
    """
    gold = str(doc.gold)
    boxed = last_boxed(text)
    if boxed is not None:
        ok = math_equal(gold, boxed)
        return Score(ok, boxed, {"strict_boxed": float(ok), "boxed": 1.0})
    number = last_number(text)
    ok = number is not None and math_equal(gold, number)
    return Score(ok, number, {"strict_boxed": 0.0, "boxed": 0.0})


# ---------------------------------------------------------------------------
# Multiple choice
# ---------------------------------------------------------------------------

LETTERS = "ABCDEFGHIJ"


def option_letters(n_options: int) -> str:
    if not 1 <= n_options <= len(LETTERS):
        raise UserError(f"Multiple-choice items need 1 to {len(LETTERS)} options, got {n_options}")
    return LETTERS[:n_options]


def _mc_rules(letters: str) -> list[tuple[str, re.Pattern[str]]]:
    cls = f"[{letters}]"
    return [
        # MMLU-Pro's official cascade, step 1: the first "answer is (X)".
        ("answer_is", re.compile(rf"answer is \(?({cls})\)?")),
        # GPQA baselines' answer patterns (their bare "(X)" fallback is left out: it picks the
        # first option a reasoning trace mentions, not the one it settles on).
        ("gpqa", re.compile(rf"[Aa]nswer:? \(({cls})\)")),
        # MMLU-Pro step 2: the last "Answer: X" on a line.
        ("answer_colon", re.compile(rf".*[aA]nswer:\s*({cls})")),
        # MMLU-Pro step 3: the last standalone letter anywhere.
        ("last_letter", re.compile(rf"\b({cls})\b(?!.*\b{cls}\b)", re.DOTALL)),
    ]


def extract_choice(text: str, n_options: int) -> tuple[str | None, str | None]:
    """(letter, rule name) by the MMLU-Pro cascade with GPQA's patterns, letters limited to
    the item's options; (None, None) when nothing matches."""
    for name, pattern in _mc_rules(option_letters(n_options)):
        match = pattern.search(text)
        if match:
            return match.group(1), name
    return None, None


def score_mc(doc: Doc, text: str) -> Score:
    n_options = int(doc.meta["n_options"])
    letter, rule = extract_choice(text, n_options)
    fallback = float(rule == "last_letter")
    return Score(letter == doc.gold, letter, {"letter_fallback": fallback})


# ---------------------------------------------------------------------------
# Arithmetic
# ---------------------------------------------------------------------------


def score_arith(doc: Doc, text: str) -> Score:
    value = extract_integer(text)
    if value is None:
        return Score(False, None, {})
    return Score(value == int(doc.gold), str(value), {})


# ---------------------------------------------------------------------------
# Scorers that live elsewhere, imported only when used
# ---------------------------------------------------------------------------


def score_ifeval(doc: Doc, text: str) -> Score:
    from .ifeval import score_ifeval as _score

    return _score(doc, text)


def score_code(doc: Doc, text: str) -> Score:
    try:
        from .sandbox import score_code as _score
    except ImportError as exc:
        raise UserError(
            "Code scoring needs autodeco_cli.tasks.sandbox, which could not be imported",
            str(exc),
        ) from exc
    return _score(doc, text)


SCORERS: dict[str, Scorer] = {
    "math": score_math,
    "gsm8k": score_gsm8k,
    "mc": score_mc,
    "arith": score_arith,
    "ifeval": score_ifeval,
    "code": score_code,
    "random_choice": score_random_choice,
    "ticket_draw": score_ticket,
    "record_lookup": score_record,
    "exact_pick": score_exact_pick,
    "item_count": score_count,
}


def get_scorer(name: str) -> Scorer:
    try:
        return SCORERS[name]
    except KeyError:
        raise UserError(f"Unknown scorer {name!r}", f"valid scorers: {', '.join(sorted(SCORERS))}") from None
