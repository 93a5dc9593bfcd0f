"""vLLM's entry point into autodeco (`vllm.general_plugins`): register the AutoDeco architectures.

vLLM runs this in every process it starts (engine core, workers), which is why the
registration lives in an entry point: one made only in the caller's process is not seen there.
Every causal-LM architecture vLLM knows gets a lazy `AutoDeco<arch>` entry; the class itself is
built only when a staged config names it (`vllm_model.make_class`).
"""

from __future__ import annotations

from .model import PREFIX

WRAPPABLE_SUFFIXES = ("ForCausalLM", "ForConditionalGeneration")


def wrappable(arch: str) -> bool:
    return arch.endswith(WRAPPABLE_SUFFIXES) and not arch.startswith(PREFIX)


def register() -> None:
    from vllm import ModelRegistry

    for arch in list(ModelRegistry.get_supported_archs()):
        if wrappable(arch):
            ModelRegistry.register_model(PREFIX + arch, f"autodeco_cli.engine.vllm.model:{PREFIX}{arch}")
