"""The two AutoDeco heads, laid out exactly as the official code so checkpoints interchange.

Parameter names (``temp_head.mlp.{0,2}.*``, ``top_p_head.mlp.{0,2}.*``) and the input layout of
the top-p head are those of Zacks917/AutoDeco, which is what lets us read its checkpoints and
lets its tools read ours.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn import functional

from .decoding import MAX_TEMPERATURE
from .distribution import MIN_TEMPERATURE, distribution_features
from .errors import UserError
from .io_checks import heads_files
from .schema import BOOLEAN, INTEGER, OBJECT, STRING, Schema, check, optional

HEADS_CONFIG_FILE = "config.json"
HEADS_WEIGHTS_FILE = "autodeco_heads.safetensors"
# Official split-head checkpoints use either name for the heads' weights.
OFFICIAL_WEIGHT_FILES = ("autodeco_heads.safetensors", "model.safetensors")
NUM_DISTRIBUTION_FEATURES = 4


@dataclass
class HeadsConfig:
    hidden_size: int
    head_width: int = 256
    use_enhanced_features: bool = True
    base_model: str | None = None
    # Also read the output of this decoder layer (1-based: transformers' hidden_states[tap_layer]); the heads'
    # input is then [that layer's state, the last hidden state]. Why: on the default model a middle layer holds a
    # "random pick or exact pick" direction shared across task templates that the last layer does not
    # (reports/reward-recipe.md, "Round 10").
    tap_layer: int | None = None
    tap_top_p: bool = True  # False: only the temperature head reads the tap; the top-p head reads the last state
    # Free-form provenance (training command, data, steps) so a shipped checkpoint explains itself.
    provenance: dict = field(default_factory=dict)


def check_tap_layer(tap_layer: int | None, model: nn.Module) -> int | None:
    """`tap_layer` where `model` (a transformers causal LM) has that many decoder layers, else a UserError."""
    layers = getattr(model.config, "num_hidden_layers", None)
    if tap_layer is not None and layers is not None and not 1 <= tap_layer <= layers:
        raise UserError(
            f"tap_layer={tap_layer}: the base model has decoder layers 1-{layers}",
            f"set tap_layer to one of 1-{layers} (the output of that layer), or leave it out",
        )
    return tap_layer


def hook_layer_output(model: nn.Module, tap_layer: int, keep: Callable[[torch.Tensor], None]):
    """Hands `keep` decoder layer `tap_layer`'s output (transformers' hidden_states[tap_layer]) at each forward of
    `model`; returns the hook's handle. A hook rather than output_hidden_states: that keeps every layer's states."""
    layer = model.get_decoder().layers[tap_layer - 1]
    return layer.register_forward_hook(
        lambda _module, _args, output: keep(output[0] if isinstance(output, tuple) else output)
    )


def last_state(heads_input: torch.Tensor, hidden_size: int) -> torch.Tensor:
    """The last hidden state inside the heads' input ([tap layer's state, last state] or the last state)."""
    return heads_input[..., -hidden_size:]


def _mlp(in_features: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_features, width), nn.ReLU(), nn.Linear(width, 1), nn.Sigmoid())


class TempHead(nn.Module):
    """h -> T̂ in (0, 2)."""

    def __init__(self, hidden_size: int, width: int = 256):
        super().__init__()
        self.mlp = _mlp(hidden_size, width)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.mlp(hidden) * MAX_TEMPERATURE


class TopPHead(nn.Module):
    """[h, T̂, max prob, entropy, variance, top-5 mass] -> P̂ in (0, 1)."""

    def __init__(self, hidden_size: int, width: int = 256, use_enhanced_features: bool = True):
        super().__init__()
        self.use_enhanced_features = use_enhanced_features
        extra = 1 + (NUM_DISTRIBUTION_FEATURES if use_enhanced_features else 0)
        self.mlp = _mlp(hidden_size + extra, width)

    def forward(self, hidden: torch.Tensor, temperature: torch.Tensor, logits: torch.Tensor | None) -> torch.Tensor:
        parts = [hidden, temperature]
        if self.use_enhanced_features:
            parts.append(distribution_features(logits, temperature))
        return self.mlp(torch.cat(parts, dim=-1))


class AutoDecoHeads(nn.Module):
    def __init__(self, config: HeadsConfig):
        super().__init__()
        self.config = config
        self.temp_head = TempHead(self.input_size, config.head_width)
        top_p_input = self.input_size if config.tap_top_p else config.hidden_size
        self.top_p_head = TopPHead(top_p_input, config.head_width, config.use_enhanced_features)

    @property
    def input_size(self) -> int:
        """Width of the state the heads read: the hidden size, twice with a tap layer."""
        return self.config.hidden_size * (2 if self.config.tap_layer else 1)

    def forward(self, hidden: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (T̂, P̂), each ``[..., 1]``.

        The top-p head sees a detached T̂ (as in the paper): its own loss must not push the
        temperature head through the head's input, only through the soft top-p distribution.
        """
        hidden = hidden.to(self.temp_head.mlp[0].weight.dtype)
        temperature = self.temp_head(hidden)
        top_p = self.top_p_head(self._top_p_state(hidden), temperature.detach(), logits)
        return temperature, top_p

    def _top_p_state(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden if self.config.tap_top_p else last_state(hidden, self.config.hidden_size)

    def decode_values(self, hidden: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """`forward` for a decode step, without autograd: ``[rows, 2]``, each row's (T̂, P̂) side by side.

        Float32 rows: the same ops on the same weights in the same order (`functional.linear` is
        what `nn.Linear` calls), with the module calls and their hooks skipped and the activations
        applied in place (at one row those calls cost about as much as the matmuls): forward's bits.
        Call it under `torch.inference_mode()` or `torch.no_grad()`.

        bf16 rows (a bf16 base model) take the heads' step kernel where it runs: one C call for both
        heads and the features, each dot product in one fixed order, so a row's (T̂, P̂) is the same in
        any batch; within ~1e-5 of `forward`'s (that order is not MKL's, and where AMX is the first layers'
        weights are read as two bf16 each, within 2^-17 of them), far below what the bf16 rounding of the
        hidden state itself moves them.
        """
        return self.decode_step()(hidden, logits)

    def decode_step(self, reuse_output: bool = False) -> Callable[..., torch.Tensor]:
        """`decode_values` as a function of (hidden, logits), with the heads' side looked up once: whether
        their weights can take the kernel, and where those weights lie. For a run of decode steps during which
        the heads' tensors keep their storage (a generation run: training updates them in place, and the kernel
        reads them live, or packs its AMX copy of the first layers again). Cold, right after the model's forward,
        that lookup cost ~50 us a step, a quarter of the heads' time at one row (2-vCPU Xeon). The step takes the
        logits' block maxima too where the caller has them (`learned_kernels.widen_logits`): the kernel then reads
        those instead of each row for its max and live blocks. `reuse_output`: the kernel's result is overwritten
        by the next call with as many rows (for a caller that reads each at once)."""
        layers = self._decode_layers()
        enhanced = self.top_p_head.use_enhanced_features
        # the kernel's top-p head reads the temperature head's input
        kernel = _weights_kernel(layers) if self.config.tap_top_p else None
        if kernel is not None:
            from . import learned_kernels

            on_kernel = learned_kernels.heads_step_on(
                kernel, layers, MAX_TEMPERATURE, MIN_TEMPERATURE, enhanced, reuse_output
            )

        def step(hidden: torch.Tensor, logits: torch.Tensor, maxima: torch.Tensor | None = None) -> torch.Tensor:
            if kernel is not None and _rows_take_kernel(hidden, logits):
                try:
                    return on_kernel(hidden.contiguous(), logits.contiguous(), maxima)
                except learned_kernels.NotFinite:
                    pass  # torch's path below, as the features' own kernel does
            return _torch_values(layers, enhanced, hidden, logits, self._top_p_state(hidden))

        return step

    def _decode_layers(self) -> tuple[nn.Linear, nn.Linear, nn.Linear, nn.Linear]:
        # The Linear modules themselves, not their tensors: training and `.to()` update those in place.
        layers = self.__dict__.get("_layers")
        if layers is None:
            temp, top_p = self.temp_head.mlp, self.top_p_head.mlp
            layers = self.__dict__["_layers"] = (temp[0], temp[2], top_p[0], top_p[2])
        return layers

    @staticmethod
    def parameter_count_formula(hidden_size: int, width: int = 256, use_enhanced_features: bool = True) -> int:
        extra = 1 + (NUM_DISTRIBUTION_FEATURES if use_enhanced_features else 0)
        temp = hidden_size * width + width + width + 1
        top_p = (hidden_size + extra) * width + width + width + 1
        return temp + top_p

    # ---- persistence -------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        from .safe_writes import staged, write_atomically

        directory = Path(directory)
        state = {k: v.detach().float().contiguous().cpu() for k, v in self.state_dict().items()}
        with staged(directory / HEADS_WEIGHTS_FILE, sum(v.numel() * 4 for v in state.values())) as temporary:
            save_file(state, str(temporary), metadata={"format": "pt"})
        cfg = {
            # The official loader keys on these two fields; the rest is ours.
            "model_type": "autodeco",
            "base_model_name_or_path": self.config.base_model,
            "hidden_size": self.config.hidden_size,
            "use_enhanced_features": self.config.use_enhanced_features,
            "enable_temperature_head": True,
            "enable_top_p_head": True,
            "autodeco_cli": asdict(self.config),
        }
        write_atomically(directory / HEADS_CONFIG_FILE, json.dumps(cfg, indent=2) + "\n")
        return directory


def _torch_values(
    layers, enhanced: bool, hidden: torch.Tensor, logits: torch.Tensor, top_p_hidden: torch.Tensor
) -> torch.Tensor:
    """`forward`'s ops on `layers` (the heads' four Linears) without the module calls: forward's bits."""
    temp_in, temp_out, top_p_in, top_p_out = layers
    hidden, top_p_hidden = hidden.to(temp_in.weight.dtype), top_p_hidden.to(temp_in.weight.dtype)
    temperature = functional.linear(hidden, temp_in.weight, temp_in.bias).relu_()
    temperature = functional.linear(temperature, temp_out.weight, temp_out.bias).sigmoid_().mul_(MAX_TEMPERATURE)
    parts = [top_p_hidden, temperature]
    if enhanced:
        parts.append(distribution_features(logits, temperature))
    top_p = functional.linear(torch.cat(parts, dim=-1), top_p_in.weight, top_p_in.bias).relu_()
    top_p = functional.linear(top_p, top_p_out.weight, top_p_out.bias).sigmoid_()
    return torch.cat((temperature, top_p), dim=-1)


def _weights_kernel(layers):
    """The heads' step kernel where the heads' weights can take it (float32, contiguous, on the CPU) and it
    is built here, else None."""
    weights = (layers[0].weight, layers[2].weight)
    if any(w.dtype != torch.float32 or not w.is_cpu or not w.is_contiguous() for w in weights):
        return None
    from . import learned_kernels

    return learned_kernels.heads_step()


def _rows_take_kernel(hidden: torch.Tensor, logits: torch.Tensor) -> bool:
    """A step's rows the kernel takes: bf16 CPU hidden states, float32 logits, no autograd. (Tensor
    properties only: right after the model's forward a `.device` costs ~20 us.)"""
    if hidden.dtype != torch.bfloat16 or not hidden.is_cpu or hidden.dim() != 2:
        return False
    return logits.dtype == torch.float32 and logits.dim() == 2 and not torch.is_grad_enabled()


def _load_safetensors_heads(files: list[Path]) -> tuple[dict[str, torch.Tensor], bool]:
    """Collect head tensors from safetensors files; also report whether `llm.`-prefixed base weights exist."""
    from safetensors import safe_open

    heads: dict[str, torch.Tensor] = {}
    has_base = False
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    if key.startswith(("temp_head.", "top_p_head.")):
                        heads[key] = handle.get_tensor(key).float()
                    elif key.startswith("llm."):
                        has_base = True
        except Exception as exc:  # safetensors raises several types for a corrupt header
            raise UserError(
                f"{path}: not a readable safetensors file ({exc})", "re-save the heads with `autodeco train-heads`"
            ) from None
    return heads, has_base


# The fields of a heads config.json that are read; official configs carry many more.
_OURS = Schema(
    {
        "hidden_size": optional(INTEGER, minimum=1),
        "head_width": optional(INTEGER, minimum=1),
        "use_enhanced_features": optional(BOOLEAN),
        "base_model": optional(STRING, nullable=True),
        "tap_layer": optional(INTEGER, minimum=1, nullable=True),
        "tap_top_p": optional(BOOLEAN),
        "provenance": optional(OBJECT),
    }
)
HEADS_CONFIG = Schema(
    {
        "model_type": optional(STRING, nullable=True),
        "base_model_name_or_path": optional(STRING, nullable=True),
        "hidden_size": optional(INTEGER, minimum=1),
        "use_enhanced_features": optional(BOOLEAN),
        "autodeco_cli": optional(OBJECT, fields=_OURS),
    }
)


def read_heads_config(directory: Path) -> dict:
    cfg_path = directory / HEADS_CONFIG_FILE
    if not cfg_path.is_file():
        return {}
    from .json_files import read_json_file

    config = read_json_file(cfg_path, "heads config")
    return check(
        config, HEADS_CONFIG, str(cfg_path), "fix config.json, or re-save the heads with `autodeco train-heads`"
    )


def _check_finite(state: dict[str, torch.Tensor], path: Path) -> None:
    """NaN/inf weights decode garbage (and write NaN into results): refuse them on load."""
    for name, tensor in sorted(state.items()):
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise UserError(
                f"{path}: tensor {name} holds {bad} NaN/inf value{'s' if bad != 1 else ''} of {tensor.numel()}; these "
                "heads are broken (a diverged training run?)",
                "retrain them (e.g. with a lower learning_rate) or use an earlier checkpoint from checkpoints/",
            )


def _check_config_hidden_size(cfg: dict, hidden_size: int, path: Path) -> None:
    """A config.json whose hidden_size disagrees with the weights describes other heads."""
    cfg_path = (path.parent if path.is_file() else path) / HEADS_CONFIG_FILE
    for where, value in (
        ("hidden_size", cfg.get("hidden_size")),
        ("autodeco_cli.hidden_size", cfg.get("autodeco_cli", {}).get("hidden_size")),
    ):
        if value is not None and value != hidden_size:
            raise UserError(
                f"{cfg_path}: field {where} is {value!r}, but the weights are for hidden size {hidden_size}",
                f"set {where} to {hidden_size} if the weights are right, or re-save the heads with `autodeco "
                "train-heads`",
            )


def load_heads(path: str | Path, expected_hidden_size: int | None = None) -> AutoDecoHeads:
    """Load heads from our folder, an official split-heads folder or an official merged folder.

    Pickled checkpoints (.bin/.pt) are refused on purpose: loading them executes code.
    """
    path = Path(path).expanduser()
    files = heads_files(path)
    cfg = read_heads_config(path.parent if path.is_file() else path)
    state, _ = _load_safetensors_heads(files)
    if "temp_head.mlp.0.weight" not in state or "top_p_head.mlp.0.weight" not in state:
        raise UserError(f"{path}: no AutoDeco heads inside (expected temp_head.mlp.* and top_p_head.mlp.* tensors)")

    _check_finite(state, path)
    ours = cfg.get("autodeco_cli", {})
    tap_layer, tap_top_p = ours.get("tap_layer"), ours.get("tap_top_p", True)
    width, input_size = state["temp_head.mlp.0.weight"].shape
    hidden_size = input_size // 2 if tap_layer else input_size
    extra = state["top_p_head.mlp.0.weight"].shape[1] - (input_size if tap_top_p else hidden_size)
    _check_config_hidden_size(cfg, hidden_size, path)
    config = HeadsConfig(
        hidden_size=hidden_size,
        head_width=width,
        use_enhanced_features=extra == 1 + NUM_DISTRIBUTION_FEATURES,
        base_model=ours.get("base_model") or cfg.get("base_model_name_or_path"),
        tap_layer=tap_layer,
        tap_top_p=tap_top_p,
        provenance=ours.get("provenance", {}),
    )
    if expected_hidden_size is not None and hidden_size != expected_hidden_size:
        raise UserError(
            f"{path}: heads were trained for hidden size {hidden_size}, but the base model has {expected_hidden_size}",
            f"use heads trained for this model (they name base model {config.base_model!r})",
        )
    heads = AutoDecoHeads(config)
    missing = sorted(set(heads.state_dict()) - set(state))
    if missing:
        raise UserError(
            f"{path}: heads checkpoint is incomplete (missing {', '.join(missing)})",
            "re-save it with `autodeco train-heads`",
        )
    heads.load_state_dict(state, strict=True)
    return heads.eval()


def fresh_heads(hidden_size: int, base_model: str | None = None, seed: int = 0) -> AutoDecoHeads:
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        heads = AutoDecoHeads(HeadsConfig(hidden_size=hidden_size, base_model=base_model))
    finally:
        torch.random.set_rng_state(generator_state)
    return heads.eval()


def heads_digest(heads: AutoDecoHeads) -> str:
    """A hash of the heads' weights: retrained heads saved to the same path are other heads."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(heads.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]
