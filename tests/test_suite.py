"""The suite protocol: suite score and paired Δ with their SE (against a hand computation), the
stratified bootstrap CI, choosing one cell for the whole suite on validation grids (and the
per-task test-tuned oracle), and `autodeco compare --row` on constructed results files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from autodeco_cli.core.errors import UserError
from autodeco_cli.evaluation import suite
from autodeco_cli.grid.suite_selection import best_single_setting, best_single_settings, per_task_oracles

# ---------------------------------------------------------------------------
# Statistics against a hand computation
# ---------------------------------------------------------------------------

# task x: 4 questions, task y: 3 questions
A = {"x": {"q1": 1.0, "q2": 1.0, "q3": 0.0, "q4": 1.0}, "y": {"p1": 0.5, "p2": 0.25, "p3": 1.0}}
B = {"x": {"q1": 0.0, "q2": 1.0, "q3": 0.0, "q4": 0.0}, "y": {"p1": 0.25, "p2": 0.25, "p3": 0.5}}


def test_suite_score_and_se_by_hand():
    score = suite.suite_score({t: list(v.values()) for t, v in A.items()})
    # task means 3/4 and 7/12; suite = (0.75 + 0.58333) / 2
    assert score.score == pytest.approx((0.75 + 7 / 12) / 2)
    # x: sample variance of (1,1,0,1) = 0.25, SE² = 0.25/4; y: variance of (.5,.25,1) = 0.145833.., SE² = /3
    var_y = ((0.5 - 7 / 12) ** 2 + (0.25 - 7 / 12) ** 2 + (1 - 7 / 12) ** 2) / 2
    assert score.se == pytest.approx(math.sqrt(0.25 / 4 + var_y / 3) / 2)
    assert score.per_task == pytest.approx({"x": 0.75, "y": 7 / 12}) and score.n_questions == {"x": 4, "y": 3}


def test_paired_suite_delta_and_se_by_hand():
    c = suite.paired_suite(A, B, n_boot=2000, seed=1)
    # d_x = (1, 0, 0, 1): mean 0.5, variance 1/3; d_y = (0.25, 0, 0.5): mean 0.25, variance 0.0625
    assert c.delta == pytest.approx((0.5 + 0.25) / 2)
    assert c.se == pytest.approx(math.sqrt((1 / 3) / 4 + 0.0625 / 3) / 2)
    assert c.per_task_delta == pytest.approx({"x": 0.5, "y": 0.25})
    assert c.per_task_se["x"] == pytest.approx(math.sqrt((1 / 3) / 4))
    assert c.ci_low <= c.delta <= c.ci_high
    # the delta is the difference of the two runs' suite scores
    sa = suite.suite_score({t: list(v.values()) for t, v in A.items()})
    sb = suite.suite_score({t: list(v.values()) for t, v in B.items()})
    assert c.delta == pytest.approx(sa.score - sb.score)
    # pairing: the paired SE is below the SE of two independent suite scores
    assert c.se < math.sqrt(sa.se**2 + sb.se**2)


def test_the_stratified_bootstrap_matches_the_se_on_large_tasks():
    rng = np.random.default_rng(0)
    diffs = {"x": rng.choice([-1.0, 0.0, 1.0], size=400, p=[0.2, 0.5, 0.3]), "y": rng.normal(0.05, 0.3, size=300)}
    se = suite.mean_of_means_se(diffs)
    low, high = suite.stratified_bootstrap_ci(diffs, n_boot=4000, seed=0, confidence=0.95)
    centre = np.mean([v.mean() for v in diffs.values()])
    assert (high - low) / 2 == pytest.approx(1.96 * se, rel=0.1)
    assert low < centre < high
    assert suite.stratified_bootstrap_ci(diffs, 4000, 0, 0.95) == (low, high)  # seeded


def test_each_task_weighs_the_same_however_many_questions():
    big = {"x": [1.0] * 1000, "y": [0.0] * 10}
    assert suite.suite_score(big).score == 0.5
    # one question in a task: its SE is undefined, so is the suite's
    assert math.isnan(suite.suite_score({"x": [1.0, 0.0], "y": [1.0]}).se)


def test_paired_suite_refuses_unaligned_runs():
    with pytest.raises(ValueError, match="different tasks"):
        suite.paired_suite(A, {"x": B["x"]})
    with pytest.raises(ValueError, match="different questions"):
        suite.paired_suite(A, {"x": {"q1": 0.0}, "y": B["y"]})


# ---------------------------------------------------------------------------
# One cell for the whole suite, chosen on validation
# ---------------------------------------------------------------------------


def _grid(task: str, scores: dict[tuple[float, float], float], split="validation", family=None, **cell_extra) -> dict:
    """A finished grid.json: `scores` maps (T, second axis) -> the cell's question metric."""
    axis = "top_p" if family is None else family["axis"]
    cells = []
    for (t, v), s in scores.items():
        name = "static" if family is None else family["name"]
        slug = f"{name}-T{t:g}-{axis}{v:g}"
        cells.append(
            {"temperature": t, axis: v, "label": slug, "slug": slug, "pass@1": s, "n_questions": 10, "pruned": None}
            | cell_extra.get(slug, {})
        )
    best = max(cells, key=lambda c: c["pass@1"] if c["pruned"] is None else -1)
    grid = {"benchmark": task, "split": split, "n_questions": 10, "cells": cells, "oracle": best}
    if family is not None:
        grid["family"] = {"name": family["name"], "fixed": {}}
    return grid


def test_the_best_single_cell_maximises_the_suite_mean_not_any_one_task():
    grids = [
        _grid("t1", {(0.1, 1.0): 0.9, (0.7, 1.0): 0.6, (1.0, 0.8): 0.2}),
        _grid("t2", {(0.1, 1.0): 0.1, (0.7, 1.0): 0.5, (1.0, 0.8): 0.8}),
    ]
    choice = best_single_setting(grids)
    # means: 0.5, 0.55, 0.5 -> T 0.7, although it is best on neither task
    assert choice.slug == "static-T0.7-top_p1" and choice.suite_score == pytest.approx(0.55)
    assert choice.per_task == {"t1": 0.6, "t2": 0.5} and choice.candidates == 3
    assert choice.record["temperature"] == 0.7


def test_only_cells_complete_on_every_task_are_candidates_and_ties_go_first():
    pruned = {"static-T0.7-top_p1": {"pruned": {"questions": 5, "p_value": 0.001}}}
    grids = [
        _grid("t1", {(0.1, 1.0): 0.5, (0.7, 1.0): 0.9, (1.0, 1.0): 0.5}),
        _grid("t2", {(0.1, 1.0): 0.5, (0.7, 1.0): 0.9, (1.0, 1.0): 0.5}, **pruned),
        _grid("t3", {(0.1, 1.0): 0.5, (0.7, 1.0): 0.9, (1.0, 1.0): 0.5, (1.5, 1.0): 1.0}),
    ]
    choice = best_single_setting(grids)
    assert choice.slug == "static-T0.1-top_p1" and choice.candidates == 2  # 0.7 pruned on t2; 1.5 only on t3


def test_selection_refuses_test_grids_and_the_oracle_is_test_tuned():
    test_grids = [_grid("t1", {(0.1, 1.0): 0.9, (1.0, 1.0): 0.2}, split="test")]
    with pytest.raises(UserError, match="not run on the validation split"):
        best_single_setting(test_grids)
    with pytest.raises(UserError, match="no min-p grid"):
        best_single_setting([_grid("t1", {(0.1, 1.0): 0.5})], family="min-p")
    oracles = per_task_oracles(test_grids + [_grid("t2", {(0.1, 1.0): 0.3, (1.0, 1.0): 0.6}, split="test")])
    assert {t: (o["slug"], o["row"]) for t, o in oracles.items()} == {
        "t1": ("static-T0.1-top_p1", "test-tuned"),
        "t2": ("static-T1-top_p1", "test-tuned"),
    }
    with pytest.raises(UserError, match="ran on validation"):
        per_task_oracles([_grid("t1", {(0.1, 1.0): 0.5})])


def test_one_choice_per_family():
    min_p = {"name": "min-p", "axis": "min_p"}
    grids = [
        _grid("t1", {(0.1, 1.0): 0.9, (1.0, 1.0): 0.2}),
        _grid("t2", {(0.1, 1.0): 0.7, (1.0, 1.0): 0.3}),
        _grid("t1", {(1.0, 0.1): 0.4, (1.0, 0.3): 0.6}, family=min_p),
        _grid("t2", {(1.0, 0.1): 0.5, (1.0, 0.3): 0.45}, family=min_p),
    ]
    choices = best_single_settings(grids)
    assert {f: c.slug for f, c in choices.items()} == {"static": "static-T0.1-top_p1", "min-p": "min-p-T1-min_p0.3"}
    with pytest.raises(UserError, match="no static cell was scored on every question"):
        best_single_setting([_grid("t1", {(0.1, 1.0): 0.9}), _grid("t2", {(0.3, 1.0): 0.9})])


# ---------------------------------------------------------------------------
# autodeco compare --row
# ---------------------------------------------------------------------------


def _results(path: Path, per_task: dict[str, list[float]], strategy="static", n=4, metric=None) -> Path:
    """A results.json as `autodeco eval` writes it (the fields compare reads)."""
    data = {
        "results": {t: {"metric": (metric or {}).get(t, "pass@1")} for t in per_task},
        "configs": {t: {"k": n, "seeds": [0]} for t in per_task},
        "decoding": {"name": strategy, "label": strategy},
        "model": "tiny",
        "per_question": {
            t: [{"doc_id": f"{t}/{i}", "pass@1": s, "score": s, "n": n} for i, s in enumerate(scores)]
            for t, scores in per_task.items()
        },
    }
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(data))
    return path


@pytest.fixture
def runs(tmp_path):
    x_a, y_a = [1.0, 1.0, 0.0, 1.0], [0.5, 0.25, 1.0]
    x_b, y_b = [0.0, 1.0, 0.0, 0.0], [0.25, 0.25, 0.5]
    return {
        "heads": _results(tmp_path / "heads", {"x": x_a, "y": y_a}, strategy="autodeco"),
        "static": _results(tmp_path / "static", {"x": x_b, "y": y_b}),
        # the test-tuned row: a different cell per task, one file each
        "tuned_x": _results(tmp_path / "tuned-x", {"x": [1.0, 1.0, 1.0, 0.0]}),
        "tuned_y": _results(tmp_path / "tuned-y", {"y": [1.0, 0.5, 0.5]}),
    }


def _table_rows(out: str) -> dict[str, str]:
    return {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 3}


def test_compare_rows_print_the_suite_table(cli, runs):
    tuned = f"{runs['tuned_x']},{runs['tuned_y']}"
    code, out, err = cli(
        "compare", "--row", f"heads={runs['heads']}", "--row", f"static={runs['static']}",
        "--row", f"test-tuned={tuned}", "--reference", "static", "--bootstrap", "500",
    )  # fmt: skip
    assert code == 0, err
    rows = _table_rows(out)
    se_delta = math.sqrt((1 / 3) / 4 + 0.0625 / 3) / 2
    assert "(reference)" in rows["static"]
    assert f"+{100 * 0.375:.1f} ± {100 * se_delta:.1f}" in rows["heads"]  # Δ suite = (0.5 + 0.25) / 2
    assert f"{100 * (0.75 + 7 / 12) / 2:.1f} ±" in rows["heads"]  # its suite score
    assert "+50.0 ± 28.9" in rows["heads"]  # task x: Δ 0.5, SE √(1/3)/2
    # the test-tuned row: task means 0.75 and 2/3, Δ vs static 0.5 and 0.25
    assert f"{100 * (0.75 + 2 / 3) / 2:.1f} ±" in rows["test-tuned"]
    assert "x: pass@1, 4 questions" in out and "y: pass@1, 3 questions" in out


def test_compare_rows_restrict_tasks_and_leave_out_unshared_questions(cli, runs, tmp_path):
    short = _results(tmp_path / "short", {"x": [1.0, 1.0, 0.0], "y": [0.5, 0.5, 0.5]})
    code, out, err = cli("compare", "--row", f"a={runs['heads']}", "--row", f"b={short}", "-b", "x")
    assert code == 0, err
    assert "suite of 1 tasks" in out and "x: pass@1, 3 questions (1 left out: not scored by every row)" in out
    assert "(reference)" in _table_rows(out)["a"]  # the first row by default


def test_two_file_compare_still_works(cli, runs):
    code, out, err = cli("compare", runs["heads"], runs["static"])
    assert code == 0, err
    assert "paired per-question" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--row", "heads"], "--row 'heads' is not NAME=RESULTS[,RESULTS...]"),
        (["--row", "a={heads}"], "a suite comparison needs at least two --row"),
        (["--row", "a={heads}", "--row", "a={static}"], "row names repeat: a, a"),
        (["--row", "a={heads}", "--row", "b={static}", "--reference", "c"], "--reference 'c' is not a row"),
        (["--row", "a={tuned_y}", "--row", "b={tuned_x}"], "the rows share no task"),
        (["--row", "a={heads}", "--row", "b={tuned_x}", "-b", "y"], "row 'b' has no results for y"),
        (["--row", "a={heads}", "--row", "b={heads},{static}"], "row 'b': x is in both"),
        (["{heads}", "--row", "a={heads}", "--row", "b={static}"], "give results files inside --row"),
        (["{heads}"], "compare needs two results files"),
    ],
)
def test_bad_rows_are_one_line_errors(cli, runs, args, message):
    code, out, err = cli("compare", *[a.format(**runs) for a in args])
    assert code == 2 and "Traceback" not in err
    assert message in err and len(err.strip().splitlines()) == 1


def test_rows_with_different_metrics_or_k_do_not_pair(cli, runs, tmp_path):
    other = _results(tmp_path / "tv", {"x": [0.5] * 4, "y": [0.5] * 3}, metric={"x": "exact×(1−TV)"})
    code, _, err = cli("compare", "--row", f"a={runs['heads']}", "--row", f"b={other}")
    assert code == 2 and "x: the rows score questions by different metrics" in err
    k8 = _results(tmp_path / "k8", {"x": [0.5] * 4, "y": [0.5] * 3}, n=8)
    code, _, err = cli("compare", "--row", f"a={runs['heads']}", "--row", f"b={k8}")
    assert code == 2 and "per-question scores from different k do not pair" in err
    greedy = _results(tmp_path / "greedy", {"x": [1.0] * 4, "y": [0.0] * 3}, strategy="greedy", n=1)
    assert cli("compare", "--row", f"a={runs['heads']}", "--row", f"g={greedy}")[0] == 0  # greedy pairs with any k
