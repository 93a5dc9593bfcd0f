"""The switch under vLLM's Model Runner V2 (the MRV2 logits-processor interface).

MRV2 keeps per-request state in slots: `add_request(slot, params)` (a recycled slot is simply
added again, with no removal call), and each step's `apply(logits, ctx)` gets rows that are not
requests: `ctx.expanded_idx_mapping` maps every row to its slot, rows are reordered every step,
and under speculative decoding a request owns one row per draft token. A row's token index
is its position + 1 - the prompt length, so draft rows trace the tokens they would sample.

`add_request` declines (returns False) every request whose rows it leaves alone: learned
requests that want no trace, and every request on a model that is not AutoDeco. When no request
of a step needs processing, MRV2 skips the processors altogether, so a plain model pays nothing.

MRV2 runs vLLM's logit bias, penalties and bad words *before* custom processors (V1 applies
penalties after them), so an opted-out request's raw row replaces them; `add_request` says so
once in the log when an opted-out request asks for penalties.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from vllm.v1.worker.gpu.sample.logits_processor.interface import (
    LogitsContext,
    LogitsProcessor,
    LogitsProcRequestState,
)

from . import model as vllm_model
from .switch_rows import LEARNED, check_extra_args, check_rows, request_mode, trace_entries, with_raw_rows
from .trace import append_trace, trace_path

# a child of vLLM's logger: the line comes out in vLLM's format, where vLLM sends its own
logger = logging.getLogger("vllm.autodeco")


def _uses_penalties(params) -> bool:
    return (
        getattr(params, "repetition_penalty", 1.0) != 1.0
        or getattr(params, "frequency_penalty", 0.0) != 0.0
        or getattr(params, "presence_penalty", 0.0) != 0.0
    )


class AutoDecoSwitchV2(LogitsProcessor):
    def __init__(self, vllm_config, req_states: LogitsProcRequestState):
        # imported here, not at the top: the frontend loads this class only to validate params,
        # and this module pulls in Triton where it is installed
        from vllm.v1.worker.gpu.buffer_utils import UvaBackedTensor

        self.req_states = req_states
        self.serves = vllm_model.is_autodeco_config(vllm_config)
        slots = req_states.max_num_reqs
        # per slot: `.np` on the host says whether a step has work (no device sync); `.gpu` is
        # indexed by ctx.expanded_idx_mapping on the device, as vLLM's own per-request states are
        self.plain = UvaBackedTensor(slots, dtype=torch.bool)
        self.traced = np.zeros(slots, dtype=bool)
        self.trace_ids: list[str | None] = [None] * slots
        self.staged = False
        self.warned_penalties = False
        self.trace_file = trace_path()

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        check_extra_args(sampling_params)

    def add_request(self, req_idx: int, sampling_params) -> bool:
        mode = request_mode(sampling_params) if self.serves else LEARNED
        self.plain.np[req_idx] = not mode.learned
        self.traced[req_idx] = mode.trace_id is not None
        self.trace_ids[req_idx] = mode.trace_id
        self.staged = True
        if not mode.learned and not self.warned_penalties and _uses_penalties(sampling_params):
            self.warned_penalties = True
            logger.warning(
                "autodeco: under Model Runner V2 an opted-out request on an AutoDeco model gets its raw "
                "logits without vLLM's penalties (they run before custom logits processors)"
            )
        return mode.touches_logits

    def apply_staged_writes(self) -> None:
        if self.staged:
            self.plain.copy_to_uva()
            self.staged = False

    def apply(self, logits: torch.Tensor, ctx: LogitsContext) -> torch.Tensor:
        step = vllm_model.LAST_STEP
        active = ctx.idx_mapping_np
        plain = bool(self.plain.np[active].any())
        traced = self.trace_file is not None and bool(self.traced[active].any())
        if step is None or not (plain or traced):
            return logits
        check_rows(step, logits)
        if plain:
            logits = with_raw_rows(logits, step, self.plain.gpu[ctx.expanded_idx_mapping])
        if traced:
            self._trace(logits, step, ctx)
        return logits

    def _trace(self, logits: torch.Tensor, step: vllm_model.Step, ctx: LogitsContext) -> None:
        slots = ctx.expanded_idx_mapping.tolist()
        positions = ctx.pos.tolist()
        prompt_len = self.req_states.prompt_len.np
        rows, ids, tokens = [], [], []
        for row, slot in enumerate(slots):
            token = positions[row] + 1 - int(prompt_len[slot])
            # token < 0: a chunk of a prompt still being prefilled, whose sample vLLM discards
            if self.traced[slot] and token >= 0:
                rows.append(row)
                ids.append(self.trace_ids[slot])
                tokens.append(token)
        if rows:
            append_trace(self.trace_file, trace_entries(logits, step, rows, ids, tokens))
