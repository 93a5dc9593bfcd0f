"""`autodeco reproduce` end to end on the tiny random Llama: on-policy data, heads, the expert grid
and comparison, figures and the report; a run killed in the grid stage resumes where it stopped
and ends where an uninterrupted run ends.

The tiny model cannot do arithmetic, so the benchmark is a task defined here (served through the
registry): every finished, non-empty answer to a training question is accepted (so make-data
keeps the samples that end at a stop string), and test questions are scored by a coin flip on the text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from autodeco_cli.studies.reproduce import ReproduceConfig, run_reproduce
from autodeco_cli.tasks.types import Doc, Score
from conftest import Killed

pytestmark = [
    pytest.mark.usefixtures("torch_single_thread"),
    # the trace figure labels tokens of a random model, control characters included
    pytest.mark.filterwarnings("ignore:Glyph .* missing from font"),
]

WORDS = ["cat", "dog", "fox", "owl", "bee", "ant", "elk", "yak", "emu", "hen", "ram", "cow"]


@dataclass(frozen=True)
class StopTask:
    name: str = "stoptask"
    description: str = "training answers accepted when they finish; test answers a coin flip"
    max_new_tokens: int = 6
    options: dict = field(default_factory=lambda: {"stop": ["e", "o", "a", " "]})

    def load_docs(self, split="test", limit=None, data_dir=None):
        count = 16 if split == "train" else 6
        docs = [
            Doc(f"{split}/{i}", f"Tell me about the {WORDS[i % len(WORDS)]} number {i}.", split, {})
            for i in range(count)
        ]
        return docs[:limit] if limit else docs

    def score(self, doc, text):
        if doc.gold == "train":
            return Score(bool(text.strip()), "ok", {})
        return Score(len(text) % 2 == 0, str(len(text) % 2), {})


def _serve(patch: pytest.MonkeyPatch) -> StopTask:
    """The registry serves StopTask (make_data binds the registry's functions at import)."""
    from autodeco_cli.tasks import registry
    from autodeco_cli.training import on_policy_data as make_data

    task = StopTask()

    def get_task(name):
        assert name == task.name, name
        return task

    for module in (registry, make_data):
        patch.setattr(module, "get_task", get_task)
        patch.setattr(module, "expand", lambda names: [n.strip() for n in str(names).split(",")])
    return task


@pytest.fixture()
def stop_task(monkeypatch):
    return _serve(monkeypatch)


def _config(tiny_model_dir, folder) -> ReproduceConfig:
    return ReproduceConfig(
        model=str(tiny_model_dir),
        workdir=str(folder / "work"),
        report=str(folder / "reports" / "reproduce.md"),
        data_tasks="stoptask",
        data_limit=16,
        data_k=2,
        data_max_new_tokens=6,
        train={
            "learning_rate": 1e-3,
            "epochs": 1,
            "micro_batch_size": 4,
            "gradient_accumulation": 1,
            "head_width": 32,
            "max_length": 64,
            "threads": 1,
        },
        benchmarks=["stoptask"],
        k=2,
        limit=None,
        batch_size=8,
        temperatures=[0.5, 1.0],
        top_ps=[0.9, 1.0],
        distribution_questions=3,
        threads=None,
    )


def _outcome(folder) -> dict:
    """What a run leaves behind that must not depend on whether it was interrupted."""
    work = folder / "work"

    def read(path):  # the run's own folder named alike, wherever it is
        return json.loads(path.read_text().replace(str(folder), "RUN"))

    grid = read(work / "eval" / "stoptask" / "grid.json")
    comparison = read(work / "eval" / "stoptask" / "comparison.json")
    samples = {
        p.relative_to(work).as_posix(): sorted(p.read_text().splitlines())
        for p in sorted((work / "eval").rglob("samples_*.jsonl"))
    }
    return {
        "data": (work / "on_policy.jsonl").read_text(),
        "heads": (work / "heads" / "autodeco_heads.safetensors").read_bytes(),
        "grid": {k: v for k, v in grid.items() if k != "heatmap"},
        "comparison": comparison,
        "samples": samples,
    }


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tmp_path_factory):
    """One uninterrupted reproduce run: (its folder, the report path)."""
    with pytest.MonkeyPatch.context() as patch:
        _serve(patch)
        folder = tmp_path_factory.mktemp("reproduce")
        return folder, run_reproduce(_config(tiny_model_dir, folder), log=lambda *a: None)


def test_reproduce_writes_the_report_and_figures(uninterrupted):
    folder, report = uninterrupted
    text = report.read_text(encoding="utf-8")
    assert report == folder / "reports" / "reproduce.md"
    kept = len((folder / "work" / "on_policy.jsonl").read_text().splitlines())
    assert kept >= 8 and f"**{kept} trajectories kept**" in text
    rows = json.loads((folder / "work" / "eval" / "stoptask" / "comparison.json").read_text())["rows"]
    names = [row["name"] for row in rows]
    assert {"greedy", "default", "oracle", "autodeco", "mean-shift"} <= set(names)
    for name in names:  # one table row per comparison row
        assert sum(line.startswith(f"| {name} |") for line in text.splitlines()) == 1, name
    assert "**stoptask**: autodeco" in text and "## Run time" in text
    for figure in ("trace.png", "oracle_stoptask.png", "distribution.png"):
        assert (folder / "reports" / "figures" / figure).stat().st_size > 0, figure
        assert f"figures/{figure}" in text
    timings = json.loads((folder / "work" / "timings.json").read_text())
    assert {"make-data", "train-heads", "grid stoptask", "comparison stoptask", "figures"} <= set(timings)


def test_killed_run_resumes_each_stage_and_ends_where_an_uninterrupted_one_does(
    uninterrupted, stop_task, tiny_model_dir, tmp_path, monkeypatch
):
    from autodeco_cli.engine.generation import GenerationEngine
    from autodeco_cli.training import on_policy_data as make_data
    from autodeco_cli.training import trainer as training

    config = _config(tiny_model_dir, tmp_path)
    original = GenerationEngine.generate
    batches = {"n": 0}

    def dies_in_the_grid(self, requests, **kwargs):
        done = kwargs.get("on_batch_done")
        if done is None:  # make-data and figures hand no callback
            return original(self, requests, **kwargs)

        def on_batch_done(batch):
            done(batch)
            batches["n"] += 1
            if batches["n"] >= 3:
                raise Killed()

        return original(self, requests, **{**kwargs, "on_batch_done": on_batch_done})

    with monkeypatch.context() as patch:
        patch.setattr(GenerationEngine, "generate", dies_in_the_grid)
        with pytest.raises(Killed):
            run_reproduce(config, log=lambda *a: None)
    work = tmp_path / "work"
    assert (work / "heads" / "autodeco_heads.safetensors").is_file() and not (
        work / "eval" / "stoptask" / "grid.json"
    ).exists()
    assert not (tmp_path / "reports" / "reproduce.md").exists()

    # the resumed run samples no problem again and trains no heads again
    data_reports = []
    real_make = make_data.make_on_policy_data
    monkeypatch.setattr(
        make_data, "make_on_policy_data", lambda *a, **k: data_reports.append(real_make(*a, **k)) or data_reports[-1]
    )

    class NoTraining:
        def __init__(self, *args, **kwargs):
            raise AssertionError("the resumed run trained the heads again")

    monkeypatch.setattr(training, "HeadTrainer", NoTraining)
    report = run_reproduce(config, log=lambda *a: None)
    assert report.is_file()
    assert data_reports[0].problems == 0 and data_reports[0].skipped_done == 16
    assert _outcome(tmp_path) == _outcome(uninterrupted[0])
