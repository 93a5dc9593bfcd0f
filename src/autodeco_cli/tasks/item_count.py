"""Generated "how many items" task (count-words): count a stated list, one exact number.

A short-answer family unlike the training ones: the reply is a number that appears nowhere in
the prompt, computed by counting rather than by arithmetic on stated digits, picked among
stated options or copied. Lists hold 2 to 7 single-token words (repeats allowed, so the count
is not the number of distinct words).

The question (the list as asked) goes to test, validation or train by a seeded hash
(`hashed_splits`), so the splits share no question. Prompts are raw few-shot completions, as for
random_choice: two solved train examples, then the question.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

from .hashed_splits import draw_questions
from .random_choice import WORDS
from .types import Doc, Score

N_EXAMPLES = 2


@dataclass(frozen=True)
class Items:
    words: tuple[str, ...]

    @property
    def key(self) -> str:
        return ",".join(self.words)

    def instruction(self) -> str:
        return f"How many words are in this list: {', '.join(self.words)}?"

    def answer(self) -> str:
        return str(len(self.words))


def _draw(rng: random.Random, cfg: dict[str, Any]) -> Items:
    size = rng.randint(int(cfg["min_words"]), int(cfg["max_words"]))
    return Items(tuple(rng.choice(WORDS) for _ in range(size)))


def questions(split: str, n: int, cfg: dict[str, Any]) -> list[Items]:
    """`n` distinct questions of one split, the same on every call."""
    return draw_questions("item_count", split, n, cfg, lambda rng: _draw(rng, cfg), split_key=lambda q: q.key)


def shots(question: Items, index_seed: str, cfg: dict[str, Any]) -> str:
    """Two solved train-pool examples, never the question itself."""
    rng = random.Random(index_seed)
    examples = rng.sample([e for e in questions("train", 64, cfg) if e.key != question.key], N_EXAMPLES)
    return "\n".join(f"{e.instruction()}\n{e.answer()}\n" for e in examples)


def docs(task_name: str, prompt: str, split: str, n: int, cfg: dict[str, Any]) -> list[Doc]:
    """`prompt` is the task's template with fields {shots} and {question}."""
    out = []
    for i, q in enumerate(questions(split, n, cfg)):
        doc_id = f"{task_name}/{split}/{i}-{len(q.words)}"
        gold = {"words": list(q.words), "count": len(q.words)}
        text = prompt.format(shots=shots(q, doc_id, cfg), question=q.instruction())
        out.append(Doc(doc_id, text, gold, dict(gold)))
    return out


_COUNT = re.compile(r"^\s*(\d{1,3})\s*\.?\s*$")


def score_count(doc: Doc, text: str) -> Score:
    """correct = the reply's first line is the count alone (one final period allowed)."""
    lines = text.strip().split("\n", 1)
    match = _COUNT.match(lines[0]) if lines[0] else None
    if not match:
        return Score(False, None, {})
    return Score(int(match.group(1)) == int(doc.gold["count"]), match.group(1), {})
