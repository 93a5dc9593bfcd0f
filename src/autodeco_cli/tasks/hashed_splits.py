"""Disjoint splits for generated tasks: a question's split is a seeded hash of its key.

A split is a fixed partition of the question space, not a property of the draw order, so no
question (or whatever the key identifies, e.g. an option set in any order) of one split ever
appears in another, however many questions each split is asked for. Within a split, questions
are drawn by a seeded RNG that rejects keys of other splits.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any, Callable, TypeVar

from ..core.errors import UserError

SPLITS = ("test", "validation", "train")
MAX_DRAWS = 100_000

Q = TypeVar("Q")


def split_of_key(key: str, split_seed: int, fractions: tuple[float, float]) -> str:
    """test / validation / train for `key`: the first 8 bytes of sha256 as a uniform number."""
    digest = hashlib.sha256(f"{split_seed}:{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "little") / 2**64
    test, validation = fractions
    return "test" if u < test else "validation" if u < test + validation else "train"


def draw_questions(
    name: str,
    split: str,
    n: int,
    cfg: dict[str, Any],
    draw: Callable[[random.Random], Q],
    split_key: Callable[[Q], str],
    question_key: Callable[[Q], str] | None = None,
    rng_label: str = "",
) -> list[Q]:
    """`n` distinct questions of `split`, the same on every call.

    `cfg` gives `split_seed`, `test_fraction`, `validation_fraction` and `seeds: {split: seed}`;
    `split_key` says what decides the split, `question_key` what makes two questions the same
    (by default the split key)."""
    if split not in SPLITS:
        raise UserError(f"{name} has no split {split!r}", f"splits: {', '.join(SPLITS)}")
    fractions = (float(cfg["test_fraction"]), float(cfg["validation_fraction"]))
    rng = random.Random(f"{cfg['seeds'][split]}:{rng_label}")
    out: list[Q] = []
    seen: set[str] = set()
    for _ in range(MAX_DRAWS):
        if len(out) == n:
            return out
        question = draw(rng)
        key = (question_key or split_key)(question)
        if key not in seen and split_of_key(split_key(question), int(cfg["split_seed"]), fractions) == split:
            seen.add(key)
            out.append(question)
    raise UserError(f"{name}: could not draw {n} distinct {split} questions", "ask for fewer (--limit)")


def draw_template_questions(
    family: str,
    template: str,
    templates: tuple[str, ...],
    split: str,
    n: int,
    cfg: dict[str, Any],
    draw: Callable[[str, random.Random, tuple[int, ...]], Q],
) -> list[Q]:
    """`draw_questions` for a family of templates whose questions state an option set: `cfg`'s
    `set_sizes`, the split decided by the question's `set_key` (the set in any order), two questions
    the same when their `key`s are (the set as asked), one RNG stream per template."""
    if template not in templates:
        raise UserError(f"Unknown {family} template {template!r}", f"use one of {', '.join(templates)}")
    sizes = tuple(int(s) for s in cfg["set_sizes"])
    return draw_questions(
        f"{family} {template}",
        split,
        n,
        cfg,
        lambda rng: draw(template, rng, sizes),
        split_key=lambda q: q.set_key,
        question_key=lambda q: q.key,
        rng_label=template,
    )
