"""Task-level metrics from one strategy's samples: pass@1 ± SE, seed spread, pass@k, maj@k,
token counts, the scorer's secondary metrics and the mean T̂/P̂ of head strategies.

Input is the table `question_samples` reads from a sample log: one row per question, its
records in seed-major sample order (the order maj@k reads "first k" in). Task-specific
choices are the task's own (`benchmarks.registry`: whether answers vote, how its secondary
metrics aggregate); nothing here names a task.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..core import stats
from ..tasks.registry import aggregate_metrics, task_voting


def pass_k_ladder(n: int) -> list[int]:
    """1, 4, 8, 16, ... up to n: the k values reported for pass@k and maj@k."""
    ladder, k = [1], 4
    while k <= n:
        ladder.append(k)
        k *= 2
    return ladder


def finite(value: float | None) -> float | None:
    # JSON has no NaN: a statistic that is undefined (one question, one seed) is null.
    return None if value is None or not math.isfinite(value) else float(value)


def task_metrics(table: list[list[dict]], k: int, n_seeds: int, task: Any = None) -> dict[str, Any]:
    """`table[q]` holds question q's k × n_seeds records, seed-major; `task` says whether its
    answers vote and how its secondary metrics aggregate (defaults: they do, by mean)."""
    correct = np.array([[r["correct"] for r in rows] for rows in table], dtype=float)
    n_q, n = correct.shape
    pass1, se = stats.mean_pass1(correct.tolist())
    per_seed = correct.reshape(n_q, n_seeds, k).mean(axis=(0, 2))
    _, seed_std = stats.seed_spread(per_seed)
    metrics: dict[str, Any] = {
        "pass@1": pass1,
        "pass@1_stderr": finite(se),
        "pass@1_seed_std": finite(seed_std) if n_seeds > 1 else None,
        "pass@1_per_seed": [float(x) for x in per_seed],
        "n_questions": n_q,
        "samples_per_question": n,
    }
    counts = [(n, int(c)) for c in correct.sum(axis=1)]
    for kk in pass_k_ladder(n)[1:]:
        metrics[f"pass@{kk}"] = stats.mean_pass_at_k(counts, kk)
    if task_voting(task):
        metrics.update(majority_votes(table, n))
    records = [r for rows in table for r in rows]
    metrics["mean_tokens"] = float(np.mean([r["num_tokens"] for r in records]))
    metrics["unparseable"] = sum(r["extracted"] is None for r in records)
    metrics["truncated"] = sum(r["finish_reason"] == "length" for r in records)
    metrics.update(sample_metric_means(records, task))
    metrics.update(mean_decoding_parameters(records))
    return metrics


def majority_votes(table: list[list[dict]], n: int) -> dict[str, float]:
    """maj@k along the ladder: the extracted answers vote (whitespace-normalised)."""
    answers = [[_vote_key(r["extracted"]) for r in rows] for rows in table]
    out = {}
    for kk in pass_k_ladder(n):
        votes = [stats.maj_at_k(a, [r["correct"] for r in rows], kk) for a, rows in zip(answers, table)]
        out[f"maj@{kk}"] = float(np.mean(votes))
    return out


def _vote_key(extracted: Any) -> Any:
    return None if extracted is None else " ".join(str(extracted).split())


def sample_metric_means(records: list[dict], task: Any = None) -> dict[str, float]:
    """The scorer's secondary metrics, aggregated as the task declares (a plain mean per key
    unless it names another aggregation, e.g. IFEval's)."""
    return aggregate_metrics(task, [r.get("metrics") or {} for r in records])


def mean_decoding_parameters(records: list[dict]) -> dict[str, float]:
    """Token-weighted mean T̂/P̂ of an autodeco run: the keys the mean-shift baseline reads."""
    traced = [r for r in records if r.get("mean_temperature") is not None and r["num_tokens"] > 0]
    if not traced:
        return {}
    weights = np.array([r["num_tokens"] for r in traced], dtype=float)
    return {
        "mean_temperature": float(np.average([r["mean_temperature"] for r in traced], weights=weights)),
        "mean_top_p": float(np.average([r["mean_top_p"] for r in traced], weights=weights)),
    }
