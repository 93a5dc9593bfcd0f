"""Statistics: pass@k against brute force, maj@k, pass@1 with SE, seed spread, paired bootstrap."""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pytest

from autodeco_cli.core.stats import (
    maj_at_k,
    majority_answer,
    mean_pass1,
    mean_pass_at_k,
    paired_comparison,
    pass_at_k,
    seed_spread,
    standard_error,
)


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of all k-subsets of the n samples that contain at least one correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(combinations(range(n), k))
    return sum(any(samples[i] for i in subset) for subset in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_matches_enumeration(n: int) -> None:
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_1_is_the_fraction_correct() -> None:
    assert pass_at_k(16, 5, 1) == pytest.approx(5 / 16)


def test_pass_at_k_is_stable_for_large_n() -> None:
    n, c, k = 2000, 3, 100
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-9)
    assert pass_at_k(100_000, 0, 50) == 0.0
    assert pass_at_k(100_000, 99_990, 50) == 1.0


@pytest.mark.parametrize("n, c, k", [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)])
def test_pass_at_k_rejects_bad_arguments(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_mean_pass_at_k() -> None:
    assert mean_pass_at_k([(4, 0), (4, 4), (4, 2)], 1) == pytest.approx((0 + 1 + 0.5) / 3)
    assert mean_pass_at_k([(4, 1), (4, 0)], 2) == pytest.approx((0.5 + 0) / 2)


def test_majority_vote_ties_and_none() -> None:
    assert majority_answer(["3", "4", "4", "3", None, None, None]) == "3"  # tie: "3" came first
    assert majority_answer([None, "7", None]) == "7"  # None never wins however many
    assert majority_answer([None, None]) is None
    assert majority_answer(["b", "a", "a"]) == "a"


def test_maj_at_k_uses_first_k_samples() -> None:
    answers = ["5", "6", "6", "5", "5"]
    correct = [True, False, False, True, True]
    assert maj_at_k(answers, correct, 1) is True
    assert maj_at_k(answers, correct, 3) is False  # "6" wins 2-1 among the first three
    assert maj_at_k(answers, correct, 4) is True  # 2-2 tie: "5" was seen first
    assert maj_at_k(answers, correct, 5) is True
    assert maj_at_k([None, None], [False, False], 2) is False
    with pytest.raises(ValueError):
        maj_at_k(answers, correct, 6)


def test_mean_pass1_and_standard_error() -> None:
    per_question = [[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]]
    mean, se = mean_pass1(per_question)
    means = np.array([0.5, 1.0, 0.0])
    assert mean == pytest.approx(0.5)
    assert se == pytest.approx(means.std(ddof=1) / math.sqrt(3))
    # More samples of the same questions change nothing: SE is over questions.
    assert mean_pass1([q * 2 for q in per_question]) == pytest.approx((mean, se))
    assert math.isnan(mean_pass1([[1, 0]])[1])
    with pytest.raises(ValueError):
        mean_pass1([[1], []])


def test_seed_spread() -> None:
    mean, std = seed_spread([0.40, 0.50, 0.60])
    assert mean == pytest.approx(0.5)
    assert std == pytest.approx(np.std([0.4, 0.5, 0.6]))
    assert seed_spread([0.40, 0.50, 0.60], ddof=1)[1] == pytest.approx(0.1)
    assert seed_spread([0.3]) == (0.3, 0.0)


def test_standard_error() -> None:
    assert standard_error([1.0, 3.0]) == pytest.approx(1.0)
    assert math.isnan(standard_error([2.0]))


def test_paired_comparison_basics() -> None:
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 1, 200)
    a = np.clip(base + 0.1 + rng.normal(0, 0.05, 200), 0, None)
    b = base
    result = paired_comparison(a, b, n_boot=2000, seed=3)
    diff = a - b
    assert result.n == 200
    assert result.mean_diff == pytest.approx(diff.mean())
    assert result.mean_a - result.mean_b == pytest.approx(result.mean_diff)
    assert result.se == pytest.approx(diff.std(ddof=1) / math.sqrt(200))
    assert result.ci_low < result.mean_diff < result.ci_high
    # The bootstrap CI of a mean is close to the normal one, +-1.96 SE.
    assert result.ci_high - result.ci_low == pytest.approx(2 * 1.96 * result.se, rel=0.15)
    assert result.ci_low > 0  # a clear improvement is detected


def test_paired_bootstrap_is_seeded() -> None:
    a, b = [1, 0, 1, 1, 0, 1, 0, 1], [0, 0, 1, 0, 0, 1, 1, 0]
    first = paired_comparison(a, b, n_boot=500, seed=7)
    assert paired_comparison(a, b, n_boot=500, seed=7) == first
    assert paired_comparison(a, b, n_boot=500, seed=8) != first


def test_paired_bootstrap_pairs_questions() -> None:
    # Identical per-question shifts: zero variance of the difference, so a degenerate CI,
    # although each run alone varies a lot between questions.
    a = [0.1, 0.9, 0.3, 0.7]
    b = [x - 0.1 for x in a]
    result = paired_comparison(a, b, n_boot=300)
    assert result.ci_low == pytest.approx(0.1) and result.ci_high == pytest.approx(0.1)
    assert result.se == pytest.approx(0.0, abs=1e-12)


def test_paired_comparison_aligns_mappings_by_key() -> None:
    a = {"q1": 1.0, "q2": 0.0, "q3": 1.0}
    b = {"q3": 0.0, "q1": 1.0, "q2": 0.0}
    assert paired_comparison(a, b, n_boot=100).mean_diff == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        paired_comparison(a, {"q1": 1.0, "q2": 0.0, "q4": 0.0})
    with pytest.raises(ValueError):
        paired_comparison([1, 0], [1])
