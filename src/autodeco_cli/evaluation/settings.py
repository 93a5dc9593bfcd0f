"""What an eval-like run samples (k per seed per question, budget, questions, prompt form), and
the checks commands run on it before a model loads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..core.errors import UserError


@dataclass(frozen=True)
class EvalSettings:
    """Every strategy of a run samples k times for each seed on each of the task's questions."""

    k: int = 1
    seeds: Sequence[int] = (0,)
    max_new_tokens: int | None = None  # None: each task's own budget
    batch_size: int = 8  # rows per forward pass (the engine's `batch_size`)
    limit: int | None = None  # only the first `limit` questions (a seeded subset where a task defines one)
    chat: bool = True  # the chat template (tasks that declare plain prompts keep them)
    split: str = "test"  # "validation" is where settings are chosen
    data_dir: str | Path | None = None

    def check(self) -> None:
        check_run_settings(self.k, self.seeds, self.batch_size, self.max_new_tokens)
        if self.limit is not None and self.limit < 1:
            raise UserError(f"--limit {self.limit}: need at least one question")


def check_run_settings(k: int, seeds: Sequence[int], batch_size: int, max_new_tokens: int | None = None) -> None:
    """The sampling settings every eval-like run needs; commands call it before loading a model."""
    if k < 1:
        raise UserError(f"-k {k}: need at least one sample per seed")
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError("need at least one seed, without repeats")
    if batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise UserError("--max-new-tokens must be at least 1")
