"""Generation with learned per-token decoding, inside the ordinary transformers `generate()` loop.

How AutoDeco fits into `generate()` without a custom model class:

1. A forward pre-hook on the output embedding (lm_head) keeps its input: the last hidden state
   the heads read. It costs a reference, no copy.
2. `DecodingProcessor`, a `LogitsProcessor`, turns (logits, T, p) into the decoding distribution
   with the shared math in `distribution.py`, taking T/p per row from the heads or from a static
   strategy, and records the per-token trace.
3. It then draws the token itself, from a per-request `torch.Generator`, and hands `generate()`
   a one-hot row, which `generate()` (run in greedy mode) takes as is. Drawing per request makes a
   sample depend only on (seed, prompt, sample index), not on what else shares its batch: eval
   resumes and grid-search cells then reproduce single runs exactly.

Greedy requests skip the processor entirely, so greedy output is the base model's own.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Sequence, Union

import torch
import transformers
from transformers import DynamicCache, GenerationConfig, LogitsProcessor, LogitsProcessorList

from .decoding import DecodingStrategy
from .distribution import decoding_logits, nucleus_size
from .heads import AutoDecoHeads
from .models import LoadedModel

Messages = list[dict]
# transformers 5 renamed generate()'s past_key_values to cache; 4.x only knows the old name
CACHE_KWARG = "cache" if int(transformers.__version__.split(".")[0]) >= 5 else "past_key_values"
PromptInput = Union[str, Messages]


@dataclass
class TokenTrace:
    token_id: int
    token: str
    temperature: float
    top_p: float
    nucleus_size: int


@dataclass
class Request:
    """One sample to generate. `key` is opaque to the engine (the caller's (prompt, sample) id)."""

    key: object
    input_ids: list[int]
    strategy: DecodingStrategy
    seed: int


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


class HiddenStateCapture:
    """Keeps the input of the model's output embedding: the (final-norm) last hidden state."""

    def __init__(self, model: torch.nn.Module):
        self.last: torch.Tensor | None = None
        self._handle = model.get_output_embeddings().register_forward_pre_hook(self._keep)

    def _keep(self, _module, args):
        self.last = args[0]

    def close(self) -> None:
        self._handle.remove()


class DecodingProcessor(LogitsProcessor):
    """Per-row T/p (heads or static), hard nucleus, per-request sampling, and the token trace.

    Rows can leave (`keep_rows`) when their request has finished; each request keeps its own
    generator and trace, so leaving changes nothing for the others.
    """

    def __init__(
        self,
        requests: Sequence[Request],
        heads: AutoDecoHeads | None,
        capture: HiddenStateCapture | None,
        record_trace: bool,
    ):
        self.all_requests = list(requests)
        self.heads = heads
        self.capture = capture
        self.record_trace = record_trace
        self.all_generators = [torch.Generator().manual_seed(r.seed) for r in self.all_requests]
        # per request: (token, T, p, nucleus size) for every step it was active
        self.traces: list[list[tuple[int, float, float, int]]] = [[] for _ in self.all_requests]
        # transformers' generate() keeps one top-k per call, so mixed top-k batches are split by the caller.
        self.top_k = self.all_requests[0].strategy.top_k
        self.keep_rows(list(range(len(self.all_requests))))

    def keep_rows(self, active: list[int]) -> None:
        """Continue with these original request indices only (in this order)."""
        self.active = list(active)
        self.requests = [self.all_requests[i] for i in self.active]
        self.generators = [self.all_generators[i] for i in self.active]
        self.head_rows = [i for i, r in enumerate(self.requests) if r.strategy.uses_heads]
        self.greedy_rows = [i for i, r in enumerate(self.requests) if r.strategy.is_greedy]
        self.static_temperature = torch.tensor([r.strategy.temperature or 1.0 for r in self.requests])
        self.static_top_p = torch.tensor([r.strategy.top_p or 1.0 for r in self.requests])

    def row_parameters(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        temperature = self.static_temperature.to(scores.device).clone()
        top_p = self.static_top_p.to(scores.device).clone()
        if self.head_rows:
            rows = torch.tensor(self.head_rows, device=scores.device)
            hidden = self.capture.last[rows, -1, :]
            with torch.inference_mode():
                head_t, head_p = self.heads(hidden, scores[rows])
            scale_t = torch.tensor([self.requests[i].strategy.temperature_scale for i in self.head_rows], device=scores.device)
            scale_p = torch.tensor([self.requests[i].strategy.top_p_scale for i in self.head_rows], device=scores.device)
            head_t = head_t.squeeze(-1).float() * scale_t
            head_p = (head_p.squeeze(-1).float() * scale_p).clamp(max=1.0)
            active = [self.requests[i].strategy.active_heads for i in self.head_rows]
            use_t = torch.tensor([a != "top_p" for a in active], device=scores.device)
            use_p = torch.tensor([a != "temperature" for a in active], device=scores.device)
            temperature[rows] = torch.where(use_t, head_t, torch.ones_like(head_t))
            top_p[rows] = torch.where(use_p, head_p, torch.ones_like(head_p))
        if self.greedy_rows:
            # p = 0 keeps exactly the argmax token (hard_top_p_keep always keeps the top one).
            top_p[torch.tensor(self.greedy_rows, device=scores.device)] = 0.0
        return temperature, top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        temperature, top_p = self.row_parameters(scores)
        decoded = decoding_logits(scores, temperature.unsqueeze(-1), top_p.unsqueeze(-1), self.top_k)
        probs = torch.softmax(decoded, dim=-1).float().cpu()
        chosen = torch.empty(len(self.requests), dtype=torch.long)
        for row, generator in enumerate(self.generators):
            chosen[row] = torch.multinomial(probs[row], 1, generator=generator)
        if self.record_trace:
            sizes = nucleus_size(decoded).tolist()
            for row, (token, t, p) in enumerate(zip(chosen.tolist(), temperature.tolist(), top_p.tolist())):
                self.traces[self.active[row]].append((token, t, p, sizes[row]))
        one_hot = torch.full_like(scores, float("-inf"))
        one_hot.scatter_(-1, chosen.to(scores.device).unsqueeze(-1), 0.0)
        return one_hot


def encode_prompt(tokenizer, prompt: PromptInput, chat: bool) -> list[int]:
    """Chat prompts go through the model's template; raw prompts are tokenised as given."""
    if chat:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    if not isinstance(prompt, str):
        raise TypeError("raw completion (chat=False) needs a string prompt")
    return tokenizer(prompt)["input_ids"]


@dataclass
class GenerationEngine:
    """Holds the model, tokenizer and heads once; generates for any list of requests."""

    lm: LoadedModel
    heads: AutoDecoHeads | None = None
    # decode steps between chances for finished rows to leave the batch
    segment_tokens: int = 16
    _capture: HiddenStateCapture | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if self.heads is not None:
            self.heads.to(self.lm.device).eval()
            self._capture = HiddenStateCapture(self.lm.model)

    @property
    def tokenizer(self):
        return self.lm.tokenizer

    def eos_token_ids(self) -> list[int]:
        eos = self.lm.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        return [e for e in eos if e is not None]

    def generate(
        self,
        requests: Sequence[Request],
        *,
        max_new_tokens: int,
        batch_size: int = 8,
        stop: Sequence[str] | None = None,
        trace: bool = False,
        streamer=None,
        on_batch_done: Callable[[list[Generation]], None] | None = None,
    ) -> list[Generation]:
        """Generate every request, longest prompts first, `batch_size` rows at a time.

        `on_batch_done` lets callers persist results as soon as each batch ends (resumable runs).
        """
        if any(r.strategy.uses_heads for r in requests) and self.heads is None:
            raise ValueError("autodeco requests need heads: build GenerationEngine(lm, heads)")
        order = sorted(range(len(requests)), key=lambda i: (str(requests[i].strategy.top_k), -len(requests[i].input_ids)))
        results: dict[int, Generation] = {}
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            # one top-k per batch (see DecodingProcessor): split where it changes
            groups: dict[object, list[int]] = {}
            for i in chunk:
                groups.setdefault(requests[i].strategy.top_k, []).append(i)
            for indices in groups.values():
                batch = self._generate_batch([requests[i] for i in indices], max_new_tokens, stop, trace, streamer)
                for i, generation in zip(indices, batch):
                    results[i] = generation
                if on_batch_done is not None:
                    on_batch_done(batch)
        return [results[i] for i in range(len(requests))]

    def _generate_batch(self, requests, max_new_tokens, stop, trace, streamer) -> list[Generation]:
        tokenizer, model = self.tokenizer, self.lm.model
        width = max(len(r.input_ids) for r in requests)
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(r.input_ids)) + r.input_ids for r in requests], device=self.lm.device)
        attention_mask = torch.tensor([[0] * (width - len(r.input_ids)) + [1] * len(r.input_ids) for r in requests], device=self.lm.device)
        eos_ids = self.eos_token_ids()
        # An explicit config: the model's own generation_config may turn on sampling, top-k=50
        # or penalties that would sit on top of our distribution.
        config = GenerationConfig(
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_ids,
            pad_token_id=pad,
            bos_token_id=model.generation_config.bos_token_id,
            # transformers fills unset fields from the model's own generation_config; these must
            # stay neutral or a shipped penalty would sit on top of our distribution.
            repetition_penalty=1.0,
            encoder_repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            min_length=0,
            min_new_tokens=None,
            temperature=None,
            top_p=None,
            top_k=None,
            return_dict_in_generate=True,
        )
        for field_name in ("suppress_tokens", "begin_suppress_tokens", "bad_words_ids", "sequence_bias", "forced_bos_token_id", "forced_eos_token_id"):
            setattr(config, field_name, None)
        all_greedy = all(r.strategy.is_greedy for r in requests)
        processor = None
        processors = LogitsProcessorList()
        if not (all_greedy and not trace):
            processor = DecodingProcessor(requests, self.heads, self._capture, record_trace=trace)
            processors.append(processor)
        kwargs = {}
        if stop:
            kwargs.update(stop_strings=list(stop), tokenizer=tokenizer)
        generated: list[list[int]] = [[] for _ in requests]
        active = list(range(len(requests)))
        cache = DynamicCache()
        remaining = max_new_tokens
        while remaining > 0 and active:
            # Generate in segments; between segments, finished rows leave the batch (their KV
            # cache rows are dropped), so short answers stop costing compute.
            config.max_new_tokens = min(self.segment_tokens, remaining) if len(active) > 1 else remaining
            with torch.inference_mode():
                output = model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    generation_config=config,
                    logits_processor=processors,
                    streamer=streamer,
                    **{CACHE_KWARG: cache},
                    **kwargs,
                )
            sequences = output.sequences
            new = sequences[:, input_ids.shape[1] :]
            remaining -= new.shape[1]
            still = []
            for position, (index, tokens) in enumerate(zip(active, new.tolist())):
                generated[index] += tokens
                if not self._is_finished(generated[index], eos_ids, stop):
                    still.append(position)
            if not still or remaining <= 0:
                break
            cache = output.past_key_values
            if len(still) < len(active):
                keep = torch.tensor(still, device=sequences.device)
                cache.batch_select_indices(keep)
                sequences = sequences[keep]
                attention_mask = attention_mask[keep]
                active = [active[i] for i in still]
                if processor is not None:
                    processor.keep_rows(active)
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((attention_mask.shape[0], sequences.shape[1] - attention_mask.shape[1]))], dim=1)
            input_ids = sequences
        return [self._finish(r, row, tokens, processor, eos_ids, stop) for row, (r, tokens) in enumerate(zip(requests, generated))]

    def _is_finished(self, tokens: list[int], eos_ids: list[int], stop) -> bool:
        if any(t in eos_ids for t in tokens):
            return True
        if stop:
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            return any(s in text for s in stop)
        return False

    def _finish(self, request, row, tokens, processor, eos_ids, stop) -> Generation:
        tokenizer = self.tokenizer
        length, finish = len(tokens), "length"
        for position, token in enumerate(tokens):
            if token in eos_ids:
                length, finish = position + 1, "stop"
                break
        kept = tokens[:length]
        text = tokenizer.decode([t for t in kept if t not in eos_ids], skip_special_tokens=True)
        if stop:
            cut = min((text.find(s) for s in stop if s in text), default=-1)
            if cut >= 0:
                text, finish = text[:cut], "stop"
                # generate() keeps padding a row after its stop string while others run on
                for length in range(1, len(kept) + 1):
                    if any(s in tokenizer.decode(kept[:length], skip_special_tokens=True) for s in stop):
                        kept = kept[:length]
                        break
        token_trace = None
        if processor is not None and processor.record_trace:
            token_trace = [
                TokenTrace(token_id=token, token=tokenizer.decode([token]), temperature=t, top_p=p, nucleus_size=n)
                for (token, t, p, n), _ in zip(processor.traces[row], kept)
            ]
        return Generation(key=request.key, text=text, token_ids=kept, finish_reason=finish, trace=token_trace, strategy=request.strategy)

    def close(self) -> None:
        if self._capture is not None:
            self._capture.close()


def build_requests(
    tokenizer,
    prompts: Sequence[PromptInput],
    strategy: DecodingStrategy,
    *,
    n: int = 1,
    seed: int = 0,
    chat: bool = True,
    prompt_ids: Sequence[object] | None = None,
) -> list[Request]:
    """Requests for `n` samples of each prompt; keys are (prompt_id, sample_index)."""
    prompt_ids = list(prompt_ids) if prompt_ids is not None else list(range(len(prompts)))
    requests = []
    for prompt_id, prompt in zip(prompt_ids, prompts):
        ids = encode_prompt(tokenizer, prompt, chat)
        for sample in range(n):
            requests.append(Request(key=(prompt_id, sample), input_ids=ids, strategy=strategy, seed=request_seed(seed, prompt_id, sample)))
    return requests
