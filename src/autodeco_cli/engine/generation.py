"""Generation with learned per-token decoding: one decode loop shared by every command.

The loop is ours (not transformers' `generate()`), because four things matter for eval and
grid-search throughput that `generate()` cannot do:

1. **Shared prefill.** Requests with the same prompt (k samples, grid cells) are prefilled
   once; their KV-cache row is copied when, and only when, their tokens diverge.
2. **Shared rows.** A batch row is a unique token history, not a request. Requests whose
   tokens agree so far (greedy-like cells, confident steps where the nucleus is one token)
   ride on one row, so identical forward passes are computed once.
3. **Continuous batching.** Finished requests leave at once (and rows with no request left),
   waiting requests join the running batch, and a prompt's later requests copy its KV cache
   from a running row instead of prefilling it again.
4. **Shared prompt prefix.** The tokens all prompts start with (template, system prompt,
   instruction, few-shot examples) are prefilled once per call (`prefix_cache`).

Sampling is inverse-CDF with one uniform number per step from the request's own
`torch.Generator`, seeded by (seed, prompt, sample index). A sample therefore depends only on
its own identity, never on what shares its batch or row, so eval resumes and grid-search cells
reproduce single runs (up to float rounding: another batch shape can move logits by ~1e-5,
which flips a draw only when its uniform number lands that close to a token boundary).
Strategies share those numbers on purpose (common random numbers): two cells with nearby (T, p)
then draw the same tokens until their distributions really differ, which sharpens paired
comparisons and keeps rows shared for longer.

Per step and row: logits and the last hidden state (kept by a hook on the output embedding, so
no custom model class is needed) go through the heads for autodeco requests, then through the
shared math in `distribution.py` to the distribution each request samples from. Greedy
requests take the argmax of the raw logits, so greedy output is the base model's own.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from ..core.heads import AutoDecoHeads, check_tap_layer, hook_layer_output
from ..core.prompt_format import PLAIN, PromptFormat
from .kv_cache import GrowingLayer, append_rows, select_rows
from .lean_decode import LEAN, TRANSFORMERS, LeanDecoder, lean_decode_blocker
from .models import LoadedModel, unsupported_model_type
from .prefix_cache import SharedPrefix, shared_prefix_length
from .requests import Generation, Request, TokenTrace, batch_order_key, finished_text
from .sampler import Sampler, Step


def _contiguous_input(_module, args):
    if args and torch.is_tensor(args[0]) and not args[0].is_contiguous():
        return (args[0].contiguous(), *args[1:])
    return None


class HiddenStateCapture:
    """Keeps the input of the model's output embedding (the final-norm last hidden state) and, for heads with a
    tap layer, that decoder layer's output."""

    def __init__(self, model: torch.nn.Module, tap_layer: int | None = None):
        self.last: torch.Tensor | None = None
        self.tap: torch.Tensor | None = None
        self._handles = [model.get_output_embeddings().register_forward_pre_hook(self._keep)]
        if tap_layer:
            self._handles.append(hook_layer_output(model, tap_layer, self._keep_tap))

    def _keep(self, _module, args):
        self.last = args[0]

    def _keep_tap(self, output: torch.Tensor) -> None:
        self.tap = output

    def heads_input(self) -> torch.Tensor:
        """Each row's state at its final position as the heads read it: [tap, last] or last."""
        last = self.last[:, -1, :]
        return last if self.tap is None else torch.cat((self.tap[:, -1, :], last), dim=-1)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


@dataclass
class GenerationEngine:
    """Holds the model, tokenizer and heads once; generates for any list of requests (`Engine`)."""

    lm: LoadedModel
    heads: AutoDecoHeads | None = None
    prompt_format: PromptFormat = PLAIN  # how every command run on this engine renders chat prompts
    name: str = field(default="hf", init=False)
    _capture: HiddenStateCapture | None = field(default=None, init=False, repr=False)
    _logits_to_keep: bool = field(default=False, init=False, repr=False)
    _cache_kwarg: str = field(default="past_key_values", init=False, repr=False)
    _contiguous_head_input: object = field(default=None, init=False, repr=False)
    # joining a running batch pads plain per-layer caches; other cache kinds (sliding windows,
    # offloading) only start whole batches
    can_join: bool = field(default=False, init=False, repr=False)
    # prefill the prompt prefix all requests share once (needs the same plain per-layer caches)
    share_prefix: bool = True
    # decode steps skip transformers' module plumbing where `lean_decode` covers the model (the
    # same ops, so the same bits); `decode_path` says which path runs, `decode_path_why` why not lean
    lean_decode: bool = True
    decode_path_why: str | None = field(default=None, init=False)
    _lean: LeanDecoder | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        model = self.lm.model
        tap = check_tap_layer(self.heads.config.tap_layer, model) if self.heads is not None else None
        if self.heads is not None:
            self.heads.to(self.lm.device).eval()
            self._capture = HiddenStateCapture(model, tap)
        # logits_to_keep hands the LM head a strided [rows, 1, H] slice, which torch multiplies as
        # a batched matmul against a per-row copy of the weight (0.7 s per prefill in bf16 on CPU)
        self._contiguous_head_input = model.get_output_embeddings().register_forward_pre_hook(_contiguous_input)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        # computing logits for the last position only skips a [rows, prompt, vocab] prefill tensor
        parameters = inspect.signature(base.forward).parameters
        self._logits_to_keep = "logits_to_keep" in parameters
        # transformers 5.x renames past_key_values to cache (the old name warns, then goes)
        self._cache_kwarg = "cache" if "cache" in parameters else "past_key_values"
        check_attention_cache(self.lm)
        layers = getattr(self.new_cache(), "layers", None)
        self.can_join = bool(layers) and all(type(layer) is GrowingLayer for layer in layers)
        self.decode_path_why = lean_decode_blocker(model) if self.lean_decode else "turned off"
        if tap and self.lean_decode:  # the lean step keeps only the last state
            self.decode_path_why = f"the heads read decoder layer {tap}'s output"
        if self.decode_path_why is None:
            self._lean = LeanDecoder(model)

    @property
    def decode_path(self) -> str:
        return LEAN if self._lean is not None else TRANSFORMERS

    @property
    def tokenizer(self):
        return self.lm.tokenizer

    @property
    def dtype(self) -> str:
        return str(self.lm.model.dtype).removeprefix("torch.")

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
        """Generate every request with continuous batching, longest prompts first.

        `batch_size` is the number of rows decoded per forward pass. Requests whose tokens
        agree share a row, so more requests than rows can be in flight (up to the sharing
        actually observed, at most `MAX_REQUESTS_PER_ROW` times `batch_size`). As requests
        finish, waiting ones are prefilled and join the running batch.

        `on_batch_done` receives the generations that finished at a step, as soon as they
        finish (resumable runs persist them there). A `streamer` (transformers' TextStreamer
        protocol) needs a single request.
        """
        if any(r.strategy.uses_heads for r in requests) and self.heads is None:
            raise ValueError("autodeco requests need heads: build GenerationEngine(lm, heads)")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if streamer is not None and len(requests) != 1:
            raise ValueError("a streamer shows one generation: pass a single request")
        waiting = sorted(range(len(requests)), key=lambda i: batch_order_key(requests[i]))
        state = _DecodeState(self, requests, max_new_tokens, stop, trace, streamer)
        results: dict[int, Generation] = {}
        with torch.inference_mode():
            while waiting or state.rows:
                waiting = state.admit(waiting, batch_size)
                finished = state.step()
                for i in finished:
                    results[i] = state.generation(i)
                if finished and on_batch_done is not None:
                    on_batch_done([results[i] for i in finished])
        if streamer is not None:
            streamer.end()
        return [results[i] for i in range(len(requests))]

    def _forward(self, input_ids, attention_mask, position_ids, cache) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (the model's dtype) and last hidden state at each row's final position."""
        if self._lean is not None and input_ids.shape[1] == 1:
            logits = self._lean(input_ids, attention_mask, position_ids, cache)
        else:
            kwargs = {self._cache_kwarg: cache}
            if self._logits_to_keep:
                kwargs["logits_to_keep"] = 1
            logits = self.lm.model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True, **kwargs
            ).logits
        hidden = self._capture.heads_input() if self._capture is not None else None
        return logits[:, -1, :], hidden  # in the model's dtype: the sampler widens them (distribution.widened)

    def new_cache(self):
        try:
            cache = DynamicCache(config=self.lm.model.config)  # per-layer kinds (sliding windows)
        except TypeError:  # transformers 4.x
            return DynamicCache()
        for layer in getattr(cache, "layers", []):
            if type(layer) is DynamicLayer:
                layer.__class__ = GrowingLayer
        return cache

    def close(self) -> None:
        if self._capture is not None:
            self._capture.close()
        self._contiguous_head_input.remove()


def check_attention_cache(lm: LoadedModel) -> None:
    """Refuse models whose cache holds more than attention keys/values (Mamba's recurrent state,
    hybrids, KV shared across layers): the loop selects, pads and copies cache rows as KV
    columns, and on such a model it decoded other tokens than transformers' generate()."""
    try:
        layers = DynamicCache(config=lm.model.config).layers
    except (TypeError, AttributeError):  # transformers 4.x: no per-layer kinds to check
        return
    for layer in layers:
        if type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer):
            raise unsupported_model_type(
                lm.model.config.model_type, f"keeps {type(layer).__name__} state, which our decode loop cannot batch"
            )


# Shared rows let more requests than rows be in flight; this caps how many, so a burst of
# divergence (rows splitting) can at most multiply the batch's memory by this factor.
MAX_REQUESTS_PER_ROW = 4.0


class _DecodeState:
    """The running batch: unique token histories (rows), their KV cache and next-step logits.

    Rows are right-aligned: every row's newest token sits in the last cache column, and shorter
    histories are left-padded (masked). Each row carries explicit position ids, so a row that
    joins later, with its own padding, attends and is positioned exactly as if it ran alone.
    """

    def __init__(self, engine: GenerationEngine, requests, max_new_tokens, stop, trace, streamer):
        self.engine = engine
        self.requests = requests
        self.max_new_tokens = max_new_tokens
        self.stop = [s for s in (stop or []) if s]
        # a new stop string ends within the last few tokens: decode only that tail each step
        self.stop_window = max((len(s) for s in self.stop), default=0) + 4
        self.trace = trace
        self.streamer = streamer
        self.eos_ids = set(engine.eos_token_ids())
        self.sampler = Sampler(requests, engine.heads, record_nucleus=trace)
        self.generated: dict[int, list[int]] = {}
        self.steps: dict[int, list[Step]] = {}
        self.finish: dict[int, str] = {}
        self.rows: list[list[int]] = []  # request indices riding on each row
        self.row_prompts: list[tuple[int, ...]] = []  # the prompt each row started from
        # a prompt's last-position (logits, hidden), kept while more of its requests wait to join
        self.prompt_tails: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor | None]] = {}
        shared = shared_prefix_length([r.input_ids for r in requests]) if engine.share_prefix and engine.can_join else 0
        self.prefix = SharedPrefix(requests[0].input_ids[:shared]) if shared else None
        self.cache = None
        self.attention_mask = self.positions = self.logits = self.hidden = None
        self.request_steps = self.row_steps = 0

    @property
    def in_flight(self) -> int:
        return sum(len(members) for members in self.rows)

    def admit(self, waiting: list[int], batch_size: int) -> list[int]:
        """Start as many waiting requests as the batch has room for; returns the rest.

        Room is `batch_size` rows and `batch_size` x (observed requests per row) requests. A
        prompt's requests may start in several goes: later ones copy the prompt's KV cache from
        a running row of the same prompt instead of prefilling it again.
        """
        if self.rows and not self.engine.can_join:
            return waiting
        sharing = min(MAX_REQUESTS_PER_ROW, self.request_steps / self.row_steps) if self.row_steps else 1.0
        request_room = int(batch_size * max(1.0, sharing)) - self.in_flight
        new_rows: list[list[int]] = []
        taken = 0
        while taken < len(waiting) and request_room > 0 and len(self.rows) + len(new_rows) < batch_size:
            prompt = self.requests[waiting[taken]].input_ids
            end = taken + 1
            while end < len(waiting) and end - taken < request_room and self.requests[waiting[end]].input_ids == prompt:
                end += 1
            new_rows.append(waiting[taken:end])
            request_room -= end - taken
            taken = end
        rest = waiting[taken:]
        if new_rows:
            # prompts with a running row and kept last logits can be copied, not prefilled
            reusable = set(self.row_prompts) & set(self.prompt_tails)
            is_copy = [self._prompt_key(members[0]) in reusable for members in new_rows]
            copied = [members for members, copy in zip(new_rows, is_copy) if copy]
            fresh = [members for members, copy in zip(new_rows, is_copy) if not copy]
            if fresh:
                self._prefill(fresh)
            for members in copied:
                self._copy_prompt_row(members)
            # keep a prompt's last logits only while more of its requests wait
            still_waiting = {self._prompt_key(i) for i in rest[:1]}
            self.prompt_tails = {k: v for k, v in self.prompt_tails.items() if k in still_waiting}
        return rest

    def _prompt_key(self, request_index: int) -> tuple[int, ...]:
        return tuple(self.requests[request_index].input_ids)

    def _prefill(self, new_rows: list[list[int]]) -> None:
        engine = self.engine
        device = engine.lm.device
        prompts = [self.requests[members[0]].input_ids for members in new_rows]
        shared = len(self.prefix) if self.prefix is not None else 0
        width = max(len(p) for p in prompts) - shared
        pad = engine.tokenizer.pad_token_id if engine.tokenizer.pad_token_id is not None else 0
        input_ids = torch.tensor([[pad] * (width + shared - len(p)) + list(p[shared:]) for p in prompts], device=device)
        mask = torch.tensor(
            [[1] * shared + [0] * (width + shared - len(p)) + [1] * (len(p) - shared) for p in prompts], device=device
        )
        positions = (mask.cumsum(-1) - 1).clamp_min(0)[:, shared:]
        cache = self.prefix.start_cache(engine, len(prompts)) if shared else engine.new_cache()
        logits, hidden = engine._forward(input_ids, mask, positions, cache)
        for row, prompt in enumerate(prompts):
            self.prompt_tails[tuple(prompt)] = (
                logits[row : row + 1],
                None if hidden is None else hidden[row : row + 1],
            )
        if self.streamer is not None:
            self.streamer.put(torch.tensor([list(prompts[0])]))
        prompt_keys = [tuple(p) for p in prompts]
        if not self.rows:  # the first rows: their cache becomes the batch's
            self._start(new_rows)
            self.cache, self.attention_mask, self.positions = cache, mask, positions[:, -1:]
            self.logits, self.hidden, self.rows, self.row_prompts = logits, hidden, list(new_rows), prompt_keys
            return
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        self._join(new_rows, prompt_keys, kv, mask, positions[:, -1:], logits, hidden)

    def _copy_prompt_row(self, members: list[int]) -> None:
        """A new row for `members` whose prompt is already in the cache (a running row of the same
        prompt): its prompt columns are copied, not recomputed; its first logits were kept."""
        prompt = self._prompt_key(members[0])
        source = self.row_prompts.index(prompt)
        length = len(prompt)
        # the row's first `length` unmasked columns (padding may sit after a shared prefix)
        columns = self.attention_mask[source].nonzero().squeeze(1)[:length]
        kv = [
            (layer.keys[source : source + 1, :, columns], layer.values[source : source + 1, :, columns])
            for layer in self.cache.layers
        ]
        mask = self.attention_mask.new_ones((1, length))
        positions = torch.tensor([[length - 1]], device=self.attention_mask.device)
        logits, hidden = self.prompt_tails[prompt]
        self._join([members], [prompt], kv, mask, positions, logits, hidden)

    def _start(self, new_rows: list[list[int]]) -> None:
        for members in new_rows:
            for i in members:
                self.generated[i], self.steps[i] = [], []

    def _join(self, new_rows, prompts, kv, mask, last_positions, logits, hidden) -> None:
        """Append rows (per layer (keys, values)) to the running batch: left-pad whichever side
        is shorter, then stack."""
        self._start(new_rows)
        joined = max(self.attention_mask.shape[1], mask.shape[1])
        # rows no longer than the batch's go into the cache's spare rows; others re-pad all
        if mask.shape[1] > self.attention_mask.shape[1] or not append_rows(self.cache, kv):
            for layer, (new_keys, new_values) in zip(self.cache.layers, kv):
                layer.keys = torch.cat([_left_pad(layer.keys, joined), _left_pad(new_keys, joined)])
                layer.values = torch.cat([_left_pad(layer.values, joined), _left_pad(new_values, joined)])
        self.attention_mask = torch.cat([_left_pad(self.attention_mask, joined), _left_pad(mask, joined)])
        self.positions = torch.cat([self.positions, last_positions])
        self.logits = torch.cat([self.logits, logits])
        self.hidden = torch.cat([self.hidden, hidden]) if hidden is not None else None
        self.rows = self.rows + list(new_rows)
        self.row_prompts = self.row_prompts + list(prompts)

    def step(self) -> list[int]:
        """Choose every request's next token, move the batch one token on; returns the finished."""
        chosen = self.sampler.step(self.rows, self.logits, self.hidden)
        next_rows: dict[tuple[int, int], list[int]] = {}
        finished = []
        for row, members in enumerate(self.rows):
            for member in members:
                step = chosen[member]
                tokens = self.generated[member]
                tokens.append(step.token)
                self.steps[member].append(step)
                if self.streamer is not None:
                    self.streamer.put(torch.tensor([step.token]))
                if step.token in self.eos_ids or (self.stop and self._hit_stop(tokens)):
                    self.finish[member] = "stop"
                elif len(tokens) >= self.max_new_tokens:
                    self.finish[member] = "length"
                else:
                    next_rows.setdefault((row, step.token), []).append(member)
                    continue
                finished.append(member)
                self.sampler.release(member)
        if not next_rows:
            self.rows, self.row_prompts = [], []
            self.cache = None
            return finished
        found = list(next_rows)  # (parent row, token): one per next row
        children = [found[child] for child in place_rows([row for row, _ in found])]
        parents = [row for row, _ in children]
        if parents != list(range(len(self.rows))):
            # drop rows with nothing left, copy rows whose requests diverged
            select_rows(self.cache, parents)
            keep = torch.tensor(parents, device=self.attention_mask.device)
            self.attention_mask, self.positions = self.attention_mask[keep], self.positions[keep]
            self._trim_padding()
        self.rows = [next_rows[child] for child in children]
        self.row_prompts = [self.row_prompts[row] for row in parents]
        self.attention_mask = torch.cat([self.attention_mask, self.attention_mask.new_ones((len(self.rows), 1))], dim=1)
        self.positions = self.positions + 1
        tokens = torch.tensor([[token] for _, token in children], device=self.attention_mask.device)
        self.logits, self.hidden = self.engine._forward(tokens, self.attention_mask, self.positions, self.cache)
        self.request_steps += self.in_flight
        self.row_steps += len(self.rows)
        return finished

    def _trim_padding(self) -> None:
        """Drop leading cache columns that every row masks (left behind by rows that left)."""
        if not self.engine.can_join:
            return
        first = int(self.attention_mask.argmax(dim=1).min())
        if first > 0:
            self.attention_mask = self.attention_mask[:, first:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]

    def _hit_stop(self, tokens: list[int]) -> bool:
        tail = self.engine.tokenizer.decode(tokens[-self.stop_window :], skip_special_tokens=True)
        return any(s in tail for s in self.stop)

    def generation(self, index: int) -> Generation:
        request, tokens = self.requests[index], self.generated[index]
        tokenizer = self.engine.tokenizer
        text = finished_text(tokenizer, tokens, self.eos_ids, self.stop)
        token_trace = None
        if self.trace:
            token_trace = [
                TokenTrace(
                    token_id=s.token,
                    token=tokenizer.decode([s.token]),
                    temperature=s.temperature,
                    top_p=s.top_p,
                    nucleus_size=s.nucleus,
                )
                for s in self.steps[index]
            ]
        return Generation(
            key=request.key,
            text=text,
            token_ids=list(tokens),
            finish_reason=self.finish[index],
            trace=token_trace,
            strategy=request.strategy,
        )


def place_rows(parents: list[int]) -> list[int]:
    """Which child each row of the next step holds (an index into `parents`, each child's parent
    row, in the order the children were found): a parent's first child keeps the parent's row,
    and the others fill the rows that freed up. Every row computes alone, so the order is free; this one
    moves the fewest rows of the cache (a dropped row is refilled by one copy instead of every
    later row shifting up)."""
    count = len(parents)
    slots: list[int | None] = [None] * count
    homeless = []
    for child, parent in enumerate(parents):
        if parent < count and slots[parent] is None:
            slots[parent] = child
        else:
            homeless.append(child)
    free = iter(slot for slot in range(count) if slots[slot] is None)
    for child in homeless:
        slots[next(free)] = child
    return slots


def _left_pad(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad the sequence axis on the left up to `width` (axis -1 of masks, -2 of KV)."""
    axis = -1 if tensor.dim() == 2 else -2
    missing = width - tensor.shape[axis]
    if missing <= 0:
        return tensor
    pad = (missing, 0) if axis == -1 else (0, 0, missing, 0)
    return torch.nn.functional.pad(tensor, pad)
