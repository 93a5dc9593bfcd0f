"""Per-question scores in results.json: each task's declared question metric, and reading it back.

Every per-question row has `pass@1` and `score` (the task's metric, see
`benchmarks.aggregation`; equal to pass@1 for ordinary tasks); each task's metrics have
`score`, `score_stderr` (SE over questions) and `metric` (its name). Readers (compare, grid)
use `row_score` / `metric_of`, which fall back to pass@1 for results files written before
`score` existed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..core import stats
from ..tasks.aggregation import PASS1, metric_name, question_score
from ..tasks.types import Score


def record_scores(records: list[dict]) -> list[Score]:
    """The Score objects back from sample-log records."""
    return [Score(bool(r["correct"]), r.get("extracted"), dict(r.get("metrics") or {})) for r in records]


def per_question_rows(run: Any, table: list[list[dict]]) -> list[dict]:
    rows = []
    for doc, samples in zip(run.docs, table):
        n_correct = sum(bool(r["correct"]) for r in samples)
        score = question_score(run.task, doc, record_scores(samples))
        rows.append(
            {
                "doc_id": doc.doc_id,
                "n": len(samples),
                "n_correct": n_correct,
                "pass@1": n_correct / len(samples),
                "score": score,
            }
        )
    return rows


def score_metrics(task: Any, rows: list[dict]) -> dict[str, Any]:
    values = np.array([row["score"] for row in rows], dtype=float)
    se = stats.standard_error(values)
    return {
        "score": float(values.mean()),
        "score_stderr": float(se) if math.isfinite(se) else None,
        "metric": metric_name(task),
    }


def row_score(row: dict) -> float:
    return float(row["score"]) if "score" in row else float(row["pass@1"])


def metric_of(results: dict, task: str) -> str:
    """The question metric's name of one task in a results dict ("pass@1" for old files)."""
    return results.get("results", {}).get(task, {}).get("metric", PASS1)


def samples_per_question(results: dict, task: str) -> list[int]:
    """The distinct sample counts behind a task's question scores: each row's `n`, or for files
    without it the task config's k × seeds; [] when the file does not say."""
    counts = sorted({row["n"] for row in results["per_question"][task] if "n" in row})
    if counts:
        return counts
    config = results.get("configs", {}).get(task, {})
    return [config["k"] * len(config.get("seeds") or [0])] if "k" in config else []


def is_deterministic(results: dict) -> bool:
    """Greedy runs draw one sample per question because more would repeat it: their score is
    exact, so it pairs with a sampled run of any k."""
    return results.get("decoding", {}).get("name") == "greedy"
