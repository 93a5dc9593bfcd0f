"""The where-it-wins diagnostics: `autodeco diagnose` (evaluation/diagnose.py) on the chosen heads.

Per task (config `diagnose`): autodeco against its shuffled selves (shuffle-within, shuffle-across)
and its mean-shift, all with the same request seeds and paired per question. The per-token claim
holds only where the heads beat both shuffled selves with a 95% CI that excludes 0.

When the task is a benchmark and diagnose keeps its k and limit (the default), diagnose runs in
that benchmark's folder of the chosen heads: the benchmark stage kept the per-token traces of that
run, so the autodeco and mean-shift rows are read back and only the shuffled rows are drawn. A
folder written without traces (by an older version) is left alone: diagnose then runs in its own.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..core.errors import UserError
from ..evaluation.settings import EvalSettings


def diagnose_tasks(config) -> list[str]:
    """The diagnose tasks' names; an entry is a name or {name, k, limit} (a task that is no benchmark)."""
    return [entry if isinstance(entry, str) else str(entry["name"]) for entry in config.diagnose.get("tasks", [])]


def diagnose_settings(config, name: str) -> tuple[int, int | None, bool]:
    """(k, limit, whether that is the benchmark's own run) for a diagnose task: its entry's own k
    and limit, else diagnose's, else the benchmark's."""
    spec = next((b for b in config.benchmarks if b["name"] == name), None)
    entry = next((e for e in config.diagnose.get("tasks", []) if isinstance(e, dict) and e.get("name") == name), {})
    k, limit = entry.get("k", config.diagnose.get("k")), entry.get("limit", config.diagnose.get("limit"))
    if spec is None and (k is None or limit is None):
        raise UserError(
            f"diagnose task {name} is not a benchmark of the study, so it has no k and limit to reuse",
            "give diagnose its own k and limit, or name a benchmark",
        )
    k = int(spec["k"]) if k is None else int(k)
    limit = spec.get("limit") if limit is None else int(limit)
    return k, limit, spec is not None and k == int(spec["k"]) and limit == spec.get("limit")


def traced_benchmarks(config) -> set[str]:
    """The benchmarks whose run of the chosen heads keeps its traces for diagnose to reuse."""
    return {name for name in diagnose_tasks(config) if diagnose_settings(config, name)[2]}


def check_diagnose_config(config) -> None:
    for entry in config.diagnose.get("tasks", []):
        if not isinstance(entry, str) and not (isinstance(entry, dict) and isinstance(entry.get("name"), str)):
            raise UserError(
                f"diagnose task entry {entry!r} is neither a task name nor a mapping with a name",
                "write a task name, or {name: TASK, k: K, limit: N}",
            )
    for name in diagnose_tasks(config):
        diagnose_settings(config, name)


def run_diagnostics(lm, config, name: str, chosen: str, heads_dir: Path, work: Path, figures: Path) -> dict:
    """Run (or resume) diagnose on one task; returns its report, with the figure copied beside the
    study's figures as `diagnose_<task>.png`."""
    from ..core.decoding import make_strategy, strategy_slug
    from ..core.heads import load_heads
    from ..engine.generation import GenerationEngine
    from ..evaluation.diagnose import FIGURE_FILE, DiagnoseOptions, run_diagnose
    from ..evaluation.run_store import samples_path
    from ..evaluation.runner import resolve_tasks

    k, limit, reuse = diagnose_settings(config, name)
    out = work / "eval" / name / chosen
    if not (reuse and _has_traces(samples_path(out, strategy_slug(make_strategy("autodeco")), name))):
        out = work / "diagnose" / name
    settings = EvalSettings(k=k, seeds=[0], limit=limit, batch_size=config.batch_size, split="test")
    options = DiagnoseOptions(
        shuffle_seed=int(config.diagnose.get("shuffle_seed", 0)),
        replay=bool(config.diagnose.get("replay", False)),
        n_boot=int(config.diagnose.get("n_boot", 10_000)),
    )
    (task,) = resolve_tasks(name)
    engine = GenerationEngine(lm, load_heads(heads_dir, expected_hidden_size=lm.hidden_size))
    try:
        report = run_diagnose(engine, task, settings, options, out_dir=out, run_info={"heads": str(heads_dir)})
    finally:
        engine.close()
    figures.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / FIGURE_FILE, figures / f"diagnose_{name}.png")
    report["folder"] = str(out)
    return report


def _has_traces(samples: Path) -> bool:
    """True when the samples file is absent (its run is still to come, with traces) or its first
    record holds a trace."""
    if not samples.is_file():
        return True
    with samples.open(encoding="utf-8") as handle:
        first = handle.readline()
    return not first.strip() or "trace" in json.loads(first)
