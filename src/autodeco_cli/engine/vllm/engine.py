"""`--engine vllm`: the `Engine` interface (`engine.interface`) over vLLM, so every command runs on it unchanged.

Requests, `Generation`s, finish reasons, incremental `on_batch_done` and the seeds policy are
the ones of our own engine. What differs, and why:

- sampling is vLLM's (Gumbel-max with per-request seeded streams), so a sampled token matches
  our engine in distribution, not draw for draw; greedy matches token for token;
- learned decoding is the AutoDeco model's `compute_logits` (`model.py`), run with
  temperature = `--temperature-scale` and top-p = `--top-p-scale`: the temperature multiplies
  T̂ exactly, and a top-p below 1 cuts again inside the learned nucleus (about P̂ × scale);
- the per-token trace comes back through a file written by the `AutoDecoSwitch` processor.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ...core.decoding import DecodingStrategy
from ...core.errors import UserError
from ...core.heads import AutoDecoHeads
from ...core.prompt_format import PLAIN, PromptFormat
from ..requests import Generation, Request, TokenTrace, finished_text
from .install import import_vllm
from .trace import LEARNED_ARG, TRACE_ARG, TRACE_DIR_ENV, TraceReader


@dataclass
class EngineModel:
    """What commands read from `engine.lm`; vLLM holds the model itself in its own processes."""

    name: str
    tokenizer: object
    device: str
    hidden_size: int
    config: object = None  # the base's transformers config (context length for --max-new-tokens)


@dataclass
class VllmSettings:
    dtype: str | None = None
    seed: int = 0
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    max_num_seqs: int = 32
    max_model_len: int | None = None
    trust_remote_code: bool = False
    # vLLM's fraction of accelerator memory; on CPU, of the NUMA node's RAM. None: vLLM's 0.92
    # on GPUs, CPU_MEMORY_FRACTION on CPU, where 0.92 fails whenever anything else is running.
    gpu_memory_utilization: float | None = None
    engine_kwargs: dict = field(default_factory=dict)  # any other vllm.LLM argument, passed as is


CPU_MEMORY_FRACTION = 0.25


def unsupported(strategy: DecodingStrategy) -> str | None:
    """Why vLLM cannot run this strategy as our engine does, or None."""
    adaptive = strategy.adaptive
    if adaptive is not None and adaptive[0] != "min-p":
        return f"{strategy.name} has no vLLM sampler (min-p does)"
    if strategy.uses_heads and strategy.active_heads != "both":
        return "--active-heads ablations run on our engine only"
    if strategy.uses_schedule:
        return "per-request (T, p) schedules (autodeco diagnose) run on our engine only"
    return None


class VllmEngine:
    """The `Engine` over a started `vllm.LLM`."""

    name: str = "vllm"
    lm: EngineModel
    heads: AutoDecoHeads | None
    dtype: str
    prompt_format: PromptFormat

    def __init__(
        self,
        lm: EngineModel,
        heads: AutoDecoHeads | None,
        llm,
        trace_dir: Path,
        eos_ids: list[int],
        *,
        dtype: str = "auto",
        prompt_format: PromptFormat = PLAIN,
    ):
        self.lm = lm
        self._eos_ids = eos_ids
        self.heads = heads
        self.llm = llm
        self.trace_dir = trace_dir
        self.traces = TraceReader(trace_dir)
        # the option vLLM started with: its model runs in vLLM's processes, out of reach here
        self.dtype = dtype
        self.prompt_format = prompt_format
        self._ids = itertools.count()

    @property
    def tokenizer(self):
        return self.lm.tokenizer

    def eos_token_ids(self) -> list[int]:
        return list(self._eos_ids)

    def generate(
        self,
        requests: Sequence[Request],
        *,
        max_new_tokens: int,
        batch_size: int = 8,
        stop: Sequence[str] | None = None,
        trace: bool = False,
        streamer=None,
        on_batch_done: Callable[[list[Generation]], None] | None = None,
    ) -> list[Generation]:
        """As `GenerationEngine.generate`; `batch_size` is fixed when vLLM starts (max_num_seqs)."""
        if any(r.strategy.uses_heads for r in requests) and self.heads is None:
            raise ValueError("autodeco requests need heads")
        for request in requests:
            reason = unsupported(request.strategy)
            if reason:
                raise UserError(f"--engine vllm: {reason}", "use --engine hf for this decoding")
        engine = self.llm.llm_engine
        ids = {}
        for index, request in enumerate(requests):
            request_id = f"autodeco-{next(self._ids)}"
            ids[request_id] = index
            engine.add_request(
                request_id,
                {"prompt_token_ids": list(request.input_ids)},
                self._params(request, max_new_tokens, stop, trace, request_id),
            )
        results: dict[int, Generation] = {}
        while engine.has_unfinished_requests():
            finished = [out for out in engine.step() if out.finished]
            if not finished:
                continue
            if trace:
                self.traces.read()
            done = [
                self._generation(requests[ids[out.request_id]], out, stop, trace, self.traces.pop(out.request_id))
                for out in finished
            ]
            for out, generation in zip(finished, done):
                results[ids[out.request_id]] = generation
            if on_batch_done is not None:
                on_batch_done(done)
        if streamer is not None and results:
            import torch

            streamer.put(torch.tensor(results[0].token_ids))
            streamer.end()
        return [results[i] for i in range(len(requests))]

    def _params(self, request: Request, max_new_tokens: int, stop, trace: bool, request_id: str):
        from vllm import SamplingParams

        strategy = request.strategy
        extra = {LEARNED_ARG: strategy.uses_heads}
        if trace and strategy.uses_heads:
            extra[TRACE_ARG] = request_id
        common = {
            "max_tokens": max_new_tokens,
            "stop": list(stop) if stop else None,
            "extra_args": extra,
            "seed": request.seed,
        }
        if strategy.is_greedy:
            return SamplingParams(temperature=0.0, **common)
        if strategy.uses_heads:
            return SamplingParams(
                temperature=strategy.temperature_scale,
                top_p=min(1.0, strategy.top_p_scale),
                top_k=strategy.top_k or 0,
                **common,
            )
        min_p = strategy.adaptive[1] if strategy.adaptive else 0.0
        return SamplingParams(
            temperature=strategy.temperature or 1.0,
            top_p=strategy.top_p or 1.0,
            top_k=strategy.top_k or 0,
            min_p=min_p,
            **common,
        )

    def _generation(self, request: Request, out, stop, trace: bool, steps: list | None) -> Generation:
        completion = out.outputs[0]
        tokens = list(completion.token_ids)
        finish = "length" if completion.finish_reason == "length" else "stop"
        text = finished_text(self.tokenizer, tokens, self._eos_ids, stop)
        token_trace = self._trace(request.strategy, tokens, steps) if trace else None
        return Generation(
            key=request.key,
            text=text,
            token_ids=tokens,
            finish_reason=finish,
            trace=token_trace,
            strategy=request.strategy,
        )

    def _trace(self, strategy: DecodingStrategy, tokens: list[int], steps: list | None) -> list[TokenTrace]:
        """Learned steps from the switch's lines; other strategies' fixed T and p (nucleus size 0: unknown)."""
        if steps is None:
            t, p = (
                (1.0, 1.0)
                if strategy.is_greedy or strategy.uses_heads
                else (strategy.temperature or 1.0, strategy.top_p or 1.0)
            )
            return [
                TokenTrace(token_id=tok, token=self.tokenizer.decode([tok]), temperature=t, top_p=p, nucleus_size=0)
                for tok in tokens
            ]
        return [
            TokenTrace(
                token_id=t,
                token=self.tokenizer.decode([t]),
                temperature=temp * strategy.temperature_scale,
                top_p=min(1.0, p * strategy.top_p_scale),
                nucleus_size=int(n),
            )
            for t, (temp, p, n) in zip(tokens, steps)
        ]

    def close(self) -> None:
        # stop vLLM's engine processes now, not from an atexit hook after logging has closed
        shutdown = getattr(getattr(self.llm.llm_engine, "engine_core", None), "shutdown", None)
        if shutdown is not None:
            shutdown()
        shutil.rmtree(self.trace_dir, ignore_errors=True)


def open_vllm_engine(
    model: str,
    heads_spec: str | None,
    strategies: Sequence[DecodingStrategy],
    settings: VllmSettings,
    *,
    force_heads: bool = False,
    prompt_format: PromptFormat = PLAIN,
) -> VllmEngine:
    """Stage (base, heads), start vLLM on it, and wrap it as an engine."""
    vllm = import_vllm()
    from transformers import AutoTokenizer

    from ..heads_source import resolve_heads
    from .stage import base_model, check_architecture, hidden_size, stage

    for strategy in strategies:
        reason = unsupported(strategy)
        if reason:
            raise UserError(f"--engine vllm: {reason}", "use --engine hf for this decoding")
    base = base_model(model)
    check_architecture(base.arch)
    tokenizer = AutoTokenizer.from_pretrained(str(base.folder), trust_remote_code=settings.trust_remote_code)
    lm = EngineModel(
        name=model,
        tokenizer=tokenizer,
        device=f"vllm:{_platform()}",
        hidden_size=hidden_size(base.config),
        config=_transformers_config(base.config),
    )
    needed = force_heads or any(s.uses_heads for s in strategies)
    heads = resolve_heads(heads_spec, lm, needed)
    folder = base.folder
    if heads is not None:
        from ...core.heads import heads_digest

        folder = stage(base, heads, heads_digest(heads))
    trace_dir = Path(tempfile.mkdtemp(prefix="autodeco-vllm-trace-"))
    os.environ[TRACE_DIR_ENV] = str(trace_dir)  # the engine processes vLLM spawns inherit it
    kwargs = {
        "model": str(folder),
        "seed": settings.seed,
        "tensor_parallel_size": settings.tensor_parallel_size,
        "max_num_seqs": settings.max_num_seqs,
        "trust_remote_code": settings.trust_remote_code,
    }
    if settings.data_parallel_size > 1:
        kwargs["data_parallel_size"] = settings.data_parallel_size
    if settings.dtype not in (None, "auto"):
        kwargs["dtype"] = settings.dtype
    if settings.max_model_len:
        kwargs["max_model_len"] = settings.max_model_len
    memory = settings.gpu_memory_utilization or default_memory_fraction()
    if memory:
        kwargs["gpu_memory_utilization"] = memory
    try:
        llm = vllm.LLM(**kwargs, **settings.engine_kwargs)
    except BaseException:
        shutil.rmtree(trace_dir, ignore_errors=True)  # the engine that would read it never started
        raise
    eos_ids = _eos_ids(base.folder, tokenizer)
    return VllmEngine(lm, heads, llm, trace_dir, eos_ids, dtype=settings.dtype or "auto", prompt_format=prompt_format)


def default_memory_fraction() -> float | None:
    """None (vLLM's own default) on accelerators; on CPU a fraction that leaves room for others."""
    from vllm.platforms import current_platform

    return CPU_MEMORY_FRACTION if current_platform.is_cpu() else None


def _platform() -> str:
    from vllm.platforms import current_platform

    return current_platform.device_type


def _transformers_config(fields: dict):
    from transformers import AutoConfig

    try:
        return AutoConfig.for_model(fields["model_type"], **{k: v for k, v in fields.items() if k != "model_type"})
    except Exception:  # a model type this transformers does not know: vLLM checks the budget itself
        return None


def _eos_ids(folder: Path, tokenizer) -> list[int]:
    """The ids vLLM stops on: generation_config.json's, else the tokenizer's (as our engine)."""
    path = folder / "generation_config.json"
    eos = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id") if path.is_file() else None
    if eos is None:
        eos = tokenizer.eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    return [e for e in eos if e is not None]
