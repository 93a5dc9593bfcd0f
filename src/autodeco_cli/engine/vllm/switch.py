"""Per-request learned decoding inside one vLLM engine, and the per-token T̂/P̂ trace.

An AutoDeco model's `compute_logits` transforms every row (see `model.py`). This logits
processor, loaded by vLLM from our `vllm.logits_processors` entry point, runs before vLLM's own
temperature/top-p and:

- gives requests that asked for another decoding (``extra_args={"autodeco": False}``: static,
  greedy, the adaptive samplers' baselines) their raw base-model row back, so one engine serves
  every strategy of an eval or a grid in the same batches;
- records T̂, P̂ and the nucleus size for requests that carry ``extra_args={"autodeco_trace": id}``:
  each step appends one JSON line ``[[id, token index, T̂, P̂, nucleus size], ...]`` to
  ``$AUTODECO_VLLM_TRACE_DIR/trace-<pid>.jsonl`` before the step's tokens are returned. vLLM's
  outputs have no field for them; a file is the one channel that crosses its engine and worker
  processes without patching vLLM. A partly prefilled prompt is sampled and discarded, so a
  later line for the same (id, index) replaces an earlier one (`read_traces`).

Requests without ``autodeco`` in their extra args use learned decoding: that is what an
AutoDeco model is served for. On a non-AutoDeco model the processor does nothing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from . import model as vllm_model
from .trace import LEARNED_ARG, TRACE_ARG, TRACE_DIR_ENV


@dataclass
class _Row:
    learned: bool
    trace_id: str | None
    output_ids: list[int]  # vLLM's live list of the request's generated tokens


class AutoDecoSwitch(LogitsProcessor):
    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        self.rows: dict[int, _Row] = {}
        directory = os.environ.get(TRACE_DIR_ENV)
        self.trace_file = Path(directory) / f"trace-{os.getpid()}.jsonl" if directory else None

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
            extra = (params.extra_args or {}) if params is not None else {}
            trace_id = extra.get(TRACE_ARG)
            self.rows[index] = _Row(
                bool(extra.get(LEARNED_ARG, True)), None if trace_id is None else str(trace_id), output_ids
            )
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
                "autodeco's vLLM plugin does not support speculative decoding (sampled rows != requests)"
            )
        plain = [i for i, row in self.rows.items() if not row.learned and i < logits.shape[0]]
        if plain:
            index = torch.tensor(plain, device=logits.device)
            logits[index] = step.raw[index].to(logits.dtype)
        traced = [i for i, row in self.rows.items() if row.trace_id is not None and row.learned and i < logits.shape[0]]
        if traced and self.trace_file is not None:
            index = torch.tensor(traced, device=logits.device)
            values = zip(
                step.temperature[index].tolist(),
                step.top_p[index].tolist(),
                torch.isfinite(logits[index]).sum(dim=-1).tolist(),
            )
            line = [[self.rows[i].trace_id, len(self.rows[i].output_ids), *value] for i, value in zip(traced, values)]
            with self.trace_file.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(line) + "\n")
        return logits
