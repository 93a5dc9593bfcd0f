"""`autodeco compare --row ...`: named rows of eval results scored as one suite, each paired with a
reference row (statistics in `suite`).

A row is one decoding choice for every task of the suite: one results.json that holds all the
tasks (`autodeco eval -b a,b,c`), or several (one per task or group of tasks, e.g. each task's
own test-tuned grid cell). Per task, every row is scored on the questions that all rows scored,
so suite scores and their differences are over one fixed set of questions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..core.errors import UserError
from .metrics import finite
from .question_scores import metric_of
from .report import check_same_samples, ci_pct, load_results, pct, pct_se, question_scores, signed_pct
from .suite import SuiteComparison, SuiteScore, paired_suite, suite_score

ROW_HINT = "give each row as --row NAME=RESULTS[,RESULTS...] (results.json files or the strategy folders eval wrote)"


@dataclass(frozen=True)
class SuiteRow:
    """A named row: task -> (the file that scored it, that file's results)."""

    name: str
    tasks: dict[str, tuple[Path, dict]]


@dataclass(frozen=True)
class SuiteLine:
    name: str
    score: SuiteScore
    vs_reference: SuiteComparison | None  # None for the reference row itself


@dataclass(frozen=True)
class SuiteTable:
    tasks: list[str]
    metrics: dict[str, str]
    n_questions: dict[str, int]
    dropped: dict[str, int]  # task -> questions some row lacks, left out of every row
    reference: str
    lines: list[SuiteLine]
    files: dict[str, list[str]]  # row -> its files


def parse_row(spec: str) -> tuple[str, list[str]]:
    """'NAME=PATH[,PATH...]' -> (name, paths)."""
    name, sep, paths = spec.partition("=")
    files = [p.strip() for p in paths.split(",") if p.strip()]
    if not sep or not name.strip() or not files:
        raise UserError(f"--row {spec!r} is not NAME=RESULTS[,RESULTS...]", ROW_HINT)
    return name.strip(), files


def load_row(name: str, paths: Sequence[str | Path]) -> SuiteRow:
    """A row's results files, merged by task; a task in two of its files is an error."""
    tasks: dict[str, tuple[Path, dict]] = {}
    for given in paths:
        path, results = load_results(given)
        for task in results["per_question"]:
            if task in tasks:
                raise UserError(
                    f"row {name!r}: {task} is in both {tasks[task][0]} and {path}",
                    "give each task of a row in one results file",
                )
            tasks[task] = (path, results)
    return SuiteRow(name, tasks)


def suite_tasks(rows: Sequence[SuiteRow], wanted: Sequence[str] | None) -> list[str]:
    """The named tasks (each row must have them), else the tasks every row has, in the first row's order."""
    if wanted:
        for row in rows:
            missing = [t for t in wanted if t not in row.tasks]
            if missing:
                raise UserError(
                    f"row {row.name!r} has no results for {', '.join(missing)}",
                    f"it has {', '.join(row.tasks) or 'none'}; add that task's results file to the row",
                )
        return list(dict.fromkeys(wanted))
    shared = [t for t in rows[0].tasks if all(t in row.tasks for row in rows)]
    if not shared:
        raise UserError("the rows share no task", "each row needs results for the same tasks")
    return shared


def build_suite_table(
    rows: Sequence[SuiteRow],
    reference: str | None = None,
    tasks: Sequence[str] | None = None,
    n_boot: int = 10_000,
    seed: int = 0,
) -> SuiteTable:
    """Every row's suite score ± SE and its paired Δ against the reference row (default: the first)."""
    names = [row.name for row in rows]
    if len(rows) < 2:
        raise UserError("a suite comparison needs at least two --row", ROW_HINT)
    if len(set(names)) != len(names):
        raise UserError(f"row names repeat: {', '.join(names)}", "give every --row its own NAME")
    reference = names[0] if reference is None else reference
    if reference not in names:
        raise UserError(f"--reference {reference!r} is not a row", f"rows: {', '.join(names)}")
    ref_row = rows[names.index(reference)]
    chosen = suite_tasks(rows, tasks)
    scores: dict[str, dict[str, dict]] = {row.name: {} for row in rows}
    metrics, counts, dropped = {}, {}, {}
    for task in chosen:
        metrics[task] = _task_metric(rows, task)
        for row in rows:
            if row is not ref_row:
                _check_pairs(row, ref_row, task)
        per_row = {row.name: question_scores(row.tasks[task][1], task, str(row.tasks[task][0])) for row in rows}
        common = set.intersection(*(set(s) for s in per_row.values()))
        if not common:
            raise UserError(f"{task}: the rows share no question", "compare runs of the same split and --limit")
        for name, by_doc in per_row.items():
            scores[name][task] = {d: by_doc[d] for d in common}
        counts[task] = len(common)
        dropped[task] = len(set.union(*(set(s) for s in per_row.values()))) - len(common)
    lines = [
        SuiteLine(
            name,
            suite_score({t: list(scores[name][t].values()) for t in chosen}),
            None if name == reference else paired_suite(scores[name], scores[reference], n_boot=n_boot, seed=seed),
        )
        for name in names
    ]
    files = {row.name: list(dict.fromkeys(str(row.tasks[t][0]) for t in chosen)) for row in rows}
    return SuiteTable(chosen, metrics, counts, dropped, reference, lines, files)


def _task_metric(rows: Sequence[SuiteRow], task: str) -> str:
    found = {row.name: metric_of(row.tasks[task][1], task) for row in rows}
    if len(set(found.values())) > 1:
        detail = ", ".join(f"{name}: {metric}" for name, metric in found.items())
        raise UserError(f"{task}: the rows score questions by different metrics ({detail})")
    return next(iter(found.values()))


def _check_pairs(row: SuiteRow, reference: SuiteRow, task: str) -> None:
    (path, results), (ref_path, ref_results) = row.tasks[task], reference.tasks[task]
    check_same_samples(results, ref_results, task, (str(path), str(ref_path)))


def _delta(value: float, se: float) -> str:
    se = finite(se)
    return signed_pct(value) if se is None else f"{signed_pct(value)} ± {pct(se)}"


def _task_note(table: SuiteTable, task: str) -> str:
    left_out = f" ({table.dropped[task]} left out: not scored by every row)" if table.dropped[task] else ""
    return f"{task}: {table.metrics[task]}, {table.n_questions[task]} questions{left_out}"


def suite_rich_table(table: SuiteTable):
    """The terminal table: suite score ± SE, Δ vs the reference ± SE with its CI, then per task
    each row's score (and its Δ ± SE)."""
    from rich.table import Table

    out = Table(
        title=f"suite of {len(table.tasks)} tasks: mean over tasks of each task's question score (in %); "
        f"Δ = row − {table.reference}, paired per question within each task",
        caption="\n".join(
            [_task_note(table, t) for t in table.tasks]
            + [f"{name} = {', '.join(files)}" for name, files in table.files.items()]
        ),
    )
    out.add_column("row")
    for column in ("suite ± SE", "Δ ± SE", "95% CI (stratified bootstrap)", *table.tasks):
        out.add_column(column, justify="right")
    for line in table.lines:
        c = line.vs_reference
        per_task = [
            pct(line.score.per_task[t]) + ("" if c is None else f" ({_delta(c.per_task_delta[t], c.per_task_se[t])})")
            for t in table.tasks
        ]
        out.add_row(
            line.name,
            pct_se(line.score.score, finite(line.score.se)),
            "(reference)" if c is None else _delta(c.delta, c.se),
            "" if c is None else ci_pct(c.ci_low, c.ci_high),
            *per_task,
        )
    return out
