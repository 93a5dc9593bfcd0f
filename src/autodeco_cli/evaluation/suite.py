"""Suite statistics: one decoding setting scored across a mixed suite of tasks, and two such
runs compared question by question.

A deployed model gets one setting for all of its traffic, so the number users compare is a
suite score: the mean over the T tasks of each task's question-level mean score s̄_t, every task
weighing the same however many questions it has.

Paired difference of runs A and B, with d_tq = a_tq − b_tq on the n_t questions of task t that
both scored:

    Δ = (1/T) Σ_t mean_q d_tq,    Var(Δ) = (1/T²) Σ_t Var(d_t) / n_t,    SE = √Var(Δ)

with Var(d_t) the sample variance (ddof 1) of task t's differences. Questions are sampled
independently within a task and tasks independently of each other, so the variance of the mean
of the task means is the sum of their squared standard errors over T²; pairing within a task
removes the between-question variance there, as `compare` does for one task. A run's own suite
score has the same SE formula on its scores.

The 95% CI is a stratified percentile bootstrap: each resample draws n_t questions with
replacement within every task (never across tasks, so each task keeps its weight 1/T and its
own pairing) and recomputes Δ. Chosen over the normal interval Δ ± 1.96·SE because per-question
differences of small tasks are bounded and lumpy (mostly 0, a few ±1 for pass@1), where the
percentile interval keeps the skew, and because `compare` reports each task's CI by the same
(unstratified) percentile bootstrap, so the suite CI and the task CIs read alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ..core import stats

_CHUNK = 1000  # bootstrap resamples drawn at once: bounds memory on large suites


@dataclass(frozen=True)
class SuiteScore:
    """A run's suite score: the mean of its task means, with the SE of that mean."""

    score: float
    se: float  # NaN when a task has fewer than two questions
    per_task: dict[str, float]
    n_questions: dict[str, int]


@dataclass(frozen=True)
class SuiteComparison:
    """A − B on a suite: Δ of the suite scores, its paired SE and stratified bootstrap CI, and
    each task's own paired Δ and SE."""

    delta: float
    se: float
    ci_low: float
    ci_high: float
    per_task_delta: dict[str, float]
    per_task_se: dict[str, float]
    n_questions: dict[str, int]
    confidence: float
    n_boot: int
    seed: int


def _arrays(per_task: Mapping[str, Sequence[float]]) -> dict[str, np.ndarray]:
    if not per_task:
        raise ValueError("a suite needs at least one task")
    out = {task: np.asarray(values, dtype=float) for task, values in per_task.items()}
    empty = [task for task, values in out.items() if values.size == 0]
    if empty:
        raise ValueError(f"tasks without questions: {', '.join(empty)}")
    return out


def mean_of_means_se(per_task: Mapping[str, np.ndarray]) -> float:
    """SE of (1/T) Σ_t mean(x_t) for independent tasks: √(Σ_t SE_t²) / T (NaN if any SE_t is)."""
    variance = sum(stats.standard_error(values) ** 2 for values in per_task.values())
    return math.sqrt(variance) / len(per_task)


def suite_score(per_task: Mapping[str, Sequence[float]]) -> SuiteScore:
    """Suite score of one run from each task's question scores."""
    arrays = _arrays(per_task)
    means = {task: float(values.mean()) for task, values in arrays.items()}
    return SuiteScore(
        float(np.mean(list(means.values()))),
        mean_of_means_se(arrays),
        means,
        {task: int(values.size) for task, values in arrays.items()},
    )


def stratified_bootstrap_ci(
    per_task: Mapping[str, np.ndarray], n_boot: int, seed: int, confidence: float
) -> tuple[float, float]:
    """Percentile CI of the mean of task means, resampling questions within each task."""
    rng = np.random.default_rng(seed)
    totals = np.zeros(n_boot)
    for values in per_task.values():  # dict order: the same seed gives the same CI
        for start in range(0, n_boot, _CHUNK):
            stop = min(start + _CHUNK, n_boot)
            index = rng.integers(0, values.size, size=(stop - start, values.size))
            totals[start:stop] += values[index].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(totals / len(per_task), [tail, 1.0 - tail])
    return float(low), float(high)


def paired_suite(
    a: Mapping[str, Mapping[str, float]],
    b: Mapping[str, Mapping[str, float]],
    n_boot: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> SuiteComparison:
    """A − B over the suite, paired per question within each task.

    `a` and `b` map task -> {doc_id: question score}; each task must list the same questions in
    both (align them first: the suite's meaning depends on which questions it holds)."""
    if n_boot < 1 or not 0.0 < confidence < 1.0:
        raise ValueError("need n_boot >= 1 and 0 < confidence < 1")
    if set(a) != set(b):
        raise ValueError(f"the runs cover different tasks: {sorted(set(a) ^ set(b))}")
    diffs = {}
    for task in a:
        if set(a[task]) != set(b[task]):
            raise ValueError(f"{task}: the runs cover different questions")
        keys = sorted(a[task])
        diffs[task] = np.array([a[task][k] - b[task][k] for k in keys], dtype=float)
    arrays = _arrays(diffs)
    low, high = stratified_bootstrap_ci(arrays, n_boot, seed, confidence)
    return SuiteComparison(
        delta=float(np.mean([values.mean() for values in arrays.values()])),
        se=mean_of_means_se(arrays),
        ci_low=low,
        ci_high=high,
        per_task_delta={task: float(values.mean()) for task, values in arrays.items()},
        per_task_se={task: stats.standard_error(values) for task, values in arrays.items()},
        n_questions={task: int(values.size) for task, values in arrays.items()},
        confidence=confidence,
        n_boot=n_boot,
        seed=seed,
    )
