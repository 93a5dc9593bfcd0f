"""Evaluation statistics: pass@k, maj@k, mean pass@1 with its error, seed spread, paired tests.

Pure functions on Python sequences / numpy arrays, so reports and tests can use them
without loading a model.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Hashable, Mapping, Sequence

import numpy as np

_BOOTSTRAP_CHUNK = 1000


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021).

    1 - C(n-c, k) / C(n, k), computed as a running product so that large n neither
    overflows nor loses precision.
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(counts: Sequence[tuple[int, int]], k: int) -> float:
    """Mean pass@k over questions, each given as (n samples, c correct)."""
    if not counts:
        raise ValueError("no questions")
    return float(np.mean([pass_at_k(n, c, k) for n, c in counts]))


def majority_answer(answers: Sequence[Hashable | None]) -> Hashable | None:
    """The most frequent non-None answer; ties go to the answer seen first.

    Unparseable samples (None) do not vote; with no votes at all the result is None.
    """
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return None
    best = max(votes.values())
    return next(a for a in answers if a is not None and votes[a] == best)


def maj_at_k(answers: Sequence[Hashable | None], correct: Sequence[bool], k: int) -> bool:
    """Whether the majority answer of the first k samples is correct.

    The voted answer's correctness is read from a sample that gave it, so answers that the
    scorer judged equivalent but spelled differently ("1/2", "0.5") vote separately, while the
    verdict stays the scorer's.
    """
    if len(answers) != len(correct):
        raise ValueError("answers and correct must have the same length")
    if not 1 <= k <= len(answers):
        raise ValueError(f"need 1 <= k <= {len(answers)}, got k={k}")
    head = list(answers[:k])
    winner = majority_answer(head)
    if winner is None:
        return False
    return bool(correct[head.index(winner)])


def _per_question_means(per_question: Sequence[Sequence[float]]) -> np.ndarray:
    if len(per_question) == 0:
        raise ValueError("no questions")
    if any(len(samples) == 0 for samples in per_question):
        raise ValueError("every question needs at least one sample")
    return np.array([np.mean(np.asarray(s, dtype=float)) for s in per_question])


def standard_error(values: Sequence[float] | np.ndarray) -> float:
    """Sample standard deviation (ddof=1) over sqrt(n); NaN for fewer than two values."""
    arr = np.asarray(values, dtype=float)
    if arr.size < 2:
        return float("nan")
    return float(arr.std(ddof=1) / math.sqrt(arr.size))


def mean_pass1(per_question: Sequence[Sequence[float]]) -> tuple[float, float]:
    """(mean pass@1, its standard error) from each question's k sample scores.

    pass@1 of a question is the mean over its samples; the SE is over questions, the unit
    the benchmark samples, so it shrinks with more questions, not with more samples.
    """
    means = _per_question_means(per_question)
    return float(means.mean()), standard_error(means)


def seed_spread(per_seed_accuracy: Sequence[float], ddof: int = 0) -> tuple[float, float]:
    """(mean, std) across seeds of each seed's mean accuracy: the paper's "±".

    ddof=0 (numpy's default) is assumed to match the paper's tables; pass ddof=1 for the
    sample standard deviation.
    """
    arr = np.asarray(per_seed_accuracy, dtype=float)
    if arr.size == 0:
        raise ValueError("no seeds")
    if arr.size <= ddof:
        return float(arr.mean()), float("nan")
    return float(arr.mean()), float(arr.std(ddof=ddof))


@dataclass(frozen=True)
class PairedComparison:
    """a - b over the same questions: mean difference, its SE and a bootstrap CI."""

    n: int
    mean_a: float
    mean_b: float
    mean_diff: float
    se: float
    ci_low: float
    ci_high: float
    confidence: float
    n_boot: int
    seed: int


def _aligned(
    a: Sequence[float] | Mapping[str, float], b: Sequence[float] | Mapping[str, float]
) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        if not (isinstance(a, Mapping) and isinstance(b, Mapping)):
            raise ValueError("pass both runs as mappings or both as sequences")
        if set(a) != set(b):
            raise ValueError(f"runs cover different questions ({len(set(a) ^ set(b))} differ)")
        keys = sorted(a)
        return np.array([a[k] for k in keys], dtype=float), np.array([b[k] for k in keys], dtype=float)
    if len(a) != len(b):
        raise ValueError(f"runs have different lengths: {len(a)} and {len(b)}")
    return np.asarray(a, dtype=float), np.asarray(b, dtype=float)


def bootstrap_mean_ci(values: np.ndarray, n_boot: int, seed: int, confidence: float) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean, resampling in chunks to bound memory."""
    rng = np.random.default_rng(seed)
    n = values.size
    means = np.empty(n_boot)
    for start in range(0, n_boot, _BOOTSTRAP_CHUNK):
        stop = min(start + _BOOTSTRAP_CHUNK, n_boot)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = values[idx].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def paired_comparison(
    a: Sequence[float] | Mapping[str, float],
    b: Sequence[float] | Mapping[str, float],
    n_boot: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> PairedComparison:
    """Compare two runs question by question (per-question scores, e.g. mean pass@1).

    Pass sequences in the same question order, or mappings doc_id -> score (aligned by key).
    Pairing removes the between-question variance that dominates small benchmarks, so
    differences that unpaired error bars hide can show up here.
    """
    if n_boot < 1 or not 0.0 < confidence < 1.0:
        raise ValueError("need n_boot >= 1 and 0 < confidence < 1")
    xa, xb = _aligned(a, b)
    if xa.size == 0:
        raise ValueError("no questions")
    diff = xa - xb
    low, high = bootstrap_mean_ci(diff, n_boot, seed, confidence)
    return PairedComparison(
        n=int(diff.size),
        mean_a=float(xa.mean()),
        mean_b=float(xb.mean()),
        mean_diff=float(diff.mean()),
        se=standard_error(diff),
        ci_low=low,
        ci_high=high,
        confidence=confidence,
        n_boot=n_boot,
        seed=seed,
    )
