"""Generated "take the stated option a rule names" tasks (group exact): a pick with one right answer.

The counterpart of the random_choice tasks. The prompt states options the same way, but an
instruction names which one to take, so the first reply token looks like a choice among stated
options and is exact. Heads that learned "be random at the first reply token of a raw few-shot
prompt" fail these; heads that read the instruction stay cold. Two templates:

- "first": the first number of a stated list of 2, 4 or 8 digits, then multiply it by 2 or 3
  ('N x c = M'): the minimal pair of rand-times, same prompt and reply shape.
- "initial": the one word of a stated list of 2, 4 or 8 words (initials all different) that
  starts with a named letter; the reply is the word.

The question (the set, in any order, with its factor or letter) goes to test, validation or
train by a seeded hash (`hashed_splits`), so the splits share no set. Prompts are raw few-shot
completions, as for random_choice: two solved train examples, then the question.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from .hashed_splits import draw_template_questions
from .random_choice import FACTORS, WORDS, parse
from .types import Doc, Score

TEMPLATES = ("first", "initial")
N_EXAMPLES = 2


@dataclass(frozen=True)
class Pick:
    template: str
    choices: tuple[str, ...]  # in prompt order
    cue: str  # the factor ("first") or the letter ("initial")

    @property
    def key(self) -> str:
        """The question as asked: the same set in another order is another question."""
        return f"{','.join(self.choices)}:{self.cue}"

    @property
    def set_key(self) -> str:
        """What decides the split: the set (any order) with its cue."""
        return f"{','.join(sorted(self.choices))}:{self.cue}"

    @property
    def target(self) -> str:
        if self.template == "first":
            return self.choices[0]
        return next(c for c in self.choices if c[0].upper() == self.cue)

    def instruction(self) -> str:
        if self.template == "first":
            return f"Take the first number from: {', '.join(self.choices)}. Then multiply it by {self.cue}."
        return f"Which word starts with the letter {self.cue}: {', '.join(self.choices)}?"

    def answer(self) -> str:
        if self.template == "first":
            return f"{self.target} x {self.cue} = {int(self.target) * int(self.cue)}"
        return self.target


def _draw(template: str, rng: random.Random, sizes: tuple[int, ...]) -> Pick:
    size = rng.choice(sizes)
    if template == "first":
        digits = rng.sample(range(1, 10), size)
        return Pick(template, tuple(str(v) for v in digits), str(rng.choice(FACTORS)))
    by_initial: dict[str, str] = {}
    for word in rng.sample(WORDS, len(WORDS)):
        by_initial.setdefault(word[0], word)  # one word per initial, so the letter names one word
    words = rng.sample(sorted(by_initial.values()), size)
    return Pick(template, tuple(words), rng.choice(words)[0].upper())


def questions(template: str, split: str, n: int, cfg: dict[str, Any]) -> list[Pick]:
    """`n` distinct questions of one split, the same on every call."""
    return draw_template_questions("exact_pick", template, TEMPLATES, split, n, cfg, _draw)


def shots(question: Pick, index_seed: str, cfg: dict[str, Any]) -> str:
    """Two solved train-pool examples, never the question itself (a train question would read
    its own answer)."""
    rng = random.Random(index_seed)
    pool = [e for e in questions(question.template, "train", 64, cfg) if e.key != question.key]
    examples = rng.sample(pool, N_EXAMPLES)
    return "\n".join(f"{e.instruction()}\n{e.answer()}\n" for e in examples)


def docs(task_name: str, prompt: str, split: str, n: int, cfg: dict[str, Any]) -> list[Doc]:
    """`prompt` is the task's template with fields {shots} and {question}."""
    template = cfg["template"]
    out = []
    for i, q in enumerate(questions(template, split, n, cfg)):
        doc_id = f"{task_name}/{split}/{i}-{q.key}"
        gold = {"template": template, "choices": list(q.choices), "cue": q.cue, "target": q.target}
        text = prompt.format(shots=shots(q, doc_id, cfg), question=q.instruction())
        out.append(Doc(doc_id, text, gold, dict(gold)))
    return out


def score_exact_pick(doc: Doc, text: str) -> Score:
    """correct = the reply's first line is the answer: for "first", 'N x c = M' with N the first
    stated number, the stated c and M = N·c; for "initial", the named word (any case, one final
    period allowed). `extracted` is the pick, also when it is the wrong one."""
    gold = doc.gold
    if gold["template"] == "initial":
        line = text.strip().split("\n", 1)[0].strip().rstrip(".").lower() if text.strip() else ""
        return Score(line == gold["target"], line or None, {"right_pick": float(line == gold["target"])})
    chosen, step = parse("times", text)
    if chosen is None:
        return Score(False, None, {"exact_step": 0.0, "right_pick": 0.0})
    factor, product = step
    exact = factor == int(gold["cue"]) and product == int(chosen) * factor
    right = chosen == gold["target"]
    return Score(exact and right, chosen, {"exact_step": float(exact), "right_pick": float(right)})
