"""Decoding strategies: one small immutable object each, shared by every command's `--decoding`.

- greedy:     argmax; bit-identical to the base model's own greedy decoding.
- static:     one fixed (T, p[, top-k]) for every token: "default sampling" is static(1, 1).
- autodeco:   the heads' per-token T̂ and P̂, optionally rescaled as in the official vLLM
              integration: T = T̂·temperature_scale, p = min(1, P̂·top_p_scale).
- mean-shift: a static (T, p) equal to the mean of the heads' predictions on a benchmark: the
              "Just a Better Mean?" baseline. Same sampler as static; a separate name keeps
              reports honest about where the numbers came from.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import UserError

DECODING_CHOICES = ("greedy", "static", "autodeco", "mean-shift")
ACTIVE_HEADS_CHOICES = ("both", "temperature", "top_p")
MAX_STATIC_TEMPERATURE = 5.0


@dataclass(frozen=True)
class DecodingStrategy:
    name: str
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    temperature_scale: float = 1.0
    top_p_scale: float = 1.0
    # Ablation (paper): let only one head act; the other parameter stays at 1.0.
    active_heads: str = "both"  # both | temperature | top_p

    @property
    def uses_heads(self) -> bool:
        return self.name == "autodeco"

    @property
    def is_greedy(self) -> bool:
        return self.name == "greedy"

    @property
    def label(self) -> str:
        if self.name == "greedy":
            return "greedy"
        if self.name == "autodeco":
            scales = "" if (self.temperature_scale, self.top_p_scale) == (1.0, 1.0) else f"(×T {self.temperature_scale:g}, ×p {self.top_p_scale:g})"
            only = {"both": "", "temperature": "[T̂ only]", "top_p": "[P̂ only]"}[self.active_heads]
            return "autodeco" + only + scales
        k = f", k={self.top_k}" if self.top_k else ""
        return f"{self.name}(T={self.temperature:g}, p={self.top_p:g}{k})"

    def to_dict(self) -> dict:
        return asdict(self)


def _check_temperature(value: float, field: str) -> float:
    if not (0.0 < value <= MAX_STATIC_TEMPERATURE):
        raise UserError(f"{field} {value:g} is out of range", f"use a temperature in (0, {MAX_STATIC_TEMPERATURE:g}]; for argmax decoding use --decoding greedy")
    return float(value)


def _check_top_p(value: float, field: str) -> float:
    if not (0.0 < value <= 1.0):
        raise UserError(f"{field} {value:g} is out of range", "use a top-p in (0, 1]")
    return float(value)


def make_strategy(
    name: str,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    temperature_scale: float = 1.0,
    top_p_scale: float = 1.0,
    active_heads: str = "both",
) -> DecodingStrategy:
    """Validate user input into a strategy. Every range error is a one-line UserError."""
    if name not in DECODING_CHOICES:
        raise UserError(f"--decoding {name!r} is not a strategy", f"choose one of: {', '.join(DECODING_CHOICES)}")
    if top_k is not None and top_k < 0:
        raise UserError(f"--top-k {top_k} is negative", "use 0 (off) or a positive number of tokens")
    if name == "greedy":
        return DecodingStrategy("greedy")
    if name == "autodeco":
        if temperature_scale <= 0 or top_p_scale <= 0:
            raise UserError("--temperature-scale and --top-p-scale must be positive")
        if active_heads not in ACTIVE_HEADS_CHOICES:
            raise UserError(f"--active-heads {active_heads!r} is not a choice", f"use one of: {', '.join(ACTIVE_HEADS_CHOICES)}")
        return DecodingStrategy(
            "autodeco", top_k=top_k or None, temperature_scale=float(temperature_scale), top_p_scale=float(top_p_scale), active_heads=active_heads
        )
    if name == "mean-shift" and (temperature is None or top_p is None):
        raise UserError(
            "--decoding mean-shift needs --temperature and --top-p (the mean T̂ and P̂ of an autodeco run)",
            "read them from an autodeco eval result with --mean-from RESULTS.json",
        )
    temperature = 1.0 if temperature is None else temperature
    top_p = 1.0 if top_p is None else top_p
    return DecodingStrategy(
        name,
        temperature=_check_temperature(temperature, "--temperature"),
        top_p=_check_top_p(top_p, "--top-p"),
        top_k=top_k or None,
    )


def mean_shift_from_results(path: str | Path, benchmark: str | None = None) -> DecodingStrategy:
    """Build the mean-shift baseline from an autodeco eval results file (its mean T̂/P̂)."""
    path = Path(path)
    try:
        results = json.loads(path.read_text())["results"]
    except FileNotFoundError:
        raise UserError(f"results file not found: {path}") from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{path}: not an autodeco eval results file (no 'results' object)") from None
    candidates = {k: v for k, v in results.items() if isinstance(v, dict) and "mean_temperature" in v}
    if benchmark:
        candidates = {k: v for k, v in candidates.items() if k == benchmark}
    if not candidates:
        raise UserError(f"{path}: no mean T̂/P̂ found{' for ' + benchmark if benchmark else ''}", "use the results of an eval run with --decoding autodeco")
    row = next(iter(candidates.values()))
    return make_strategy("mean-shift", temperature=row["mean_temperature"], top_p=row["mean_top_p"])
