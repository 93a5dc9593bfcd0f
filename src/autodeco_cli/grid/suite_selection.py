"""The best single setting for a whole suite, chosen on validation, and the per-task oracle.

A deployed model gets one decoding setting for all of its traffic, so the static baseline that
heads must beat is one cell, the same on every task: the cell of a family (static (T, p), min-p,
top-nσ, EDT) with the highest suite score (the mean over tasks of the cell's question metric)
on each task's *validation* grid (`run_grid` with `split="validation"`). The per-task oracle,
each task's best cell on its *test* grid, is a different setting per task, tuned on the very
questions it is scored on: an upper bound, labelled "test-tuned", never the baseline.

Pure functions of grid.json dicts (`load_grid`); nothing runs a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..core.errors import UserError
from .families import grid_family

TEST_TUNED = "test-tuned"


@dataclass(frozen=True)
class SuiteChoice:
    """One cell chosen for every task: its grid.json record (axes, label, slug) and scores."""

    family: str
    slug: str
    label: str
    record: dict  # the cell's record in the first task's grid
    suite_score: float
    per_task: dict[str, float]  # task -> the cell's question metric on that task's validation grid
    candidates: int  # cells scored on every task's validation grid


def _split(grid: dict) -> str:
    return str(grid.get("split", "test"))  # grids written before `split` was recorded ran on test


def _complete_cells(grid: dict) -> list[dict]:
    """The cells scored on every question and never pruned, in grid order."""
    return [
        c
        for c in grid["cells"]
        if c.get("pass@1") is not None and c.get("pruned") is None and c.get("n_questions") == grid["n_questions"]
    ]


def _by_task(grids: Sequence[dict], family: str) -> dict[str, dict]:
    """The family's grid of each task; two grids of one family for one task are ambiguous."""
    out: dict[str, dict] = {}
    for grid in grids:
        if grid_family(grid).name != family:
            continue
        task = str(grid["benchmark"])
        if task in out:
            raise UserError(
                f"two {family} grids for {task}", "pass one grid per task and family (merge them with one grid-search)"
            )
        out[task] = grid
    return out


def best_single_setting(grids: Sequence[dict], family: str = "static") -> SuiteChoice:
    """The family's one cell with the best suite score over the tasks of `grids` (validation
    grids only). Ties go to the cell that comes first in the first task's grid."""
    per_task = _by_task(grids, family)
    if not per_task:
        raise UserError(f"no {family} grid given", f"run grid-search --family {family} --split validation on each task")
    on_test = [task for task, grid in per_task.items() if _split(grid) != "validation"]
    if on_test:
        raise UserError(
            f"the {family} grids of {', '.join(on_test)} were not run on the validation split",
            "choose the suite's setting on validation (grid-search --split validation); the best cell on test "
            "is the test-tuned oracle (per_task_oracles)",
        )
    tasks = list(per_task)
    cells = {task: {c["slug"]: c for c in _complete_cells(grid)} for task, grid in per_task.items()}
    shared = [slug for slug in cells[tasks[0]] if all(slug in cells[t] for t in tasks)]
    if not shared:
        raise UserError(
            f"no {family} cell was scored on every question of every task's grid ({', '.join(tasks)})",
            "run grid-search with the same cells on each task (and without early stopping, which prunes cells)",
        )

    def suite(slug: str) -> float:
        return sum(float(cells[t][slug]["pass@1"]) for t in tasks) / len(tasks)

    # rounded: equal scores must tie exactly, whatever the float sum order; max keeps the first
    best = max(shared, key=lambda slug: round(suite(slug), 12))
    record = cells[tasks[0]][best]
    return SuiteChoice(
        family=family,
        slug=best,
        label=str(record["label"]),
        record=record,
        suite_score=suite(best),
        per_task={t: float(cells[t][best]["pass@1"]) for t in tasks},
        candidates=len(shared),
    )


def best_single_settings(grids: Sequence[dict]) -> dict[str, SuiteChoice]:
    """`best_single_setting` for every family the grids hold (static, min-p, top-n-sigma, edt)."""
    families = list(dict.fromkeys(grid_family(grid).name for grid in grids))
    return {family: best_single_setting(grids, family) for family in families}


def per_task_oracles(grids: Sequence[dict]) -> dict[str, dict]:
    """Each task's best cell on its test grids (across families when a task has several):
    task -> that grid's oracle record plus `row`: "test-tuned" and `family`. Tuned on the
    questions it is scored on, so an upper bound for any setting, not a baseline."""
    out: dict[str, dict] = {}
    for grid in grids:
        task = str(grid["benchmark"])
        if _split(grid) != "test":
            raise UserError(
                f"the {grid_family(grid).name} grid of {task} ran on {_split(grid)}",
                "the test-tuned oracle is each task's best cell on its test grid",
            )
        oracle = {**grid["oracle"], "row": TEST_TUNED, "family": grid_family(grid).name}
        if task not in out or round(float(oracle["pass@1"]), 12) > round(float(out[task]["pass@1"]), 12):
            out[task] = oracle
    return out
