"""The splits reward training reads, checked without torch: every task's train split, and its
validation split when it validates. `RewardTrainer` reads its questions through `require_split`;
`train-heads --objective reward` calls `check_reward_splits` before torch is imported."""

from __future__ import annotations

from typing import Any, Sequence

from ..core.errors import UserError


def require_split(task: Any, split: str) -> None:
    """A task object without `splits` (a test's fake) is taken to have every split."""
    if split not in getattr(task, "splits", {split: {}}):
        raise UserError(
            f"task {task.name} has no {split} split",
            "reward training needs train (and, for validation, validation) splits: choose other tasks"
            + (" or set validation_limit=0" if split == "validation" else ""),
        )


def check_reward_splits(tasks: Sequence[Any], validation_limit: int) -> None:
    for task in tasks:
        require_split(task, "train")
        if validation_limit:
            require_split(task, "validation")
