"""Eval results read back and shown: `load_results`, the paired per-question `compare_results`
(`autodeco compare`), the terminal tables of both, and `pct`, the percentage format every
table in the package shares.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..core import stats
from ..core.errors import UserError
from ..core.schema import INTEGER, LIST, NUMBER, OBJECT, STRING, Field, Schema, check, mapping, optional
from .metrics import finite, pass_k_ladder
from .question_scores import is_deterministic, metric_of, row_score, samples_per_question
from .run_store import RESULTS_FILE, read_json_output

RESULTS_HINT = "re-run `autodeco eval` on that folder or fix the file"
# One per-question row of results.json (question_scores.per_question_rows); files written before
# `score` existed have only pass@1, and before `n` only their configs' k.
QUESTION_ROWS = Field(
    LIST,
    items=Field(
        OBJECT,
        fields=Schema(
            {
                "doc_id": Field((STRING, INTEGER)),
                "score": optional(NUMBER, minimum=0, maximum=1),
                "pass@1": optional(NUMBER, minimum=0, maximum=1),
                "n": optional(INTEGER, minimum=1),
            },
            one_of=("score", "pass@1"),
        ),
    ),
)
# The fields of results.json that compare reads (evaluation/runner.build_results writes them).
RESULTS = Schema(
    {
        "per_question": mapping(QUESTION_ROWS),
        "results": mapping(Field(OBJECT, fields=Schema({"metric": optional(STRING)})), required=False),
        "configs": mapping(
            Field(
                OBJECT,
                fields=Schema({"k": optional(INTEGER, minimum=1), "seeds": optional(LIST, items=Field(INTEGER))}),
            ),
            required=False,
        ),
        "decoding": optional(OBJECT, fields=Schema({"name": optional(STRING), "label": optional(STRING)})),
        "model": optional(STRING, nullable=True),
    }
)


def load_results(path: str | Path) -> tuple[Path, dict]:
    """A results.json, or a strategy folder that holds one."""
    path, data = read_json_output(
        path, RESULTS_FILE, "results file", "pass a results.json or the strategy folder eval wrote"
    )
    if not isinstance(data, dict) or "per_question" not in data:
        raise UserError(
            f"{path} has no per-question scores", "compare reads results.json files written by `autodeco eval`"
        )
    return path, check(data, RESULTS, str(path), RESULTS_HINT)


@dataclass(frozen=True)
class TaskComparison:
    task: str
    comparison: stats.PairedComparison
    only_a: int
    only_b: int
    metric: str = "pass@1"


def compare_results(
    a: dict,
    b: dict,
    tasks: Sequence[str] | None = None,
    n_boot: int = 10_000,
    seed: int = 0,
    names: tuple[str, str] = ("run A", "run B"),
) -> list[TaskComparison]:
    """Paired per-question differences (A − B) of each task's question metric (`score`;
    pass@1 for ordinary tasks and old files) on the questions both runs scored.

    `names` (the files) locate a bad score or a k mismatch in the error."""
    shared = [t for t in a["per_question"] if t in b["per_question"]]
    if tasks:
        missing = [t for t in tasks if t not in shared]
        if missing:
            raise UserError(
                f"not in both results: {', '.join(missing)}", f"shared tasks: {', '.join(shared) or 'none'}"
            )
        shared = [t for t in shared if t in tasks]
    if not shared:
        raise UserError("the two results share no task")
    out = []
    for task in shared:
        metric = metric_of(a, task)
        if metric != metric_of(b, task):
            raise UserError(f"{task}: the runs score questions by different metrics ({metric} vs {metric_of(b, task)})")
        scores_a, scores_b = question_scores(a, task, names[0]), question_scores(b, task, names[1])
        check_same_samples(a, b, task, names)
        common = scores_a.keys() & scores_b.keys()
        if not common:
            raise UserError(f"{task}: the two results share no question")
        comparison = stats.paired_comparison(
            {d: scores_a[d] for d in common}, {d: scores_b[d] for d in common}, n_boot=n_boot, seed=seed
        )
        out.append(TaskComparison(task, comparison, len(scores_a) - len(common), len(scores_b) - len(common), metric))
    return out


def question_scores(results: dict, task: str, name: str) -> dict:
    """doc_id -> the task's question score; a score that is not a number in [0, 1] or a doc_id
    given twice is an error naming its row (a NaN would turn every mean and CI into NaN)."""
    where = f"{name}/per_question/{task}"
    rows = check(results["per_question"][task], QUESTION_ROWS, where, RESULTS_HINT)
    scores = {}
    for index, row in enumerate(rows):
        if row["doc_id"] in scores:
            raise UserError(f"{where}[{index}]/doc_id: {row['doc_id']!r} is given twice", RESULTS_HINT)
        scores[row["doc_id"]] = row_score(row)
    return scores


def check_same_samples(a: dict, b: dict, task: str, names: tuple[str, str]) -> None:
    """A question's score from k samples is a different estimate than from k' (exact×(1−TV) even
    has a k-dependent floor), so runs of different k are not paired; greedy pairs with any k."""
    if is_deterministic(a) or is_deterministic(b):
        return
    counts_a, counts_b = samples_per_question(a, task), samples_per_question(b, task)
    if counts_a and counts_b and counts_a != counts_b:
        raise UserError(
            f"{task}: {names[0]} has {'/'.join(map(str, counts_a))} samples per question but "
            f"{names[1]} has {'/'.join(map(str, counts_b))}; per-question scores from different k do not pair",
            "compare runs made with the same -k and --seeds (a greedy run pairs with any)",
        )


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------


def _printable(value: float) -> float:
    # NaN or inf in a table reads like a result; it is always a bug upstream, so fail loudly.
    if not math.isfinite(value):
        raise ValueError(f"refusing to print {value!r} as a result: a NaN or inf got past the input checks")
    return value


def pct(value: float | None) -> str:
    """A rate as a percentage with one decimal; '–' when undefined. Every table uses this one."""
    return "–" if value is None else f"{100 * _printable(value):.1f}"


def signed_pct(value: float) -> str:
    """A difference of rates in percentage points, signed: '+2.5'."""
    return f"{100 * _printable(value):+.1f}"


def ci_pct(low: float, high: float) -> str:
    """A confidence interval of a difference, in signed percentage points: '[-1.0, +6.0]'."""
    return f"[{signed_pct(low)}, {signed_pct(high)}]"


def pct_se(value: float | None, stderr: float | None) -> str:
    """'61.3 ± 2.1' in percent; just the value when the standard error is undefined."""
    return pct(value) + (f" ± {pct(stderr)}" if stderr is not None else "")


def summary_table(results: dict[str, dict]):
    """One row per (strategy, task): the numbers a paper table would quote."""
    from rich.table import Table

    table = Table(title="eval results (accuracy in %)")
    for column in (
        "decoding",
        "task",
        "questions × samples",
        "pass@1 ± SE",
        "task metric ± SE",
        "± seeds",
        "pass@k",
        "maj@k",
        "tokens",
        "unparseable",
        "T̂ / P̂",
    ):
        table.add_column(column, justify="left" if column in ("decoding", "task") else "right")
    for label, result in results.items():
        for task, m in result["results"].items():
            top_k = pass_k_ladder(m["samples_per_question"])[-1]
            mean_tp = f"{m['mean_temperature']:.3f} / {m['mean_top_p']:.3f}" if "mean_temperature" in m else "–"
            table.add_row(
                label,
                task,
                f"{m['n_questions']} × {m['samples_per_question']}",
                pct_se(m["pass@1"], m.get("pass@1_stderr")),
                _declared_score(m),
                pct(m.get("pass@1_seed_std")),
                f"{pct(m[f'pass@{top_k}'])} (k={top_k})",
                f"{pct(m[f'maj@{top_k}'])} (k={top_k})" if f"maj@{top_k}" in m else "–",
                f"{m['mean_tokens']:.0f}",
                str(m["unparseable"]),
                mean_tp,
            )
    return table


def _declared_score(m: dict) -> str:
    """The task's own question metric, where it declares one other than pass@1."""
    if m.get("metric", "pass@1") == "pass@1":
        return "(pass@1)"
    return f"{m['metric']} {pct_se(m['score'], m.get('score_stderr'))}"


def comparison_table(comparisons: list[TaskComparison], name_a: str, name_b: str):
    from rich.table import Table

    metrics = sorted({item.metric for item in comparisons}) or ["pass@1"]
    table = Table(
        title=f"paired per-question {' / '.join(metrics)} (in %), Δ = A − B", caption=f"A = {name_a}\nB = {name_b}"
    )
    for column in ("task", "metric", "questions", "A", "B", "Δ", "SE", "95% CI (bootstrap)"):
        table.add_column(column, justify="left" if column == "task" else "right")
    for item in comparisons:
        c = item.comparison
        table.add_row(
            item.task,
            item.metric,
            str(c.n) + (f" (+{item.only_a} A-only, +{item.only_b} B-only)" if item.only_a or item.only_b else ""),
            pct(c.mean_a),
            pct(c.mean_b),
            signed_pct(c.mean_diff),
            pct(finite(c.se)),
            ci_pct(c.ci_low, c.ci_high),
        )
    return table
