"""Multiple-choice answer extraction (MMLU-Pro cascade + GPQA patterns) and arithmetic scoring."""

from __future__ import annotations

import pytest

from autodeco_cli.core.errors import UserError
from autodeco_cli.tasks.arithmetic import extract_integer
from autodeco_cli.tasks.scoring import extract_choice, option_letters, score_arith, score_mc
from autodeco_cli.tasks.types import Doc


def mc_doc(gold: str, n_options: int = 4) -> Doc:
    return Doc("t/test/0", "question", gold, {"n_options": n_options})


@pytest.mark.parametrize(
    "text, n_options, letter, rule",
    [
        ("Let's think. The answer is (B).", 4, "B", "answer_is"),
        ("the answer is C", 4, "C", "answer_is"),
        # MMLU-Pro takes the FIRST "answer is", even if the text later changes its mind.
        ("The answer is (A). Wait, no: the answer is (D).", 4, "A", "answer_is"),
        ("Answer: (C)", 4, "C", "gpqa"),
        ("My final answer: (D)", 4, "D", "gpqa"),
        ("Answer: B\nreasoning...\nAnswer: C", 4, "B", "answer_colon"),
        ("answer:   H", 10, "H", "answer_colon"),
        ("Option A is wrong, B too, so it must be D", 4, "D", "last_letter"),
        ("J", 10, "J", "last_letter"),
    ],
)
def test_extraction_cascade(text: str, n_options: int, letter: str, rule: str) -> None:
    assert extract_choice(text, n_options) == (letter, rule)


def test_letters_are_limited_to_the_options() -> None:
    # "E" does not exist with 4 options: the "answer is" rule must not take it, and the
    # cascade goes on to a letter that does exist.
    assert extract_choice("The answer is (E). I also considered B", 4) == ("B", "last_letter")
    assert extract_choice("The answer is (E).", 5) == ("E", "answer_is")
    assert extract_choice("The answer is (E).", 4) == (None, None)


@pytest.mark.parametrize("text", ["", "I am not sure.", "the answer is (e)", "Answer: Z", "4 2 0"])
def test_unparseable_is_none(text: str) -> None:
    score = score_mc(mc_doc("A"), text)
    assert score.extracted is None
    assert score.correct is False


def test_lowercase_word_is_not_a_letter() -> None:
    assert extract_choice("a cat is an animal", 4) == (None, None)


def test_score_mc_correct_and_wrong() -> None:
    right = score_mc(mc_doc("C"), "Thinking... The answer is (C)")
    assert right.correct and right.extracted == "C"
    assert right.metrics["letter_fallback"] == 0.0
    wrong = score_mc(mc_doc("C"), "The answer is (A)")
    assert not wrong.correct and wrong.extracted == "A"
    fallback = score_mc(mc_doc("D", 4), "so D")
    assert fallback.correct and fallback.metrics["letter_fallback"] == 1.0


def test_ten_option_items() -> None:
    assert score_mc(mc_doc("J", 10), "The answer is (J)").correct
    assert not score_mc(mc_doc("J", 9), "The answer is (J)").correct


def test_option_letters_bounds() -> None:
    assert option_letters(1) == "A"
    assert option_letters(10) == "ABCDEFGHIJ"
    with pytest.raises(UserError):
        option_letters(11)
    with pytest.raises(UserError):
        option_letters(0)


@pytest.mark.parametrize(
    "text, value",
    [
        ("27 + 82 = 109", 109),
        ("109", 109),
        ("The answer is 109.", 109),
        ("27 + 82 = 109. Then 109 + 1 = 110", 109),
        ("= 1,234", 1234),
        ("45 - 50 = -5", -5),
        ("27-5", 5),  # a minus between operands is not a sign
        ("7 * 43 is 301", 301),
        ("I cannot compute that", None),
        ("27 + 82 = ", None),
    ],
)
def test_arithmetic_extraction(text: str, value: int | None) -> None:
    assert extract_integer(text) == value


def test_score_arith() -> None:
    doc = Doc("arith-add/test/0", "What is 27 + 82? Reply with just the number.", 109, {})
    assert score_arith(doc, "27 + 82 = 109").correct
    # The first integer would be an operand: scoring it would make this wrong answer right.
    assert not score_arith(doc, "109 is close, but 27 + 82 = 108").correct
    unparsed = score_arith(doc, "no idea")
    assert not unparsed.correct and unparsed.extracted is None
