"""What the engine options may be, checked without torch: engine and dtype names, device strings,
and the model, heads and adapter paths that must exist.

The loaders (`models`, `runtime`, `heads_source`) run these same checks, so a command that calls
them first fails in one line before torch and transformers are imported (a second or more), and
the lists of valid values live only here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..core.errors import UserError
from ..core.io_checks import heads_files
from .model_names import MODEL_ALIASES
from .vllm.install import check_vllm_installed

ENGINES = ("hf", "vllm")
# name -> the torch dtype's attribute name (models.DTYPES maps them to torch dtypes)
DTYPE_NAMES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}
# the accelerators a frozen causal LM runs on here; torch knows more types (meta, hpu, ...), none we load onto
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")
_DEVICE = re.compile(rf"({'|'.join(DEVICE_TYPES)})(:\d+)?")


def check_engine_name(engine: str) -> None:
    if engine not in ENGINES:
        raise UserError(f"--engine {engine!r} is not an engine", f"use one of: {', '.join(ENGINES)}")


def check_dtype(dtype: str | None, what: str = "--dtype") -> None:
    """None and "auto" resolve per device when the model loads (`models.pick_dtype`)."""
    if dtype not in (None, "auto") and dtype not in DTYPE_NAMES:
        raise UserError(f"{what} {dtype!r} is not supported", f"use one of: auto, {', '.join(sorted(DTYPE_NAMES))}")


def check_device(device: str | None, what: str = "--device") -> None:
    if device not in (None, "auto") and not _DEVICE.fullmatch(device):
        raise UserError(f"{what} {device!r} is not a device", "use cpu, cuda, cuda:N, mps, xpu or auto")


def check_parallel(engine: str, tensor_parallel_size: int, data_parallel_size: int) -> None:
    """--tp and --dp as numbers (whether --dp > 1 runs on our engine's device: `check_data_parallel_device`)."""
    for flag, value in (("--tensor-parallel-size", tensor_parallel_size), ("--data-parallel-size", data_parallel_size)):
        if value < 1:
            raise UserError(f"{flag} {value}: must be at least 1", "1 (the default) runs one model")
    if engine != "vllm" and tensor_parallel_size != 1:
        raise UserError("--tensor-parallel-size is a vLLM option", "add --engine vllm, or drop it")


def check_data_parallel_device(engine: str, device: str | None, data_parallel_size: int) -> None:
    """--dp > 1 on our engine runs CPU processes (`data_parallel`). A --device that is not a CPU is
    refused here; None and "auto" resolve when torch is imported, and `runtime` calls this again
    with the device they resolved to."""
    if engine != "hf" or data_parallel_size <= 1 or device in (None, "auto") or device.split(":")[0] == "cpu":
        return
    raise UserError(
        f"--data-parallel-size {data_parallel_size} with --engine hf runs CPU processes, not {device} replicas",
        "add --device cpu, or use --engine vllm for GPU replicas",
    )


def check_model_spec(spec: str, what: str = "model") -> None:
    """Refuse a model that no loader could open: a path that does not exist (or a folder without
    config.json), or a name that is neither a hub id (org/name) nor an alias. A hub id is not
    looked up: whether it exists is the hub's to say when the model loads."""
    if spec in MODEL_ALIASES:
        return
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"{what} {path}: GGUF file not found", "check the path")
        return
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(
                f"{what} {path} is not a model folder (no config.json)",
                "pass a Hugging Face model folder, a .gguf file, a hub id or the alias smollm2-135m-instruct",
            )
        return
    if path.is_file() and not looks_like_hub_id(spec):  # transformers would look org/name up on the hub
        raise UserError(
            f"{what} {path} is a file, not a model folder or a .gguf file",
            "pass the folder that holds the model's config.json and weights",
        )
    options = f"pass an existing folder, a .gguf file, a hub id (org/name) or an alias ({', '.join(MODEL_ALIASES)})"
    if looks_like_path(spec):
        raise UserError(f"{what} {spec}: no such file or folder", options)
    if not looks_like_hub_id(spec):
        raise UserError(f"{what} {spec!r} is neither an existing path, a hub id nor an alias", options)


def looks_like_path(spec: str) -> bool:
    return (
        spec.startswith((".", "/", "~"))
        or spec.count("/") > 1
        or spec.endswith(".safetensors")
        or (os.sep in spec and not looks_like_hub_id(spec))
    )


def looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and " " not in spec


def check_adapter(adapter: str | None, what: str = "--adapter") -> None:
    if adapter and not (Path(adapter).expanduser() / "adapter_config.json").is_file():
        raise UserError(
            f"{what} {Path(adapter).expanduser()}: not a PEFT adapter folder (no adapter_config.json)",
            "pass the folder that train-heads --lora-r or PEFT saved",
        )


def check_engine_options(
    *,
    model: str,
    heads: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    adapter: str | None = None,
    engine: str = "hf",
    tensor_parallel_size: int = 1,
    data_parallel_size: int = 1,
) -> None:
    """Everything about opening an engine that can be known without loading anything."""
    check_option_values(engine, device, dtype, tensor_parallel_size, data_parallel_size)
    if engine == "vllm":
        check_vllm_installed()  # without it no other input matters
    check_model_spec(model, "--model")
    if heads:
        heads_files(heads, "--heads")
        check_engine_heads(engine, heads)
    check_adapter(adapter)
    check_engine_adapter(engine, adapter)


def check_engine_heads(engine: str, heads: str) -> None:
    """Heads that read a middle layer (their config's `tap_layer`) decode on our engine only: vLLM's compute_logits
    gets the last hidden state alone. Read from config.json, before vLLM starts (minutes)."""
    folder = Path(heads).expanduser()
    config = (folder.parent if folder.is_file() else folder) / "config.json"
    if engine != "vllm" or not config.is_file():
        return
    from ..core.json_files import read_json_file  # core.heads imports torch; its loader checks the fields later

    fields = read_json_file(config, "heads config")
    ours = fields.get("autodeco_cli") if isinstance(fields, dict) else None
    tap = ours.get("tap_layer") if isinstance(ours, dict) else None
    if tap:
        raise UserError(
            f"--heads {heads}: these heads read decoder layer {tap}'s output, which --engine vllm does not pass them",
            "use --engine hf for these heads",
        )


def check_engine_adapter(engine: str, adapter: str | None) -> None:
    """An adapter given as --adapter, or the one saved beside the heads (`runtime` checks that one)."""
    if engine == "vllm" and adapter:
        raise UserError(
            "--engine vllm does not apply LoRA adapters here",
            "merge the adapter into the base (autodeco merge) or use --engine hf",
        )


def check_option_values(
    engine: str, device: str | None, dtype: str | None, tensor_parallel_size: int = 1, data_parallel_size: int = 1
) -> None:
    """The option values alone (no file system): a typo fails before any other input is read."""
    check_engine_name(engine)
    check_device(device)
    check_dtype(dtype)
    check_parallel(engine, tensor_parallel_size, data_parallel_size)
    check_data_parallel_device(engine, device, data_parallel_size)


def check_recipe_fields(config) -> None:
    """A training or study recipe's model, dtype, device, adapter and init_heads (those it has),
    named as its fields: train-heads and the studies load the model from them."""
    check_model_spec(config.model, "field model")
    check_dtype(getattr(config, "dtype", None), "field dtype")
    check_device(getattr(config, "device", None), "field device")
    check_adapter(getattr(config, "adapter", None), "field adapter")
    if getattr(config, "init_heads", None):
        heads_files(config.init_heads, "field init_heads")
