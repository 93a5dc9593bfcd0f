"""Synthetic arithmetic problems with disjoint, reproducible train and test splits.

The whole problem space of an operation is small (at most 8,100 pairs), so it is split once:
a seeded shuffle of the full space, whose first `test_fraction` is the test pool and the rest
the training pool. The first `validation_size` problems of the training pool are held out as
the validation split (where settings and checkpoints are chosen), the rest is the train split.
No test or validation problem can then appear in train data, however many items are asked for.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from itertools import islice
from typing import Iterator

from ..core.errors import UserError

OPERATIONS = ("add", "sub", "mul")
SYMBOLS = {"add": "+", "sub": "-", "mul": "*"}
TWO_DIGIT = range(10, 100)
ONE_DIGIT_FACTOR = range(2, 10)  # 0 and 1 make trivial products


@dataclass(frozen=True)
class Problem:
    a: int
    b: int
    op: str

    @property
    def answer(self) -> int:
        if self.op == "add":
            return self.a + self.b
        if self.op == "sub":
            return self.a - self.b
        return self.a * self.b

    @property
    def key(self) -> str:
        return f"{self.a}{SYMBOLS[self.op]}{self.b}"


def problem_space(op: str) -> list[Problem]:
    """Every problem of `op`, in a fixed order (the split shuffles start from it)."""
    if op == "add":
        return [Problem(a, b, op) for a in TWO_DIGIT for b in TWO_DIGIT]
    if op == "sub":
        # Negative results were left out: the CPU probe showed they only add sign errors.
        return [Problem(a, b, op) for a in TWO_DIGIT for b in TWO_DIGIT if a >= b]
    if op == "mul":
        return [Problem(a, b, op) for a in ONE_DIGIT_FACTOR for b in TWO_DIGIT]
    raise UserError(f"Unknown arithmetic operation {op!r}", f"use one of {', '.join(OPERATIONS)}")


def split_pools(
    op: str, split_seed: int, test_fraction: float, validation_size: int = 0
) -> tuple[list[Problem], list[Problem], list[Problem]]:
    """(test pool, validation pool, train pool): a seeded partition of the problem space."""
    if not 0.0 < test_fraction < 1.0:
        raise UserError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    space = problem_space(op)
    random.Random(split_seed).shuffle(space)
    n_test = int(round(len(space) * test_fraction))
    if not 0 <= validation_size < len(space) - n_test:
        raise UserError(f"validation_size {validation_size} leaves no train problems for arith-{op}")
    rest = space[n_test:]
    return space[:n_test], rest[:validation_size], rest[validation_size:]


def eval_problems(
    op: str, n: int, split_seed: int, test_fraction: float, validation_size: int = 0, split: str = "test"
) -> list[Problem]:
    """The first `n` problems of the test (or validation) pool; asking for more than the pool
    holds is an error, since repeats would silently weight some items twice."""
    test, validation, _ = split_pools(op, split_seed, test_fraction, validation_size)
    pool = validation if split == "validation" else test
    if n > len(pool):
        raise UserError(f"arith-{op} has only {len(pool)} {split} problems, {n} were asked for")
    return pool[:n]


def train_stream(
    op: str, split_seed: int, test_fraction: float, train_seed: int, validation_size: int = 0
) -> Iterator[Problem]:
    """An endless stream of train problems: the train pool reshuffled every epoch.

    On-policy data making may want more items than the pool holds; repeats across epochs
    are fine there, unlike in a test set.
    """
    pool = split_pools(op, split_seed, test_fraction, validation_size)[2]
    rng = random.Random(train_seed)
    while True:
        epoch = list(pool)
        rng.shuffle(epoch)
        yield from epoch


def train_problems(
    op: str, n: int | None, split_seed: int, test_fraction: float, train_seed: int, validation_size: int = 0
) -> list[Problem]:
    """`n` train problems, or one epoch of the pool when `n` is None."""
    if n is None:
        n = len(split_pools(op, split_seed, test_fraction, validation_size)[2])
    return list(islice(train_stream(op, split_seed, test_fraction, train_seed, validation_size), n))


_INT = re.compile(r"(?:(?<![\w)])-)?\d+(?:,\d{3})*(?!\d)")


def extract_integer(text: str) -> int | None:
    """The first integer after the first '=', else the last integer in the text.

    Small models restate the problem ("27 + 82 = 109"), so the first integer is nearly always
    an operand; the number right after '=' is the model's answer. A '-' only counts as a sign
    where it cannot be a minus between two operands.
    """
    head, sep, tail = text.partition("=")
    if sep:
        match = _INT.search(tail)
        return _to_int(match.group(0)) if match else None
    matches = _INT.findall(head)
    return _to_int(matches[-1]) if matches else None


def _to_int(token: str) -> int:
    return int(token.replace(",", ""))
