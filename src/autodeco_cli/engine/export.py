"""Merging heads into a base model folder for serving, and splitting such a folder again.

The merged layout is the official AutoDeco one (base weights under `llm.`, heads under
`temp_head.`/`top_p_head.`, an `autodeco` config carrying the base config inline), so merged
folders move between this tool and the official vLLM integration.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..core.errors import UserError
from ..core.heads import load_heads
from .models import LoadedModel, load_base_model

MERGED_WEIGHTS = "model.safetensors"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
)


def merge(model: str, heads: str, output: str | Path, dtype: str | None = None) -> Path:
    from safetensors.torch import save_file

    output = Path(output)
    if output.exists() and any(output.iterdir()):
        raise UserError(f"{output} is not empty", "choose a new folder for the merged checkpoint")
    # a checkpoint keeps fp32 unless asked: no --dtype would be bf16 on CPUs with native bf16
    lm: LoadedModel = load_base_model(model, device="cpu", dtype=dtype or "float32")
    loaded_heads = load_heads(heads, expected_hidden_size=lm.hidden_size)
    if loaded_heads.config.tap_layer:
        raise UserError(
            f"{heads}: these heads read decoder layer {loaded_heads.config.tap_layer}'s output, which the official "
            "merged layout cannot say",
            "use the heads folder itself (--heads DIR)",
        )
    state = {}
    # tied embeddings share storage; safetensors refuses shared tensors, and the config re-ties them
    tied = getattr(lm.model.config, "tie_word_embeddings", False)
    base = {k: v for k, v in lm.model.state_dict().items() if not (tied and k == "lm_head.weight")}
    for key, value in checkpoint_layout(lm.model, base).items():
        state[f"llm.{key}"] = value.detach().contiguous()
    for key, value in loaded_heads.state_dict().items():
        state[key] = value.detach().float().contiguous()
    output.mkdir(parents=True, exist_ok=True)
    save_file(state, str(output / MERGED_WEIGHTS), metadata={"format": "pt"})
    base_config = lm.model.config.to_dict()
    config = {
        **{k: v for k, v in base_config.items() if k not in ("architectures", "auto_map", "quantization_config")},
        "model_type": "autodeco",
        "architectures": ["AutoDecoModelForCausalLM"],
        "base_model_type": base_config["model_type"],
        "base_model_name_or_path": model,
        "enable_temperature_head": True,
        "enable_top_p_head": True,
        "use_enhanced_features": loaded_heads.config.use_enhanced_features,
        "autodeco_cli": {"head_width": loaded_heads.config.head_width, "provenance": loaded_heads.config.provenance},
    }
    (output / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    lm.tokenizer.save_pretrained(str(output))
    return output


def checkpoint_layout(model, state: dict) -> dict:
    """`state` under the names and shapes its checkpoints use. transformers 5 fuses some weights
    in memory (Qwen3-MoE's experts into one tensor per layer); the official merge, vLLM and
    transformers' own loader expect one tensor per expert, as save_pretrained writes them."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers 4.x keeps checkpoint names in memory
        return state
    return revert_weight_conversion(model, state)


def split(merged: str | Path, base_output: str | Path, heads_output: str | Path) -> tuple[Path, Path]:
    merged = Path(merged)
    lm = load_base_model(str(merged), device="cpu", dtype="float32")  # as merge writes by default
    heads = load_heads(merged, expected_hidden_size=lm.hidden_size)
    base_output, heads_output = Path(base_output), Path(heads_output)
    lm.model.save_pretrained(str(base_output), safe_serialization=True)
    lm.tokenizer.save_pretrained(str(base_output))
    heads.config.base_model = str(base_output)
    heads.save(heads_output)
    return base_output, heads_output
