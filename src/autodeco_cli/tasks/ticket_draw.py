"""Generated "draw a ticket, then add" task (ticket-add): pick at random, then compute exactly.

A new pick-then-compute family, unlike the random_choice tasks in three ways: the support is
implied by a range ("tickets numbered 23 to 26"), never listed, so the model must spread its
pick over values the prompt does not spell out; the pick is a two-digit number whose tens digit
is fixed and whose units digit is the random token; and the exact step is an addition with
carries ("24 + 7 = 31"), not a times table or a copy.

Ranges hold 2, 4 or 8 consecutive numbers inside one decade (so the tens digit is never the
choice), and the addend is a single digit. The question (range, addend) is assigned to test,
validation or train by a seeded hash (`hashed_splits`), so the splits share no question.
Prompts are raw few-shot completions, as for random_choice: two solved train examples with
uniformly drawn picks, then the question.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

from .hashed_splits import draw_questions
from .types import Doc, Score

N_EXAMPLES = 2


@dataclass(frozen=True)
class Ticket:
    low: int
    size: int
    addend: int

    @property
    def high(self) -> int:
        return self.low + self.size - 1

    @property
    def key(self) -> str:
        return f"{self.low}-{self.high}+{self.addend}"

    @property
    def choices(self) -> list[str]:
        return [str(v) for v in range(self.low, self.high + 1)]

    def instruction(self) -> str:
        return (
            f"Tickets numbered {self.low} to {self.high} are in a hat. "
            f"Draw one at random and add {self.addend} to its number."
        )

    def answer(self, pick: int) -> str:
        return f"{pick} + {self.addend} = {pick + self.addend}"


def _draw(rng: random.Random, cfg: dict[str, Any]) -> Ticket:
    size = rng.choice([int(s) for s in cfg["set_sizes"]])
    tens = rng.choice([int(t) for t in cfg["tens"]])
    units = rng.randrange(0, 10 - size + 1)  # the range stays inside its decade
    return Ticket(10 * tens + units, size, rng.choice([int(a) for a in cfg["addends"]]))


def questions(split: str, n: int, cfg: dict[str, Any]) -> list[Ticket]:
    """`n` distinct questions of one split, the same on every call."""
    return draw_questions("ticket_draw", split, n, cfg, lambda rng: _draw(rng, cfg), split_key=lambda q: q.key)


def shots(index_seed: str, cfg: dict[str, Any]) -> str:
    """Two solved train-pool examples with uniformly drawn picks, so no value is favoured."""
    rng = random.Random(index_seed)
    examples = rng.sample(questions("train", 64, cfg), N_EXAMPLES)
    return "\n".join(f"{e.instruction()}\n{e.answer(rng.randint(e.low, e.high))}\n" for e in examples)


def docs(task_name: str, prompt: str, split: str, n: int, cfg: dict[str, Any]) -> list[Doc]:
    """`prompt` is the task's template with fields {shots} and {question}."""
    out = []
    for i, q in enumerate(questions(split, n, cfg)):
        doc_id = f"{task_name}/{split}/{i}-{q.key}"
        # `choices` is the target support the exact×(1−TV) metric reads (tasks.aggregation)
        meta = {"low": q.low, "high": q.high, "addend": q.addend, "choices": q.choices}
        text = prompt.format(shots=shots(doc_id, cfg), question=q.instruction())
        out.append(Doc(doc_id, text, {"low": q.low, "high": q.high, "addend": q.addend}, meta))
    return out


# digit runs bounded: int() of a run past 4,300 digits raises, and the scorer must never raise
_SUM = re.compile(r"^\s*(\d{1,6})\s*\+\s*(\d{1,6})\s*=\s*(\d{1,7})\s*\.?\s*$")


def score_ticket(doc: Doc, text: str) -> Score:
    """correct = the reply's first line is 'N + a = S' with the stated addend a, S = N + a, and
    N inside the stated range. `extracted` is N, also when it is off the range (still a pick)."""
    lines = text.strip().split("\n", 1)
    match = _SUM.match(lines[0]) if lines[0] else None
    if not match:
        return Score(False, None, {"exact_step": 0.0, "valid_choice": 0.0})
    pick, addend, total = (int(g) for g in match.groups())
    exact = addend == int(doc.gold["addend"]) and total == pick + addend
    valid = int(doc.gold["low"]) <= pick <= int(doc.gold["high"])
    return Score(exact and valid, str(pick), {"exact_step": float(exact), "valid_choice": float(valid)})
