"""What the switch does to one step's logits rows, whichever vLLM model runner calls it.

The V1 processor (`switch_v1.py`) and the Model Runner V2 one (`switch_v2.py`) differ only in
how they learn which request owns a row: V1 is told of batch moves and its rows are its
requests; under MRV2 rows are reordered every step and, with speculative decoding, a request
owns one row per draft token. Once each has its rows, both call these functions, so an
opted-out request gets the same raw row and a traced one the same trace entries under either.

Learned rows are left as the AutoDeco model's `compute_logits` made them (`model.py`, through
`core/distribution.decoding_logits`); nothing here recomputes the learned distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .model import Step
from .trace import LEARNED_ARG, TRACE_ARG


@dataclass(frozen=True)
class RequestMode:
    """How the switch treats one request, read from its sampling params' extra args."""

    learned: bool  # False: the request opted out (static, greedy, min-p) and gets its raw row back
    trace_id: str | None  # set only for a learned request that asked for its T̂/P̂ trace

    @property
    def touches_logits(self) -> bool:
        return not self.learned or self.trace_id is not None


LEARNED = RequestMode(learned=True, trace_id=None)


def _extra_args(params) -> dict:
    return (getattr(params, "extra_args", None) or {}) if params is not None else {}


def check_extra_args(params) -> None:
    """vLLM's `validate_params` contract: ValueError for arguments the switch cannot read."""
    extra = _extra_args(params)
    learned = extra.get(LEARNED_ARG, True)
    if isinstance(learned, float) or learned not in (True, False):  # bool, or the ints 0 and 1
        raise ValueError(f"extra arg {LEARNED_ARG!r} must be true/false or 1/0, not {learned!r}")
    trace_id = extra.get(TRACE_ARG)
    if trace_id is not None and (isinstance(trace_id, bool) or not isinstance(trace_id, (str, int))):
        raise ValueError(f"extra arg {TRACE_ARG!r} must be a string or an integer id, not {trace_id!r}")


def request_mode(params) -> RequestMode:
    extra = _extra_args(params)
    learned = bool(extra.get(LEARNED_ARG, True))
    trace_id = extra.get(TRACE_ARG)
    return RequestMode(learned, str(trace_id) if learned and trace_id is not None else None)


def check_rows(step: Step, logits: torch.Tensor) -> None:
    """The model's last rows must be the rows being sampled, or T̂/P̂ would go to the wrong request."""
    if step.raw.shape[0] != logits.shape[0]:
        raise RuntimeError(
            f"autodeco's vLLM switch got {logits.shape[0]} logits rows but the model computed "
            f"{step.raw.shape[0]}: the sampled rows are not the rows of the last compute_logits"
        )


def with_raw_rows(logits: torch.Tensor, step: Step, rows: torch.Tensor) -> torch.Tensor:
    """`logits` with the rows where `rows` (bool, one per row) is set replaced by the base model's.

    A mask, not an index list, so a runner that maps rows on the device never syncs for it.
    """
    return torch.where(rows.unsqueeze(-1), step.raw.to(logits.dtype), logits)


def trace_entries(
    logits: torch.Tensor, step: Step, rows: list[int], trace_ids: list[str], token_indices: list[int]
) -> list[list]:
    """One trace entry per row: [id, token index, T̂, P̂, nucleus size] (tokens left finite in the row)."""
    index = torch.tensor(rows, device=logits.device)
    values = zip(
        step.temperature[index].tolist(),
        step.top_p[index].tolist(),
        torch.isfinite(logits[index]).sum(dim=-1).tolist(),
    )
    return [[trace_id, token, *value] for trace_id, token, value in zip(trace_ids, token_indices, values)]
