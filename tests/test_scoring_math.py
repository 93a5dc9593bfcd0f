"""Math answer extraction and equivalence: boxed extraction, math-verify, string normalisation, GSM8K."""

from __future__ import annotations

import time

import pytest

from autodeco_cli.core.errors import UserError
from autodeco_cli.tasks import scoring
from autodeco_cli.tasks.scoring import (
    gsm8k_gold,
    last_boxed,
    last_number,
    math_equal,
    normalize_math_string,
    score_gsm8k,
    score_math,
    string_match,
)
from autodeco_cli.tasks.types import Doc


def boxed(answer: str) -> str:
    return f"Some reasoning first. So the final answer is $\\boxed{{{answer}}}$."


def math_doc(gold: str) -> Doc:
    return Doc("t/test/0", "problem", gold, {})


# (gold, model's boxed answer, equivalent?)
EQUIVALENCE_CASES = [
    ("204", "204", True),
    ("204", "205", False),
    ("70", "070", True),
    ("\\frac{1}{2}", "\\dfrac{1}{2}", True),
    ("\\frac{1}{2}", "\\tfrac12", True),
    ("\\frac12", "0.5", True),
    ("\\frac{3}{4}", "0.75", True),
    ("\\frac{3}{4}", "0.7", False),
    ("\\frac{1}{9}", "1/9", True),
    ("\\frac{2}{3}", "\\frac{3}{2}", False),
    ("\\frac{\\sqrt2}{2}", "\\sqrt{2}/2", True),
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", True),
    ("2\\sqrt{3}", "\\sqrt{12}", True),
    ("2\\sqrt{3}", "3\\sqrt{2}", False),
    ("2^{99}", "2^{99}", True),
    ("2^{99}", "2^{98}", False),
    ("\\pi", "3.14159", False),
    ("\\frac{\\pi}{2}", "\\pi/2", True),
    ("(1, 2]", "(1,2]", True),
    ("(1, 2]", "[1, 2]", False),
    ("[2, 5)", "x \\in [2,5)", True),
    ("(-\\infty, 3)", "(-\\infty,3)", True),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)", True),
    ("(3, \\frac{\\pi}{2})", "(3, \\pi)", False),
    ("(1, 2)", "(2, 1)", False),
    ("30^\\circ", "30", True),
    ("30", "30^{\\circ}", True),
    ("30^\\circ", "60^\\circ", False),
    ("10", "10 \\text{ cm}", True),
    ("10\\text{ cm}", "10", True),
    ("10", "12\\text{ cm}", False),
    ("6r^2-4r-24", "6r^2 - 4r - 24", True),
    ("6r^2-4r-24", "-24 + 6r^2 - 4r", True),
    ("6r^2-4r-24", "6r^2+4r-24", False),
    ("5", "x = 5", True),
    ("1000", "1,000", True),
    ("18", "18.0", True),
    ("\\{1, 2\\}", "\\{2, 1\\}", True),
    ("-\\infty", "\\infty", False),
    ("\\text{Monday}", "\\text{Tuesday}", False),
]


@pytest.mark.parametrize("gold, answer, expected", EQUIVALENCE_CASES)
def test_math_equivalence(gold: str, answer: str, expected: bool) -> None:
    score = score_math(math_doc(gold), boxed(answer))
    assert score.correct is expected
    assert score.extracted == answer.strip()
    assert score.metrics["boxed"] == 1.0


def test_gold_comes_first() -> None:
    # math-verify is not symmetric: an interval gold does not accept an inequality answer,
    # while an inequality gold accepts the interval. Swapping the arguments flips both.
    assert not math_equal("(-\\infty, 2)", "x < 2")
    assert math_equal("x < 2", "(-\\infty, 2)")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("no box here, the answer is 42", None),
        ("\\boxed{7}", "7"),
        ("first \\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("nested \\boxed{\\boxed{5}}", "5"),
        ("\\boxed{x^{2} + \\{1\\}}", "x^{2} + \\{1\\}"),
        ("\\fbox{12}", "12"),
        ("\\boxed 9 is it", "9"),
        ("\\boxed {12}", "12"),
        ("\\boxed", None),
        ("cut off by the token limit \\boxed{\\frac{1}{", None),
        ("\\boxed{ 3 }", "3"),
    ],
)
def test_last_boxed(text: str, expected: str | None) -> None:
    assert last_boxed(text) == expected


def test_no_box_is_wrong_and_unparsed() -> None:
    score = score_math(math_doc("42"), "I think the answer is 42.")
    assert score.correct is False
    assert score.extracted is None
    assert score.metrics == {"string_match": 0.0, "boxed": 0.0}


def test_last_box_wins_over_earlier_correct_one() -> None:
    assert not score_math(math_doc("3"), "\\boxed{3}? No, actually \\boxed{4}").correct
    assert score_math(math_doc("4"), "\\boxed{3}? No, actually \\boxed{4}").correct


@pytest.mark.parametrize(
    "gold, answer, expected",
    [
        ("\\frac{1}{2}", "\\dfrac{1}{2}", True),
        ("\\frac{1}{2}", "\\frac12", True),
        ("\\frac{1}{2}", "0.5", True),
        ("\\frac{1}{2}", "1/2", True),
        ("10", "10\\text{ cm}", True),
        ("30", "30^\\circ", True),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", True),
        ("\\sqrt{2}", "\\sqrt2", True),
        ("5", "k = 5", True),
        ("\\frac{1}{2}", "\\frac{2}{4}", False),
        ("\\frac{3}{4}", "0.75", False),
        ("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2", False),
    ],
)
def test_string_match_is_the_strict_paper_metric(gold: str, answer: str, expected: bool) -> None:
    assert string_match(gold, answer) is expected
    assert score_math(math_doc(gold), boxed(answer)).metrics["string_match"] == float(expected)


def test_normalisation_examples() -> None:
    assert normalize_math_string("\\left( 1, 2 \\right)") == "(1,2)"
    assert normalize_math_string(".25") == "0.25"
    assert normalize_math_string(".5") == "\\frac{1}{2}"
    assert normalize_math_string("\\$3") == "3"
    assert normalize_math_string("50\\%") == "50"
    assert normalize_math_string("") == ""
    assert normalize_math_string("\\sqrt") == "\\sqrt"  # must not raise on a bare command


def test_verifier_errors_count_as_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    import math_verify

    def explode(*_args: object, **_kwargs: object) -> bool:
        raise RuntimeError("verifier bug")

    monkeypatch.setattr(math_verify, "verify", explode)
    score = score_math(math_doc("2"), boxed("2"))
    assert score.correct is False
    assert score.extracted == "2"


def test_pathological_answers_do_not_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scoring, "MATH_VERIFY_TIMEOUT_S", 1)
    start = time.monotonic()
    assert not math_equal("5", "9^{9^{9^{9}}}")
    assert not math_equal("5", "x" * 5000)  # over the length cap: rejected unparsed
    assert not math_equal("5", "{" * 300 + "5" + "}" * 300)
    assert time.monotonic() - start < 8


def test_gsm8k_gold_after_hashes() -> None:
    assert gsm8k_gold("She makes 9 * 2 = $<<9*2=18>>18.\n#### 18") == "18"
    assert gsm8k_gold("...\n#### 1,000") == "1000"
    with pytest.raises(UserError):
        gsm8k_gold("no marker")


def test_gsm8k_boxed_path() -> None:
    score = score_gsm8k(math_doc("18"), "9 * 2 = 18 dollars, so \\boxed{18}")
    assert score.correct and score.extracted == "18"
    assert score.metrics == {"strict_boxed": 1.0, "boxed": 1.0}
    assert not score_gsm8k(math_doc("18"), "\\boxed{17}, or 18").correct


def test_gsm8k_falls_back_to_last_number() -> None:
    score = score_gsm8k(math_doc("1000"), "She earns 40 per day, 1,000 in total.")
    assert score.correct and score.extracted == "1000"
    assert score.metrics == {"strict_boxed": 0.0, "boxed": 0.0}
    nothing = score_gsm8k(math_doc("5"), "I do not know.")
    assert not nothing.correct and nothing.extracted is None


@pytest.mark.parametrize(
    "text, expected",
    [("1, 2 and 3.", "3"), ("total -4", "-4"), ("3.5 apples", "3.5"), ("12,345 people", "12345"), ("none", None)],
)
def test_last_number(text: str, expected: str | None) -> None:
    assert last_number(text) == expected
