"""Generated "random choice, then an exact step" tasks: where per-token decoding control should win.

Each question states its own option set (a number range, a word list, a letter set) and asks
for a uniformly random pick followed by a deterministic step on it (multiply it by 2 or 3, write the
word twice, write the letter three times). A good decoder is random at the choice token and
exact everywhere else; any single static (T, p) trades one for the other. The "list" template
first copies the stated numbers, then picks and multiplies: its pick comes after 2, 4 or 8
copied numbers, so the choice token's position differs between questions (a decoder that only
learned "be random at the first answer token" fails it).

Splits: a question's option set (in any order, with its constant) is assigned to test,
validation or train by a seeded hash, so no set of one split ever appears in another (not even
reordered), however many questions are drawn. Within a split, questions are drawn by a seeded
RNG, rejecting sets of other splits.

Prompts are raw few-shot completions (measured on SmolLM2-135M: a chat prompt's first answer
token is "1", "N", "Let"... rather than a choice, see evals/README.md): two solved examples,
drawn per question from the train pool, then the question's instruction line.
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass
from typing import Any

from .hashed_splits import draw_template_questions, split_of_key
from .types import Doc, Score

TEMPLATES = ("times", "item", "letter", "list")
NUMERIC = ("times", "list")  # a one-digit pick and a constant to multiply it by
# Single-token words at a line start on the SmolLM2 tokenizer, so the choice is one token.
WORDS = (
    "apple", "river", "stone", "cloud", "window", "forest", "orange", "horse", "mouse", "chair",
    "table", "bread", "ocean", "book", "fish", "bird", "tree", "door", "ship", "moon",
    "star", "king", "rose", "milk", "salt", "wolf", "bell", "coin", "ring",
)  # fmt: skip
LETTERS = tuple(string.ascii_uppercase)
N_EXAMPLES = 2
FACTORS = (2, 3)


@dataclass(frozen=True)
class Question:
    template: str
    choices: tuple[str, ...]  # the stated option set, in prompt order
    constant: int = 0  # the NUMERIC templates only

    @property
    def key(self) -> str:
        """The question as asked: the same set in another order is another question."""
        return f"{self.template}:{','.join(self.choices)}:{self.constant}"

    @property
    def set_key(self) -> str:
        """What decides the split: the option set (any order) with its constant."""
        return f"{self.template}:{','.join(sorted(self.choices))}:{self.constant}"

    def instruction(self, wording: str | None = None) -> str:
        """The question line; `wording` (a task's `instruction`, with {choices} and {constant})
        rewords it, so heads trained on one wording can be tested on another."""
        if wording:
            return wording.format(choices=", ".join(self.choices), constant=self.constant)
        if self.template == "times":
            return f"Pick a random number from: {', '.join(self.choices)}. Then multiply it by {self.constant}."
        if self.template == "list":
            return (
                f"Copy the list {', '.join(self.choices)}. Then pick a random number from it"
                f" and multiply it by {self.constant}."
            )
        if self.template == "item":
            return f"Pick a random word from: {', '.join(self.choices)}. Write it twice."
        return f"Pick a random letter from: {', '.join(self.choices)}. Write it three times."

    def answer(self, choice: str) -> str:
        """The exact line a correct reply with `choice` reads."""
        if self.template == "times":
            return f"{choice} x {self.constant} = {int(choice) * self.constant}"
        if self.template == "list":
            return f"{', '.join(self.choices)}; {choice} x {self.constant} = {int(choice) * self.constant}"
        if self.template == "item":
            return f"{choice} {choice}"
        return f"{choice} {choice} {choice}"


def _draw(template: str, rng: random.Random, sizes: tuple[int, ...]) -> Question:
    size = rng.choice(sizes)
    if template in NUMERIC:
        # one-digit choices keep the choice a single token. Times 2 or 3: the 135M model gets
        # even "N + 40" wrong at T=0.1 (measured: 19% exact with whole tens, 7% with 10..89)
        digits = rng.sample(range(1, 10), size)
        return Question(template, tuple(str(v) for v in digits), rng.choice(FACTORS))
    pool = WORDS if template == "item" else LETTERS
    return Question(template, tuple(rng.sample(pool, size)))


def split_of(question: Question, split_seed: int, fractions: tuple[float, float]) -> str:
    """test / validation / train by a seeded hash of the option set: a fixed partition."""
    return split_of_key(question.set_key, split_seed, fractions)


def questions(template: str, split: str, n: int, cfg: dict[str, Any]) -> list[Question]:
    """`n` distinct questions of one split, the same on every call."""
    return draw_template_questions("random_choice", template, TEMPLATES, split, n, cfg, _draw)


def shots(question: Question, index_seed: str, cfg: dict[str, Any]) -> str:
    """Two solved train-pool examples with uniformly drawn picks, so no value is favoured."""
    rng = random.Random(index_seed)
    examples = questions(question.template, "train", 64, cfg)
    wording = cfg.get("instruction")
    return "\n".join(
        f"{e.instruction(wording)}\n{e.answer(rng.choice(e.choices))}\n" for e in rng.sample(examples, N_EXAMPLES)
    )


def docs(task_name: str, prompt: str, split: str, n: int, cfg: dict[str, Any]) -> list[Doc]:
    """`prompt` is the task's template with fields {shots} and {question}."""
    template = cfg["template"]
    out = []
    for i, q in enumerate(questions(template, split, n, cfg)):
        doc_id = f"{task_name}/{split}/{i}-{q.key.split(':', 1)[1]}"
        meta = {"template": template, "choices": list(q.choices), "constant": q.constant}
        text = prompt.format(shots=shots(q, doc_id, cfg), question=q.instruction(cfg.get("instruction")))
        out.append(Doc(doc_id, text, {"choices": list(q.choices), "constant": q.constant}, meta))
    return out


# ---------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------

_TIMES = re.compile(r"^\s*(-?\d+)\s*[x×*]\s*(-?\d+)\s*=\s*(-?\d+)\s*\.?\s*$")


def _first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0].strip() if text.strip() else ""


def parse(template: str, text: str) -> tuple[str | None, bool]:
    """(chosen value, exact step right) from a reply's first line; (None, False) if unparseable.
    For the NUMERIC templates the second item is what the scorer checks against the question:
    (factor, product), and for "list" also the copied list as written.

    The choice is normalised (words lower-case, letters upper-case) but not checked against the
    stated set here: an off-set pick is still a pick, counted outside the target support.
    """
    line = _first_line(text)
    if template == "list":
        copied, _, line = line.partition(";")
        chosen, step = parse("times", line)
        return chosen, (*step, copied.strip()) if chosen is not None else False
    if template == "times":
        match = _TIMES.match(line)
        if not match:
            return None, False
        chosen, factor, product = (int(g) for g in match.groups())
        return str(chosen), (factor, product)  # checked against the constant by the scorer
    parts = line.rstrip(".").split()
    if not parts:
        return None, False
    repeats = 2 if template == "item" else 3
    chosen = parts[0].lower() if template == "item" else parts[0].upper()
    return chosen, len(parts) == repeats and len({p.lower() for p in parts}) == 1


def score_random_choice(doc: Doc, text: str) -> Score:
    """correct = the exact step is right AND the pick is one of the stated options."""
    template = doc.meta["template"]
    chosen, exact = parse(template, text)
    if template in NUMERIC and chosen is not None:
        factor, product, *copied = exact
        exact = factor == int(doc.gold["constant"]) and product == int(chosen) * factor
        if template == "list":
            exact = exact and copied == [", ".join(doc.gold["choices"])]
    choices = {c.lower() if template == "item" else c for c in doc.gold["choices"]}
    valid = chosen is not None and chosen in choices
    return Score(bool(exact) and valid, chosen, {"exact_step": float(bool(exact)), "valid_choice": float(valid)})
