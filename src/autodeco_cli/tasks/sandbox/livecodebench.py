"""LiveCodeBench judging: which program to run, on which tests, and whether its outputs are right.

The verdict is decided here, in the judge's process, on plain data only. The sandboxed process is
told the program and a test's INPUT, never the expected output, and reports back only what the
program produced: its raw stdout (stdin tests) or a JSON claim of the return value (functional
tests, see harness.py). Nothing it sends is evaluated, unpickled or compared by its own ``__eq__``;
a forged claim can only assert some output value, which is then compared with an expected value the
sandbox never saw. Comparison follows LiveCodeBench's conventions (see `stdout_matches` and
`call_matches`).
"""

from __future__ import annotations

import json
import re
import textwrap
from decimal import Decimal, InvalidOperation
from typing import Any, Callable

from ..types import Doc, Score
from .process import SandboxResult

# --------------------------------------------------------------------------------------------
# the program

_FENCE_RE = re.compile(r"^[ \t]*```[ \t]*([A-Za-z0-9_+.#-]*)[^\n]*\n(.*?)^[ \t]*```[ \t]*$", re.MULTILINE | re.DOTALL)
_PY_LANGS = {"python", "python3", "py", "py3"}


def extract_code(text: str) -> str | None:
    """Last ```python block, else the last fenced block of any language, else None."""
    if not text:
        return None
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE_RE.finditer(text)]
    if not blocks:
        return None
    py = [body for lang, body in blocks if lang in _PY_LANGS]
    body = py[-1] if py else blocks[-1][1]
    body = textwrap.dedent(body).strip("\n")
    return body if body.strip() else None


# LiveCodeBench executes every solution after these imports (so solutions may use e.g. `deque` or
# `gcd` without importing them) and with a raised recursion limit; a faithful score needs the same.
_LCB_STAR_MODULES = (
    "string",
    "re",
    "datetime",
    "collections",
    "heapq",
    "bisect",
    "copy",
    "math",
    "random",
    "statistics",
    "itertools",
    "functools",
    "operator",
    "io",
    "sys",
    "json",
    "builtins",
    "typing",
)
LCB_PRELUDE = (
    "".join(f"from {m} import *\n" for m in _LCB_STAR_MODULES)
    + "".join(f"import {m}\n" for m in _LCB_STAR_MODULES if m not in ("builtins", "typing"))
    + "sys.setrecursionlimit(50000)\n"
)


def stdin_job(code: str) -> dict[str, Any]:
    # LCB: the solution runs as __main__ and any SystemExit is a normal end of the program.
    return {"kind": "script", "src": code, "prelude": LCB_PRELUDE, "exit_is_normal": True}


def call_job(code: str, func: str, test_input: str) -> dict[str, Any]:
    # LCB: instantiate Solution when the code defines it, else call the top-level function; the
    # arguments are the JSON lines of the test input. The expected output is NOT part of the job.
    return {
        "kind": "call",
        "src": code,
        "prelude": LCB_PRELUDE,
        "cls": "Solution" if "class Solution" in code else None,
        "func": func,
        "args": [line for line in test_input.split("\n") if line.strip()],
    }


# --------------------------------------------------------------------------------------------
# the comparison (trusted side, plain data only)


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().split("\n")]


def _as_decimals(line: str) -> list[Decimal] | None:
    try:
        return [Decimal(tok) for tok in line.split()]
    except (InvalidOperation, ValueError):
        return None


def stdout_matches(got: str, expected: str) -> bool:
    """LCB: strip, split lines, strip each; equal line counts; each line equal verbatim or as
    whitespace-separated Decimals (exact, so 1e17 and 1e17+1 still differ)."""
    g, e = _lines(got), _lines(expected)
    if len(g) != len(e):
        return False
    for gl, el in zip(g, e):
        if gl == el:
            continue
        gd, ed = _as_decimals(gl), _as_decimals(el)
        if gd is None or ed is None or gd != ed:
            return False
    return True


class ClaimError(ValueError):
    """The results channel did not hold exactly one well-formed claim."""


def _no_constants(name: str) -> Any:
    raise ClaimError(f"bare {name} in claim")


def decode_claim(channel: str) -> Any:
    """The claimed return value as plain Python data (list/tuple/dict/str/int/float/bool/None).

    Exactly one line is accepted: extra lines mean something besides the harness wrote to the
    channel, and a program that does so only loses.
    """
    lines = channel.split("\n")
    if len(lines) != 2 or lines[1] != "":
        raise ClaimError(f"expected one claim line, got {len(lines) - 1}")
    try:
        record = json.loads(lines[0], parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:
        raise ClaimError(f"unreadable claim: {exc}") from None
    if not isinstance(record, dict) or set(record) != {"value"}:
        raise ClaimError("claim is not {'value': ...}")
    return _untag(record["value"], 0)


_FLOATS = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


def _untag(x: Any, depth: int) -> Any:
    if depth > 200:
        raise ClaimError("claim nested too deeply")
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if not (isinstance(x, list) and len(x) == 2 and isinstance(x[0], str)):
        raise ClaimError("untagged container in claim")
    tag, body = x
    if tag == "F" and body in _FLOATS:
        return _FLOATS[body]
    if not isinstance(body, list):
        raise ClaimError(f"bad {tag!r} container")
    if tag == "L":
        return [_untag(v, depth + 1) for v in body]
    if tag == "T":
        return tuple(_untag(v, depth + 1) for v in body)
    if tag == "D":
        out = {}
        for pair in body:
            if not (isinstance(pair, list) and len(pair) == 2):
                raise ClaimError("bad dict item in claim")
            key = _untag(pair[0], depth + 1)
            try:
                out[key] = _untag(pair[1], depth + 1)
            except TypeError:  # an unhashable key (a list) cannot have come from a real dict
                raise ClaimError("unhashable dict key in claim") from None
        return out
    raise ClaimError(f"unknown tag {tag!r}")


def call_matches(channel: str, expected_json: str) -> bool:
    """LCB: a tuple result becomes a list, then `result == json.loads(expected)`. Both sides are
    plain data built here, so the comparison is Python's own, never the program's."""
    try:
        got = decode_claim(channel)
        expected = json.loads(expected_json)
    except (ClaimError, ValueError, RecursionError):
        return False
    if isinstance(got, tuple):
        got = list(got)
    return bool(got == expected)


# --------------------------------------------------------------------------------------------
# the tests and the score

Runner = Callable[[dict[str, Any], str], SandboxResult]


def func_name(meta: dict[str, Any]) -> str | None:
    name = meta.get("func_name")
    md = meta.get("metadata")
    if not name and isinstance(md, str):
        try:
            md = json.loads(md)
        except ValueError:
            md = None
    if not name and isinstance(md, dict):
        name = md.get("func_name")
    if not name and meta.get("starter_code"):
        m = re.search(r"def\s+(\w+)\s*\(\s*self", meta["starter_code"])
        name = m.group(1) if m else None
    return name or None


def public_tests(meta: dict[str, Any]) -> list[dict[str, Any]]:
    tests = meta.get("public_test_cases") or []
    if isinstance(tests, str):
        tests = json.loads(tests)
    return list(tests)


def run_test(code: str, test: dict[str, Any], func: str | None, run: Runner) -> tuple[bool, SandboxResult | None]:
    """(passed, the run) for one test; `run(job, stdin)` executes a job in the sandbox."""
    if test.get("testtype", "stdin") == "functional":
        if not func:
            return False, None
        res = run(call_job(code, func, test.get("input", "")), "")
        if res.returncode != 0 or res.timed_out or res.killed_reason:
            return False, res
        return call_matches(res.channel, test.get("output", "")), res
    res = run(stdin_job(code), test.get("input", ""))
    if res.returncode != 0 or res.timed_out or res.killed_reason:
        return False, res
    return stdout_matches(res.stdout, test.get("output", "")), res


def score_tests(doc: Doc, completion_text: str, run: Runner) -> Score:
    """pass@1 on the public tests: correct only if the extracted program passes every one.

    Tests run one process each. After a time-out the remaining tests are not run (they count as
    failed): a program that exceeds the limit once will almost surely do so again, and each try
    costs the full wall-clock limit.
    """
    tests = public_tests(doc.meta)
    total = len(tests)
    code = extract_code(completion_text)
    metrics: dict[str, float] = {"tests_passed": 0.0, "tests_total": float(total), "timed_out": 0.0}
    if code is None:
        return Score(correct=False, extracted=None, metrics=metrics)
    func = func_name(doc.meta)
    passed = 0
    for test in tests:
        ok, res = run_test(code, test, func, run)
        passed += ok
        if res is not None and (res.timed_out or res.killed_reason == "cpu"):
            metrics["timed_out"] = 1.0
            break
    metrics["tests_passed"] = float(passed)
    return Score(correct=total > 0 and passed == total, extracted=code, metrics=metrics)
