"""The records that flow through every engine: requests in, generations (with traces) out, and how
prompts become requests (chat template, per-request seeds, batch order, the finished text)."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Sequence, Union

from ..core.decoding import DecodingStrategy
from ..core.errors import UserError
from ..core.prompt_format import PLAIN, PromptFormat

Messages = list[dict]


PromptInput = Union[str, Messages]


@dataclass
class TokenTrace:
    token_id: int
    token: str
    temperature: float
    top_p: float
    nucleus_size: int


@dataclass(frozen=True)
class Schedule:
    """The per-step (T, p) of one request of the `schedule` strategy: step t samples at
    `values[t]`, through the same math as every other strategy.

    A schedule is usually a recorded trace (or a permutation of one), and a rerun can outlast it:
    its tokens differ, so it can run longer. Steps past the end use `fallback`, by default the
    mean of `values`. The mean because a permutation leaves it unchanged (the shuffled schedule
    of a sequence continues at that sequence's own mean T̂/P̂) and because it carries no per-token
    structure either way: the tail behaves like that sequence's mean-shift.
    """

    values: tuple[tuple[float, float], ...]
    fallback: tuple[float, float] | None = None

    def __post_init__(self):
        values = tuple((float(t), float(p)) for t, p in self.values)
        if not values and self.fallback is None:
            raise ValueError("an empty schedule needs a fallback (T, p)")
        fallback = self.fallback
        if fallback is None:
            fallback = (math.fsum(t for t, _ in values) / len(values), math.fsum(p for _, p in values) / len(values))
        fallback = (float(fallback[0]), float(fallback[1]))
        for step, (t, p) in enumerate((*values, fallback)):
            if not (math.isfinite(t) and t > 0 and 0 < p <= 1):
                where = "fallback" if step == len(values) else f"step {step}"
                raise ValueError(f"schedule {where}: (T={t}, p={p}) needs T > 0 and 0 < p <= 1")
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "fallback", fallback)

    def at(self, step: int) -> tuple[float, float]:
        return self.values[step] if step < len(self.values) else self.fallback


@dataclass
class Request:
    """One sample to generate. `key` is opaque to the engine (the caller's (prompt, sample) id).
    A `schedule` strategy's request carries its `Schedule`; no other request has one."""

    key: object
    input_ids: list[int]
    strategy: DecodingStrategy
    seed: int
    schedule: Schedule | None = None
    # Reward training's exploration of the cut: σ of a Gaussian in logit space around the heads' P̂,
    # drawn per token from the request's own generator (`core.decoding.explored_top_p`). 0 everywhere else.
    top_p_exploration: float = 0.0

    def __post_init__(self):
        if self.strategy.uses_schedule != (self.schedule is not None):
            raise ValueError(
                f"{self.strategy.label}: a schedule strategy needs a Schedule on each request, others none"
            )
        if self.top_p_exploration and not (self.strategy.uses_heads and self.top_p_exploration > 0):
            raise ValueError(f"{self.strategy.label}: top_p_exploration needs the heads' P̂ and a σ > 0")


@dataclass
class Generation:
    key: object
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (EOS or stop string) or "length"
    trace: list[TokenTrace] | None = None
    strategy: DecodingStrategy | None = None

    @property
    def mean_temperature(self) -> float | None:
        return sum(t.temperature for t in self.trace) / len(self.trace) if self.trace else None

    @property
    def mean_top_p(self) -> float | None:
        return sum(t.top_p for t in self.trace) / len(self.trace) if self.trace else None


def request_seed(seed: int, *parts: object) -> int:
    """A stable 63-bit seed from the run seed and the request's identity (prompt id, sample index)."""
    digest = hashlib.blake2b(repr((seed, *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def encode_prompt(tokenizer, prompt: PromptInput, chat: bool, fmt: PromptFormat = PLAIN) -> list[int]:
    """Chat prompts go through the model's template (with `fmt`'s system prompt and template
    switches); raw prompts are tokenised as given."""
    if chat:
        text = tokenizer.apply_chat_template(
            fmt.messages(prompt), add_generation_prompt=True, tokenize=False, **fmt.template_kwargs
        )
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    if not isinstance(prompt, str):
        raise TypeError("raw completion (chat=False) needs a string prompt")
    return tokenizer(prompt)["input_ids"]


def batch_order_key(request: Request) -> tuple:
    """Longest prompts first; equal prompts together, and within a prompt the requests that
    share random numbers (same seed) together, so they can share rows in one batch."""
    return (-len(request.input_ids), request.input_ids, request.seed)


def finished_text(tokenizer, tokens: Sequence[int], eos_ids, stop: Sequence[str] | None) -> str:
    """A generation's text, the same for every engine: EOS dropped, cut before the first stop string."""
    text = tokenizer.decode([t for t in tokens if t not in eos_ids], skip_special_tokens=True)
    if stop:
        cut = min((text.find(s) for s in stop if s in text), default=-1)
        if cut >= 0:
            text = text[:cut]
    return text


def build_requests(
    tokenizer,
    prompts: Sequence[PromptInput],
    strategy: DecodingStrategy,
    *,
    n: int = 1,
    seed: int = 0,
    chat: bool = True,
    prompt_ids: Sequence[object] | None = None,
    fmt: PromptFormat = PLAIN,
) -> list[Request]:
    """Requests for `n` samples of each prompt; keys are (prompt_id, sample_index)."""
    prompt_ids = list(prompt_ids) if prompt_ids is not None else list(range(len(prompts)))
    requests = []
    for prompt_id, prompt in zip(prompt_ids, prompts):
        ids = encode_prompt(tokenizer, prompt, chat, fmt)
        if not ids:  # the model would get a zero-length input and fail deep in its embedding
            raise UserError(
                f"prompt {prompt_id} gives no tokens: an empty raw prompt (no chat template) has nothing to start from",
                "give it some text, or use the chat template",
            )
        for sample in range(n):
            requests.append(
                Request(
                    key=(prompt_id, sample),
                    input_ids=ids,
                    strategy=strategy,
                    seed=request_seed(seed, prompt_id, sample),
                )
            )
    return requests
