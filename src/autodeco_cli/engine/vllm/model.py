"""The AutoDeco model class vLLM runs: any base architecture, with the heads in `compute_logits`.

vLLM asks the model for logits; ours answers with the logits of the learned distribution,
``logits / T̂`` with tokens outside the nucleus at P̂ set to -inf, computed by the same
`distribution.decoding_logits` our own engine samples from. vLLM's sampler then runs with
temperature 1 and top-p 1 and samples exactly that distribution. No fork, no patched runner.

A class is built per base architecture on first use (`AutoDecoLlamaForCausalLM` wraps
`LlamaForCausalLM`, and so on): this module's `__getattr__` is what the lazy registry entries
made by `vllm_plugin.register` resolve to, in whichever process vLLM imports them.

Requests that asked for another decoding (static, greedy) get their raw row back from the
switch logits processor (`switch.py`, under either model runner), which reads the raw logits and
the per-row T̂/P̂ this class leaves in `LAST_STEP` (same process: the model runner calls
`compute_logits` and then the sampler on the same rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ...core.distribution import decoding_logits

PREFIX = "AutoDeco"
# keys in the staged config.json (see stage.py)
HEADS_FIELD = "autodeco_heads"
BASE_ARCH_FIELD = "autodeco_base_architecture"


@dataclass
class Step:
    """What the last `compute_logits` call saw, for the switch: rows are the sampler's rows."""

    raw: torch.Tensor  # [rows, vocab] base logits
    temperature: torch.Tensor  # [rows]
    top_p: torch.Tensor  # [rows]


LAST_STEP: Step | None = None


def is_autodeco_config(vllm_config) -> bool:
    """Whether vLLM is serving an AutoDeco model (a staged config names `AutoDeco<arch>`)."""
    hf_config = getattr(getattr(vllm_config, "model_config", None), "hf_config", None)
    return any(str(arch).startswith(PREFIX) for arch in getattr(hf_config, "architectures", None) or ())


def base_class(arch: str):
    from vllm.model_executor.models.registry import ModelRegistry

    cls = ModelRegistry._try_load_model_cls(arch)
    if cls is None:
        raise ValueError(f"vLLM has no model class for base architecture {arch!r}")
    return cls


def _attach_heads(self, vllm_config) -> None:
    from ...core.heads import load_heads

    hf_config = vllm_config.model_config.hf_config
    heads_dir = getattr(hf_config, HEADS_FIELD, None)
    if not heads_dir:
        raise ValueError(f"an AutoDeco model needs `{HEADS_FIELD}` in its config.json (stage it with autodeco)")
    heads_dir = Path(heads_dir)
    if not heads_dir.is_absolute():
        heads_dir = Path(vllm_config.model_config.model) / heads_dir
    heads = load_heads(heads_dir, expected_hidden_size=hf_config.hidden_size)
    if heads.config.tap_layer:
        # compute_logits gets the last hidden state only; a middle layer's output would need the model's forward
        raise ValueError(
            f"{heads_dir}: these heads read decoder layer {heads.config.tap_layer}'s output, which the vLLM plugin "
            "does not pass them yet; decode them with autodeco's own engine (--engine hf)"
        )
    # fp32 heads whatever the base dtype: T̂/P̂ are tiny MLPs and their outputs scale every logit
    device = next(self.parameters()).device
    self.autodeco_heads = heads.to(device=device, dtype=torch.float32).eval()


def _learned_logits(self, logits: torch.Tensor | None, hidden_states: torch.Tensor):
    global LAST_STEP
    if logits is None:  # tensor-parallel ranks other than the first gather nothing
        return None
    raw = logits.float()
    with torch.no_grad():
        temperature, top_p = self.autodeco_heads(hidden_states.float(), raw)
    transformed = decoding_logits(raw, temperature, top_p)
    LAST_STEP = Step(raw=raw, temperature=temperature.squeeze(-1), top_p=top_p.squeeze(-1))
    return transformed.to(logits.dtype)


def _base_weights(weights):
    """Base weights only: an official merged folder prefixes them `llm.` and carries the heads too."""
    for name, tensor in weights:
        if name.startswith(("temp_head.", "top_p_head.")):
            continue  # loaded from the staged heads folder when the model is built
        yield (name[len("llm.") :] if name.startswith("llm.") else name), tensor


def _no_local_logits(self):
    # MRV2's batch-sharded sampling asks for `compute_logits_local` (a vocabulary shard) instead of
    # `compute_logits`, which would sample the base's logits without the heads. Without the
    # attribute vLLM logs one line ("Disabling batch-sharded sampling") and samples unsharded.
    raise AttributeError("compute_logits_local")


def make_class(base_arch: str):
    """`AutoDeco<base_arch>`: the base class with heads on its logits."""
    base = base_class(base_arch)

    def __init__(self, *, vllm_config, prefix: str = ""):  # vLLM's constructor contract
        base.__init__(self, vllm_config=vllm_config, prefix=prefix)
        _attach_heads(self, vllm_config)

    def compute_logits(self, hidden_states: torch.Tensor):
        return _learned_logits(self, base.compute_logits(self, hidden_states), hidden_states)

    def load_weights(self, weights):
        loaded = base.load_weights(self, _base_weights(weights))
        # vLLM checks that every parameter was loaded; the heads came from their own file
        heads = {f"autodeco_heads.{name}" for name, _ in self.autodeco_heads.named_parameters()}
        return set(loaded) | heads if loaded is not None else None

    namespace = {
        "__init__": __init__,
        "compute_logits": compute_logits,
        "load_weights": load_weights,
        "compute_logits_local": property(_no_local_logits),
        "__module__": __name__,
        "__qualname__": PREFIX + base_arch,
    }
    return type(PREFIX + base_arch, (base,), namespace)


_CLASSES: dict[str, type] = {}


def __getattr__(name: str):
    if not name.startswith(PREFIX) or name == PREFIX:
        raise AttributeError(name)
    if name not in _CLASSES:
        _CLASSES[name] = make_class(name[len(PREFIX) :])
    return _CLASSES[name]
