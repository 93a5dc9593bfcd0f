"""The where-it-wins suite: one decoding setting for all traffic, scored on a mixed suite.

A deployed model gets one setting for every request, so besides the per-benchmark tables the
study scores rows that are one choice for the whole suite: the study's benchmarks plus the unseen
families (config `unseen`), which no training data and no selection step uses. Every row is
scored on each task's test questions, at that task's k and limit (so the benchmark stage's runs
are read back, not drawn again):

- the chosen heads, and their mean-shift: per task, one static (T, p) at the heads' mean T̂/P̂ on
  that task's test questions (the heads' own output; no score is looked at);
- the best single static cell: the one cell of `suite_grid` with the best suite score on the
  benchmarks' validation grids (`selection_limit` questions each; grid/suite_selection);
- the best single min-p / top-nσ / EDT cell, chosen the same way among the cells that every
  benchmark's validation grid of that family holds (the grids the benchmark stage searched);
- the per-task oracle: each task's best static cell on its own test questions (its test grid and
  the single static cell), tuned on what it is scored on: an upper bound, never the baseline;
- greedy and default (T=1, p=1).

The unseen families take part in no choice: on them the heads and the single cells are equally
untuned. Suite score = mean over tasks ± SE; Δ = heads − row, paired per question within each task,
with the SE and stratified bootstrap CI of evaluation/suite.py; over all tasks and over the unseen
families alone. Writes OUT/suite.json, which the report reads.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UserError
from ..evaluation.settings import EvalSettings
from ..tasks import registry
from .study_runs import mean_shift, run_strategies

SUITE_FILE = "suite.json"
ORACLE_ROW = "per-task oracle (test-tuned)"
STATIC_SELECTION_DIR = "suite-select-static"


@dataclass(frozen=True)
class SuiteTask:
    name: str
    k: int
    limit: int | None
    unseen: bool
    spec: dict


def suite_tasks(config) -> list[SuiteTask]:
    """The study's benchmarks, then the unseen families, each with its own k and limit."""
    tasks = [SuiteTask(s["name"], int(s["k"]), s.get("limit"), False, s) for s in config.benchmarks]
    return tasks + [SuiteTask(s["name"], int(s["k"]), s.get("limit"), True, s) for s in config.unseen]


def single_row(family: str) -> str:
    return f"single {family}"


def row_names(chosen: str, families: list[str]) -> list[str]:
    return [chosen, *(single_row(f) for f in families), ORACLE_ROW, "greedy", "default", f"mean-shift of {chosen}"]


def suite_families(config) -> list[str]:
    """static, then each adaptive family that every benchmark searched on validation."""
    adaptive = [set(spec.get("adaptive", config.adaptive)) for spec in config.benchmarks]
    shared = set.intersection(*adaptive) if adaptive else set()
    return ["static", *(f for f in config.adaptive if f in shared)]


def check_suite_config(config) -> None:
    """Refuse, before any model loads, a suite whose single cells could not be chosen."""
    if not config.suite_grid.get("temperatures") or not config.suite_grid.get("top_ps"):
        raise UserError("suite_grid needs temperatures and top_ps", "give the static cells the suite chooses among")
    names = [t.name for t in suite_tasks(config)]
    if len(set(names)) != len(names):
        raise UserError(f"the suite names a task twice: {', '.join(names)}", "an unseen task is not a benchmark")
    # registry.expand looked up per call, not bound at import: the study's tests serve their own tasks through it
    trained = {t for entry in config.data for t in registry.expand(entry["tasks"])}
    trained |= set(registry.expand(config.reward["tasks"]))
    seen = sorted(trained & {spec["name"] for spec in config.unseen})
    if seen:
        raise UserError(
            f"unseen family {', '.join(seen)} is also in the recipe's data or reward tasks",
            "an unseen family must take no part in training: drop it from `unseen` or from the training tasks",
        )
    for family in suite_families(config)[1:]:
        grids = [spec.get("adaptive", config.adaptive)[family] for spec in config.benchmarks]
        cells = [{(t, v) for t in g["temperatures"] for v in g["values"]} for g in grids]
        if not set.intersection(*cells):
            raise UserError(
                f"the benchmarks' {family} validation grids share no cell, so no single {family} cell can be chosen",
                "give every benchmark's adaptive grid at least one (temperature, value) cell in common",
            )


# ---- selection, on the benchmarks' validation questions ----------------------------------------


def select_single_cells(lm, config, eval_dir: Path, log) -> dict[str, dict]:
    """family -> the one cell for every task (its strategy and grid_selection's choice), chosen on
    the benchmarks' validation grids: `suite_grid` for static (searched here), the benchmark
    stage's grids for the adaptive families. The unseen families take no part."""
    from ..engine.generation import GenerationEngine
    from ..grid.families import cell_from_record
    from ..grid.search import GridSpec, load_grid, run_grid
    from ..grid.suite_selection import best_single_setting

    grids: dict[str, list[dict]] = {family: [] for family in suite_families(config)}
    spec = GridSpec(mode="full", temperatures=config.suite_grid["temperatures"], top_ps=config.suite_grid["top_ps"])
    engine = GenerationEngine(lm)
    try:
        for bench in config.benchmarks:
            name, folder = bench["name"], eval_dir / bench["name"]
            settings = EvalSettings(
                k=int(bench["k"]),
                seeds=[0],
                limit=config.selection_limit,
                batch_size=config.batch_size,
                split="validation",
            )
            grids["static"].append(
                run_grid(engine, name, spec, settings, out_dir=folder / STATIC_SELECTION_DIR, log=log, plot=False)
            )
            for family in list(grids)[1:]:
                grids[family].append(load_grid(folder / f"select-{family}" / "grid.json"))
    finally:
        engine.close()
    singles = {}
    for family, family_grids in grids.items():
        choice = best_single_setting(family_grids, family)
        singles[family] = {
            "strategy": cell_from_record(family_grids[0], choice.record).strategy,
            "label": choice.label,
            "validation_suite_score": choice.suite_score,
            "validation_per_task": choice.per_task,
            "candidates": choice.candidates,
        }
    return singles


# ---- one task's rows, on its test questions ----------------------------------------------------


def suite_task_runs(lm, config, task: SuiteTask, chosen: str, heads_dir: Path, singles: dict, eval_dir: Path, log):
    """{row: (results path, results)} and {row: its setting on this task} for one suite task."""
    from ..core.decoding import make_strategy, strategy_slug
    from ..evaluation.paired_table import question_metric
    from ..evaluation.run_store import RESULTS_FILE

    folder = eval_dir / task.name
    common = EvalSettings(k=task.k, seeds=[0], limit=task.limit, batch_size=config.batch_size)
    grid = _test_grid(lm, config, task, folder / "base", common, log)
    fixed = {"greedy": make_strategy("greedy"), "default": make_strategy("static", 1.0, 1.0)}
    fixed.update({single_row(family): single["strategy"] for family, single in singles.items()})
    oracle = _grid_oracle(grid)
    unique = {s.label: s for s in [*fixed.values(), oracle]}  # a cell may be two rows (default, oracle)
    base = run_strategies(lm, task.name, list(unique.values()), folder / "base", common)

    def row(strategy, parent: Path, results: dict) -> tuple[Path, dict]:
        return parent / strategy_slug(strategy) / RESULTS_FILE, results

    rows = {name: row(s, folder / "base", base[s.label]) for name, s in fixed.items()}
    autodeco = make_strategy("autodeco")
    auto = run_strategies(lm, task.name, [autodeco], folder / chosen, common, heads_dir=heads_dir)[autodeco.label]
    shift, shift_results = mean_shift(lm, task.name, auto, folder / chosen, common)
    rows[chosen] = row(autodeco, folder / chosen, auto)
    rows[f"mean-shift of {chosen}"] = row(shift, folder / chosen, shift_results)
    # the oracle is the best static cell on these test questions: the single static cell is one too
    single_static = fixed[single_row("static")]
    best = max(
        (oracle, single_static), key=lambda s: round(question_metric(base[s.label], task.name)[0], 12)
    )  # max keeps the grid's oracle on a tie
    rows[ORACLE_ROW] = row(best, folder / "base", base[best.label])
    settings = {
        ORACLE_ROW: f"{_cell_text(best)} (best of {len(grid['cells'])} grid cells and the single static cell)",
        f"mean-shift of {chosen}": _cell_text(shift, digits=3),
    }
    return {"rows": rows, "settings": settings}


def _test_grid(lm, config, task: SuiteTask, out: Path, common: EvalSettings, log) -> dict:
    """The task's static grid on its test questions: the benchmark stage's, or (unseen) searched
    here over the task's own cells, else `suite_grid`'s."""
    from ..engine.generation import GenerationEngine
    from ..grid.search import GridSpec, load_grid, run_grid

    if not task.unseen:
        return load_grid(out / "grid.json")
    temperatures = task.spec.get("temperatures", config.suite_grid["temperatures"])
    spec = GridSpec(mode="full", temperatures=temperatures, top_ps=task.spec.get("top_ps", config.suite_grid["top_ps"]))
    engine = GenerationEngine(lm)
    try:
        return run_grid(engine, task.name, spec, common, out_dir=out, log=log, plot=False)
    finally:
        engine.close()


def _grid_oracle(grid: dict):
    from ..grid.families import cell_from_record
    from ..grid.suite_selection import per_task_oracles

    (record,) = per_task_oracles([grid]).values()
    return cell_from_record(grid, record).strategy


def _cell_text(strategy, digits: int | None = None) -> str:
    if digits is None:
        return f"T {strategy.temperature:g}, p {strategy.top_p:g}"
    return f"T {strategy.temperature:.{digits}f}, p {strategy.top_p:.{digits}f}"


# ---- the tables ----------------------------------------------------------------------------------


def suite_summary(config, chosen: str, runs: dict[str, dict], singles: dict, path: Path, n_boot: int = 10_000) -> dict:
    """The suite table over all tasks and over the unseen families alone, written to `path`."""
    from ..evaluation.suite_report import SuiteRow, build_suite_table

    tasks = suite_tasks(config)
    names = row_names(chosen, list(singles))
    rows = [SuiteRow(name, {t.name: runs[t.name]["rows"][name] for t in tasks}) for name in names]
    table = build_suite_table(rows, reference=chosen, n_boot=n_boot)
    unseen = [t.name for t in tasks if t.unseen]
    unseen_table = build_suite_table(rows, reference=chosen, tasks=unseen, n_boot=n_boot) if unseen else None
    summary = {
        "heads": chosen,
        "tasks": table.tasks,
        "unseen": unseen,
        "metrics": table.metrics,
        "n_questions": table.n_questions,
        "k": {t.name: t.k for t in tasks},
        "selection_limit": config.selection_limit,
        "benchmarks": [b["name"] for b in config.benchmarks],
        "rows": _lines(table),
        "unseen_rows": _lines(unseen_table) if unseen_table else [],
        "settings": _row_settings(chosen, singles, runs, config),
        "singles": {f: {k: v for k, v in s.items() if k != "strategy"} for f, s in singles.items()},
    }
    summary["unseen_verdict"] = unseen_verdict(summary) if unseen else None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return summary


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _negated(value: float) -> float:
    return 0.0 - value  # not -value: a tie reads +0.000, not -0.000


def _lines(table) -> list[dict]:
    """Each row's suite score and, but for the heads, Δ = heads − row (the table pairs row − heads)."""
    out = []
    for line in table.lines:
        entry = {
            "name": line.name,
            "score": line.score.score,
            "se": _finite(line.score.se),
            "per_task": line.score.per_task,
        }
        c = line.vs_reference
        if c is not None:
            entry["heads_minus_row"] = {
                "delta": _negated(c.delta),
                "se": _finite(c.se),
                "ci": [_negated(c.ci_high), _negated(c.ci_low)],
                "per_task_delta": {t: _negated(d) for t, d in c.per_task_delta.items()},
                "per_task_se": {t: _finite(se) for t, se in c.per_task_se.items()},
            }
        out.append(entry)
    return out


def _row_settings(chosen: str, singles: dict, runs: dict[str, dict], config) -> dict[str, str]:
    n = len(config.benchmarks)
    settings = {
        chosen: "the chosen heads (chosen on validation)",
        "greedy": "greedy",
        "default": "T 1, p 1",
        ORACLE_ROW: "; ".join(f"{task}: {r['settings'][ORACLE_ROW]}" for task, r in runs.items()),
        f"mean-shift of {chosen}": "per task, the heads' mean T̂/P̂ there: "
        + "; ".join(f"{task}: {r['settings'][f'mean-shift of {chosen}']}" for task, r in runs.items()),
    }
    for family, single in singles.items():
        settings[single_row(family)] = (
            f"{single['label']} (best suite score of {single['candidates']} cells on {config.selection_limit} "
            f"validation questions × {n} benchmarks)"
        )
    return settings


def unseen_verdict(summary: dict) -> str:
    """Whether the heads lose to the best single static cell on the unseen families (CI rule)."""
    from ..evaluation.paired_table import fmt, verdict

    row = next(r for r in summary["unseen_rows"] if r["name"] == single_row("static"))
    test = row["heads_minus_row"]
    outcome = verdict(test)
    words = {
        "worse": "lose to",
        "tied": "do not lose to (and do not beat)",
        "better": "beat",
    }[outcome]
    low, high = test["ci"]
    return (
        f"On the unseen families ({', '.join(summary['unseen'])}) the heads {words} the best single static cell: "
        f"Δ = heads − cell {fmt(test['delta'], signed=True)} ± {fmt(test['se'])} "
        f"(95% CI {fmt(low, signed=True)}, {fmt(high, signed=True)})"
    )
