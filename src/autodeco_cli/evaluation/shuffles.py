"""An autodeco run's per-token traces, and the shuffled schedules that test whether their order
matters (`autodeco diagnose`).

A trace is one sequence's (T̂, P̂) per generated token, as `run_eval(keep_trace=True)` records it.
Both shuffles move (T̂, P̂) pairs together, so every value a rerun samples at is one the heads
really predicted, jointly:

- within: each sequence's own values in a seeded random order. Its multiset, hence its mean,
  is unchanged; only which token gets which value is lost.
- across: at each position t, the values that the sequences having a position t predicted
  there, permuted among those sequences (all sequences of the task's question set). The
  position profile is unchanged; what is lost is which sequence (question, sampled path) a
  value belonged to.

Permutations are seeded per sequence (within) and per position (across) from the shuffle seed,
so a run with more questions or a resumed one shuffles the shared sequences the same way.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from ..core.errors import UserError
from ..engine.requests import Schedule, request_seed

SequenceKey = tuple[str, int, int]  # (doc id, seed, sample index): run_store.sample_key
Values = list[tuple[float, float]]


@dataclass(frozen=True)
class Trace:
    """One generated sequence's per-token T̂, P̂ and token text."""

    key: SequenceKey
    temperature: tuple[float, ...]
    top_p: tuple[float, ...]
    tokens: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.temperature)

    @property
    def values(self) -> Values:
        return list(zip(self.temperature, self.top_p))

    @property
    def mean(self) -> tuple[float, float]:
        return math.fsum(self.temperature) / len(self), math.fsum(self.top_p) / len(self)


def read_traces(records: dict, keys: Iterable[SequenceKey], where: str) -> list[Trace]:
    """The traces of these samples (keyed as `run_store.sample_key`), in the order given."""
    traces = []
    for key in keys:
        record = records.get(key)
        trace = record.get("trace") if record else None
        if not isinstance(trace, dict) or not trace.get("temperature"):
            raise UserError(
                f"{where}: sample {key} has no per-token trace",
                "that folder was written by `autodeco eval`; give diagnose its own --output-dir",
            )
        columns = [trace.get(name) for name in ("temperature", "top_p", "token")]
        if not all(isinstance(c, list) and len(c) == len(columns[0]) for c in columns):
            raise UserError(f"{where}: sample {key} has a malformed trace", "delete that folder to start over")
        temperature, top_p, tokens = columns
        traces.append(Trace(key, tuple(map(float, temperature)), tuple(map(float, top_p)), tuple(map(str, tokens))))
    return traces


def _permutation(size: int, *identity: object) -> np.ndarray:
    return np.random.default_rng(request_seed(*identity)).permutation(size)


def shuffle_within(traces: Sequence[Trace], seed: int) -> dict[SequenceKey, Values]:
    """Each sequence's own (T̂, P̂) pairs in a seeded random order."""
    out = {}
    for trace in traces:
        values = trace.values
        out[trace.key] = [values[i] for i in _permutation(len(values), seed, "within", *trace.key)]
    return out


def shuffle_across(traces: Sequence[Trace], seed: int) -> dict[SequenceKey, Values]:
    """At each position t, the pairs of the sequences that reach t, permuted among them."""
    ordered = sorted(traces, key=lambda trace: trace.key)
    out: dict[SequenceKey, Values] = {trace.key: [] for trace in ordered}
    for position in range(max((len(trace) for trace in ordered), default=0)):
        present = [trace for trace in ordered if len(trace) > position]
        order = _permutation(len(present), seed, "across", position)
        for trace, source in zip(present, order):
            out[trace.key].append(present[source].values[position])
    return out


def sequence_set_digest(traces: Sequence[Trace]) -> str:
    """8 hex digits naming the set of sequences. An across-shuffle's schedule for one sequence
    depends on all the others, so its run folder is named by the set: a rerun on more questions
    then starts a new folder instead of mixing in samples drawn from another permutation."""
    keys = sorted(trace.key for trace in traces)
    return hashlib.blake2b(repr(keys).encode(), digest_size=4).hexdigest()


def schedules_for(task: str, traces: Sequence[Trace], values: dict[SequenceKey, Values]) -> dict:
    """`run_eval`'s schedules for one strategy. Past its end a rerun samples at the sequence's
    own mean T̂/P̂ (the shuffles keep it; `Schedule` says why a mean)."""
    return {(task, *trace.key): Schedule(tuple(values[trace.key]), fallback=trace.mean) for trace in traces}
