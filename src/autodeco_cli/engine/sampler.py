"""Sampling one token per request from a decode step's rows: the per-request distribution
(static, adaptive or the heads' T̂/P̂) and an inverse-CDF draw from the request's own generator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Sequence

import torch

from ..core.decoding import ADAPTIVE_PARAMETERS, explored_top_p
from ..core.distribution import decoding_logits_and_temperature, narrowed_cut, nucleus_size, widened
from ..core.heads import AutoDecoHeads
from ..core.learned_kernels import NUCLEUS_BLOCK

if TYPE_CHECKING:  # generation imports this module
    from .requests import Request


@dataclass
class Step:
    """What one request does at one step: its token and the (T, p, nucleus) it came from."""

    token: int
    temperature: float
    top_p: float
    nucleus: int


class Distribution(NamedTuple):
    """What requests sample from at a step: a row's logits under (T, p, top-k, adaptive decoder).
    Requests with equal distributions share one decoding pass, so it is a dict key (hashable)."""

    row: int
    temperature: float  # EDT: its maximum temperature T0; the per-row T is computed from the logits
    top_p: float
    top_k: int | None
    adaptive: tuple | None  # the strategy's (kind, *parameters), e.g. ("min-p", 0.1); None: static

    @property
    def kind(self) -> str | None:
        return self.adaptive[0] if self.adaptive else None

    @property
    def adaptive_values(self) -> tuple:
        """The adaptive decoder's parameters, in `ADAPTIVE_PARAMETERS[kind]` order."""
        return self.adaptive[1:] if self.adaptive else ()


class Sampler:
    """Turns a step's rows (logits, hidden) into one token per active request.

    A request's (T, p, top-k) comes from its strategy, from the heads on its row, or from its
    schedule at its step index (the schedule strategy), plus the adaptive decoder's own
    parameters (min-p, n·σ, EDT's N and θ). Requests with an equal (row, spec) share one
    distribution; each then draws with its own uniform number (inverse CDF over token ids), so
    the draw is independent of batch-mates. EDT's temperature is computed per row from that
    row's logits, and the trace records it.
    """

    def __init__(self, requests: Sequence[Request], heads: AutoDecoHeads | None, record_nucleus: bool):
        self.requests = requests
        self.heads = heads
        self.record_nucleus = record_nucleus
        self._generators: dict[int, torch.Generator] = {}  # per running request, made on first draw
        self._scheduled_steps: dict[int, int] = {}  # schedule requests: the step index just sampled
        self._head_step = None  # heads.decode_step(), made at the first step that needs it: once per run

    def generator(self, member: int) -> torch.Generator:
        generator = self._generators.get(member)
        if generator is None:
            generator = self._generators[member] = torch.Generator().manual_seed(self.requests[member].seed)
        return generator

    def release(self, member: int) -> None:
        self._generators.pop(member, None)
        self._scheduled_steps.pop(member, None)

    def _next_step(self, member: int) -> int:
        step = self._scheduled_steps[member] = self._scheduled_steps.get(member, -1) + 1
        return step

    def head_values(
        self, rows: list[int], logits: torch.Tensor, hidden: torch.Tensor, maxima: torch.Tensor | None = None
    ) -> dict[int, list[float]]:
        """Each row's [T̂, P̂] from the heads."""
        if not rows:
            return {}
        if len(rows) < logits.shape[0]:  # only some rows carry autodeco requests
            index = torch.tensor(rows, device=logits.device)
            hidden, logits = hidden[index], logits[index]
            maxima = None if maxima is None else maxima[index]
        # Under the decode loop's inference_mode. Entering one here cost ~50 us per step at one row
        # (a cold call right after the model's forward), a seventh of the heads' time.
        # Each step's values read at once, so the kernel's output tensor serves every step (reuse_output), and
        # as lists: after the model's forward each allocation and each Python op costs several times its warm cost.
        if self._head_step is None:
            self._head_step = self.heads.decode_step(reuse_output=True)
        return dict(zip(rows, self._head_step(hidden, logits, maxima).tolist()))

    def distribution(self, request: Request, row: int, head: Sequence[float] | None, step: int = 0) -> Distribution:
        """The request's distribution on `row`: from its strategy, the row's heads' (T̂, P̂), or its
        schedule's (T, p) at `step` (that request's step index)."""
        strategy = request.strategy
        if request.schedule is not None:
            temperature, top_p = request.schedule.at(step)
            return Distribution(row, temperature, top_p, strategy.top_k, None)
        if strategy.uses_heads:
            head_t, head_p = head
            temperature = head_t * strategy.temperature_scale if strategy.active_heads != "top_p" else 1.0
            top_p = min(1.0, head_p * strategy.top_p_scale) if strategy.active_heads != "temperature" else 1.0
            return Distribution(row, temperature, top_p, strategy.top_k, None)
        return Distribution(row, strategy.temperature or 1.0, strategy.top_p or 1.0, strategy.top_k, strategy.adaptive)

    def step(self, row_members: list[list[int]], logits: torch.Tensor, hidden: torch.Tensor | None) -> dict[int, Step]:
        """One token per active request from the step's rows: `logits` [rows, V] in the model's dtype."""
        logits, maxima = widened(logits)
        head_rows = [
            row for row, members in enumerate(row_members) if any(self.requests[m].strategy.uses_heads for m in members)
        ]
        heads = self.head_values(head_rows, logits, hidden, maxima)
        chosen: dict[int, Step] = {}
        distributions: dict[Distribution, list[int]] = {}  # -> the requests that sample from it
        greedy_rows: dict[int, list[int]] = {}
        for row, members in enumerate(row_members):
            for member in members:
                request = self.requests[member]
                if request.strategy.is_greedy:
                    greedy_rows.setdefault(row, []).append(member)
                else:
                    step = self._next_step(member) if request.schedule is not None else 0
                    head = heads.get(row)
                    if request.top_p_exploration:
                        head = (head[0], self._explored(member, head[1]))
                    key = self.distribution(request, row, head, step)
                    distributions.setdefault(key, []).append(member)
        if greedy_rows:
            # every row greedy (rows come in order): no copy of the logits
            every_row = len(greedy_rows) == logits.shape[0]
            argmax = (logits if every_row else logits[list(greedy_rows)]).argmax(dim=-1).tolist()
            for token, members in zip(argmax, greedy_rows.values()):
                for member in members:
                    chosen[member] = Step(token, 1.0, 0.0, 1)
        # one batched decoding call per (top-k, adaptive decoder): per-row parameters are tensors
        groups: dict[tuple, list[Distribution]] = {}
        for key in distributions:
            groups.setdefault((key.top_k, key.kind), []).append(key)
        for (top_k, kind), keys in groups.items():
            self._sample(keys, distributions, logits, maxima, top_k, kind, chosen)
        return chosen

    def _sample(
        self,
        keys: list[Distribution],
        distributions: dict[Distribution, list[int]],
        logits: torch.Tensor,
        maxima: torch.Tensor | None,
        top_k: int | None,
        kind: str | None,
        chosen: dict[int, Step],
    ) -> None:
        """Draw every member of these distributions (same top-k and kind) by inverse CDF."""
        device = logits.device
        rows = [k.row for k in keys]
        # every row once, in order (a static step's usual case): no copy of the logits
        if rows != list(range(logits.shape[0])):
            index = torch.tensor(rows, device=device)
            logits, maxima = logits[index], None if maxima is None else maxima[index]
        temperature = torch.tensor([k.temperature for k in keys], device=device).unsqueeze(-1)
        top_p = torch.tensor([k.top_p for k in keys], device=device).unsqueeze(-1)
        adaptive = {}
        if kind is not None:
            names = ADAPTIVE_PARAMETERS[kind]
            adaptive = {
                name: torch.tensor([k.adaptive_values[i] for k in keys], device=device).unsqueeze(-1)
                for i, name in enumerate(names)
            }
        # the kernel's cut comes narrowed (no [rows, V] of -inf's written and read back); else cut, then narrow
        narrowed = narrowed_cut(logits, temperature, top_p, maxima) if top_k is None and kind is None else None
        if narrowed is None:
            decoded, used = decoding_logits_and_temperature(
                logits, temperature, top_p, top_k, maxima=maxima, **adaptive
            )
            nucleus = nucleus_blocks(decoded)
        else:
            nucleus = NucleusBlocks(*narrowed)
        # EDT's T is per row; the others keep the strategy's exact float in the trace
        used_temperatures = used.squeeze(-1).tolist() if kind == "edt" else [k.temperature for k in keys]
        probs = torch.softmax(nucleus.logits, dim=-1).cpu()
        sizes = nucleus_size(nucleus.logits).tolist() if self.record_nucleus else [0] * len(keys)
        members = [distributions[key] for key in keys]
        uniforms = [self.uniform(m) for group in members for m in group]
        tokens = inverse_cdf_tokens(probs, [len(group) for group in members], uniforms, nucleus.token_ids)
        draws = iter(tokens)
        for d, key in enumerate(keys):
            for member in members[d]:
                chosen[member] = Step(next(draws), used_temperatures[d], key.top_p, sizes[d])

    def _explored(self, member: int, top_p: float) -> float:
        """The member's own cut around P̂ (reward training): drawn before its token's uniform, from
        the same generator, so a request's draws do not depend on its batch-mates."""
        noise = torch.randn(1, generator=self.generator(member), dtype=torch.float64).item()
        return explored_top_p(top_p, self.requests[member].top_p_exploration, noise)

    def uniform(self, member: int) -> float:
        """The member's next uniform number in [0, 1): one float64 draw from its own generator."""
        return torch.rand(1, generator=self.generator(member), dtype=torch.float64).item()


def inverse_cdf_tokens(
    probs: torch.Tensor, draws: list[int], uniforms: list[float], token_ids: torch.Tensor | None = None
) -> list[int]:
    """Inverse-CDF draws over token ids: row d of `probs` ([R, V], CPU) takes `draws[d]` of the
    `uniforms` (in row order), each picking the first token whose cumulative mass exceeds
    u x the row's total. `token_ids` ([R, V]) names each column's token; None: the column is the
    token id.

    The cumulative mass is a float64 cumsum over the row's tokens with mass only: adding a zero
    leaves a double cumsum unchanged, so these are the full-vocabulary cumsum's values at those
    ids, for a sum over the nucleus instead of 49k. All rows go at once, each zero-padded on the
    right to the longest: the CPU cumsum is a sequential scan per row, so a row's prefix is its
    own cumsum's, bit for bit, and the padding repeats its total (searchsorted never passes it).
    """
    rows = probs.shape[0]
    with_mass, ids = probs.nonzero(as_tuple=True)  # row-major: ids ascending within a row
    counts = torch.bincount(with_mass, minlength=rows)
    starts = torch.cumsum(counts, dim=0) - counts
    mass = torch.zeros((rows, int(counts.max())), dtype=torch.float64)
    mass[with_mass, torch.arange(ids.numel()) - starts[with_mass]] = probs[with_mass, ids].double()
    cumulative = torch.cumsum(mass, dim=1)
    per_row = torch.tensor(draws)
    draw_rows = torch.repeat_interleave(torch.arange(rows), per_row)
    slots = torch.arange(len(uniforms)) - (torch.cumsum(per_row, dim=0) - per_row)[draw_rows]
    targets = torch.zeros((rows, max(draws)), dtype=torch.float64)
    targets[draw_rows, slots] = torch.tensor(uniforms, dtype=torch.float64) * cumulative[draw_rows, -1]
    picks = torch.searchsorted(cumulative, targets, right=True)[draw_rows, slots]
    for j in (picks >= counts[draw_rows]).nonzero().flatten().tolist():
        # u * total rounded up to total: the last token with mass
        own = cumulative[draw_rows[j], : counts[draw_rows[j]]]
        picks[j] = torch.nonzero(torch.diff(own, prepend=own.new_zeros(1))).max()
    columns = ids[starts[draw_rows] + picks]
    return (columns if token_ids is None else token_ids[draw_rows, columns]).tolist()


class NucleusBlocks(NamedTuple):
    """The blocks of a cut row that hold a kept token, in order, padded with -inf to the longest (blocks of
    NUCLEUS_BLOCK token ids: why, at its definition)."""

    logits: torch.Tensor  # [R, blocks x NUCLEUS_BLOCK]
    token_ids: torch.Tensor | None  # [R, blocks x NUCLEUS_BLOCK]: each column's token; None: columns are ids


def nucleus_blocks(decoded: torch.Tensor) -> NucleusBlocks:
    """The cut logits `decoded` ([R, V]) narrowed to their blocks with a kept (finite) token.

    A softmax of the result gives each kept token the probability a softmax of the whole row
    gives it, and the token ids ascend along a row as they do there, so an inverse-CDF draw over
    either picks the same token. A static step keeps a few to a few hundred of 49k tokens: this
    softmax reads a few blocks instead of the vocabulary. Rows are returned whole (`token_ids`
    None) off CPU, where the vocabulary is no whole number of blocks, where a row has NaN or +inf
    (the full softmax's result stands), and where the blocks would cover over half the vocabulary.
    """
    rows, vocab = decoded.shape
    whole = NucleusBlocks(decoded, None)
    if decoded.device.type != "cpu" or vocab % NUCLEUS_BLOCK or not decoded.is_contiguous():
        return whole
    blocks = decoded.view(rows, vocab // NUCLEUS_BLOCK, NUCLEUS_BLOCK)
    # a max per block: a reduction that streams the row (a `> -inf` over it costs ~3x as much)
    block_max = blocks.amax(dim=-1)
    if not bool(torch.isfinite(block_max.amax(dim=-1)).all()):
        return whole
    live_row, live_block = (block_max > float("-inf")).nonzero(as_tuple=True)
    counts = torch.bincount(live_row, minlength=rows)
    width = int(counts.max())
    if 2 * width * NUCLEUS_BLOCK > vocab:
        return whole
    slot = torch.arange(live_row.numel()) - (torch.cumsum(counts, dim=0) - counts)[live_row]
    logits = decoded.new_full((rows, width, NUCLEUS_BLOCK), float("-inf"))
    logits[live_row, slot] = blocks[live_row, live_block]
    # padding blocks name tokens 0-63: their probability is 0, so no draw lands on them
    first = torch.zeros((rows, width), dtype=torch.long)
    first[live_row, slot] = live_block * NUCLEUS_BLOCK
    token_ids = (first.unsqueeze(-1) + torch.arange(NUCLEUS_BLOCK)).view(rows, width * NUCLEUS_BLOCK)
    return NucleusBlocks(logits.view(rows, width * NUCLEUS_BLOCK), token_ids)
