"""Generated short-format exact extraction task (record-field): copy one field out of a record.

"Record: name: Maria; code: K7Q-204; year: 1987 / What is the code?" wants "K7Q-204": one right
answer, copied token for token, so any randomness only costs (it wants low temperature, unlike
the pick tasks). Records hold a few fields drawn from a fixed set (names, cities and colours
from word pools; codes, years, room numbers and PINs generated), in random order; one field is
asked. The question (record and asked field) goes to test, validation or train by a seeded
hash (`hashed_splits`). Prompts are raw few-shot completions: two solved train examples, then
the question.
"""

from __future__ import annotations

import hashlib
import random
import string
from dataclasses import dataclass
from typing import Any, Callable

from ..core.errors import UserError
from .hashed_splits import draw_questions
from .types import Doc, Score

N_EXAMPLES = 2
NAMES = (
    "Maria", "James", "Anna", "Omar", "Lena", "Victor", "Sofia", "Daniel", "Grace", "Hugo",
    "Irene", "Pablo", "Nadia", "Felix", "Clara", "Tomas", "Yuki", "Rosa", "Emil", "Leila",
)  # fmt: skip
CITIES = (
    "Lisbon", "Oslo", "Cairo", "Lima", "Dublin", "Madrid", "Vienna", "Quito", "Tokyo", "Nairobi",
    "Prague", "Sydney", "Denver", "Hanoi", "Milan", "Bergen", "Accra", "Porto", "Kyoto", "Austin",
)  # fmt: skip
COLORS = ("red", "blue", "green", "yellow", "purple", "orange", "black", "white", "silver", "brown")


def _code(rng: random.Random) -> str:
    letters = string.ascii_uppercase
    return f"{rng.choice(letters)}{rng.randint(1, 9)}{rng.choice(letters)}-{rng.randint(100, 999)}"


FIELDS: dict[str, Callable[[random.Random], str]] = {
    "name": lambda rng: rng.choice(NAMES),
    "city": lambda rng: rng.choice(CITIES),
    "color": lambda rng: rng.choice(COLORS),
    "code": _code,
    "year": lambda rng: str(rng.randint(1900, 2024)),
    "room": lambda rng: str(rng.randint(100, 999)),
    "pin": lambda rng: f"{rng.randint(0, 9999):04d}",
}


@dataclass(frozen=True)
class Record:
    fields: tuple[tuple[str, str], ...]  # (field, value) in the order shown
    asked: str

    @property
    def key(self) -> str:
        return f"{self.text}?{self.asked}"

    @property
    def text(self) -> str:
        return "; ".join(f"{name}: {value}" for name, value in self.fields)

    @property
    def answer(self) -> str:
        return dict(self.fields)[self.asked]

    def instruction(self) -> str:
        return f"Record: {self.text}\nWhat is the {self.asked}?"


def _draw(rng: random.Random, cfg: dict[str, Any]) -> Record:
    names = list(cfg.get("fields") or FIELDS)
    chosen = rng.sample(names, rng.choice([int(c) for c in cfg["field_counts"]]))
    return Record(tuple((name, FIELDS[name](rng)) for name in chosen), rng.choice(chosen))


def questions(split: str, n: int, cfg: dict[str, Any]) -> list[Record]:
    """`n` distinct questions of one split, the same on every call."""
    unknown = sorted(set(cfg.get("fields") or ()) - set(FIELDS))
    if unknown:
        raise UserError(f"record_lookup: unknown fields {', '.join(unknown)}", f"use some of {', '.join(FIELDS)}")
    return draw_questions("record_lookup", split, n, cfg, lambda rng: _draw(rng, cfg), split_key=lambda q: q.key)


def shots(index_seed: str, cfg: dict[str, Any]) -> str:
    """Two solved train-pool examples."""
    rng = random.Random(index_seed)
    return "\n".join(f"{e.instruction()}\n{e.answer}\n" for e in rng.sample(questions("train", 64, cfg), N_EXAMPLES))


def docs(task_name: str, prompt: str, split: str, n: int, cfg: dict[str, Any]) -> list[Doc]:
    """`prompt` is the task's template with fields {shots} and {question}."""
    out = []
    for i, q in enumerate(questions(split, n, cfg)):
        # the key's hash in the id: a changed generator never pairs its questions with old samples
        doc_id = f"{task_name}/{split}/{i}-{q.asked}-{hashlib.sha256(q.key.encode()).hexdigest()[:8]}"
        text = prompt.format(shots=shots(doc_id, cfg), question=q.instruction())
        out.append(Doc(doc_id, text, q.answer, {"asked": q.asked, "record": q.text}))
    return out


def normalise_reply(text: str) -> str:
    """The reply's first line, trimmed of spaces, one final period and surrounding quotes."""
    line = text.strip().split("\n", 1)[0].strip()
    line = line[:-1].rstrip() if line.endswith(".") else line
    return line.strip("\"'`").strip()


def score_record(doc: Doc, text: str) -> Score:
    """correct = the reply's first line is the asked value, exactly (case included)."""
    reply = normalise_reply(text)
    return Score(reply == str(doc.gold), reply or None, {})
