"""`autodeco where-it-wins` end to end on the tiny random Llama, with the suite and diagnostics
stages: the single cells chosen on validation grids only, every suite row on the test questions,
the unseen task in no choice, diagnose reading the benchmark stage's traced run, both tables in
the report; and a second invocation that draws nothing again.

The tiny model can do no task, so the tasks are defined here (served through the registry):
every finished, non-empty answer to a training question is accepted, so make-data keeps samples,
and validation and test answers are scored by a coin flip on the text's length.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from autodeco_cli.core.errors import UserError
from autodeco_cli.studies.where_it_wins import WhereItWinsConfig, run_where_it_wins
from autodeco_cli.tasks.types import Doc, Score
from conftest import Killed

pytestmark = [
    pytest.mark.usefixtures("torch_single_thread"),
    # the trace figures label tokens of a random model, control characters included
    pytest.mark.filterwarnings("ignore:Glyph .* missing from font"),
]

WORDS = ["cat", "dog", "fox", "owl", "bee", "ant", "elk", "yak", "emu", "hen", "ram", "cow", "pig", "rat", "bat", "cod"]
SIZES = {"train": 16, "validation": 4, "test": 5}


@dataclass(frozen=True)
class WordTask:
    name: str
    description: str = "training answers accepted when they finish; other answers a coin flip"
    max_new_tokens: int = 6
    options: dict = field(default_factory=lambda: {"stop": ["e", "o", "a", " "]})

    def load_docs(self, split="test", limit=None, data_dir=None):
        docs = [
            Doc(f"{self.name}/{split}/{i}", f"{self.name}: tell me about the {WORDS[i]} number {i}.", split, {})
            for i in range(SIZES[split])
        ]
        return docs[:limit] if limit else docs

    def score(self, doc, text):
        if doc.gold == "train":
            return Score(bool(text.strip()), "ok", {})
        return Score(len(text) % 2 == 0, str(len(text) % 2), {})


TASKS = {name: WordTask(name) for name in ("bench-a", "bench-b", "unseen-x")}


def _serve(patch: pytest.MonkeyPatch) -> None:
    """The registry serves the word tasks (make-data binds the registry's functions at import)."""
    from autodeco_cli.tasks import registry
    from autodeco_cli.training import on_policy_data

    for module in (registry, on_policy_data):
        patch.setattr(module, "get_task", lambda name: TASKS[name])
        patch.setattr(module, "expand", lambda names: [n.strip() for n in str(names).split(",")])


def _config(tiny_model_dir, folder) -> WhereItWinsConfig:
    return WhereItWinsConfig(
        model=str(tiny_model_dir),
        workdir=str(folder / "work"),
        report=str(folder / "reports" / "where-it-wins.md"),
        figures_dir="figures",
        threads=None,
        batch_size=8,
        data=[{"tasks": "bench-a,bench-b", "temperature": 1.0, "top_p": 1.0, "k": 2, "limit": 8}],
        mle={"learning_rate": 1e-3, "epochs": 1, "micro_batch_size": 4, "head_width": 32, "max_length": 64},
        reward={
            "tasks": "bench-a,bench-b",
            "steps": 2,
            "prompts_per_step": 2,
            "group_size": 2,
            "batch_size": 8,
            "validation_limit": 2,
            "validation_k": 2,
            "validate_every": 1,
        },
        benchmarks=[{"name": "bench-a", "k": 2, "limit": None}, {"name": "bench-b", "k": 2, "limit": 4}],
        temperatures=[0.5, 1.0],
        top_ps=[1.0],
        adaptive={"min-p": {"temperatures": [1.0], "values": [0.1, 0.3]}},
        selection_limit=3,
        heatmaps=[],
        transfer={},
        unseen=[{"name": "unseen-x", "k": 2, "limit": 4}],
        suite_grid={"temperatures": [0.5, 1.0], "top_ps": [0.9, 1.0]},
        diagnose={"tasks": ["bench-a"], "replay": False, "n_boot": 200},
    )


@pytest.fixture(scope="module")
def finished(tiny_model_dir, tmp_path_factory):
    """One where-it-wins run: (its folder, the report path)."""
    with pytest.MonkeyPatch.context() as patch:
        _serve(patch)
        folder = tmp_path_factory.mktemp("where-it-wins")
        return folder, run_where_it_wins(_config(tiny_model_dir, folder), log=lambda *a: None)


def test_the_report_holds_the_suite_and_the_diagnostics(finished):
    folder, report = finished
    text = report.read_text(encoding="utf-8")
    work = folder / "work"
    suite = json.loads((work / "eval" / "suite.json").read_text())
    heads = suite["heads"]
    assert suite["tasks"] == ["bench-a", "bench-b", "unseen-x"] and suite["unseen"] == ["unseen-x"]
    names = [row["name"] for row in suite["rows"]]
    assert names == [
        heads,
        "single static",
        "single min-p",
        "per-task oracle (test-tuned)",
        "greedy",
        "default",
        f"mean-shift of {heads}",
    ]
    assert suite["n_questions"] == {"bench-a": 5, "bench-b": 4, "unseen-x": 4}
    for row in suite["rows"][1:]:
        test = row["heads_minus_row"]
        assert test["ci"][0] <= test["delta"] <= test["ci"][1] and set(test["per_task_delta"]) == set(suite["tasks"])
    # Δ = heads − row: the heads' suite score minus the row's
    by_name = {row["name"]: row for row in suite["rows"]}
    greedy = by_name["greedy"]
    assert greedy["heads_minus_row"]["delta"] == pytest.approx(by_name[heads]["score"] - greedy["score"])
    assert [row["name"] for row in suite["unseen_rows"]] == names
    assert suite["unseen_verdict"].startswith("On the unseen families (unseen-x) the heads ")

    assert "## One setting for all traffic: the suite" in text and f"| row | suite ± SE | Δ = {heads} − row" in text
    section = text[text.index("## One setting") : text.index("## Per-token")]
    for name in names:  # once in the all-tasks table, once in the unseen one
        assert sum(line.startswith(f"| {name} |") for line in section.splitlines()) == 2, name
    assert f"**{suite['unseen_verdict']}.**" in text
    assert "## Per-token control or just a better mean? (diagnostics)" in text
    for row in ("shuffle-within", "shuffle-across", "mean-shift"):
        assert f"| {row} | " in text
    assert "**Verdict: the per-token claim" in text and "| T̂ |" in text and "within share" in text
    assert "beat both shuffled selves with a CI that excludes 0" in text
    assert "suite's per-task oracle (labelled test-tuned)" in text and "took part in no choice" in text
    assert (folder / "reports" / "figures" / "diagnose_bench-a.png").stat().st_size > 0
    timings = json.loads((work / "timings.json").read_text())
    assert {"suite selection (validation)", "suite bench-a", "suite unseen-x", "diagnose bench-a"} <= set(timings)


def test_the_single_cells_are_chosen_on_validation_and_the_unseen_task_in_none(finished):
    folder, _ = finished
    work = folder / "work"
    suite = json.loads((work / "eval" / "suite.json").read_text())
    for bench in ("bench-a", "bench-b"):
        grid = json.loads((work / "eval" / bench / "suite-select-static" / "grid.json").read_text())
        assert grid["split"] == "validation" and grid["n_questions"] == 3  # selection_limit
        assert len(grid["cells"]) == 4  # suite_grid
        adaptive = json.loads((work / "eval" / bench / "select-min-p" / "grid.json").read_text())
        assert adaptive["split"] == "validation"
    assert not (work / "eval" / "unseen-x" / "suite-select-static").exists()
    static = suite["singles"]["static"]
    assert set(static["validation_per_task"]) == {"bench-a", "bench-b"} and static["candidates"] == 4
    # the unseen task's test grid is suite_grid's cells, searched on its test questions (its oracle)
    unseen_grid = json.loads((work / "eval" / "unseen-x" / "base" / "grid.json").read_text())
    assert unseen_grid["split"] == "test" and len(unseen_grid["cells"]) == 4


def test_diagnose_reads_the_benchmark_stage_traced_run(finished):
    folder, _ = finished
    work = folder / "work"
    suite = json.loads((work / "eval" / "suite.json").read_text())
    heads_folder = work / "eval" / "bench-a" / suite["heads"]
    report = json.loads((heads_folder / "diagnose.json").read_text())
    assert [row["name"] for row in report["rows"]] == ["autodeco", "shuffle-within", "shuffle-across", "mean-shift"]
    assert report["settings"]["k"] == 2 and report["settings"]["limit"] is None
    assert not (work / "diagnose").exists()
    # the mean-shift row is the benchmark stage's own run, read back
    assert sum(1 for p in heads_folder.iterdir() if p.name.startswith("mean-shift")) == 1


def test_a_second_invocation_draws_nothing_again(finished, tiny_model_dir, monkeypatch):
    from autodeco_cli.engine.generation import GenerationEngine
    from autodeco_cli.training import trainer as training

    folder, report = finished
    suite_before = (folder / "work" / "eval" / "suite.json").read_text()
    original = GenerationEngine.generate
    drawn = {"eval": 0, "other": 0}

    def counting(self, requests, **kwargs):
        drawn["eval" if kwargs.get("on_batch_done") else "other"] += len(requests)
        return original(self, requests, **kwargs)

    class NoTraining:
        def __init__(self, *args, **kwargs):
            raise AssertionError("the second invocation trained the heads again")

    _serve(monkeypatch)
    monkeypatch.setattr(GenerationEngine, "generate", counting)
    monkeypatch.setattr(training, "HeadTrainer", NoTraining)
    assert run_where_it_wins(_config(tiny_model_dir, folder), log=lambda *a: None) == report
    assert drawn["eval"] == 0  # no eval, grid or diagnose sample is drawn again
    assert drawn["other"] == 2  # the figures' one trace per benchmark
    assert (folder / "work" / "eval" / "suite.json").read_text() == suite_before


def test_a_run_killed_in_the_suite_resumes_there_and_ends_as_an_uninterrupted_one(
    finished, tiny_model_dir, tmp_path, monkeypatch
):
    from autodeco_cli.engine.generation import GenerationEngine

    original = GenerationEngine.generate
    state = {"suite": False, "batches": 0}

    def log(message, *args):
        state["suite"] = state["suite"] or "suite selection" in str(message)

    def dies_in_the_suite(self, requests, **kwargs):
        done = kwargs.get("on_batch_done")
        if done is None or not state["suite"]:
            return original(self, requests, **kwargs)

        def on_batch_done(batch):
            done(batch)
            state["batches"] += 1
            if state["batches"] >= 2:
                raise Killed()

        return original(self, requests, **{**kwargs, "on_batch_done": on_batch_done})

    _serve(monkeypatch)
    config = _config(tiny_model_dir, tmp_path)
    with monkeypatch.context() as patch:
        patch.setattr(GenerationEngine, "generate", dies_in_the_suite)
        with pytest.raises(Killed):
            run_where_it_wins(config, log=log)
    work = tmp_path / "work"
    assert (work / "eval" / "bench-b" / "where_it_wins.json").is_file() and not (work / "eval" / "suite.json").exists()
    run_where_it_wins(config, log=lambda *a: None)
    assert (work / "eval" / "suite.json").read_text() == (finished[0] / "work" / "eval" / "suite.json").read_text()


def test_a_suite_that_cannot_choose_a_cell_is_refused_before_any_work(tmp_path):
    config = WhereItWinsConfig(workdir=str(tmp_path / "work"), model="/nonexistent/model")
    config.benchmarks = [
        {"name": "a", "k": 2, "adaptive": {"min-p": {"temperatures": [0.7], "values": [0.1]}}},
        {"name": "b", "k": 2, "adaptive": {"min-p": {"temperatures": [1.0], "values": [0.1]}}},
    ]
    with pytest.raises(UserError, match="share no cell"):
        run_where_it_wins(config, log=lambda *a: None)
    config.benchmarks = [{"name": "a", "k": 2}]
    config.diagnose = {"tasks": ["elsewhere"]}
    with pytest.raises(UserError, match="not a benchmark of the study"):
        run_where_it_wins(config, log=lambda *a: None)
    config.diagnose = {"tasks": [{"k": 2}]}
    with pytest.raises(UserError, match="neither a task name nor a mapping with a name"):
        run_where_it_wins(config, log=lambda *a: None)
    config.diagnose = {"tasks": ["a"]}
    config.reward = {**config.reward, "tasks": "arith-add,unseen"}  # a group that holds the unseen families
    with pytest.raises(UserError, match="unseen family record-field, ticket-add is also in the recipe's data"):
        run_where_it_wins(config, log=lambda *a: None)
    assert not (tmp_path / "work").exists()


def test_diagnose_entries_give_a_task_that_is_no_benchmark_its_own_k_and_limit():
    from autodeco_cli.studies.where_it_wins_diagnostics import diagnose_settings, diagnose_tasks, traced_benchmarks

    config = WhereItWinsConfig(benchmarks=[{"name": "a", "k": 8, "limit": 100}])
    config.diagnose = {"tasks": ["a", {"name": "b", "k": 4, "limit": 50}]}
    assert diagnose_tasks(config) == ["a", "b"]
    assert diagnose_settings(config, "a") == (8, 100, True)  # the benchmark's run, reused
    assert diagnose_settings(config, "b") == (4, 50, False)
    assert traced_benchmarks(config) == {"a"}
    config.diagnose = {"tasks": [{"name": "a", "k": 4}]}  # its own k: a run of its own
    assert diagnose_settings(config, "a") == (4, 100, False)


def test_the_shipped_recipe_can_choose_its_suite_and_reaches_past_the_grid_edge():
    from autodeco_cli.studies.where_it_wins_diagnostics import check_diagnose_config, diagnose_tasks, traced_benchmarks
    from autodeco_cli.studies.where_it_wins_suite import check_suite_config, suite_families
    from autodeco_cli.training.recipes import build_config

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "where-it-wins-cpu.yaml"
    config = build_config(WhereItWinsConfig, recipe, [])
    check_suite_config(config)
    check_diagnose_config(config)
    assert suite_families(config) == ["static", "min-p", "top-n-sigma", "edt"]
    assert [spec["name"] for spec in config.unseen] == ["ticket-add", "record-field", "count-words"]
    assert traced_benchmarks(config) == {"rand-times", "rand-letter"}  # diagnose reuses their runs
    assert "rand-list" in diagnose_tasks(config)  # the pick's position varies: the shuffle-across test
    # the rand oracle grid and the suite's selection grid reach past the recorded oracle (T 1, p 0.8)
    for grid in ({"temperatures": config.temperatures, "top_ps": config.top_ps}, config.suite_grid):
        assert max(grid["temperatures"]) >= 1.5 and min(grid["top_ps"]) <= 0.5
