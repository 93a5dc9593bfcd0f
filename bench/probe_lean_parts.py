"""Where the lean decode step's time goes (#23): wall-clock timers around each part of a step,
and torch.profiler's self CPU time per op, at each row count and context length.

Loads the default model as the engine does (bf16 on this CPU), prefills CONTEXT tokens per row
into the engine's growing cache (`probe_lean_decode.Step`), then runs many lean steps from that
state. `timed_step` is `LeanDecoder.__call__`/`_layer` op for op with a timer between parts (the
ops run synchronously on the CPU, so each timer holds its part); keep it in step with the
decoder. Its total is checked against the untimed step's, so the timers' own cost shows.

Usage (under the shared lock):
    flock /work/heavy.lock python bench/probe_lean_parts.py --threads 2 --rows 1,32 --context 60,200
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch

import probe_lean_decode
from autodeco_cli.core.cpu_features import cpu_model
from probe_lean_decode import MODEL, Step


def torch_ops():
    """The lean step's RMSNorm and rotate_half (where an older tree keeps them)."""
    try:
        from autodeco_cli.core.decoder_ops import rms_norm, rotate_half
    except ImportError:
        from autodeco_cli.engine.lean_decode import _rms_norm as rms_norm
        from autodeco_cli.engine.lean_decode import _rotate_half as rotate_half
    return rms_norm, rotate_half


class Clock:
    def __init__(self):
        self.parts: dict[str, float] = defaultdict(float)
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.parts[name] += now - self.last
        self.last = now


def timed_step(decoder, clock: Clock, input_ids, attention_mask, position_ids, cache):
    """`LeanDecoder.__call__` with laps (the same calls)."""
    _rms_norm, _ = torch_ops()
    clock.last = time.perf_counter()
    decoder._run_model_pre_hooks(input_ids, attention_mask, position_ids, cache)
    body = decoder.body
    hidden = body.embed_tokens.forward(input_ids)
    clock.lap("step: embedding")
    kernels = getattr(decoder, "_kernels", None)
    if kernels is not None:
        runs, keep = kernels.padding(hidden, attention_mask, cache)
        clock.lap("step: padding (kernel path)")
        if runs:
            return timed_kernel_step(decoder, kernels, clock, hidden, position_ids, cache, keep)
    mask = decoder._create_mask(
        config=decoder.config,
        inputs_embeds=hidden,
        attention_mask=attention_mask,
        **{decoder._mask_cache_kwarg: cache},
        position_ids=position_ids,
    )
    clock.lap("step: causal mask")
    cos, sin = body.rotary_emb(hidden, position_ids=position_ids)
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    clock.lap("step: rotary cos/sin")
    kwargs = {"position_ids": position_ids, "use_cache": True, **decoder._extra_kwargs}
    for layer in decoder._layers:
        hidden = timed_layer(decoder, clock, layer, hidden, mask, cos, sin, cache, kwargs)
    hidden = _rms_norm(*decoder._final_norm, hidden)
    clock.lap("step: final norm")
    logits = decoder.model.get_output_embeddings()(hidden[:, -1:, :])
    clock.lap("step: LM head")
    return logits


def timed_layer(decoder, clock: Clock, layer, hidden, mask, cos, sin, cache, kwargs):
    """`LeanDecoder._layer` with laps (the same calls)."""
    _rms_norm, _rotate_half = torch_ops()

    residual = hidden
    normed = _rms_norm(*layer.input_norm, hidden)
    clock.lap("input RMSNorm")
    rows = hidden.shape[:-1]
    shape = (*rows, -1, layer.head_dim)
    q, k = layer.q(normed), layer.k(normed)
    clock.lap("linears q,k")
    joined = torch.cat((q, k), dim=-1).view(shape)
    clock.lap("q/k cat")
    joined = (joined * cos) + (_rotate_half(joined) * sin)
    clock.lap("rotary")
    query, key = joined[:, :, : layer.heads].transpose(1, 2), joined[:, :, layer.heads :].transpose(1, 2)
    clock.lap("q/k split+transpose")
    value = layer.v(normed)
    clock.lap("linear v")
    value = value.view(shape).transpose(1, 2)
    clock.lap("v view+transpose")
    key, value = cache.update(key, value, layer.index, kwargs=kwargs)
    clock.lap("cache append")
    output, _ = decoder._attention(
        layer.attention, query, key, value, mask, dropout=0.0, scaling=layer.scaling, **kwargs
    )
    clock.lap("attention")
    flat = output.reshape(*rows, -1).contiguous()
    clock.lap("attention out reshape")
    projected = layer.o(flat)
    clock.lap("linear o")
    hidden = residual + projected
    clock.lap("residual adds")
    residual = hidden
    normed = _rms_norm(*layer.post_norm, hidden)
    clock.lap("post RMSNorm")
    gate, up = layer.gate(normed), layer.up(normed)
    clock.lap("linears gate,up")
    product = layer.act(gate) * up
    clock.lap("SiLU*up")
    down = layer.down(product)
    clock.lap("linear down")
    hidden = residual + down
    clock.lap("residual adds")
    return hidden


def timed_kernel_step(decoder, kernels, clock: Clock, hidden, position_ids, cache, keep):
    """`KernelLayers.__call__` and `_layer` with laps (the same calls)."""
    from autodeco_cli.core.attention_kernel import decode_attention_rows
    from autodeco_cli.core.cpu_kernels import add_rms_norm, rope_append, silu_mul

    cos, sin = decoder.body.rotary_emb(hidden, position_ids=position_ids)
    cos, sin = cos.contiguous(), sin.contiguous()
    clock.lap("step: rotary cos/sin")
    ops, layers = kernels.ops, kernels.layers
    normed = add_rms_norm(ops, hidden, None, *layers[0].input_norm)
    clock.lap("residual add + input RMSNorm")
    for index, layer in enumerate(layers):
        kv = cache.layers[index]
        qkv = kernels.qkv[index]
        q, k, v = (qkv(normed), None, None) if qkv is not None else (layer.q(normed), layer.k(normed), layer.v(normed))
        clock.lap("linears q,k,v")
        kv.open_column()
        keys, values = kv.keys, kv.values
        clock.lap("cache: open a column")
        queries = rope_append(q, k, v, cos, sin, keys, values, layer.heads)
        clock.lap("rotary + cache write")
        attended = decode_attention_rows(kernels.attention, queries, keys, values, keep, layer.scaling)
        clock.lap("attention")
        projected = layer.o(attended)
        clock.lap("linear o")
        normed = add_rms_norm(ops, hidden, projected, *layer.post_norm)
        clock.lap("residual add + post RMSNorm")
        gate_up = kernels.gate_up[index]
        gate, up = (gate_up(normed), None) if gate_up is not None else (layer.gate(normed), layer.up(normed))
        clock.lap("linears gate,up")
        product = silu_mul(gate, up)
        clock.lap("SiLU*up")
        delta = layer.down(product)
        clock.lap("linear down")
        if index + 1 < len(layers):
            normed = add_rms_norm(ops, hidden, delta, *layers[index + 1].input_norm)
            clock.lap("residual add + input RMSNorm")
    normed = add_rms_norm(ops, hidden, delta, *kernels.final_norm)
    clock.lap("step: final norm")
    logits = decoder.model.get_output_embeddings()(normed[:, -1:, :])
    clock.lap("step: LM head")
    return logits


def inner_attention_clock(clock: Clock):
    """Wrap the C kernel and its Python wrapper so their time shows inside "attention"."""
    from autodeco_cli.core import attention_kernel, cpu_kernels

    wrapper = attention_kernel.decode_attention
    kernel = cpu_kernels.load("decode_attention_bf16")
    if kernel is None:
        return wrapper, wrapper

    def raw(*args):
        start = time.perf_counter()
        status = kernel(*args)
        clock.parts["  (attention: C kernel)"] += time.perf_counter() - start
        return status

    def timed(_kernel, *args):
        start = time.perf_counter()
        out = wrapper(raw, *args)
        clock.parts["  (attention: kernel wrapper incl. C)"] += time.perf_counter() - start
        return out

    return wrapper, timed


def profile_parts(args, engine, rows: int, context: int) -> None:
    from autodeco_cli.core import attention_kernel
    from autodeco_cli.engine.cpu_inference import PLACE_AFTER_CALLS
    from autodeco_cli.engine.lean_decode import LeanDecoder

    probe_lean_decode.CONTEXT = context
    step = Step(engine, rows, seed=rows)
    decoder = (
        LeanDecoder(engine.lm.model, kernels=not args.no_kernels) if args.no_kernels else LeanDecoder(engine.lm.model)
    )
    for _ in range(PLACE_AFTER_CALLS + 4):  # huge-page placement and warm-up, not timed
        step.restore()
        decoder(step.tokens, step.mask, step.positions, step.cache)
    plain, timed_ms, part_runs = [], [], []
    original, wrapped = inner_attention_clock(Clock())
    for _repeat in range(args.repeats):
        for _ in range(args.calls):
            step.restore()
            start = time.perf_counter()
            decoder(step.tokens, step.mask, step.positions, step.cache)
            plain.append(time.perf_counter() - start)
        clock = Clock()
        original, wrapped = inner_attention_clock(clock)
        attention_kernel.decode_attention = wrapped
        try:
            for _ in range(args.calls):
                step.restore()
                start = time.perf_counter()
                timed_step(decoder, clock, step.tokens, step.mask, step.positions, step.cache)
                timed_ms.append(time.perf_counter() - start)
        finally:
            attention_kernel.decode_attention = original
        part_runs.append({name: 1000 * value / args.calls for name, value in clock.parts.items()})
    names = list(part_runs[0])
    medians = {name: statistics.median(run.get(name, 0.0) for run in part_runs) for name in names}
    layers = sum(v for n, v in medians.items() if not n.startswith(("step:", "  (")))
    linears = sum(v for n, v in medians.items() if n.startswith("linear"))
    print(
        f"\nrows={rows} context={context}: step untimed {1000 * statistics.median(plain):.2f} ms, "
        f"with timers {1000 * statistics.median(timed_ms):.2f} ms; layers {layers:.2f} ms "
        f"(linears {linears:.2f}, the rest {layers - linears:.2f}); per layer x{len(decoder._layers)}"
    )
    for name in names:
        value = medians[name]
        per_layer = "" if name.startswith("step:") else f"{1000 * value / len(decoder._layers):8.1f} us/layer"
        print(f"  {name:40s} {value:7.2f} ms {per_layer}")
    if args.profile:
        torch_profile(decoder, step, rows, context, args.calls)


def torch_profile(decoder, step, rows: int, context: int, calls: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            step.restore()
            decoder(step.tokens, step.mask, step.positions, step.cache)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    print(f"  torch.profiler, rows={rows} context={context}, {calls} steps (self CPU per step; profiler overhead in):")
    print(f"    {'op':38s} {'self ms/step':>12s} {'share':>6s} {'calls/step':>10s} {'us/call':>8s}")
    for event in events[:25]:
        per_step = event.self_cpu_time_total / calls / 1000
        print(
            f"    {event.key[:38]:38s} {per_step:12.3f} {event.self_cpu_time_total / total:6.1%} "
            f"{event.count / calls:10.1f} {event.self_cpu_time_total / max(event.count, 1):8.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default=None, help="default: the engine's (auto)")
    parser.add_argument("--rows", default="1,32")
    parser.add_argument("--context", default="60,200")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=10, help="steps per repeat")
    parser.add_argument("--profile", action="store_true", help="also torch.profiler's table")
    parser.add_argument("--no-kernels", action="store_true", help="the lean step's torch ops, not our kernels")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    from autodeco_cli.engine.generation import GenerationEngine
    from autodeco_cli.engine.models import load_base_model

    hf_logging.set_verbosity_error()
    lm = load_base_model(MODEL, device="cpu", dtype=args.dtype)
    engine = GenerationEngine(lm)
    print(
        f"CPU {cpu_model()} | torch {torch.__version__} | threads {torch.get_num_threads()} | "
        f"model {MODEL} {lm.model.dtype} attention {lm.model.config._attn_implementation} | "
        f"medians over {args.repeats} repeats x {args.calls} steps"
    )
    with torch.inference_mode():
        for context in [int(c) for c in args.context.split(",")]:
            for rows in [int(r) for r in args.rows.split(",")]:
                profile_parts(args, engine, rows, context)


if __name__ == "__main__":
    main()
