"""Re-balancing on-policy data for tasks with a target distribution (the rand-* family).

Kept on-policy samples follow the model's own preferences: a 135M model asked for a random
pick from a list takes its favourite value or list position most of the time, so heads
trained on raw kept samples would learn that skew as the target. Two steps undo what can be
undone without inventing data:

1. per question, at most one kept sample per distinct chosen value (the first in sample order),
   so every value the model produced for that question appears exactly once;
2. across the task, per set size m, each list position's count is capped at the median count of
   the positions the model picked at least once (seeded random drops), so no position dominates.

What it cannot fix: values or positions the model never produces stay absent (nothing is
synthesised), and a question where the model produced one value contributes one sample.
"""

from __future__ import annotations

import random
import statistics
from collections import defaultdict
from typing import Any, Sequence


def one_per_value(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One question's kept records, at most one per distinct `choice` (first in order)."""
    seen, out = set(), []
    for record in records:
        if record["choice"] not in seen:
            seen.add(record["choice"])
            out.append(record)
    return out


def balance_positions(records: Sequence[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """A task's records with each (set size, list position) capped at the median count of the
    positions of that set size that occur; order of the survivors is kept."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        groups[int(record["n_choices"]), int(record["choice_position"])].append(index)
    drop: set[int] = set()
    rng = random.Random(seed)
    for size in sorted({m for m, _ in groups}):
        counts = {pos: len(idx) for (m, pos), idx in groups.items() if m == size}
        cap = int(statistics.median(counts.values()))
        for pos in sorted(counts):
            indices = groups[size, pos]
            if len(indices) > cap:
                drop.update(rng.sample(indices, len(indices) - cap))
    return [r for i, r in enumerate(records) if i not in drop]
