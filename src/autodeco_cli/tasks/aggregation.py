"""Question-level metrics: how a task turns one question's k sample scores into one number.

Like lm-evaluation-harness, the task declares its aggregation (`question_metric` in its YAML)
and the runner only calls `question_score`; it never special-cases a task. Tasks that declare
none score a question by the mean of its samples' `correct` (pass@1).

`exact_tv` (the random-choice family): score = exact × (1 − TV), where

- exact = the share of the k samples whose `correct` is true (exact step right and the pick one
  of the stated options);
- TV = ½ Σ_v |q̂(v) − 1/m| over the m stated options, + ½ × (share of samples whose pick is off
  the set or unparseable): the total-variation distance between the empirical distribution of
  the k picks (`Score.extracted`) and the uniform target over the options, with invalid picks as
  mass outside the support. TV is 0 only when every option is picked exactly k/m times, so it
  has a floor above 0 when m does not divide k (the tasks use m ∈ {2, 4, 8} for k = 8).

Pure functions of Score objects: reward code can call `question_score` on leave-one-out subsets.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

from .types import Doc, Score

PASS1 = "pass@1"
EXACT_TV = "exact_tv"
METRIC_NAMES = {PASS1: "pass@1", EXACT_TV: "exact×(1−TV)"}


def declared_metric(task: Any) -> str:
    """The task's question metric key: "pass@1" unless its definition declares another."""
    return (getattr(task, "options", None) or {}).get("question_metric", PASS1)


def metric_name(task: Any) -> str:
    return METRIC_NAMES[declared_metric(task)]


def target_support(task: Any, doc: Doc) -> list[str] | None:
    """The values the task wants sampled uniformly for this doc, or None for ordinary tasks."""
    if declared_metric(task) != EXACT_TV:
        return None
    return [normalise_choice(doc, c) for c in doc.meta["choices"]]


def normalise_choice(doc: Doc, value: str) -> str:
    # the scorer lower-cases word picks; stated options are compared in the same form
    return value.lower() if doc.meta.get("template") == "item" else value


def total_variation(picks: Sequence[str | None], support: Sequence[str]) -> float:
    """TV between the empirical distribution of `picks` and the uniform one over `support`."""
    if not picks:
        raise ValueError("no samples")
    support_set = set(support)
    counts = Counter(p for p in picks if p in support_set)
    k, m = len(picks), len(support_set)
    outside = k - sum(counts.values())
    inside = sum(abs(counts.get(v, 0) / k - 1.0 / m) for v in support_set)
    return 0.5 * (inside + outside / k)


def exact_tv(scores: Sequence[Score], support: Sequence[str]) -> float:
    exact = sum(bool(s.correct) for s in scores) / len(scores)
    return exact * (1.0 - total_variation([s.extracted for s in scores], support))


def question_score(task: Any, doc: Doc, scores: Sequence[Score]) -> float:
    """The task's declared question metric over one question's samples."""
    if not scores:
        raise ValueError("no samples")
    support = target_support(task, doc)
    if support is None:
        return sum(bool(s.correct) for s in scores) / len(scores)
    return exact_tv(scores, support)
