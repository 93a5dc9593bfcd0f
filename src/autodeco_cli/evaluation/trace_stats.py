"""Where the heads' per-token T̂/P̂ vary: within sequences or between them, by relative position
on the output, and by token class (`autodeco diagnose`). Pure functions on traces."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .shuffles import Trace

TOKEN_CLASSES = ("digit", "other")


def variance_decomposition(sequences: Sequence[Sequence[float]]) -> dict:
    """One value's spread split into within- and between-sequence parts.

    within: the mean over sequences of each sequence's variance; between: the variance of the
    sequence means (both ddof=0, every sequence weighted the same, however long). Their sum is
    the token-pooled variance only when all sequences have one length, so that is given too.
    `within_share` is the share a per-token policy can use that a per-sequence one cannot.
    """
    arrays = [np.asarray(s, dtype=float) for s in sequences if len(s)]
    if not arrays:
        raise ValueError("no tokens")
    within = float(np.mean([a.var() for a in arrays]))
    between = float(np.var([a.mean() for a in arrays]))
    total = within + between
    return {
        "within": within,
        "between": between,
        "within_share": within / total if total > 0 else None,
        "pooled_token_variance": float(np.concatenate(arrays).var()),
        "n_sequences": len(arrays),
        "n_tokens": int(sum(a.size for a in arrays)),
    }


def trace_variances(traces: Sequence[Trace]) -> dict:
    return {
        "temperature": variance_decomposition([t.temperature for t in traces]),
        "top_p": variance_decomposition([t.top_p for t in traces]),
    }


def _summary(temperatures: list[float], top_ps: list[float]) -> dict:
    if not temperatures:
        return {"n_tokens": 0, "temperature": None, "temperature_sd": None, "top_p": None, "top_p_sd": None}
    t, p = np.asarray(temperatures), np.asarray(top_ps)
    return {
        "n_tokens": int(t.size),
        "temperature": float(t.mean()),
        "temperature_sd": float(t.std()),
        "top_p": float(p.mean()),
        "top_p_sd": float(p.std()),
    }


def position_profile(traces: Sequence[Trace], bins: int = 10) -> list[dict]:
    """Mean (and SD) T̂/P̂ over all tokens in each bin of relative position i / length: token i of
    a sequence of length L falls in bin floor(bins·i/L), so bin 0 holds every first token."""
    if bins < 1:
        raise ValueError("need at least one bin")
    temperatures: list[list[float]] = [[] for _ in range(bins)]
    top_ps: list[list[float]] = [[] for _ in range(bins)]
    for trace in traces:
        for i, (t, p) in enumerate(zip(trace.temperature, trace.top_p)):
            b = i * bins // len(trace)
            temperatures[b].append(t)
            top_ps[b].append(p)
    return [
        {"bin": b, "from": b / bins, "to": (b + 1) / bins, **_summary(temperatures[b], top_ps[b])} for b in range(bins)
    ]


def token_class(token: str) -> str:
    """digit: a token of ASCII digits (the exact steps of arithmetic); other: anything else."""
    text = token.strip()
    return "digit" if text and text.isascii() and text.isdigit() else "other"


def class_profile(traces: Sequence[Trace]) -> dict[str, dict]:
    temperatures: dict[str, list[float]] = {name: [] for name in TOKEN_CLASSES}
    top_ps: dict[str, list[float]] = {name: [] for name in TOKEN_CLASSES}
    for trace in traces:
        for token, t, p in zip(trace.tokens, trace.temperature, trace.top_p):
            temperatures[token_class(token)].append(t)
            top_ps[token_class(token)].append(p)
    return {name: _summary(temperatures[name], top_ps[name]) for name in TOKEN_CLASSES}
