"""Decoding strategies: one small immutable object each, shared by every command's `--decoding`.

- greedy:     argmax; bit-identical to the base model's own greedy decoding.
- static:     one fixed (T, p[, top-k]) for every token: "default sampling" is static(1, 1).
- autodeco:   the heads' per-token T̂ and P̂, optionally rescaled as in the official vLLM
              integration: T = T̂·temperature_scale, p = min(1, P̂·top_p_scale).
- mean-shift: a static (T, p) equal to the mean of the heads' predictions on a benchmark: the
              "Just a Better Mean?" baseline. Same sampler as static; a separate name keeps
              reports honest about where the numbers came from.

The training-free adaptive decoders (each as its paper defines it; the math is in
`distribution.py`, applied in the order `decoding_logits_and_temperature` documents):

- min-p:       temperature T first, then keep tokens with probability >= min_p x the top
               token's probability (Nguyen et al. 2024; transformers' MinPLogitsWarper and vLLM
               cut after temperature too). Defaults T = 1, min_p = 0.1.
- top-n-sigma: keep tokens whose *raw* logit is >= max logit - n·σ (σ: the std of the row's
               logits), then temperature T (Tang et al. 2024). The kept set does not depend on T
               (max and σ of logits/T both scale by 1/T). Defaults n = 1, T = 1.
- edt:         per token T = T0 · N^(θ/H), H the entropy of the untempered next-token
               distribution (Zhang et al. 2024), clamped to MIN_TEMPERATURE (H -> 0 gives the
               floor). `temperature` holds T0. Defaults T0 = 1, N = 0.8, θ = 1.

All three take an optional -p/--top-k on top (off unless given), cut after temperature.

One strategy is not a `--decoding` choice, since it needs per-request data no flag can give:

- schedule:   each request's (T, p) at step t is read from the `Schedule` its `Request` carries
              (engine/requests.py), e.g. a recorded autodeco trace, permuted (`autodeco diagnose`).
              `schedule` names the schedule, so runs of different schedules get different labels
              and folders; the values themselves ride on the request, which keeps this object
              small and hashable.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import UserError

DECODING_CHOICES = ("greedy", "static", "autodeco", "mean-shift", "min-p", "top-n-sigma", "edt")
ADAPTIVE_CHOICES = ("min-p", "top-n-sigma", "edt")
ACTIVE_HEADS_CHOICES = ("both", "temperature", "top_p")
SCHEDULE = "schedule"
MAX_STATIC_TEMPERATURE = 5.0
MAX_TEMPERATURE = 2.0  # the temperature head's range is (0, MAX_TEMPERATURE)
CUT_LOGIT_EPS = 1e-6  # P̂ is clamped this far inside (0, 1) before its logit is taken
DEFAULT_MIN_P = 0.1
DEFAULT_N_SIGMA = 1.0
DEFAULT_EDT_BASE = 0.8  # the EDT paper's N
DEFAULT_EDT_THETA = 1.0
# each adaptive decoder's own strategy fields, in the order the sampler passes them on
ADAPTIVE_PARAMETERS = {"min-p": ("min_p",), "top-n-sigma": ("n_sigma",), "edt": ("edt_base", "edt_theta")}
# fields added after the first results folders: left out of to_dict() when unset, so the
# run_config.json of older folders (which lack them) still matches and those folders resume
_OPTIONAL_FIELDS = (*(f for fields_ in ADAPTIVE_PARAMETERS.values() for f in fields_), "schedule")
# the flag that sets each field, and the strategy that reads it
_ADAPTIVE_FLAGS = {
    "min_p": ("--min-p", "min-p"),
    "n_sigma": ("--n-sigma", "top-n-sigma"),
    "edt_base": ("--edt-base", "edt"),
    "edt_theta": ("--edt-theta", "edt"),
}


def explored_top_p(top_p: float, sigma: float, noise: float) -> float:
    """The cut a reward step samples at: P̂ moved by σ·noise in logit space (noise ~ N(0, 1)).

    Why: with a hard nucleus, every token inside it has the same ∂log π/∂P̂ (only the normaliser
    moves), and a group's centred advantages sum to zero over it, so REINFORCE through the soft
    top-p barely moves the top-p head. Drawing the cut itself from a Gaussian policy around P̂
    gives the head its own score function, (z − ẑ)/σ² (`training.losses.cut_exploration_loss`),
    which compares samples taken at different cuts. Logit space keeps the cut inside (0, 1).
    """
    p = min(max(top_p, CUT_LOGIT_EPS), 1.0 - CUT_LOGIT_EPS)
    return 1.0 / (1.0 + math.exp(-(math.log(p / (1.0 - p)) + sigma * noise)))


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
    min_p: float | None = None
    n_sigma: float | None = None
    edt_base: float | None = None  # N
    edt_theta: float | None = None  # θ
    schedule: str | None = None  # the schedule strategy's name for its schedule (see the module doc)

    @property
    def uses_heads(self) -> bool:
        return self.name == "autodeco"

    @property
    def uses_schedule(self) -> bool:
        return self.name == SCHEDULE

    @property
    def is_greedy(self) -> bool:
        return self.name == "greedy"

    @property
    def adaptive(self) -> tuple | None:
        """The adaptive decoder's own parameters (None for the others): part of the sampler's
        distribution key, so requests share a distribution only when these agree too."""
        fields_ = ADAPTIVE_PARAMETERS.get(self.name)
        return None if fields_ is None else (self.name, *(getattr(self, f) for f in fields_))

    @property
    def label(self) -> str:
        if self.name == "greedy":
            return "greedy"
        if self.name == "autodeco":
            scales = (
                ""
                if (self.temperature_scale, self.top_p_scale) == (1.0, 1.0)
                else f"(×T {self.temperature_scale:g}, ×p {self.top_p_scale:g})"
            )
            only = {"both": "", "temperature": "[T̂ only]", "top_p": "[P̂ only]"}[self.active_heads]
            return "autodeco" + only + scales
        k = f", k={self.top_k}" if self.top_k else ""
        if self.uses_schedule:
            return f"{SCHEDULE}({self.schedule}{k})"
        if self.name in ADAPTIVE_CHOICES:
            # ASCII names: the label is also the eval folder's slug (evaluation.strategy_slug)
            if self.name == "min-p":
                own = f"min_p={self.min_p:g}"
            elif self.name == "top-n-sigma":
                own = f"n={self.n_sigma:g}"
            else:
                own = f"N={self.edt_base:g}, theta={self.edt_theta:g}"
            p = f", p={self.top_p:g}" if self.top_p < 1.0 else ""
            return f"{self.name}(T={self.temperature:g}, {own}{p}{k})"
        return f"{self.name}(T={self.temperature:g}, p={self.top_p:g}{k})"

    def to_dict(self) -> dict:
        data = asdict(self)
        for name in _OPTIONAL_FIELDS:
            if data[name] is None:
                del data[name]
        return data


def _check_temperature(value: float, field: str) -> float:
    if not (0.0 < value <= MAX_STATIC_TEMPERATURE):
        raise UserError(
            f"{field} {value:g} is out of range",
            f"use a temperature in (0, {MAX_STATIC_TEMPERATURE:g}]; for argmax decoding use --decoding greedy",
        )
    return float(value)


def _check_top_p(value: float, field: str) -> float:
    if not (0.0 < value <= 1.0):
        raise UserError(f"{field} {value:g} is out of range", "use a top-p in (0, 1]")
    return float(value)


def _check_range(value: float, flag: str, low: float, high: float, closed_low: bool, fix: str) -> float:
    inside = (low <= value if closed_low else low < value) and value <= high
    if not (math.isfinite(value) and inside):
        interval = (
            f"{'[' if closed_low else '('}{low:g}, {high:g}]"
            if math.isfinite(high)
            else f"{'>=' if closed_low else '>'} {low:g}"
        )
        raise UserError(
            f"{flag} {value:g} is out of range", f"use a value {'in ' if math.isfinite(high) else ''}{interval}; {fix}"
        )
    return float(value)


def _adaptive_strategy(
    name: str, temperature: float | None, top_p: float | None, top_k: int | None, given: dict
) -> DecodingStrategy:
    """min-p, top-n-sigma and edt: their own parameter(s) plus T (T0 for edt), optional p and top-k."""
    fields: dict = {}
    if name == "min-p":
        value = DEFAULT_MIN_P if given["min_p"] is None else given["min_p"]
        fields["min_p"] = _check_range(
            value, "--min-p", 0.0, 1.0, True, "0 keeps every token, 1 only the most likely (the paper uses 0.05-0.1)"
        )
    elif name == "top-n-sigma":
        value = DEFAULT_N_SIGMA if given["n_sigma"] is None else given["n_sigma"]
        fields["n_sigma"] = _check_range(
            value,
            "--n-sigma",
            0.0,
            math.inf,
            True,
            "0 keeps only the top logit, larger n keeps more (the paper uses 1.0)",
        )
    else:
        base = DEFAULT_EDT_BASE if given["edt_base"] is None else given["edt_base"]
        theta = DEFAULT_EDT_THETA if given["edt_theta"] is None else given["edt_theta"]
        if not (math.isfinite(base) and 0.0 < base < 1.0):
            raise UserError(
                f"--edt-base {base:g} is out of range",
                "use a base N in (0, 1) (the paper's 0.8); N = 1 would be a fixed temperature (--decoding static)",
            )
        fields["edt_base"] = float(base)
        fields["edt_theta"] = _check_range(
            theta,
            "--edt-theta",
            0.0,
            math.inf,
            False,
            "larger θ lowers T on confident tokens (the paper's 1.0); for a fixed T use --decoding static",
        )
    return DecodingStrategy(
        name,
        temperature=_check_temperature(1.0 if temperature is None else temperature, "--temperature"),
        top_p=_check_top_p(1.0 if top_p is None else top_p, "--top-p"),
        top_k=top_k or None,
        **fields,
    )


def _refuse_unused(
    name: str,
    temperature: float | None,
    top_p: float | None,
    top_k: int | None,
    temperature_scale: float,
    top_p_scale: float,
    active_heads: str,
) -> None:
    """A flag the chosen decoding would ignore is an error, not a run that silently differs from
    the one asked for (`-t 0.5` with the default autodeco used to sample at the heads' T̂)."""
    fixed = {"-t/--temperature": temperature, "-p/--top-p": top_p}
    if name == "autodeco":
        for flag, value in fixed.items():
            if value is not None:
                scale = "--temperature-scale" if flag.startswith("-t") else "--top-p-scale"
                raise UserError(
                    f"{flag} is not a setting of --decoding autodeco: the heads choose it per token",
                    f"scale the heads' values with {scale}, or use --decoding static for one value on every token",
                )
    if name == "greedy":
        for flag, value in {**fixed, "--top-k": top_k or None}.items():
            if value is not None:
                raise UserError(
                    f"{flag} is not a setting of --decoding greedy: argmax does not sample",
                    "drop it, or use --decoding static to sample with it",
                )
    if name != "autodeco":
        scales = {"--temperature-scale": temperature_scale != 1.0, "--top-p-scale": top_p_scale != 1.0}
        for flag, changed in {**scales, "--active-heads": active_heads != "both"}.items():
            if changed:
                raise UserError(
                    f"{flag} is a setting of --decoding autodeco, not {name}",
                    f"drop {flag}, or use --decoding autodeco",
                )


def make_strategy(
    name: str,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    temperature_scale: float = 1.0,
    top_p_scale: float = 1.0,
    active_heads: str = "both",
    *,
    min_p: float | None = None,
    n_sigma: float | None = None,
    edt_base: float | None = None,
    edt_theta: float | None = None,
) -> DecodingStrategy:
    """Validate user input into a strategy. Every range error is a one-line UserError."""
    if name not in DECODING_CHOICES:
        raise UserError(f"--decoding {name!r} is not a strategy", f"choose one of: {', '.join(DECODING_CHOICES)}")
    if top_k is not None and top_k < 0:
        raise UserError(f"--top-k {top_k} is negative", "use 0 (off) or a positive number of tokens")
    _refuse_unused(name, temperature, top_p, top_k, temperature_scale, top_p_scale, active_heads)
    given = {"min_p": min_p, "n_sigma": n_sigma, "edt_base": edt_base, "edt_theta": edt_theta}
    for field_name, value in given.items():
        flag, owner = _ADAPTIVE_FLAGS[field_name]
        if value is not None and name != owner:
            raise UserError(
                f"{flag} is a setting of --decoding {owner}, not {name}", f"drop {flag}, or use --decoding {owner}"
            )
    if name in ADAPTIVE_CHOICES:
        return _adaptive_strategy(name, temperature, top_p, top_k, given)
    if name == "greedy":
        return DecodingStrategy("greedy")
    if name == "autodeco":
        if temperature_scale <= 0 or top_p_scale <= 0:
            raise UserError("--temperature-scale and --top-p-scale must be positive")
        if active_heads not in ACTIVE_HEADS_CHOICES:
            raise UserError(
                f"--active-heads {active_heads!r} is not a choice", f"use one of: {', '.join(ACTIVE_HEADS_CHOICES)}"
            )
        return DecodingStrategy(
            "autodeco",
            top_k=top_k or None,
            temperature_scale=float(temperature_scale),
            top_p_scale=float(top_p_scale),
            active_heads=active_heads,
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


def schedule_strategy(name: str, top_k: int | None = None) -> DecodingStrategy:
    """The schedule strategy for the schedule called `name` (its requests carry the values)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ValueError(f"a schedule name is letters, digits, '.', '_' and '-' (it names a folder): {name!r}")
    return DecodingStrategy(SCHEDULE, top_k=top_k or None, schedule=name)


def mean_shift_from_results(path: str | Path, benchmark: str | None = None) -> DecodingStrategy:
    """Build the mean-shift baseline from an autodeco eval results file (its mean T̂/P̂)."""
    from .json_files import read_json_file
    from .schema import NUMBER, OBJECT, Field, Schema, check, mapping, optional

    path = Path(path)
    data = read_json_file(path, "results file")
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise UserError(f"{path}: not an autodeco eval results file (no 'results' object)")
    means = Schema(
        {
            "mean_temperature": optional(NUMBER, minimum=0, maximum=MAX_STATIC_TEMPERATURE),
            "mean_top_p": optional(NUMBER, minimum=0, maximum=1),
        }
    )
    results = check(data, Schema({"results": mapping(Field(OBJECT, fields=means))}), str(path))["results"]
    candidates = {k: v for k, v in results.items() if "mean_temperature" in v and "mean_top_p" in v}
    if benchmark and candidates and benchmark not in candidates:
        raise UserError(
            f"{path}: no mean T̂/P̂ for {benchmark} (it has {', '.join(candidates)}); another benchmark's means are "
            f"not {benchmark}'s mean-shift baseline",
            f"pass the results.json of an autodeco eval on {benchmark}, or give -t/-p yourself",
        )
    if benchmark:
        candidates = {k: v for k, v in candidates.items() if k == benchmark}
    if not candidates:
        raise UserError(
            f"{path}: no mean T̂/P̂ found{' for ' + benchmark if benchmark else ''}",
            "use the results of an eval run with --decoding autodeco",
        )
    row = next(iter(candidates.values()))
    return make_strategy("mean-shift", temperature=row["mean_temperature"], top_p=row["mean_top_p"])


def strategy_slug(strategy: DecodingStrategy) -> str:
    """A folder name from the label: 'static(T=0.6, p=0.95)' -> 'static-T0.6-p0.95'."""
    text = strategy.label.replace("×", "x").replace("=", "")
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")
