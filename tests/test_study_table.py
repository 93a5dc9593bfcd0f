"""The where-it-wins table: paired rows against the oracle, verdicts only from CIs, markdown."""

from __future__ import annotations

import pytest

from autodeco_cli.evaluation.paired_table import autodeco_tests, comparison_rows, rows_markdown, verdict, verdict_lines


def _results(label: str, scores: list[float], mean_t: float | None = None) -> dict:
    per_question = [{"doc_id": f"q{i}", "n": 4, "n_correct": int(s * 4), "pass@1": s} for i, s in enumerate(scores)]
    metrics = {
        "pass@1": sum(scores) / len(scores),
        "pass@1_stderr": 0.01,
        "n_questions": len(scores),
        "samples_per_question": 4,
        "mean_tokens": 10.0,
    }
    if mean_t is not None:
        metrics.update(mean_temperature=mean_t, mean_top_p=0.9)
    return {"results": {"t": metrics}, "per_question": {"t": per_question}, "decoding": {"label": label}}


def test_rows_are_paired_against_the_oracle_and_default():
    n = 60
    oracle = _results("oracle", [0.5] * n)
    default = _results("default", [0.25] * n)
    better = _results("autodeco", [0.75 if i % 2 else 0.5 for i in range(n)], mean_t=0.3)
    runs = {"default": default, "oracle": oracle, "autodeco": better}
    rows = {r["name"]: r for r in comparison_rows(runs, "t", n_boot=500)}
    assert "vs_reference" not in rows["oracle"]
    assert rows["default"]["vs_reference"]["delta"] == pytest.approx(-0.25)
    assert rows["autodeco"]["vs_reference"]["delta"] == pytest.approx(0.125)
    assert rows["autodeco"]["vs_baseline"]["delta"] == pytest.approx(0.375)
    assert rows["autodeco"]["metric"] == "pass@1" and rows["autodeco"]["mean_temperature"] == 0.3
    tests = autodeco_tests(runs, "t", ["autodeco"], n_boot=500)
    assert verdict(tests["autodeco"]["oracle"]) == "better"
    assert verdict(tests["autodeco"]["default"]) == "better"
    markdown = "\n".join(rows_markdown(list(rows.values())))
    assert "| autodeco | 0.625 ± 0.010 | +0.125" in markdown and "T̂ 0.300" in markdown
    assert "better" in verdict_lines(tests, "t")[0]


def test_a_noisy_difference_is_called_tied():
    scores_a = [1.0, 0.0] * 20
    scores_b = [0.0, 1.0] * 20  # same mean, opposite questions: Δ 0 with a wide CI
    tests = autodeco_tests({"a": _results("a", scores_a), "b": _results("b", scores_b)}, "t", ["a"], n_boot=500)
    assert verdict(tests["a"]["b"]) == "tied"


def test_the_declared_question_score_wins_over_pass1():
    run = _results("x", [0.5, 0.5])
    run["results"]["t"].update(score=0.2, score_stderr=0.05, metric="exact×(1−TV)")
    (row,) = comparison_rows({"x": run}, "t")
    assert (row["score"], row["score_stderr"], row["metric"]) == (0.2, 0.05, "exact×(1−TV)")
