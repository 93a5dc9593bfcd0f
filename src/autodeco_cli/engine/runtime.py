"""Opening a model + heads once per command: the shared start-up path of every subcommand."""

from __future__ import annotations

from ..core.decoding import DecodingStrategy
from ..core.errors import UserError
from ..core.prompt_format import PLAIN, PromptFormat
from .generation import GenerationEngine, check_attention_cache
from .heads_source import heads_adapter, resolve_heads
from .models import DEFAULT_MODEL, load_base_model, pick_device

ENGINES = ("hf", "vllm")


def open_engine(
    model: str = DEFAULT_MODEL,
    heads: str | None = None,
    strategies: list[DecodingStrategy] | None = None,
    *,
    device: str | None = None,
    dtype: str | None = None,
    trust_remote_code: bool = False,
    adapter: str | None = None,
    force_heads: bool = False,
    engine: str = "hf",
    prompt_format: PromptFormat = PLAIN,
    parallel: tuple[int, int] = (1, 1),
    batch_size: int = 32,
    seed: int = 0,
):
    """The engine every command generates with: ours ("hf") or vLLM with the AutoDeco plugin.

    `parallel` is the (tensor, data) parallel sizes: vLLM's, or for ours on CPU, data > 1 runs that
    many processes with the threads split among them (`data_parallel`). `batch_size` and `seed` are
    fixed when vLLM starts (our engine takes them per call and per request).
    """
    if engine not in ENGINES:
        raise UserError(f"--engine {engine!r} is not an engine", f"use one of: {', '.join(ENGINES)}")
    adapter = adapter or heads_adapter(heads)
    if engine == "vllm":
        return _open_vllm(
            model,
            heads,
            strategies or [],
            dtype,
            trust_remote_code,
            adapter,
            force_heads,
            prompt_format,
            parallel,
            batch_size,
            seed,
        )
    tensor, data = parallel
    if tensor != 1:
        raise UserError("--tensor-parallel-size is a vLLM option", "add --engine vllm, or drop it")
    if data < 1:
        raise UserError("--data-parallel-size must be at least 1")
    if data > 1 and pick_device(device).type != "cpu":
        raise UserError(
            "--data-parallel-size with --engine hf runs CPU processes", "use --engine vllm for GPU replicas"
        )
    lm = load_base_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code, adapter=adapter)
    check_attention_cache(lm)  # before a warning about fresh heads, for a model that cannot run at all
    needed = force_heads or any(s.uses_heads for s in strategies or [])
    lead = GenerationEngine(lm, resolve_heads(heads, lm, needed), prompt_format)
    if data == 1:
        return lead
    from .data_parallel import DataParallelEngine

    replica = dict(
        model=model,
        heads=heads,
        strategies=strategies,
        device=device,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        adapter=adapter,
        force_heads=force_heads,
        prompt_format=prompt_format,
    )
    return DataParallelEngine(lead, data, open_engine, replica)


def _open_vllm(
    model, heads, strategies, dtype, trust_remote_code, adapter, force_heads, prompt_format, parallel, batch_size, seed
):
    from .vllm.engine import VllmSettings, open_vllm_engine

    if adapter:
        raise UserError(
            "--engine vllm does not apply LoRA adapters here",
            "merge the adapter into the base (autodeco merge) or use --engine hf",
        )
    tensor, data = parallel
    if tensor < 1 or data < 1:
        raise UserError("--tensor-parallel-size and --data-parallel-size must be at least 1")
    settings = VllmSettings(
        dtype=dtype,
        seed=seed,
        tensor_parallel_size=tensor,
        data_parallel_size=data,
        max_num_seqs=batch_size,
        trust_remote_code=trust_remote_code,
    )
    engine = open_vllm_engine(model, heads, strategies, settings, force_heads=force_heads)
    engine.prompt_format = prompt_format
    return engine
