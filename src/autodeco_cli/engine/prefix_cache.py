"""The prompt prefix every request of one generate call shares, prefilled once.

Eval prompts repeat a long head: the chat template's system prompt, an instruction, few-shot
examples. On arith-add 27 of each prompt's 47 tokens are the same for all 200 questions, and
prefill was half of the eval's time on CPU. Its KV columns are computed once (one row), and
each prefill starts its rows' caches from them, so only the tokens after the prefix are run.

A row's cache is then [prefix | padding | the rest of its prompt | generated]: the padding sits
in the middle, masked, and position ids are explicit, so every row attends and is positioned
as if it ran alone. Values match a full prefill up to float rounding (another matmul shape).
"""

from __future__ import annotations

import os
from typing import Sequence

import torch

# below this many shared tokens the extra forward and the cache copies cost about what they save
MIN_SHARED_TOKENS = 8


def shared_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every prompt shares, leaving each at least one token of its own
    (a row's first logits come from its own last token). 0 with fewer than two distinct prompts
    (a prompt's samples already share its whole prefill) or a prefix too short to pay."""
    distinct = {tuple(p) for p in prompts}
    if len(distinct) < 2:
        return 0
    length = min(len(os.path.commonprefix(list(distinct))), min(len(p) for p in distinct) - 1)
    return length if length >= MIN_SHARED_TOKENS else 0


class SharedPrefix:
    """The shared tokens and, once the first prefill asks, their keys/values per layer (one row)."""

    def __init__(self, tokens: Sequence[int]):
        self.tokens = list(tokens)
        self._kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def __len__(self) -> int:
        return len(self.tokens)

    def start_cache(self, engine, rows: int):
        """A new cache whose every layer holds the prefix's columns for `rows` rows."""
        if self._kv is None:
            self._kv = self._prefill(engine)
        cache = engine.new_cache()
        for layer, (keys, values) in zip(cache.layers, self._kv):
            layer.update(keys.expand(rows, -1, -1, -1), values.expand(rows, -1, -1, -1))
        return cache

    def _prefill(self, engine) -> list[tuple[torch.Tensor, torch.Tensor]]:
        device = engine.lm.device
        ids = torch.tensor([self.tokens], device=device)
        cache = engine.new_cache()
        engine._forward(ids, torch.ones_like(ids), torch.arange(len(self.tokens), device=device)[None], cache)
        return [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
