"""The switch under vLLM's V1 model runner (the V1 logits-processor interface).

vLLM builds it from our `vllm.logits_processors` entry point (`switch.py` hands V1's loader this
class). Its rows are the persistent batch's: vLLM reports added, removed and moved requests,
so a row index is a request. `switch_rows.py` says what it does to those rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from . import model as vllm_model
from .switch_rows import RequestMode, check_extra_args, request_mode, trace_entries, with_raw_rows
from .trace import append_trace, trace_path


@dataclass
class _Row:
    mode: RequestMode
    output_ids: list[int]  # vLLM's live list of the request's generated tokens


class AutoDecoSwitchV1(LogitsProcessor):
    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        self.rows: dict[int, _Row] = {}
        self.trace_file = trace_path()

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        check_extra_args(sampling_params)

    def is_argmax_invariant(self) -> bool:
        # it must run before vLLM divides by the request's temperature, where only
        # non-argmax-invariant processors run
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.rows.pop(index, None)
        for index, params, _prompt, output_ids in batch_update.added:
            self.rows[index] = _Row(request_mode(params), output_ids)
        for first, second, direction in batch_update.moved:
            a, b = self.rows.pop(first, None), self.rows.pop(second, None)
            if a is not None:
                self.rows[second] = a
            if direction == MoveDirectionality.SWAP and b is not None:
                self.rows[first] = b

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        step = vllm_model.LAST_STEP
        if step is None or not self.rows:
            return logits
        if step.raw.shape[0] != logits.shape[0]:
            # speculative decoding samples more rows than requests: the rows cannot be matched
            raise RuntimeError(
                "autodeco's vLLM plugin does not support speculative decoding under the V1 model runner "
                "(sampled rows != requests)"
            )
        count = logits.shape[0]
        plain = [i for i, row in self.rows.items() if not row.mode.learned and i < count]
        if plain:
            mask = torch.zeros(count, dtype=torch.bool, device=logits.device)
            mask[plain] = True
            logits = with_raw_rows(logits, step, mask)
        traced = [i for i, row in self.rows.items() if row.mode.trace_id is not None and i < count]
        if traced and self.trace_file is not None:
            ids = [self.rows[i].mode.trace_id for i in traced]
            tokens = [len(self.rows[i].output_ids) for i in traced]
            append_trace(self.trace_file, trace_entries(logits, step, traced, ids, tokens))
        return logits
