"""IFEval scoring through lm-eval's instruction checkers, offline."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from autodeco_cli.core.errors import UserError
from autodeco_cli.tasks.data import resolve_data_dir
from autodeco_cli.tasks.types import Doc

for _module in ("lm_eval", "nltk", "langdetect", "immutabledict"):
    pytest.importorskip(_module, reason="needs the ifeval extra: pip install 'autodeco-cli[ifeval]'")

from autodeco_cli.tasks import ifeval  # noqa: E402
from autodeco_cli.tasks.ifeval import score_ifeval  # noqa: E402

METRIC_KEYS = {
    "prompt_strict",
    "prompt_loose",
    "inst_strict_correct",
    "inst_strict_total",
    "inst_loose_correct",
    "inst_loose_total",
}


def ifeval_doc(ids: list[str], kwargs: list[dict], prompt: str = "Write something.") -> Doc:
    gold = {"instruction_id_list": ids, "kwargs": kwargs}
    return Doc("ifeval/test/1", prompt, gold, {"key": 1, "source_prompt": prompt})


def test_strict_pass_and_fail() -> None:
    doc = ifeval_doc(["punctuation:no_comma", "detectable_format:title"], [{}, {}])
    good = score_ifeval(doc, "<<My Poem>>\nroses are red and violets are blue")
    assert good.correct is True
    assert good.extracted == "2/2"
    assert set(good.metrics) == METRIC_KEYS
    bad = score_ifeval(doc, "<<My Poem>>\nroses are red, violets are blue")
    assert bad.correct is False
    assert bad.metrics["inst_strict_correct"] == 1.0 and bad.metrics["inst_strict_total"] == 2.0
    assert bad.metrics["prompt_strict"] == 0.0


def test_loose_forgives_a_preamble_line() -> None:
    doc = ifeval_doc(["change_case:english_lowercase"], [{}])
    score = score_ifeval(doc, "Sure!\nhere is my answer, all in lowercase.")
    assert score.correct is False  # strict: "Sure!" has a capital
    assert score.metrics["prompt_strict"] == 0.0
    assert score.metrics["prompt_loose"] == 1.0  # loose drops the first line
    assert score.metrics["inst_loose_correct"] == 1.0


def test_empty_response_follows_nothing() -> None:
    doc = ifeval_doc(["punctuation:no_comma"], [{}])
    score = score_ifeval(doc, "   ")
    assert score.correct is False and score.metrics["prompt_loose"] == 0.0


def test_language_detection_is_deterministic() -> None:
    doc = ifeval_doc(["language:response_language"], [{"language": "de"}])
    text = "Das ist ein kurzer deutscher Satz über das Wetter heute."
    assert all(score_ifeval(doc, text).correct for _ in range(3))
    assert not score_ifeval(doc, "This is a short English sentence about the weather.").correct


def test_sentence_counting_offline() -> None:
    ifeval._checker_module()
    util = sys.modules["lm_eval.tasks.ifeval.instructions_util"]
    # Abbreviations must not end sentences, with punkt_tab or the built-in fallback alike.
    assert util.count_sentences("Dr. Smith arrived at 5 p.m. today. He sat down.") == 2
    assert util.count_sentences("One. Two! Three?") == 3
    doc = ifeval_doc(["length_constraints:number_sentences"], [{"relation": "less than", "num_sentences": 3}])
    assert score_ifeval(doc, "Mr. Brown left. He came back.").correct
    assert not score_ifeval(doc, "One. Two. Three. Four.").correct
    assert ifeval.sentence_splitter() in {"punkt_tab", "fallback"}


def test_fallback_splitter_files(monkeypatch: pytest.MonkeyPatch) -> None:
    import nltk

    def not_installed(*_args: object, **_kwargs: object) -> None:
        raise LookupError("punkt_tab")

    monkeypatch.setattr(nltk.data, "find", not_installed)
    monkeypatch.setattr(nltk.data, "path", list(nltk.data.path))
    monkeypatch.setattr(ifeval, "_state", dict(ifeval._state))
    ifeval._ensure_punkt()
    assert ifeval.sentence_splitter() == "fallback"
    english = nltk.data.path[-1] + "/tokenizers/punkt_tab/english"
    abbreviations = open(english + "/abbrev_types.txt", encoding="utf-8").read().split()
    assert "dr" in abbreviations and "e.g" in abbreviations


def test_scoring_never_touches_the_network() -> None:
    # A fresh interpreter, so the checkers are imported from scratch with sockets disabled.
    script = textwrap.dedent(
        """
        import socket

        def refuse(*args, **kwargs):
            raise AssertionError("network access during IFEval scoring")

        socket.socket.connect = refuse
        socket.create_connection = refuse
        from autodeco_cli.tasks.ifeval import score_ifeval, sentence_splitter
        from autodeco_cli.tasks.types import Doc

        doc = Doc("x", "p", {"instruction_id_list": ["length_constraints:number_sentences"],
                             "kwargs": [{"relation": "at least", "num_sentences": 2}]}, {})
        assert score_ifeval(doc, "First sentence. Second sentence.").correct
        print(sentence_splitter())
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in {"punkt_tab", "fallback"}


def test_missing_lm_eval_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec

    def without_lm_eval(name: str, *args: object) -> object:
        return None if name == "lm_eval" else real_find_spec(name, *args)

    ifeval._checker_module.cache_clear()
    monkeypatch.setattr(importlib.util, "find_spec", without_lm_eval)
    try:
        with pytest.raises(UserError, match=r"autodeco-cli\[ifeval\]"):
            score_ifeval(ifeval_doc(["punctuation:no_comma"], [{}]), "text")
    finally:
        ifeval._checker_module.cache_clear()


def test_every_ifeval_prompt_scores() -> None:
    data_dir = resolve_data_dir()
    if not (data_dir / "ifeval" / "input_data.jsonl").is_file():
        pytest.skip(f"IFEval data not found under {data_dir}")
    from autodeco_cli.tasks.registry import load_docs

    docs = load_docs("ifeval")
    scores = [score_ifeval(doc, "Here is my answer. It has two sentences, and a comma.") for doc in docs]
    assert len(scores) == 541
    assert sum(s.metrics["inst_strict_total"] for s in scores) == 834
    assert all(s.metrics["prompt_strict"] <= s.metrics["prompt_loose"] for s in scores)
    assert 0 < sum(s.correct for s in scores) < 541
