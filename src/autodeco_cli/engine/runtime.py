"""Opening a model + heads once per command: the shared start-up path of every subcommand."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

from ..core.decoding import DecodingStrategy
from ..core.prompt_format import PLAIN, PromptFormat
from .generation import GenerationEngine, check_attention_cache
from .heads_source import heads_adapter, resolve_heads
from .interface import Engine
from .model_names import DEFAULT_MODEL
from .models import load_base_model, pick_device
from .option_checks import check_data_parallel_device, check_engine_adapter, check_engine_options


@dataclass(frozen=True)
class EngineSettings:
    """Which model and heads to open, on which engine and devices, rendering prompts how."""

    model: str = DEFAULT_MODEL
    heads: str | None = None  # None: the heads shipped for the model, if any (or fresh when needed)
    device: str | None = None
    dtype: str | None = None
    trust_remote_code: bool = False
    adapter: str | None = None  # None: the adapter saved beside the heads, if any
    engine: str = "hf"  # one of option_checks.ENGINES
    # vLLM's; for ours on CPU, data > 1 runs that many processes with the threads split among them
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    # fixed when vLLM starts (its max_num_seqs and engine seed); ours takes them per call and request
    batch_size: int = 32
    seed: int = 0
    prompt_format: PromptFormat = PLAIN


def open_engine(
    settings: EngineSettings, strategies: Sequence[DecodingStrategy] = (), *, force_heads: bool = False
) -> Engine:
    """The engine every command generates with: ours ("hf") or vLLM with the AutoDeco plugin.

    Heads are loaded when a strategy uses them, or with `force_heads`.
    """
    check_engine_options(
        model=settings.model,
        heads=settings.heads,
        device=settings.device,
        dtype=settings.dtype,
        adapter=settings.adapter,
        engine=settings.engine,
        tensor_parallel_size=settings.tensor_parallel_size,
        data_parallel_size=settings.data_parallel_size,
    )
    adapter = settings.adapter or heads_adapter(settings.heads)
    if settings.engine == "vllm":
        return _open_vllm(settings, strategies, adapter, force_heads)
    data = settings.data_parallel_size
    if data > 1:  # check_engine_options refused a named GPU; here, the one "auto" resolves to
        check_data_parallel_device(settings.engine, str(pick_device(settings.device)), data)
    lm = load_base_model(
        settings.model,
        device=settings.device,
        dtype=settings.dtype,
        trust_remote_code=settings.trust_remote_code,
        adapter=adapter,
    )
    check_attention_cache(lm)  # before a warning about fresh heads, for a model that cannot run at all
    needed = force_heads or any(s.uses_heads for s in strategies)
    lead = GenerationEngine(lm, resolve_heads(settings.heads, lm, needed), settings.prompt_format)
    if data == 1:
        return lead
    from .data_parallel import DataParallelEngine

    # replicas load the dtype the lead resolved, whatever their own CPU check would say
    replica = dataclasses.replace(settings, adapter=adapter, data_parallel_size=1, dtype=lead.dtype)
    open_kwargs = {"settings": replica, "strategies": strategies, "force_heads": force_heads}
    return DataParallelEngine(lead, data, open_engine, open_kwargs)


def _open_vllm(settings: EngineSettings, strategies: Sequence[DecodingStrategy], adapter: str | None, force_heads):
    from .vllm.engine import VllmSettings, open_vllm_engine

    check_engine_adapter(settings.engine, adapter)
    vllm_settings = VllmSettings(
        dtype=settings.dtype,
        seed=settings.seed,
        tensor_parallel_size=settings.tensor_parallel_size,
        data_parallel_size=settings.data_parallel_size,
        max_num_seqs=settings.batch_size,
        trust_remote_code=settings.trust_remote_code,
    )
    return open_vllm_engine(
        settings.model,
        settings.heads,
        list(strategies),
        vllm_settings,
        force_heads=force_heads,
        prompt_format=settings.prompt_format,
    )
