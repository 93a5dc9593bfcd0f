"""grid-search: value parsing, full/expert stage logic, oracle + ties, early stopping (with a scorer
whose optimum is known), and on a tiny random Llama: exact resume, heatmap, a cell == a single
`autodeco eval` run, and the --then-eval comparison table."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from autodeco_cli.core.errors import UserError
from autodeco_cli.core.heads import fresh_heads
from autodeco_cli.core.prompt_format import PLAIN
from autodeco_cli.engine.generation import GenerationEngine
from autodeco_cli.evaluation.settings import EvalSettings
from autodeco_cli.grid import search as grid_mod
from autodeco_cli.grid.cells import parse_cells, parse_values
from autodeco_cli.grid.comparison import run_comparison
from autodeco_cli.grid.families import Cell
from autodeco_cli.grid.search import GridSpec, load_grid, round_sizes, run_grid, worse_p_value
from conftest import TINY_HIDDEN, FakeTask, Killed, kill_after

pytestmark = pytest.mark.usefixtures("torch_single_thread")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------


def test_parse_values_ranges_and_lists():
    temps = parse_values("0.1:1.5:0.1")
    assert len(temps) == 15 and temps[0] == 0.1 and temps[-1] == 1.5 and 0.3 in temps and 0.7 in temps
    assert parse_values("0.1:1.0:0.1", "--top-ps") == [round(0.1 * i, 1) for i in range(1, 11)]
    assert parse_values("1.0, 0.3,0.7,0.3") == [0.3, 0.7, 1.0]
    assert parse_values("0.2:0.4:0.1,1") == [0.2, 0.3, 0.4, 1.0]
    assert parse_values("0.5:0.65:0.1") == [0.5, 0.6]  # STOP included only when on the step
    for bad, option in [
        ("0:1:0.1", "--temperatures"),
        ("x", "--temperatures"),
        ("1:0.5:0.1", "--temperatures"),
        ("0.5:1:0", "--temperatures"),
        ("0.9,1.2", "--top-ps"),
        ("0.1:1", "--temperatures"),
        (",", "--temperatures"),
    ]:
        with pytest.raises(UserError):
            parse_values(bad, option)


def test_parse_cells_and_rounds():
    assert parse_cells("0.6:0.95, 1.0:1.0,0.6:0.95") == [Cell(0.6, 0.95), Cell(1.0, 1.0)]
    assert Cell(0.6, 0.95).slug == "static-T0.6-p0.95" and Cell(0.6, 0.95).label == "static(T=0.6, p=0.95)"
    for bad in ("0.6", "0.6:1.5", "a:b", ""):
        with pytest.raises(UserError):
            parse_cells(bad)
    assert round_sizes(40) == [10, 20, 40] and round_sizes(3) == [1, 2, 3] and round_sizes(1) == [1]


# ---------------------------------------------------------------------------
# Stage logic with a known optimum (run_eval replaced by a synthetic scorer)
# ---------------------------------------------------------------------------


def _uniform(doc: int, sample: int) -> float:
    # Common random numbers: every cell sees the same u per (question, sample), like real seeds.
    return ((doc * 37 + sample * 11) % 100 + 0.5) / 100


class Scorer:
    """Stands in for run_eval: a sample is correct when u < quality(T, p); records every call."""

    def __init__(self, quality, samples: int = 4):
        self.quality = quality
        self.samples = samples
        self.calls: list[dict] = []

    def __call__(self, engine, tasks, strategies, settings, *, out_dir=None, doc_ids=None, **kwargs):
        (task,) = tasks
        limit = settings.limit
        docs = task.load_docs(limit=limit)
        if doc_ids is not None:  # an early-stopping round: a prefix of the questions
            docs = [doc for doc in docs if doc.doc_id in set(doc_ids)]
        self.calls.append(
            {
                "cells": [(s.temperature, s.top_p) for s in strategies],
                "n": len(docs),
                "limit": limit,
                "doc_ids": doc_ids,
            }
        )
        out = {}
        for strategy in strategies:
            q = self.quality(strategy.temperature, strategy.top_p)
            rows = []
            for index, doc in enumerate(docs):
                correct = sum(_uniform(index, j) < q for j in range(self.samples))
                rows.append(
                    {"doc_id": doc.doc_id, "n": self.samples, "n_correct": correct, "pass@1": correct / self.samples}
                )
            per_q = [r["pass@1"] for r in rows]
            mean = sum(per_q) / len(per_q)
            se = (
                (sum((x - mean) ** 2 for x in per_q) / (len(per_q) - 1) / len(per_q)) ** 0.5 if len(per_q) > 1 else None
            )
            out[strategy.label] = {
                "results": {
                    task.name: {"pass@1": mean, "pass@1_stderr": se, "mean_tokens": 3.0, "n_questions": len(docs)}
                },
                "per_question": {task.name: rows},
            }
        return out


FAKE_ENGINE = SimpleNamespace(
    name="hf", dtype="float32", prompt_format=PLAIN, lm=SimpleNamespace(name="fake-model", config=None)
)


def _synthetic(monkeypatch, quality, tmp_path, **kwargs):
    scorer = Scorer(quality)
    monkeypatch.setattr(grid_mod, "run_eval", scorer)
    spec = GridSpec(n_boot=500, **kwargs)
    return run_grid(FAKE_ENGINE, FakeTask(n_docs=40), spec, EvalSettings(k=4, seeds=[0]), out_dir=tmp_path), scorer


def _by_slug(grid):
    return {c["slug"]: c for c in grid["cells"]}


def test_full_mode_one_call_oracle_ties_and_heatmap(monkeypatch, tmp_path):
    quality = {(0.3, 0.9): 0.5, (0.3, 1.0): 0.45, (0.7, 0.9): 0.9, (0.7, 1.0): 0.9, (1.0, 0.9): 0.88, (1.0, 1.0): 0.1}
    grid, scorer = _synthetic(
        monkeypatch, lambda t, p: quality[t, p], tmp_path, mode="full", temperatures=[0.3, 0.7, 1.0], top_ps=[0.9, 1.0]
    )
    # one run_eval call with every cell, on every question
    assert len(scorer.calls) == 1 and sorted(scorer.calls[0]["cells"]) == sorted(quality) and scorer.calls[0]["n"] == 40
    assert grid["complete"] and grid["mode"] == "full" and len(grid["cells"]) == 6
    # (0.7, 0.9) and (0.7, 1.0) score the same: the first in grid order is the oracle, the other is tied
    assert (grid["oracle"]["temperature"], grid["oracle"]["top_p"]) == (0.7, 0.9)
    tied = {(t["temperature"], t["top_p"]) for t in grid["ties"]}
    assert (0.7, 1.0) in tied and (1.0, 1.0) not in tied and (0.3, 1.0) not in tied
    cells = _by_slug(grid)
    assert cells["static-T1-p1"]["vs_oracle"]["ci_high"] < 0 and not cells["static-T1-p1"]["tied"]
    assert cells["static-T0.7-p0.9"]["oracle"] and cells["static-T0.7-p0.9"]["pass@1"] == pytest.approx(
        max(c["pass@1"] for c in grid["cells"])
    )
    assert grid["early_stopping"]["enabled"] is False and grid["early_stopping"]["pruned"] == []
    assert json.loads((tmp_path / "grid.json").read_text()) == grid
    png = (tmp_path / "heatmap.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 5000


def test_expert_mode_tunes_t_at_p1_then_p_at_best_t(monkeypatch, tmp_path):
    # At p = 1 the best T is 1.0, although the global optimum is (0.3, 0.5): the expert
    # procedure must pick T = 1.0 first and then sweep p at T = 1.0 only.
    def quality(t, p):
        if (t, p) == (0.3, 0.5):
            return 0.99
        return 0.8 - abs(t - 1.0) * 0.3 - abs(p - 0.8) * 0.5

    temps, ps = [0.3, 0.7, 1.0, 1.3], [0.5, 0.8, 1.0]
    grid, scorer = _synthetic(monkeypatch, quality, tmp_path, mode="expert", temperatures=temps, top_ps=ps)
    # stage 2 re-uses (1.0, 1.0) from stage 1 instead of running it again
    assert [sorted(c["cells"]) for c in scorer.calls] == [[(t, 1.0) for t in temps], [(1.0, 0.5), (1.0, 0.8)]]
    stage1, stage2 = grid["stages"]
    assert stage1["name"] == "temperature" and stage1["best_temperature"] == 1.0 and stage1["fixed"] == {"top_p": 1.0}
    assert stage2["name"] == "top_p" and stage2["fixed"] == {"temperature": 1.0}
    assert (grid["oracle"]["temperature"], grid["oracle"]["top_p"]) == (1.0, 0.8)
    assert "static-T0.3-p0.5" not in _by_slug(grid)
    assert _by_slug(grid)["static-T1-p1"]["stages"] == ["temperature", "top_p"]
    assert len(grid["cells"]) == len(temps) + len(ps) - 1
    assert (tmp_path / "heatmap.png").read_bytes().startswith(PNG_MAGIC)


def test_early_stop_prunes_clearly_worse_cells(monkeypatch, tmp_path):
    quality = {(0.5, 1.0): 0.0, (0.7, 1.0): 0.85, (1.0, 1.0): 0.9, (1.3, 1.0): 0.05}
    grid, scorer = _synthetic(
        monkeypatch, lambda t, p: quality[t, p], tmp_path, mode="cells", cells=list(quality), early_stop=True
    )
    # rounds over growing question prefixes; pruned cells are not run again
    assert [c["n"] for c in scorer.calls] == [10, 20, 40]
    assert sorted(scorer.calls[0]["cells"]) == sorted(quality)
    assert sorted(scorer.calls[1]["cells"]) == sorted(scorer.calls[2]["cells"]) == [(0.7, 1.0), (1.0, 1.0)]
    assert scorer.calls[-1]["limit"] is None and scorer.calls[-1]["doc_ids"] is None  # the final round is the plain run
    assert scorer.calls[0]["doc_ids"] == [f"fake/{i}" for i in range(10)]  # a round asks for the first questions
    early = grid["early_stopping"]
    assert early["enabled"] and early["alpha"] == 0.01 and early["rounds_questions"] == [10, 20, 40]
    assert early["test"] == grid_mod.prune_test_name()
    assert sorted(early["pruned"]) == ["static-T0.5-p1", "static-T1.3-p1"]
    first = early["rounds"][0]
    assert (
        first["questions"] == 10
        and first["best"] == "static-T1-p1"
        and {p["slug"] for p in first["pruned"]} == set(early["pruned"])
    )
    assert all(p["p_value"] < 0.01 for p in first["pruned"])
    cells = _by_slug(grid)
    assert cells["static-T0.5-p1"]["pruned"]["questions"] == 10 and cells["static-T0.5-p1"]["n_questions"] == 10
    assert cells["static-T0.7-p1"]["pruned"] is None and cells["static-T0.7-p1"]["n_questions"] == 40
    assert grid["oracle"]["slug"] == "static-T1-p1"
    assert all(t["slug"] not in early["pruned"] for t in grid["ties"])


def test_expert_early_stop_keeps_stage_one_best(monkeypatch, tmp_path):
    def quality(t, p):
        return {0.5: 0.2, 1.0: 0.7}[t] if p == 1.0 else {0.3: 0.0, 0.9: 0.95}[p]

    grid, scorer = _synthetic(
        monkeypatch, quality, tmp_path, mode="expert", temperatures=[0.5, 1.0], top_ps=[0.3, 0.9, 1.0], early_stop=True
    )
    # (1.0, 1.0) is complete after stage 1: stage 2 never re-runs it and never prunes it
    assert all((1.0, 1.0) not in c["cells"] for c in scorer.calls[3:])
    cells = _by_slug(grid)
    assert cells["static-T1-p1"]["pruned"] is None and cells["static-T1-p1"]["n_questions"] == 40
    assert cells["static-T1-p0.3"]["pruned"] is not None and grid["oracle"]["slug"] == "static-T1-p0.9"


def test_worse_p_value_with_and_without_scipy(monkeypatch):
    best = {f"q{i}": 1.0 for i in range(12)}
    worse = {f"q{i}": 0.0 for i in range(12)}
    assert worse_p_value(worse, best) < 0.001
    assert worse_p_value(best, best) == 1.0 and worse_p_value(best, worse) > 0.5
    assert worse_p_value({k: 0.0 for k in list(best)[:5]}, {k: 1.0 for k in list(best)[:5]}) == 1.0  # too few questions
    monkeypatch.setitem(__import__("sys").modules, "scipy.stats", None)  # import fails: normal fallback
    assert "normal" in grid_mod.prune_test_name()
    mixed = {k: (0.0 if i % 3 else 1.0) for i, k in enumerate(best)}
    assert worse_p_value(mixed, best) < 0.01 and worse_p_value(worse, best) == 0.0 and worse_p_value(best, best) == 1.0


def test_wilcoxon_when_scipy_is_installed():
    pytest.importorskip("scipy.stats")
    assert "Wilcoxon" in grid_mod.prune_test_name()
    best = {f"q{i}": 1.0 for i in range(10)}
    # all 10 differences negative: the exact one-sided signed-rank p-value is 1 / 2**10
    assert worse_p_value({k: 0.5 for k in best}, best) == pytest.approx(1 / 1024)


def test_grid_argument_errors(monkeypatch, tmp_path):
    monkeypatch.setattr(grid_mod, "run_eval", Scorer(lambda t, p: 0.5))
    with pytest.raises(UserError, match="mode"):
        run_grid(FAKE_ENGINE, FakeTask(), GridSpec(mode="random"), out_dir=tmp_path)
    with pytest.raises(UserError, match="--cells"):
        run_grid(FAKE_ENGINE, FakeTask(), GridSpec(mode="cells"), out_dir=tmp_path)
    with pytest.raises(UserError, match="unfinished|not found"):
        load_grid(tmp_path)


NO_MODEL = "/nonexistent/model-that-never-loads"


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


@pytest.mark.parametrize(
    "args, option",
    [
        (["--temperatures", ""], "--temperatures"),
        (["--top-ps", ""], "--top-ps"),
        (["--family", "min-p", "--min-ps", ""], "--min-ps"),
        (["--family", "top-n-sigma", "--n-sigmas", ""], "--n-sigmas"),
        (["--family", "edt", "--edt-thetas", ""], "--edt-thetas"),
        (["--cells", ""], "--cells"),
        (["--mode", "cells", "--cells", " , "], "--cells"),
    ],
)
def test_cli_empty_axis_is_refused(cli, args, option):
    """An empty axis used to fall back to the family's default grid (15 × 10 cells) unnoticed."""
    code, _, err = cli("grid-search", "-b", "arith-add", "-m", NO_MODEL, *args)
    assert code == 2, err
    line = _one_error_line(err)
    assert f"{option} " in line and "gives no" in line, line


def test_empty_axis_lists_are_refused_by_the_library(monkeypatch, tmp_path):
    monkeypatch.setattr(grid_mod, "run_eval", Scorer(lambda t, p: 0.5))
    with pytest.raises(UserError, match="--temperatures gives no values"):
        run_grid(FAKE_ENGINE, FakeTask(), GridSpec(temperatures=[], top_ps=[1.0]), out_dir=tmp_path)
    with pytest.raises(UserError, match="--top-ps gives no values"):
        run_grid(FAKE_ENGINE, FakeTask(), GridSpec(temperatures=[1.0], top_ps=[]), out_dir=tmp_path)


def test_cli_large_grid_needs_yes(cli):
    """200 × 100 cells: stopped before the model loads with the size and a rough time, unless --yes."""
    args = ["grid-search", "-b", "arith-add", "-m", NO_MODEL, "--limit", 5, "-k", 2]
    args += ["--temperatures", "0.01:2:0.01", "--top-ps", "0.01:1:0.01"]
    code, _, err = cli(*args)
    assert code == 2, err
    line = _one_error_line(err)
    for needle in ("20,000 cells", "200 temperatures × 100 top-p", "5 questions", "200,000 samples", "rough", "--yes"):
        assert needle in line, (needle, line)
    code, _, err = cli(*args, "--yes")
    assert "note: grid of 20,000 cells" in err and "model" in err.splitlines()[-1]  # went on to load the model
    code, _, err = cli("grid-search", "-b", "arith-add", "-m", NO_MODEL, "--temperatures", "0.1:2:0.1")
    assert "cells" not in err and "model" in err  # 20 × 10: no question asked


# ---------------------------------------------------------------------------
# The real runner on a tiny random Llama
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tiny_lm):
    engine = GenerationEngine(tiny_lm, fresh_heads(TINY_HIDDEN, seed=0))
    yield engine
    engine.close()  # the heads' hook sits on the session-wide model


GRID = {
    "spec": GridSpec(mode="full", temperatures=[0.7, 1.0], top_ps=[0.9, 1.0], n_boot=300),
    "settings": EvalSettings(k=2, seeds=[0], batch_size=3),
}


def _samples(folder: Path, slug: str) -> list[dict]:
    return [json.loads(line) for line in (folder / slug / "samples_fake.jsonl").read_text().splitlines()]


def _keys(records):
    return [(r["doc_id"], r["seed"], r["sample"]) for r in records]


def _comparable(grid: dict) -> dict:
    return {k: v for k, v in grid.items() if k != "heatmap"}


@pytest.fixture(scope="module")
def reference(engine, tmp_path_factory):
    folder = tmp_path_factory.mktemp("grid-reference")
    return folder, run_grid(engine, FakeTask(), out_dir=folder, **GRID)


def test_resume_after_kill_equals_uninterrupted_sweep(engine, reference, tmp_path, monkeypatch):
    whole, expected = reference
    with monkeypatch.context() as patch:
        kill_after(engine, patch, batches=4)
        with pytest.raises(Killed):
            run_grid(engine, FakeTask(), out_dir=tmp_path, **GRID)
    assert not (tmp_path / "grid.json").exists()  # written after each stage (or round), not mid-stage
    partial = sum(
        len(_samples(tmp_path, c["slug"]))
        for c in expected["cells"]
        if (tmp_path / c["slug"] / "samples_fake.jsonl").exists()
    )
    assert 0 < partial < 4 * 4 * 2

    resumed = run_grid(engine, FakeTask(), out_dir=tmp_path, **GRID)
    assert _comparable(resumed) == _comparable(expected)
    for cell in expected["cells"]:
        again, first = _samples(tmp_path, cell["slug"]), _samples(whole, cell["slug"])
        assert len(again) == len(set(_keys(again))) == 8  # no duplicate lines
        assert {k: r["text"] for k, r in zip(_keys(again), again)} == {
            k: r["text"] for k, r in zip(_keys(first), first)
        }

    # a finished sweep re-runs without generating anything and decides the same
    def no_generation(requests, **kwargs):
        raise AssertionError("everything was already done")

    monkeypatch.setattr(engine, "generate", no_generation)
    assert _comparable(run_grid(engine, FakeTask(), out_dir=tmp_path, **GRID)) == _comparable(expected)
    assert _comparable(load_grid(tmp_path)) == _comparable(expected)
    assert (tmp_path / "heatmap.png").read_bytes().startswith(PNG_MAGIC)


def test_then_eval_comparison_rows(engine, reference, tmp_path, monkeypatch):
    import shutil

    folder, grid = reference
    shutil.copytree(folder, tmp_path, dirs_exist_ok=True)
    generated = []
    original = engine.generate

    def spy(requests, **kwargs):
        generated.extend(r.strategy.label for r in requests)
        return original(requests, **kwargs)

    monkeypatch.setattr(engine, "generate", spy)
    comparison = run_comparison(engine, FakeTask(), grid, out_dir=tmp_path, batch_size=4, n_boot=300)
    names = [row["name"] for row in comparison["rows"]]
    assert names == ["greedy", "default", "oracle", "autodeco", "mean-shift", "autodeco T̂-only", "autodeco P̂-only"]
    rows = {row["name"]: row for row in comparison["rows"]}
    # the grid's cells are read back, not regenerated
    assert grid["oracle"]["label"] not in generated and "static(T=1, p=1)" not in generated
    assert (
        rows["oracle"]["pass@1"] == pytest.approx(grid["oracle"]["pass@1"])
        and rows["oracle"]["decoding"] == grid["oracle"]["label"]
    )
    assert rows["default"]["delta_vs_default"] == 0 and rows["default"]["decoding"] == "static(T=1, p=1)"
    assert rows["mean-shift"]["temperature"] == pytest.approx(rows["autodeco"]["mean_temperature"])
    assert rows["mean-shift"]["top_p"] == pytest.approx(rows["autodeco"]["mean_top_p"])
    assert rows["autodeco T̂-only"]["mean_top_p"] == pytest.approx(1.0) and rows["autodeco P̂-only"][
        "mean_temperature"
    ] == pytest.approx(1.0)
    for row in comparison["rows"]:
        assert row["n_questions"] == 4 and row["samples_per_question"] == (1 if row["name"] == "greedy" else 2)
        assert row["delta_vs_default"] == pytest.approx(row["pass@1"] - rows["default"]["pass@1"])
        assert row["delta_ci"][0] <= row["delta_vs_default"] + 1e-12 <= row["delta_ci"][1] + 2e-12
    # autodeco's own paired tests against greedy, oracle and mean-shift, for the report's verdicts
    assert set(comparison["autodeco_vs"]) == {"greedy", "oracle", "mean-shift"}
    for other, paired in comparison["autodeco_vs"].items():
        assert paired["delta"] == pytest.approx(rows["autodeco"]["pass@1"] - rows[other]["pass@1"])
        assert paired["ci"][0] <= paired["delta"] + 1e-12 <= paired["ci"][1] + 2e-12
    assert json.loads((tmp_path / "comparison.json").read_text()) == comparison
    table = (tmp_path / "comparison.md").read_text()
    assert table.count("\n| ") == 2 + len(names) and "| oracle |" in table and "(reference)" in table


# ---------------------------------------------------------------------------
# CLI: a cell is exactly a single `autodeco eval` run
# ---------------------------------------------------------------------------


def test_cli_cell_equals_single_eval_run(tiny_model_dir, tiny_heads_dir, tmp_path, fake_registry):
    from typer.testing import CliRunner

    from autodeco_cli.cli import app

    runner = CliRunner()
    sweep_dir, eval_dir = tmp_path / "grid", tmp_path / "eval"
    common = ["--model", str(tiny_model_dir), "-k", "2", "--seeds", "2"]
    swept = runner.invoke(
        app,
        [
            "grid-search",
            "-b",
            "fake",
            "--cells",
            "0.7:0.9,1.0:1.0",
            "--batch-size",
            "5",
            "-o",
            str(sweep_dir),
            "--then-eval",
            "--heads",
            str(tiny_heads_dir),
            *common,
        ],
    )
    assert swept.exit_code == 0, swept.output
    assert "oracle" in swept.output and "mean-shift" in swept.output and "grid.json" in swept.output
    for name in ("grid.json", "heatmap.png", "comparison.json", "comparison.md"):
        assert (sweep_dir / name).stat().st_size > 0, name
    single = runner.invoke(
        app,
        [
            "eval",
            "-b",
            "fake",
            "--decoding",
            "static",
            "-t",
            "0.7",
            "-p",
            "0.9",
            "--batch-size",
            "3",
            "-o",
            str(eval_dir),
            *common,
        ],
    )
    assert single.exit_code == 0, single.output
    cell, alone = _samples(sweep_dir, "static-T0.7-p0.9"), _samples(eval_dir, "static-T0.7-p0.9")
    assert len(cell) == len(alone) == 4 * 4
    assert {k: r["text"] for k, r in zip(_keys(cell), cell)} == {k: r["text"] for k, r in zip(_keys(alone), alone)}
    grid = json.loads((sweep_dir / "grid.json").read_text())
    cell_result = json.loads((sweep_dir / "static-T0.7-p0.9" / "results.json").read_text())["results"]["fake"]
    assert _by_slug(grid)["static-T0.7-p0.9"]["pass@1"] == cell_result["pass@1"]
    # and eval accepts the grid's cell folder as its own (same run_config): it resumes, generating nothing
    again = runner.invoke(
        app, ["eval", "-b", "fake", "--decoding", "static", "-t", "0.7", "-p", "0.9", "-o", str(sweep_dir), *common]
    )
    assert again.exit_code == 0, again.output
    assert len(_samples(sweep_dir, "static-T0.7-p0.9")) == 16


def test_cli_help_and_errors(tmp_path):
    from typer.testing import CliRunner

    from autodeco_cli.cli import app

    runner = CliRunner()
    shown = runner.invoke(app, ["grid-search", "--help"])
    assert shown.exit_code == 0 and "Examples" in shown.output and "--early-stop" in shown.output
    bad = runner.invoke(app, ["grid-search", "-b", "fake", "--mode", "full", "--cells", "0.5:1", "-o", str(tmp_path)])
    assert bad.exit_code != 0 and isinstance(bad.exception, UserError)
    # checked before the model is loaded (no such model here)
    bad = runner.invoke(
        app,
        [
            "grid-search",
            "-b",
            "arith-add",
            "--mode",
            "random",
            "--model",
            str(tmp_path / "nothing"),
            "-o",
            str(tmp_path),
        ],
    )
    assert isinstance(bad.exception, UserError) and "is not a mode" in str(bad.exception)


def test_quick_reproduce_writes_its_own_report_and_figures():
    """`make reproduce-quick` must not overwrite the full run's report or figures."""
    from autodeco_cli.studies.reproduce import config_from

    full, quick = config_from(None, [], quick=False), config_from(None, [], quick=True)
    assert quick.report != full.report and quick.figures_dir != full.figures_dir and quick.workdir != full.workdir


def test_reproduce_verdict_calls_a_difference_only_when_its_ci_excludes_zero():
    from autodeco_cli.studies.reproduce import _verdict

    comparison = {
        "rows": [
            {"name": "autodeco", "pass@1": 0.3, "delta_vs_default": 0.25, "delta_se": 0.03, "delta_ci": [0.19, 0.31]}
        ],
        "autodeco_vs": {
            "greedy": {"delta": -0.1, "se": 0.03, "ci": [-0.16, -0.04]},
            "oracle": {"delta": -0.02, "se": 0.03, "ci": [-0.08, 0.04]},
            "mean-shift": {"delta": 0.01, "se": 0.02, "ci": [-0.03, 0.05]},
        },
    }
    text = _verdict("arith-add", comparison)
    assert "vs default better, Δ +0.250" in text
    assert "vs greedy worse, Δ -0.100" in text
    assert "vs the test-set-tuned oracle tied within noise" in text
    assert "vs mean-shift tied within noise, Δ +0.010" in text


def test_one_row_formatter_for_terminal_markdown_and_report():
    from rich.console import Console

    from autodeco_cli.grid.comparison import (
        comparison_markdown,
        comparison_rich_table,
        comparison_table_lines,
        row_cells,
    )

    # a row as comparison.json files written before rows recorded `score` and `mean_tokens`
    old = {
        "name": "oracle", "decoding": "static(T=0.7, p=0.9)", "pass@1": 0.5, "pass@1_stderr": 0.1, "temperature": 0.7,
        "top_p": 0.9, "delta_vs_default": 0.1, "delta_se": 0.05, "delta_ci": [-0.1, 0.2],
    }  # fmt: skip
    cells = ("oracle", "static(T=0.7, p=0.9)", "T 0.7, p 0.9", "50.0 ± 10.0", "+10.0 ± 5.0", "[-10.0, +20.0]", "–")
    assert row_cells(old) == cells
    greedy = {**old, "name": "greedy", "decoding": "greedy", "mean_tokens": 4.25, "score": 0.25, "score_stderr": None}
    del greedy["temperature"], greedy["top_p"]
    assert row_cells(greedy)[2:4] == ("argmax", "25.0") and row_cells(greedy)[-1] == "4.2"
    comparison = {
        "benchmark": "fake",
        "n_questions": 4,
        "k": 2,
        "seeds": [0],
        "metric": "pass@1",
        "rows": [old, greedy],
    }
    lines = comparison_table_lines(comparison)
    assert lines[2] == "| " + " | ".join(cells) + " |" and lines[2] in comparison_markdown(comparison)
    console = Console(width=200, record=True)
    console.print(comparison_rich_table(comparison))
    shown = console.export_text()
    assert "[-10.0, +20.0]" in shown and "argmax" in shown
