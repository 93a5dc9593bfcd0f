"""Grid search over static (T, p): the paper's oracle static baseline.

Every cell is `static(T, p)` scored by `evaluation.run_eval` with the run's k, seeds and limit,
into the same folder layout as `autodeco eval` (OUT/<slug>/samples_<task>.jsonl, results.json).
A cell therefore *is* an eval run: its samples equal `autodeco eval --decoding static -t T -p P`
with the same seeds (request seeds depend on (seed, task, question, sample), never on the
strategy or the batch), and either command resumes into the other's folders.

Modes
  full    every (T, p) of the two value lists.
  expert  the paper's two stages: tune T at p = 1.0, then tune p at the best T.
  cells   an explicit list of (T, p) pairs.

Families (`families.py`): the same sweep over min-p (T x min_p), top-n-sigma (T x n) or
edt (T0 x θ) cells, in full or cells mode; grid.json then names the family and its axes.

Cost. The model is loaded once per sweep and each stage's cells go to *one* run_eval call, so
their requests share batches. The engine orders requests by prompt and then by sample seed, so
one prompt's cells sit together: the prompt is prefilled once for all of them, and because
every cell draws with the same random numbers per sample, cells whose distributions agree (low
temperatures, confident steps) ride on one batch row until their tokens differ.

Resume. run_eval resumes sample by sample; the stage logic (best T, pruning, oracle) is a
deterministic function of the samples (seeded bootstrap, exact Wilcoxon), so re-running the same
command regenerates only missing samples and reproduces the same decisions and grid.json.

Oracle and ties. The oracle is the cell with the highest mean pass@1 among cells scored on every
question (ties broken by grid order). It is picked on the test questions themselves, so it is an
optimistic upper bound for any static setting, as in the paper. A cell is *tied* with it when the
paired per-question comparison (cell - oracle, `stats.paired_comparison`, bootstrap 95% CI) has
a CI that includes 0.

Early stopping (off by default). Cells run over growing prefixes of the question list (25%,
50%, 100%); samples of earlier rounds are reused by later ones (resume). After each round but the
last, a cell is pruned when a one-sided paired test over questions says it is worse than the
round's best cell (p < alpha, default 0.01): a Wilcoxon signed-rank test from scipy when scipy is
installed (the idea of Optuna's WilcoxonPruner), else a paired normal test on the per-question
differences (mean / `stats.standard_error`); with fewer than 6 questions on which the two cells
differ, nothing is pruned. Pruned cells and when they were pruned are recorded
in grid.json; they are never oracle or tied candidates.

This module runs the sweep and decides (scores, pruning, oracle, grid.json). The cells and their
parsing are `grid_cells`'; showing a grid is `grid_report`'s; the final comparison table
(`--then-eval`) is `comparison`'s. Their public names stay importable from here.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..core import stats
from ..core.errors import UserError
from ..engine.interface import Engine
from ..evaluation.question_scores import row_score
from ..evaluation.run_store import read_json_output, write_json
from ..evaluation.runner import check_budget, engine_info, prepare_task, resolve_tasks, run_eval
from ..evaluation.settings import EvalSettings
from ..tasks.aggregation import metric_name
from .cells import axes_and_cells, full_cells
from .families import Cell, Family, get_family
from .report import check_grid, plot_grid

GRID_FILE = "grid.json"
HEATMAP_FILE = "heatmap.png"
MODES = ("full", "expert", "cells")
DEFAULT_TEMPERATURES = get_family("static").default_temperatures  # "0.1:1.5:0.1"
DEFAULT_TOP_PS = get_family("static").default_values  # "0.1:1.0:0.1"
EARLY_STOP_ROUNDS = (0.25, 0.5, 1.0)
PRUNE_ALPHA = 0.01
MIN_PRUNE_PAIRS = 6  # questions where cell and best differ, needed before a cell can be pruned


def round_sizes(n_questions: int, fractions: Sequence[float] = EARLY_STOP_ROUNDS) -> list[int]:
    """Question-prefix sizes of the early-stopping rounds; always ends with every question."""
    sizes = sorted({max(1, min(n_questions, math.ceil(f * n_questions))) for f in fractions if f > 0} | {n_questions})
    return sizes


# ---------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------


@dataclass
class CellScore:
    pass1: float
    stderr: float | None
    per_question: dict[str, float]  # doc_id -> the task's question metric (pass@1 for most tasks)
    mean_tokens: float

    @property
    def n_questions(self) -> int:
        return len(self.per_question)

    @classmethod
    def from_results(cls, results: dict, task: str) -> "CellScore":
        # `pass1` holds the task's declared question metric ("score"); old files have only pass@1
        metrics = results["results"][task]
        per_question = {str(row["doc_id"]): row_score(row) for row in results["per_question"][task]}
        if "score" in metrics:
            return cls(
                float(metrics["score"]),
                metrics.get("score_stderr"),
                per_question,
                float(metrics.get("mean_tokens", 0.0)),
            )
        return cls(
            float(metrics["pass@1"]), metrics.get("pass@1_stderr"), per_question, float(metrics.get("mean_tokens", 0.0))
        )

    def restricted(self, doc_ids: Sequence[str]) -> "CellScore":
        """The same cell's scores on a subset of its questions (an early-stopping prefix)."""
        per_question = {d: self.per_question[d] for d in doc_ids}
        pass1, stderr = stats.mean_pass1([[v] for v in per_question.values()])
        return CellScore(pass1, stderr if math.isfinite(stderr) else None, per_question, self.mean_tokens)


def _rank_key(score: CellScore, index: int) -> tuple:
    # Rounded: equal counts of correct samples must tie exactly, whatever the float sum order.
    return (round(score.pass1, 12), -index)


def best_cell(cells: Sequence[Cell], scores: dict[Cell, CellScore], order: dict[Cell, int]) -> Cell:
    """Highest pass@1; ties go to the cell that comes first in the grid."""
    return max(cells, key=lambda c: _rank_key(scores[c], order[c]))


def _paired_arrays(a: dict[str, float], b: dict[str, float]) -> np.ndarray:
    keys = sorted(a.keys() & b.keys())
    return np.array([a[k] - b[k] for k in keys], dtype=float)


def prune_test_name() -> str:
    try:
        import scipy.stats  # noqa: F401
    except ImportError:
        return "paired normal test on per-question differences (stats.standard_error), one-sided"
    return "Wilcoxon signed-rank test (scipy.stats.wilcoxon, zeros dropped), one-sided"


def worse_p_value(cell: dict[str, float], best: dict[str, float]) -> float:
    """One-sided p-value for 'cell is worse than best', paired over their shared questions."""
    diff = _paired_arrays(cell, best)
    nonzero = diff[diff != 0]
    if nonzero.size < MIN_PRUNE_PAIRS:
        # Too few informative questions to call a cell clearly worse (an exact Wilcoxon test
        # cannot go below 1/64 with 6); the normal fallback would trust a noisy SE.
        return 1.0
    try:
        from scipy.stats import wilcoxon
    except ImportError:
        se = stats.standard_error(diff)
        mean = float(diff.mean())
        if not math.isfinite(se) or se == 0:
            return 0.0 if mean < 0 and math.isfinite(se) else 1.0
        return 0.5 * (1.0 + math.erf(mean / se / math.sqrt(2.0)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(wilcoxon(nonzero, alternative="less").pvalue)


# ---------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------


@dataclass
class SweepState:
    """What the sweep knows so far; grid.json's cells, stages and rounds are snapshots of it."""

    records: dict[Cell, dict] = field(default_factory=dict)  # each cell's grid.json record
    order: dict[Cell, int] = field(default_factory=dict)  # grid order: ties go to the earlier cell
    scores: dict[Cell, CellScore] = field(default_factory=dict)
    rounds: list[dict] = field(default_factory=list)  # early-stopping rounds and what they pruned
    stages: list[dict] = field(default_factory=list)

    def enter(self, cell: Cell, stage: str) -> dict:
        """The cell's record, created (in grid order) on its first stage."""
        if cell not in self.records:
            self.order[cell] = len(self.order)
            self.records[cell] = {
                **cell.to_dict(),
                "stages": [],
                "pass@1": None,
                "pass@1_stderr": None,
                "n_questions": 0,
                "pruned": None,
            }
        if stage not in self.records[cell]["stages"]:
            self.records[cell]["stages"].append(stage)
        return self.records[cell]

    def set_score(self, cell: Cell, score: CellScore) -> None:
        self.scores[cell] = score
        self.records[cell].update(
            {
                "pass@1": score.pass1,
                "pass@1_stderr": score.stderr,
                "n_questions": score.n_questions,
                "mean_tokens": score.mean_tokens,
            }
        )

    def ordered(self) -> list[Cell]:
        return sorted(self.records, key=self.order.get)

    def is_complete(self, cell: Cell, n_questions: int) -> bool:
        """Scored on every question and never pruned: an oracle candidate."""
        return (
            cell in self.scores
            and self.scores[cell].n_questions == n_questions
            and self.records[cell]["pruned"] is None
        )


@dataclass
class _Sweep:
    engine: Engine
    task: Any
    docs: list
    settings: EvalSettings  # every run_eval call's, the budget resolved to the task's own
    calls: dict  # run_eval's other keyword arguments shared by every call (progress, run_info)
    spec: GridSpec
    rounds: list[int]
    out_dir: Path
    log: Callable[[str], None]
    grid: dict  # the grid.json being built
    early: dict  # its early_stopping settings
    state: SweepState = field(default_factory=SweepState)

    def score(self, cells: Sequence[Cell], n_questions: int) -> dict[Cell, CellScore]:
        """One run_eval call for all the cells, on the first n questions."""
        # a prefix round is the same task on fewer questions: same sample files and seeds, so
        # later rounds and the full run reuse its samples; the full round is exactly `autodeco eval --limit`
        prefix = None if n_questions >= len(self.docs) else [str(doc.doc_id) for doc in self.docs[:n_questions]]
        ordered = sorted(set(cells))  # by (T, p): rows that finish alike share batches
        strategies = [c.strategy for c in ordered]
        results = run_eval(
            self.engine, [self.task], strategies, self.settings, out_dir=self.out_dir, doc_ids=prefix, **self.calls
        )
        return {cell: CellScore.from_results(results[cell.label], self.task.name) for cell in ordered}

    def snapshot(self, complete: bool = False) -> None:
        """Write grid.json as it stands (after each stage and round; a killed sweep resumes anyway)."""
        state = self.state
        pruned = [info["slug"] for info in state.records.values() if info["pruned"]]
        self.grid.update(
            {
                "stages": state.stages,
                "cells": [state.records[c] for c in state.ordered()],
                "early_stopping": {**self.early, "rounds": state.rounds, "pruned": pruned},
                "complete": complete,
            }
        )
        write_json(self.out_dir / GRID_FILE, self.grid)


def _run_stage(sweep: _Sweep, name: str, cells: list[Cell]) -> Cell:
    """Score a stage's cells (with pruning rounds if early stopping); returns the stage's best.

    Cells already scored on every question by an earlier stage (expert mode's (T*, 1.0)) are not
    re-run: in early-stopping rounds they take part through their scores on the round's prefix,
    and they are never pruned.
    """
    state, total = sweep.state, len(sweep.docs)
    for cell in cells:
        state.enter(cell, name)
    done = [c for c in cells if state.is_complete(c, total)]
    survivors = [c for c in cells if c not in done]
    sizes = sweep.rounds if sweep.spec.early_stop and survivors else [total]
    sizes = [n for n in sizes if n < total] + [total]
    for number, n_questions in enumerate(sizes, 1):
        round_scores: dict[Cell, CellScore] = {}
        if survivors:
            rounds = f" (round {number}/{len(sizes)})" if len(sizes) > 1 else ""
            sweep.log(f"stage {name}: {len(survivors)} cells on {n_questions} questions{rounds}")
            round_scores = sweep.score(survivors, n_questions)
        for cell, score in round_scores.items():
            state.set_score(cell, score)
        prefix = [str(doc.doc_id) for doc in sweep.docs[:n_questions]]
        round_scores.update({c: state.scores[c].restricted(prefix) for c in done})
        best = best_cell(survivors + done, round_scores, state.order)
        if n_questions == total:
            break
        pruned = _prune(sweep, name, number, n_questions, survivors, round_scores, best, len(survivors) + len(done))
        survivors = [c for c in survivors if c not in pruned]
        sweep.snapshot()
    sweep.snapshot()
    return best


def _prune(
    sweep: _Sweep,
    stage: str,
    number: int,
    n_questions: int,
    survivors: list[Cell],
    scores: dict[Cell, CellScore],
    best: Cell,
    n_cells: int,
) -> set[Cell]:
    """After a round but the last: the survivors clearly worse than the round's best, recorded."""
    pruned = []
    for cell in survivors:
        if cell == best:
            continue
        p_value = worse_p_value(scores[cell].per_question, scores[best].per_question)
        if p_value < sweep.spec.prune_alpha:
            pruned.append((cell, p_value))
    sweep.state.rounds.append(
        {
            "stage": stage,
            "round": number,
            "questions": n_questions,
            "cells": n_cells,
            "best": best.slug,
            "best_pass@1": scores[best].pass1,
            "pruned": [{"slug": c.slug, **c.axes, "pass@1": scores[c].pass1, "p_value": p} for c, p in pruned],
        }
    )
    for cell, p_value in pruned:
        where = {"stage": stage, "round": number, "questions": n_questions, "p_value": p_value, "against": best.slug}
        sweep.state.records[cell]["pruned"] = where
    if pruned:
        sweep.log(
            f"  pruned {len(pruned)} cells clearly worse than {best.label}: {', '.join(c.label for c, _ in pruned)}"
        )
    return {c for c, _ in pruned}


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise UserError(f"--mode {mode!r} is not a mode", f"use one of: {', '.join(MODES)}")


@dataclass(frozen=True)
class GridSpec:
    """Which cells a sweep runs (mode, family, axes or explicit cells) and how it decides."""

    mode: str = "full"  # one of MODES
    family: str | Family = "static"
    temperatures: Sequence[float] | None = None  # None: the family's default axes
    top_ps: Sequence[float] | None = None  # static's second axis
    values: Sequence[float] | None = None  # another family's second axis (the role top_ps plays for static)
    cells: Sequence[Cell | tuple[float, float]] | None = None  # mode "cells"
    early_stop: bool = False
    early_stop_rounds: Sequence[float] = EARLY_STOP_ROUNDS
    prune_alpha: float = PRUNE_ALPHA
    n_boot: int = 10_000  # bootstrap resamples of the tie rule


def run_grid(
    engine: Engine,
    task: str | Any,
    spec: GridSpec = GridSpec(),
    settings: EvalSettings | None = None,
    *,
    out_dir: str | Path,
    progress: Any = None,
    run_info: dict | None = None,
    log: Callable[[str], None] | None = None,
    plot: bool = True,
) -> dict:
    """Run a grid of static cells on one task; writes OUT/grid.json (+ heatmap.png) and returns it.

    `task` is a registry name or a task object (anything `run_eval` accepts); every cell samples
    as `run_eval` with `settings`. See the module docstring for the modes, the oracle/tie rule,
    resume and early stopping. Another `spec.family` (grid_families: min-p, top-n-sigma, edt)
    sweeps T x its own parameter (`spec.values`), in full or cells mode. Without `settings`, k=4
    samples per question with seed 0.
    """
    settings = EvalSettings(k=4) if settings is None else settings
    check_mode(spec.mode)
    if not 0.0 < spec.prune_alpha < 1.0:
        raise UserError("the pruning alpha must lie in (0, 1)")
    task_obj = one_task(task)
    family = get_family(spec.family) if isinstance(spec.family, str) else spec.family
    temperatures, values, cell_list = axes_and_cells(
        family, spec.mode, spec.temperatures, spec.top_ps if spec.values is None else spec.values, spec.cells
    )
    run = prepare_task(task_obj, settings.limit, settings.max_new_tokens, settings.data_dir, settings.split)
    check_budget(engine, task_obj, run.docs, run.max_new_tokens, settings.chat)  # all questions, not a round's
    settings = dataclasses.replace(settings, seeds=[int(s) for s in settings.seeds], max_new_tokens=run.max_new_tokens)
    grid = _grid_record(engine, task_obj, run, settings, spec.mode, run_info)
    if not family.is_static:  # static grids stay as they were (no family record means static)
        grid["family"] = family.describe()
    if spec.mode != "cells":
        grid.update({"temperatures": temperatures, family.axis_values_key: values})
    rounds = round_sizes(len(run.docs), spec.early_stop_rounds)
    early = _early_stopping(spec.early_stop, rounds if spec.early_stop else [len(run.docs)], spec.prune_alpha)
    calls = {"progress": progress, "run_info": run_info}
    sweep = _Sweep(
        engine, task_obj, run.docs, settings, calls, spec, rounds, Path(out_dir), log or (lambda _: None), grid, early
    )
    _run_stages(sweep, spec.mode, family, temperatures, values, cell_list)
    _select_oracle(grid, sweep.state, spec.n_boot)
    sweep.snapshot(complete=True)
    if plot:
        grid["heatmap"] = str(plot_grid(grid, sweep.out_dir / HEATMAP_FILE))
        write_json(sweep.out_dir / GRID_FILE, grid)
    return grid


def _grid_record(engine: Engine, task: Any, run: Any, settings: EvalSettings, mode: str, run_info: dict | None) -> dict:
    """grid.json's header: the benchmark, the sample budget and what generated the samples."""
    return {
        "benchmark": task.name,
        "mode": mode,
        "split": settings.split,
        # cells' "pass@1" fields hold this question metric (the task's own; pass@1 for most)
        "metric": metric_name(task),
        "model": (run_info or {}).get("model") or engine.lm.name,
        "k": settings.k,
        "seeds": settings.seeds,
        "limit": settings.limit,
        "n_questions": len(run.docs),
        "samples_per_question": settings.k * len(settings.seeds),
        "max_new_tokens": run.max_new_tokens,
        "batch_size": settings.batch_size,
        "chat": settings.chat,
        **engine_info(engine),
    }


def one_task(task: str | Any) -> Any:
    """The one task a grid tunes (grid-search checks it before the model loads)."""
    tasks = resolve_tasks(task if isinstance(task, str) else [task])
    if len(tasks) != 1:
        raise UserError(
            f"--benchmark {task!r} names {len(tasks)} tasks",
            "grid-search tunes one benchmark at a time: run it once per task",
        )
    return tasks[0]


def _early_stopping(enabled: bool, rounds: list[int], alpha: float) -> dict:
    """grid.json's record of the early-stopping settings (its rounds and pruned cells come later)."""
    return {
        "enabled": enabled,
        "rounds_questions": rounds,
        "test": prune_test_name() if enabled else None,
        "alpha": alpha if enabled else None,
        "rule": "after each round but the last, prune a cell whose one-sided paired test against the round's best cell "
        "has p < alpha"
        if enabled
        else None,
    }


def _run_stages(
    sweep: _Sweep, mode: str, family: Family, temperatures: list[float], values: list[float], cell_list: list | None
) -> None:
    """The mode's stages in order, each recorded in grid.json's `stages`."""
    stages = sweep.state.stages
    if mode in ("full", "cells"):
        stage_cells = full_cells(temperatures, values, family) if mode == "full" else cell_list
        best = _run_stage(sweep, mode, stage_cells)
        stages.append({"name": mode, "cells": [c.slug for c in stage_cells], "best": best.slug})
        return
    first = [Cell(t, 1.0) for t in temperatures]
    best_t = _run_stage(sweep, "temperature", first)
    stages.append(
        {
            "name": "temperature",
            "fixed": {"top_p": 1.0},
            "cells": [c.slug for c in first],
            "best": best_t.slug,
            "best_temperature": best_t.temperature,
        }
    )
    second = [Cell(best_t.temperature, p) for p in values]
    best = _run_stage(sweep, "top_p", second)
    stages.append(
        {
            "name": "top_p",
            "fixed": {"temperature": best_t.temperature},
            "cells": [c.slug for c in second],
            "best": best.slug,
        }
    )


def _select_oracle(grid: dict, state: SweepState, n_boot: int) -> None:
    """The oracle among complete cells, and each one's paired comparison with it (ties)."""
    n = grid["n_questions"]
    complete = [c for c in state.ordered() if state.is_complete(c, n)]
    scores = state.scores
    oracle = best_cell(complete, scores, state.order)
    ties = []
    for cell in complete:
        info = state.records[cell]
        if cell == oracle:
            info.update(
                {"oracle": True, "tied": True, "vs_oracle": {"delta": 0.0, "se": 0.0, "ci_low": 0.0, "ci_high": 0.0}}
            )
            continue
        c = stats.paired_comparison(scores[cell].per_question, scores[oracle].per_question, n_boot=n_boot, seed=0)
        tied = c.ci_low <= 0.0 <= c.ci_high
        se = c.se if math.isfinite(c.se) else None
        info.update(
            {
                "oracle": False,
                "tied": tied,
                "vs_oracle": {"delta": c.mean_diff, "se": se, "ci_low": c.ci_low, "ci_high": c.ci_high},
            }
        )
        if tied:
            ties.append(
                {
                    **cell.to_dict(),
                    "pass@1": scores[cell].pass1,
                    "delta": c.mean_diff,
                    "se": se,
                    "ci_low": c.ci_low,
                    "ci_high": c.ci_high,
                }
            )
    grid["oracle"] = {
        **oracle.to_dict(),
        "pass@1": scores[oracle].pass1,
        "pass@1_stderr": scores[oracle].stderr,
        "n_questions": n,
    }
    grid["ties"] = ties
    grid["tie_rule"] = (
        f"paired per-question {grid.get('metric', 'pass@1')} (cell - oracle) over all {n} questions; "
        f"tied when its bootstrap 95% CI ({n_boot} resamples, seed 0) includes 0"
    )


def load_grid(path: str | Path) -> dict:
    """grid.json, or the output folder that holds it."""
    path, grid = read_json_output(path, GRID_FILE, "grid file", "run `autodeco grid-search` first")
    if isinstance(grid, dict) and (grid.get("complete") is not True or "oracle" not in grid):
        raise UserError(f"{path} is from an unfinished grid search", "re-run the same grid-search command to finish it")
    return check_grid(grid, str(path))
