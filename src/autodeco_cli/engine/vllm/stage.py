"""Staging a base model and its heads as one folder vLLM can load as an AutoDeco model.

The staged folder holds the base's files as symlinks, a config.json whose architecture is
`AutoDeco<base arch>` (plus where the heads are), and the heads saved in our layout. Every
heads layout `load_heads` reads (ours, official split heads, official merged `llm.` folders)
is checked against the base's hidden size here, before vLLM starts, so a mismatch is a
one-line error instead of a worker crash. The same folder serves `vllm serve` directly.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ...core.errors import UserError
from ...core.heads import AutoDecoHeads
from ...core.user_cache import cache_root
from ..models import convert_gguf, resolve_model_source
from .model import BASE_ARCH_FIELD, HEADS_FIELD, PREFIX

HEADS_SUBDIR = "autodeco_heads"


@dataclass
class BaseModel:
    folder: Path  # holds the weights and tokenizer files
    config: dict  # the base's own config.json fields
    arch: str


def base_model(spec: str) -> BaseModel:
    """The base behind a model spec: alias/GGUF (converted once), HF folder, merged folder, hub id."""
    kind, location = resolve_model_source(spec)
    if kind == "gguf":
        location, kind = convert_gguf(Path(location)), "folder"
    if kind == "hub":
        location = _download(str(location))
    folder = Path(location)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if kind == "merged":
        config = {k: v for k, v in config.items() if k not in ("architectures", "auto_map")}
        config["model_type"] = config.pop("base_model_type")
        arch = _causal_lm_arch(config["model_type"], folder)
        config["architectures"] = [arch]
    else:
        archs = config.get("architectures") or []
        if not archs:
            raise UserError(
                f"{folder}/config.json names no architecture", 'add an `architectures` list (e.g. ["LlamaForCausalLM"])'
            )
        arch = archs[0]
    return BaseModel(folder, config, arch)


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
        )
    except Exception as exc:
        raise UserError(
            f"could not fetch {repo_id} from the hub ({type(exc).__name__})", "download it and pass the local folder"
        ) from None


def _causal_lm_arch(model_type: str, folder: Path) -> str:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    arch = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    if arch is None:
        raise UserError(f"{folder}: merged base model type {model_type!r} has no causal-LM class in transformers")
    return arch


def hidden_size(config: dict) -> int:
    text = config.get("text_config") or {}
    size = config.get("hidden_size") or text.get("hidden_size")
    if not size:
        raise UserError("the base config.json has no hidden_size", "check the model folder")
    return int(size)


def check_architecture(arch: str) -> None:
    """Refuse, before vLLM starts, a base vLLM cannot run or we cannot wrap."""
    from vllm import ModelRegistry

    from .plugin import wrappable

    if not wrappable(arch) or arch not in ModelRegistry.get_supported_archs():
        raise UserError(
            f"base architecture {arch!r} is not a causal LM this vLLM supports",
            "use --engine hf, or a base model vLLM lists under its supported text-generation models",
        )


def stage(base: BaseModel, heads: AutoDecoHeads, heads_digest: str) -> Path:
    """The staged AutoDeco folder for (base, heads), made once per pair in the cache."""
    key = hashlib.sha256(f"{base.folder.resolve()}|{heads_digest}".encode()).hexdigest()[:16]
    target = cache_root() / "vllm" / f"{base.folder.name}-{key}"
    config = {
        **base.config,
        "architectures": [PREFIX + base.arch],
        HEADS_FIELD: HEADS_SUBDIR,
        BASE_ARCH_FIELD: base.arch,
    }
    target.mkdir(parents=True, exist_ok=True)
    for path in base.folder.iterdir():
        link = target / path.name
        if path.name == "config.json" or path.name.startswith(".") or link.exists() or link.is_symlink():
            continue
        link.symlink_to(path.resolve())
    heads.save(target / HEADS_SUBDIR)
    (target / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return target
