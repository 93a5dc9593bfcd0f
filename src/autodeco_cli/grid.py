"""Grid search over static (T, p): the paper's oracle static baseline, and the final comparison.

Every cell is `static(T, p)` scored by `evaluation.run_eval` with the run's k, seeds and limit,
into the same folder layout as `autodeco eval` (OUT/<slug>/samples_<task>.jsonl, results.json).
A cell therefore *is* an eval run: its samples equal `autodeco eval --decoding static -t T -p P`
with the same seeds (request seeds depend on (seed, task, question, sample), never on the
strategy or the batch), and either command resumes into the other's folders.

Modes
  full    every (T, p) of the two value lists.
  expert  the paper's two stages: tune T at p = 1.0, then tune p at the best T.
  cells   an explicit list of (T, p) pairs.

Families (`grid_families.py`): the same sweep over min-p (T x min_p), top-n-sigma (T x n) or
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
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import stats
from .decoding import MAX_STATIC_TEMPERATURE, DecodingStrategy, make_strategy
from .errors import UserError
from .grid_families import AXIS_LIMITS, Family, FamilyCell, cell_from_record, get_family, grid_family, strategy_params
from .evaluation import prepare_task, read_json_output, resolve_tasks, run_eval, strategy_slug
from .benchmarks.aggregation import metric_name
from .question_scores import row_score
from .study_table import paired as paired_delta

GRID_FILE = "grid.json"
HEATMAP_FILE = "heatmap.png"
COMPARISON_FILE = "comparison.json"
COMPARISON_MD = "comparison.md"
MODES = ("full", "expert", "cells")
DEFAULT_TEMPERATURES = get_family("static").default_temperatures  # "0.1:1.5:0.1"
DEFAULT_TOP_PS = get_family("static").default_values  # "0.1:1.0:0.1"
EARLY_STOP_ROUNDS = (0.25, 0.5, 1.0)
PRUNE_ALPHA = 0.01
MIN_PRUNE_PAIRS = 6  # questions where cell and best differ, needed before a cell can be pruned
DIGITS = 4  # grid values are rounded to this many decimals (labels and folders stay stable)


# ---------------------------------------------------------------------------
# Cells and parsing
# ---------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Cell:
    temperature: float
    top_p: float

    @property
    def strategy(self) -> DecodingStrategy:
        return make_strategy("static", temperature=self.temperature, top_p=self.top_p)

    @property
    def label(self) -> str:
        return self.strategy.label

    @property
    def slug(self) -> str:
        return strategy_slug(self.strategy)

    @property
    def axes(self) -> dict:
        return {"temperature": self.temperature, "top_p": self.top_p}

    def to_dict(self) -> dict:
        return {"temperature": self.temperature, "top_p": self.top_p, "label": self.label, "slug": self.slug}


DEFAULT_CELL = Cell(1.0, 1.0)


def _number(text: str, option: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise UserError(f"{option}: {text.strip()!r} is not a number", "e.g. 0.1:1.5:0.1 or 0.3,0.7,1.0") from None
    if not value.is_finite():
        raise UserError(f"{option}: {text.strip()!r} is not a finite number")
    return value


def _check(value: float, option: str) -> float:
    high = MAX_STATIC_TEMPERATURE if option == "--temperatures" else AXIS_LIMITS.get(option, 1.0)
    if not 0.0 < round(value, DIGITS) <= high:
        raise UserError(f"{option}: {value:g} is out of range", f"values must lie in (0, {high:g}], {DIGITS} decimals at most")
    return round(value, DIGITS)


def parse_values(text: str, option: str = "--temperatures") -> list[float]:
    """'0.1:1.5:0.1' (START:STOP:STEP, STOP included) or '0.3,0.7,1.0' -> sorted unique floats.

    Decimal steps, so 0.1:0.3:0.1 is exactly [0.1, 0.2, 0.3] (floats would give 0.30000000000000004).
    """
    values: list[float] = []
    for part in (p for p in str(text).split(",") if p.strip()):
        pieces = part.split(":")
        if len(pieces) == 1:
            values.append(float(_number(pieces[0], option)))
            continue
        if len(pieces) != 3:
            raise UserError(f"{option}: {part.strip()!r} is not START:STOP:STEP", "e.g. 0.1:1.5:0.1 or a comma list 0.3,0.7,1.0")
        start, stop, step = (_number(piece, option) for piece in pieces)
        if step <= 0 or stop < start:
            raise UserError(f"{option}: {part.strip()!r} needs STEP > 0 and STOP >= START")
        count = int((stop - start) / step) + 1
        if count > 1000:
            raise UserError(f"{option}: {part.strip()!r} gives {count} values", "use a coarser STEP")
        values.extend(float(start + i * step) for i in range(count))
    if not values:
        raise UserError(f"{option} {text!r} gives no values")
    return sorted({_check(v, option) for v in values})


def parse_cells(text: str, family: Family | None = None) -> list[Cell]:
    """'0.6:0.95,1.0:1.0' -> [Cell(0.6, 0.95), Cell(1.0, 1.0)] (order kept, repeats dropped).

    For another `family` the second number is that family's parameter (min-p: T:MIN_P)."""
    family = family or get_family("static")
    shape, example = ("T:P", "0.6:0.95,1.0:1.0") if family.is_static else (f"T:{family.axis.upper()}", f"1.0:{family.default_values.split(',')[1]}")
    cells: list[Cell] = []
    for part in (p for p in str(text).split(",") if p.strip()):
        pieces = part.split(":")
        if len(pieces) != 2:
            raise UserError(f"--cells: {part.strip()!r} is not {shape}", f"e.g. --cells {example}")
        cell = family.cell(_check(float(_number(pieces[0], "--temperatures")), "--temperatures"), _check(float(_number(pieces[1], family.option)), family.option))
        if cell not in cells:
            cells.append(cell)
    if not cells:
        raise UserError(f"--cells {text!r} gives no cells", f"e.g. --cells {example}")
    return cells


def full_cells(temperatures: Sequence[float], top_ps: Sequence[float], family: Family | None = None) -> list[Cell]:
    make = Cell if family is None else family.cell
    return [make(t, p) for t in temperatures for p in top_ps]


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
            return cls(float(metrics["score"]), metrics.get("score_stderr"), per_question, float(metrics.get("mean_tokens", 0.0)))
        return cls(float(metrics["pass@1"]), metrics.get("pass@1_stderr"), per_question, float(metrics.get("mean_tokens", 0.0)))

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


class QuestionPrefix:
    """The task restricted to the first n questions of the grid's list (an early-stopping round).

    Same name, so the same sample files and request seeds: a later round (or the full run)
    reuses these samples. Everything but `load_docs` is the wrapped task's.
    """

    def __init__(self, task: Any, docs: list):
        self._task = task
        self._docs = list(docs)

    def load_docs(self, split: str = "test", limit: int | None = None, data_dir=None, **_: Any) -> list:
        return list(self._docs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_task":
            raise AttributeError(name)
        return getattr(self._task, name)


@dataclass
class _Sweep:
    engine: Any
    task: Any
    docs: list
    max_new_tokens: int
    settings: dict  # run_eval keyword arguments shared by every call
    limit: int | None
    early_stop: bool
    rounds: list[int]
    alpha: float
    out_dir: Path
    log: Callable[[str], None]
    snapshot: Callable[[], None]

    def score(self, cells: Sequence[Cell], n_questions: int) -> dict[Cell, CellScore]:
        """One run_eval call for all the cells, on the first n questions."""
        if n_questions >= len(self.docs):
            task, limit = self.task, self.limit  # exactly what `autodeco eval --limit` runs
        else:
            task, limit = QuestionPrefix(self.task, self.docs[:n_questions]), n_questions
        ordered = sorted(set(cells))  # by (T, p): rows that finish alike share batches
        results = run_eval(self.engine, [task], [c.strategy for c in ordered], limit=limit, max_new_tokens=self.max_new_tokens, out_dir=self.out_dir, **self.settings)
        return {cell: CellScore.from_results(results[cell.label], self.task.name) for cell in ordered}


def _cell_record(cells_info: dict[Cell, dict], cell: Cell, stage: str, order: dict[Cell, int]) -> dict:
    if cell not in cells_info:
        order[cell] = len(order)
        cells_info[cell] = {**cell.to_dict(), "stages": [], "pass@1": None, "pass@1_stderr": None, "n_questions": 0, "pruned": None}
    if stage not in cells_info[cell]["stages"]:
        cells_info[cell]["stages"].append(stage)
    return cells_info[cell]


def _run_stage(sweep: _Sweep, name: str, cells: list[Cell], state: dict) -> Cell:
    """Score a stage's cells (with pruning rounds if early stopping); returns the stage's best.

    Cells already scored on every question by an earlier stage (expert mode's (T*, 1.0)) are not
    re-run: in early-stopping rounds they take part through their scores on the round's prefix,
    and they are never pruned.
    """
    cells_info, order, scores = state["cells"], state["order"], state["scores"]
    total = len(sweep.docs)
    for cell in cells:
        _cell_record(cells_info, cell, name, order)
    done = [c for c in cells if c in scores and scores[c].n_questions == total and cells_info[c]["pruned"] is None]
    survivors = [c for c in cells if c not in done]
    sizes = sweep.rounds if sweep.early_stop and survivors else [total]
    sizes = [n for n in sizes if n < total] + [total]
    for number, n_questions in enumerate(sizes, 1):
        round_scores: dict[Cell, CellScore] = {}
        if survivors:
            sweep.log(f"stage {name}: {len(survivors)} cells on {n_questions} questions" + (f" (round {number}/{len(sizes)})" if len(sizes) > 1 else ""))
            round_scores = sweep.score(survivors, n_questions)
        for cell, score in round_scores.items():
            scores[cell] = score
            info = cells_info[cell]
            info.update({"pass@1": score.pass1, "pass@1_stderr": score.stderr, "n_questions": score.n_questions, "mean_tokens": score.mean_tokens})
        prefix = [str(doc.doc_id) for doc in sweep.docs[:n_questions]]
        round_scores.update({c: scores[c].restricted(prefix) for c in done})
        best = best_cell(survivors + done, round_scores, order)
        if n_questions == total:
            break
        pruned = []
        for cell in survivors:
            if cell == best:
                continue
            p_value = worse_p_value(round_scores[cell].per_question, round_scores[best].per_question)
            if p_value < sweep.alpha:
                pruned.append((cell, p_value))
        state["rounds"].append(
            {
                "stage": name,
                "round": number,
                "questions": n_questions,
                "cells": len(survivors) + len(done),
                "best": best.slug,
                "best_pass@1": round_scores[best].pass1,
                "pruned": [{"slug": c.slug, **c.axes, "pass@1": round_scores[c].pass1, "p_value": p} for c, p in pruned],
            }
        )
        for cell, p_value in pruned:
            cells_info[cell]["pruned"] = {"stage": name, "round": number, "questions": n_questions, "p_value": p_value, "against": best.slug}
        gone = {c for c, _ in pruned}
        survivors = [c for c in survivors if c not in gone]
        if pruned:
            sweep.log(f"  pruned {len(pruned)} cells clearly worse than {best.label}: {', '.join(c.label for c, _ in pruned)}")
        sweep.snapshot()
    sweep.snapshot()
    return best


def run_grid(
    engine: Any,
    task: str | Any,
    *,
    mode: str = "full",
    family: str | Family = "static",
    temperatures: Sequence[float] | None = None,
    top_ps: Sequence[float] | None = None,
    values: Sequence[float] | None = None,
    cells: Sequence[Cell | tuple[float, float]] | None = None,
    k: int = 4,
    seeds: Sequence[int] = (0,),
    limit: int | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = 8,
    out_dir: str | Path,
    chat: bool = True,
    progress: Any = None,
    data_dir: str | Path | None = None,
    run_info: dict | None = None,
    split: str = "test",
    early_stop: bool = False,
    early_stop_rounds: Sequence[float] = EARLY_STOP_ROUNDS,
    prune_alpha: float = PRUNE_ALPHA,
    n_boot: int = 10_000,
    plot: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Run a grid of static cells on one task; writes OUT/grid.json (+ heatmap.png) and returns it.

    `task` is a registry name or a task object (anything `run_eval` accepts). See the module
    docstring for the modes, the oracle/tie rule, resume and early stopping. Another `family`
    (grid_families: min-p, top-n-sigma, edt) sweeps T x its own parameter (`values`, the role
    `top_ps` plays for static), in full or cells mode.
    """
    if mode not in MODES:
        raise UserError(f"--mode {mode!r} is not a mode", f"use one of: {', '.join(MODES)}")
    if not 0.0 < prune_alpha < 1.0:
        raise UserError("the pruning alpha must lie in (0, 1)")
    tasks = resolve_tasks(task if isinstance(task, str) else [task])
    if len(tasks) != 1:
        raise UserError(f"--benchmark {task!r} names {len(tasks)} tasks", "grid-search tunes one benchmark at a time: run it once per task")
    task_obj = tasks[0]
    family = get_family(family) if isinstance(family, str) else family
    temperatures, top_ps, cell_list = _axes_and_cells(family, mode, temperatures, top_ps if values is None else values, cells)
    out_dir = Path(out_dir)
    run = prepare_task(task_obj, limit, max_new_tokens, data_dir, split)
    seeds = [int(s) for s in seeds]
    log = log or (lambda message: None)
    grid: dict[str, Any] = {
        "benchmark": task_obj.name,
        "mode": mode,
        "split": split,
        # cells' "pass@1" fields hold this question metric (the task's own; pass@1 for most)
        "metric": metric_name(task_obj),
        "model": (run_info or {}).get("model") or getattr(engine.lm, "name", None),
        "k": k,
        "seeds": seeds,
        "limit": limit,
        "n_questions": len(run.docs),
        "samples_per_question": k * len(seeds),
        "max_new_tokens": run.max_new_tokens,
        "batch_size": batch_size,
        "chat": chat,
    }
    if not family.is_static:  # static grids stay as they were (no family record means static)
        grid["family"] = family.describe()
    if mode != "cells":
        grid.update({"temperatures": temperatures, family.axis_values_key: top_ps})
    state: dict[str, Any] = {"cells": {}, "order": {}, "scores": {}, "rounds": [], "stages": []}
    rounds = round_sizes(len(run.docs), early_stop_rounds)
    early = {
        "enabled": early_stop,
        "rounds_questions": rounds if early_stop else [len(run.docs)],
        "test": prune_test_name() if early_stop else None,
        "alpha": prune_alpha if early_stop else None,
        "rule": "after each round but the last, prune a cell whose one-sided paired test against the round's best cell has p < alpha" if early_stop else None,
    }

    def snapshot(complete: bool = False) -> None:
        grid.update(
            {
                "stages": state["stages"],
                "cells": [state["cells"][c] for c in sorted(state["cells"], key=state["order"].get)],
                "early_stopping": {**early, "rounds": state["rounds"], "pruned": [info["slug"] for info in state["cells"].values() if info["pruned"]]},
                "complete": complete,
            }
        )
        _write_json(out_dir / GRID_FILE, grid)

    settings = {"k": k, "seeds": seeds, "batch_size": batch_size, "chat": chat, "progress": progress, "data_dir": data_dir, "run_info": run_info, "split": split}
    sweep = _Sweep(engine, task_obj, run.docs, run.max_new_tokens, settings, limit, early_stop, rounds, prune_alpha, out_dir, log, snapshot)

    if mode == "full":
        stage_cells = full_cells(temperatures, top_ps, family)
        best = _run_stage(sweep, "full", stage_cells, state)
        state["stages"].append({"name": "full", "cells": [c.slug for c in stage_cells], "best": best.slug})
    elif mode == "cells":
        best = _run_stage(sweep, "cells", cell_list, state)
        state["stages"].append({"name": "cells", "cells": [c.slug for c in cell_list], "best": best.slug})
    else:
        first = [Cell(t, 1.0) for t in temperatures]
        best_t = _run_stage(sweep, "temperature", first, state)
        state["stages"].append({"name": "temperature", "fixed": {"top_p": 1.0}, "cells": [c.slug for c in first], "best": best_t.slug, "best_temperature": best_t.temperature})
        second = [Cell(best_t.temperature, p) for p in top_ps]
        best = _run_stage(sweep, "top_p", second, state)
        state["stages"].append({"name": "top_p", "fixed": {"temperature": best_t.temperature}, "cells": [c.slug for c in second], "best": best.slug})
    _select_oracle(grid, state, n_boot)
    snapshot(complete=True)
    if plot:
        grid["heatmap"] = str(plot_grid(grid, out_dir / HEATMAP_FILE))
        _write_json(out_dir / GRID_FILE, grid)
    return grid


def _axes_and_cells(family: Family, mode: str, temperatures, values, cells) -> tuple[list[float], list[float], list | None]:
    """The checked T and second-axis values (the family's defaults when None) and, in cells
    mode, the cell list."""
    if mode == "expert" and not family.is_static:
        raise UserError(f"--mode expert is the static (T, p) recipe, not for --family {family.name}", "use --mode full (the default) or --mode cells")
    temperatures = [_check(float(t), "--temperatures") for t in (temperatures if temperatures is not None else parse_values(family.default_temperatures))]
    values = [_check(float(v), family.option) for v in (values if values is not None else parse_values(family.default_values, family.option))]
    cell_list = None
    if mode == "cells":
        if not cells:
            raise UserError("--mode cells needs --cells", "e.g. --cells 0.6:0.95,1.0:1.0" if family.is_static else f"e.g. --family {family.name} --cells 1.0:{values[0]:g}")
        cell_list = [c if isinstance(c, (Cell, FamilyCell)) else family.cell(_check(float(c[0]), "--temperatures"), _check(float(c[1]), family.option)) for c in cells]
        cell_list = list(dict.fromkeys(cell_list))
    return temperatures, values, cell_list


def _select_oracle(grid: dict, state: dict, n_boot: int) -> None:
    n = grid["n_questions"]
    complete = [c for c in sorted(state["cells"], key=state["order"].get) if state["cells"][c]["pruned"] is None and state["scores"][c].n_questions == n]
    scores = state["scores"]
    oracle = best_cell(complete, scores, state["order"])
    ties = []
    for cell in complete:
        info = state["cells"][cell]
        if cell == oracle:
            info.update({"oracle": True, "tied": True, "vs_oracle": {"delta": 0.0, "se": 0.0, "ci_low": 0.0, "ci_high": 0.0}})
            continue
        c = stats.paired_comparison(scores[cell].per_question, scores[oracle].per_question, n_boot=n_boot, seed=0)
        tied = c.ci_low <= 0.0 <= c.ci_high
        se = c.se if math.isfinite(c.se) else None
        info.update({"oracle": False, "tied": tied, "vs_oracle": {"delta": c.mean_diff, "se": se, "ci_low": c.ci_low, "ci_high": c.ci_high}})
        if tied:
            ties.append({**cell.to_dict(), "pass@1": scores[cell].pass1, "delta": c.mean_diff, "se": se, "ci_low": c.ci_low, "ci_high": c.ci_high})
    grid["oracle"] = {**oracle.to_dict(), "pass@1": scores[oracle].pass1, "pass@1_stderr": scores[oracle].stderr, "n_questions": n}
    grid["ties"] = ties
    grid["tie_rule"] = f"paired per-question {grid.get('metric', 'pass@1')} (cell - oracle) over all {n} questions; tied when its bootstrap 95% CI ({n_boot} resamples, seed 0) includes 0"


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def load_grid(path: str | Path) -> dict:
    """grid.json, or the output folder that holds it."""
    path, grid = read_json_output(path, GRID_FILE, "grid file", "run `autodeco grid-search` first")
    if not grid.get("complete") or "oracle" not in grid:
        raise UserError(f"{path} is from an unfinished grid search", "re-run the same grid-search command to finish it")
    return grid


# ---------------------------------------------------------------------------
# Figure and terminal table
# ---------------------------------------------------------------------------


def plot_grid(grid: dict, path: str | Path) -> Path:
    """Heatmap T x p annotated with pass@1 (%); expert mode: the two stages as 1-D curves."""
    from .plots import _pyplot, save_figure

    plt = _pyplot()
    cells = grid["cells"]
    oracle = grid.get("oracle", {}).get("slug")
    metric = grid.get("metric", "pass@1")
    title = f"{grid['benchmark']}: {metric} (%), {grid['n_questions']} questions × {grid['samples_per_question']} samples"
    if grid["mode"] == "expert":
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
        stages = {s["name"]: s for s in grid["stages"]}
        for ax, (stage, x_key, fixed) in zip(axes, (("temperature", "temperature", "p = 1.0"), ("top_p", "top_p", None))):
            rows = sorted((c for c in cells if stage in c["stages"]), key=lambda c: c[x_key])
            full = [c for c in rows if not c["pruned"]]
            pruned = [c for c in rows if c["pruned"]]
            ax.errorbar([c[x_key] for c in full], [100 * c["pass@1"] for c in full], yerr=[100 * (c["pass@1_stderr"] or 0) for c in full], marker="o", capsize=3, color="tab:blue")
            if pruned:
                ax.scatter([c[x_key] for c in pruned], [100 * c["pass@1"] for c in pruned], marker="x", color="grey", label="pruned (partial questions)")
                ax.legend(fontsize=7)
            best = stages.get(stage, {}).get("best")
            for c in rows:
                if c["slug"] in (best, oracle):
                    ax.scatter([c[x_key]], [100 * c["pass@1"]], s=160, facecolors="none", edgecolors="tab:red", linewidths=1.6)
            fixed = fixed or f"T = {stages.get('top_p', {}).get('fixed', {}).get('temperature', '?')}"
            ax.set_title(f"stage {1 if stage == 'temperature' else 2}: tune {'T' if stage == 'temperature' else 'p'} ({fixed})", fontsize=9)
            ax.set_xlabel("temperature T" if x_key == "temperature" else "top-p")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel(f"{metric} (%)")
        fig.suptitle(title, fontsize=10)
    else:
        family = grid_family(grid)  # the second axis: top-p, or min-p / n / θ
        ts = sorted({c["temperature"] for c in cells})
        ps = sorted({c[family.axis] for c in cells})
        values = np.full((len(ts), len(ps)), np.nan)
        for c in cells:
            if not c["pruned"] and c["pass@1"] is not None:
                values[ts.index(c["temperature"]), ps.index(c[family.axis])] = 100 * c["pass@1"]
        fig, ax = plt.subplots(figsize=(max(4.5, 0.75 * len(ps) + 2.5), max(3.5, 0.42 * len(ts) + 1.8)))
        cmap = plt.get_cmap("viridis").with_extremes(bad="#eeeeee")
        image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, aspect="auto", origin="lower")
        fig.colorbar(image, ax=ax, label=f"{metric} (%)")
        finite = values[np.isfinite(values)]
        middle = float(finite.mean()) if finite.size else 0.0
        for c in cells:
            i, j = ts.index(c["temperature"]), ps.index(c[family.axis])
            if c["pruned"]:
                ax.text(j, i, "×", ha="center", va="center", color="grey", fontsize=8)
                continue
            if c["pass@1"] is None:
                continue
            mark = "*" if c["slug"] == oracle else ("≈" if c.get("tied") else "")
            ax.text(j, i, f"{100 * c['pass@1']:.{1 if len(ps) <= 8 else 0}f}{mark}", ha="center", va="center", fontsize=7, color="black" if values[i, j] > middle else "white")
            if c["slug"] == oracle:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
        ax.set_xticks(range(len(ps)), [f"{p:g}" for p in ps], fontsize=7)
        ax.set_yticks(range(len(ts)), [f"{t:g}" for t in ts], fontsize=7)
        ax.set_xlabel(family.axis_label)
        ax.set_ylabel(family.temperature_label)
        ax.set_title(title + "\n* oracle   ≈ tied with it   × pruned", fontsize=9)
    return save_figure(fig, path)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def grid_table(grid: dict):
    """Full mode: a T x p matrix of pass@1; other modes: one row per cell with Δ vs the oracle."""
    from rich.table import Table

    cells = grid["cells"]
    oracle = grid.get("oracle", {}).get("slug")
    caption = "* oracle\n≈ tied with it (paired 95% CI of the difference includes 0)\n× pruned early"
    family = grid_family(grid)
    if grid["mode"] == "full":
        ts = sorted({c["temperature"] for c in cells})
        ps = sorted({c[family.axis] for c in cells})
        by_pos = {(c["temperature"], c[family.axis]): c for c in cells}
        table = Table(title=f"{grid['benchmark']}: {grid.get('metric', 'pass@1')} (%)", caption=caption)
        table.add_column(f"{family.temperature_label.split()[-1]} \\ {family.axis_label}", justify="right", style="bold")
        for p in ps:
            table.add_column(f"{p:g}", justify="right")
        for t in ts:
            row = [f"{t:g}"]
            for p in ps:
                c = by_pos.get((t, p))
                if c is None or c["pass@1"] is None:
                    row.append("")
                elif c["pruned"]:
                    row.append("[dim]×[/]")
                elif c["slug"] == oracle:
                    row.append(f"[bold green]{_pct(c['pass@1'])}*[/]")
                else:
                    row.append(f"{_pct(c['pass@1'])}≈" if c.get("tied") else _pct(c["pass@1"]))
            table.add_row(*row)
        return table
    metric = grid.get("metric", "pass@1")
    table = Table(title=f"grid-search {grid['benchmark']} ({grid['mode']}): {metric} in %", caption=caption)
    axis_columns = ("T", "p") if family.is_static else (family.temperature_label.split()[-1], family.axis_label)
    for column in ("stage", *axis_columns, "questions", f"{metric} ± SE", "Δ vs oracle", "95% CI", "note"):
        table.add_column(column, justify="left" if column in ("stage", "note") else "right")
    for c in cells:
        vs = c.get("vs_oracle")
        note = ""
        if c["pruned"]:
            pr = c["pruned"]
            note = f"pruned after {pr['questions']} questions (p={pr['p_value']:.2g})"
        elif c["slug"] == oracle:
            note = "[bold green]oracle *[/]"
        elif c.get("tied"):
            note = "tied ≈"
        stderr = f" ± {_pct(c['pass@1_stderr'])}" if c["pass@1_stderr"] is not None else ""
        table.add_row(
            ",".join(c["stages"]),
            f"{c['temperature']:g}",
            f"{c[family.axis]:g}",
            str(c["n_questions"]),
            f"{_pct(c['pass@1'])}{stderr}",
            f"{100 * vs['delta']:+.1f}" if vs else "–",
            f"[{100 * vs['ci_low']:+.1f}, {100 * vs['ci_high']:+.1f}]" if vs else "–",
            note,
        )
    return table


def grid_summary_lines(grid: dict) -> list[str]:
    o = grid["oracle"]
    stderr = f" ± {_pct(o['pass@1_stderr'])}" if o.get("pass@1_stderr") is not None else ""
    lines = [f"oracle: {o['label']}  {grid.get('metric', 'pass@1')} {_pct(o['pass@1'])}{stderr} % on {o['n_questions']} questions"]
    ties = grid.get("ties", [])
    lines.append(f"tied with the oracle ({len(ties)}): " + (", ".join(t["label"] for t in ties) if ties else "none"))
    early = grid.get("early_stopping", {})
    if early.get("enabled"):
        lines.append(f"early stopping: {early['test']}, alpha {early['alpha']:g}, rounds {early['rounds_questions']} questions; pruned {len(early['pruned'])} cells")
    return lines


# ---------------------------------------------------------------------------
# --then-eval: the final comparison table for the benchmark
# ---------------------------------------------------------------------------


def _unique(strategies: list[DecodingStrategy]) -> list[DecodingStrategy]:
    seen, out = set(), []
    for strategy in strategies:
        slug = strategy_slug(strategy)
        if slug not in seen:
            seen.add(slug)
            out.append(strategy)
    return out


def run_comparison(
    engine: Any,
    task: str | Any,
    grid: dict,
    *,
    out_dir: str | Path,
    batch_size: int = 8,
    progress: Any = None,
    data_dir: str | Path | None = None,
    run_info: dict | None = None,
    n_boot: int = 10_000,
) -> dict:
    """The benchmark's final table: greedy, default (T=1, p=1), the grid's oracle, autodeco,
    mean-shift (static at the autodeco run's mean T̂/P̂) and the T̂-only / P̂-only ablations.

    Every row is pass@1 ± SE with its paired difference against default (± SE, bootstrap 95% CI)
    over the same questions. k, seeds, limit, budget and chat come from `grid` (a run_grid result
    or a loaded grid.json), so the rows match the grid's cells. The oracle and default cells are
    read back from the grid's sample logs in `out_dir` (no generation; default is generated
    only if the grid did not score it on every question). `engine` needs heads (open it with
    an autodeco strategy). Writes OUT/comparison.json and OUT/comparison.md; returns the dict.
    """
    tasks = resolve_tasks(task if isinstance(task, str) else [task])
    if len(tasks) != 1 or tasks[0].name != grid["benchmark"]:
        raise UserError(f"the comparison task must be the grid's benchmark ({grid['benchmark']})")
    task_obj = tasks[0]
    out_dir = Path(out_dir)
    common = {
        "k": grid["k"], "seeds": grid["seeds"], "limit": grid["limit"], "max_new_tokens": grid["max_new_tokens"], "batch_size": batch_size,
        "out_dir": out_dir, "chat": grid["chat"], "progress": progress, "data_dir": data_dir, "run_info": run_info,
    }  # fmt: skip
    oracle = cell_from_record(grid, grid["oracle"])  # the grid family's best cell
    rows_spec = [
        ("greedy", make_strategy("greedy")),
        ("default", DEFAULT_CELL.strategy),
        ("oracle", oracle.strategy),
        ("autodeco", make_strategy("autodeco")),
        ("autodeco T̂-only", make_strategy("autodeco", active_heads="temperature")),
        ("autodeco P̂-only", make_strategy("autodeco", active_heads="top_p")),
    ]
    results = run_eval(engine, [task_obj], _unique([s for _, s in rows_spec]), **common)
    name = task_obj.name
    auto = results[rows_spec[3][1].label]["results"][name]
    if "mean_temperature" not in auto:
        raise UserError("the autodeco run recorded no mean T̂/P̂", "check that its samples generated tokens")
    shift = make_strategy("mean-shift", temperature=auto["mean_temperature"], top_p=auto["mean_top_p"])
    results.update(run_eval(engine, [task_obj], [shift], **common))
    rows_spec.insert(4, ("mean-shift", shift))
    reference = results[DEFAULT_CELL.label]
    rows = []
    for row_name, strategy in rows_spec:
        res = results[strategy.label]
        m = res["results"][name]
        paired = paired_delta(res, reference, name, n_boot)
        row = {
            "name": row_name,
            "decoding": strategy.label,
            "slug": strategy_slug(strategy),
            "pass@1": m["pass@1"],
            "pass@1_stderr": m.get("pass@1_stderr"),
            "score": m.get("score", m["pass@1"]),
            "score_stderr": m.get("score_stderr", m.get("pass@1_stderr")),
            "n_questions": m["n_questions"],
            "samples_per_question": m["samples_per_question"],
            "delta_vs_default": paired["delta"],
            "delta_se": paired["se"],
            "delta_ci": paired["ci"],
        }
        if strategy.temperature is not None:
            row.update({"temperature": strategy.temperature, "top_p": strategy.top_p, **strategy_params(strategy)})
        if "mean_temperature" in m:
            row.update({"mean_temperature": m["mean_temperature"], "mean_top_p": m["mean_top_p"]})
        rows.append(row)
    comparison = {
        "benchmark": name,
        "model": grid.get("model"),
        "heads": (run_info or {}).get("heads"),
        "k": grid["k"],
        "seeds": grid["seeds"],
        "limit": grid["limit"],
        "n_questions": grid["n_questions"],
        "grid_mode": grid["mode"],
        "reference": "default",
        "metric": metric_name(task_obj),
        "paired": f"Δ = row − default per question ({metric_name(task_obj)}), SE over questions, bootstrap 95% CI ({n_boot} resamples, seed 0)",
        "rows": rows,
    }
    # the questions the report asks of autodeco, each as a paired test of its own
    strategies = dict(rows_spec)
    if "autodeco" in strategies:
        comparison["autodeco_vs"] = {}
        for other in ("greedy", "oracle", "mean-shift"):
            if other in strategies:
                comparison["autodeco_vs"][other] = paired_delta(results[strategies["autodeco"].label], results[strategies[other].label], name, n_boot)
    _write_json(out_dir / COMPARISON_FILE, comparison)
    (out_dir / COMPARISON_MD).write_text(comparison_markdown(comparison), encoding="utf-8")
    return comparison


def _row_params(row: dict) -> str:
    if "mean_temperature" in row:
        return f"T̂ {row['mean_temperature']:.3f}, P̂ {row['mean_top_p']:.3f}"
    if "temperature" in row:
        extra = "".join(f", {name} {row[name]:.3g}" for name in ("min_p", "n_sigma", "edt_base", "edt_theta") if name in row)
        return f"T {row['temperature']:.3g}, p {row['top_p']:.3g}{extra}"
    return ""


def _delta(row: dict) -> tuple[str, str]:
    if row["name"] == "default":
        return "(reference)", ""
    se = f" ± {100 * row['delta_se']:.1f}" if row["delta_se"] is not None else ""
    return f"{100 * row['delta_vs_default']:+.1f}{se}", f"[{100 * row['delta_ci'][0]:+.1f}, {100 * row['delta_ci'][1]:+.1f}]"


def _row_score(row: dict) -> str:
    value, stderr = row.get("score", row["pass@1"]), row.get("score_stderr", row["pass@1_stderr"])
    return _pct(value) + (f" ± {_pct(stderr)}" if stderr is not None else "")


def comparison_markdown(comparison: dict) -> str:
    metric = comparison.get("metric", "pass@1")
    lines = [
        f"# {comparison['benchmark']}: decoding comparison",
        "",
        f"Model {comparison.get('model')}; {comparison['n_questions']} questions; k={comparison['k']} × seeds {comparison['seeds']} "
        f"(greedy: 1 sample); {metric} in %. Δ: paired per-question difference against default (T=1, p=1).",
        "",
        f"| method | decoding | T / p | {metric} ± SE | Δ vs default ± SE | 95% CI |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for row in comparison["rows"]:
        delta, ci = _delta(row)
        lines.append(f"| {row['name']} | {row['decoding']} | {_row_params(row)} | {_row_score(row)} | {delta} | {ci} |")
    return "\n".join(lines) + "\n"


def comparison_rich_table(comparison: dict):
    from rich.table import Table

    metric = comparison.get("metric", "pass@1")
    table = Table(title=f"{comparison['benchmark']}: {metric} (%) and paired Δ vs default (T=1, p=1)")
    for column in ("method", "decoding", "T / p", f"{metric} ± SE", "Δ vs default ± SE", "95% CI"):
        table.add_column(column, justify="left" if column in ("method", "decoding", "T / p") else "right")
    for row in comparison["rows"]:
        delta, ci = _delta(row)
        table.add_row(row["name"], row["decoding"], _row_params(row), _row_score(row), delta, ci)
    return table
