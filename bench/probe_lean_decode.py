"""Go/no-go probe for the lean decode step (#23): one decode forward through transformers' modules
(as the engine called it before) vs `engine/lean_decode.LeanDecoder`, at 1 and 32 rows.

Loads the default model the way the engine does (`load_base_model`; default dtype: bf16 on this
CPU), prefills CONTEXT tokens per row into the engine's growing cache, then times one decode step
again and again from that state (the cache views are put back after each, so every repeat appends
the same column). Also times, in the same process: the output embedding alone (so body = forward
- LM head), the body's linears alone (every layer's seven, on inputs of the step's shape), and the
read rate (a sum over 512 MB); the floor is the body's weight bytes at that rate. Checks that
both paths give bit-identical logits and last hidden state.

Usage (under the shared lock):
    flock /work/heavy.lock python bench/probe_lean_decode.py --threads 2
    flock /work/heavy.lock python bench/probe_lean_decode.py --threads 1 --dtype float32
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from engine_limits import machine_line

MODEL = "smollm2-135m-instruct"
CONTEXT = 60


def read_rate_gbps() -> float:
    big = torch.ones(128 * 1024 * 1024)  # 512 MB fp32, far past the caches
    big.sum()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        big.sum()
        times.append(time.perf_counter() - start)
    return big.numel() * 4 / min(times) / 1e9


class Step:
    """One decode step's inputs and the cache state it starts from, restorable after each call."""

    def __init__(self, engine, rows: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        vocab = engine.lm.model.config.vocab_size
        ids = torch.randint(0, vocab, (rows, CONTEXT), generator=generator)
        mask = torch.ones((rows, CONTEXT), dtype=torch.long)
        for row in range(1, rows, 3):  # some rows left-padded, as joins leave them
            mask[row, : row % 17] = 0
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        self.cache = engine.new_cache()
        engine.lm.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=self.cache, use_cache=True)
        self.saved = [(layer.keys, layer.values) for layer in self.cache.layers]
        self.opened = [_opened(layer) for layer in self.cache.layers]
        self.tokens = torch.randint(0, vocab, (rows, 1), generator=generator)
        self.mask = torch.cat([mask, mask.new_ones((rows, 1))], dim=1)
        self.positions = positions[:, -1:] + 1

    def restore(self) -> None:
        for layer, (keys, values), opened in zip(self.cache.layers, self.saved, self.opened):
            layer.keys, layer.values = keys, values
            if opened is not None:
                layer._opened = opened


def _opened(layer):
    """What a growing layer keeps of the views its last decode step opened (`open_column`), for
    these views: a restored step then opens its column as the engine's next step would, not as
    the first step after rows moved. None for a tree without it."""
    return (layer.keys, layer.values) if hasattr(layer, "open_column") else None


def transformers_step(model):
    def run(step: Step):
        output = model(
            input_ids=step.tokens,
            attention_mask=step.mask,
            position_ids=step.positions,
            cache=step.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return output.logits[:, -1, :].float()

    return run


def lean_step(decoder):
    def run(step: Step):
        return decoder(step.tokens, step.mask, step.positions, step.cache)[:, -1, :].float()

    return run


def time_calls(fn, calls: int) -> list[float]:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def linears_alone(model, rows: int, calls: int) -> list[float]:
    layers = model.model.layers
    inputs = {}
    for layer in layers:
        for linear in (*layer.self_attn.children(), *layer.mlp.children()):
            if isinstance(linear, torch.nn.Linear):
                inputs.setdefault(linear.in_features, torch.randn(rows, 1, linear.in_features).to(model.dtype))
    linears = [m for layer in layers for m in layer.modules() if isinstance(m, torch.nn.Linear)]

    def run():
        for linear in linears:
            linear.forward(inputs[linear.in_features])

    return time_calls(run, calls)


def probe(args, engine, capture, rows: int) -> None:
    from autodeco_cli.engine.cpu_inference import PLACE_AFTER_CALLS
    from autodeco_cli.engine.lean_decode import LeanDecoder

    model = engine.lm.model
    step = Step(engine, rows, seed=rows)
    paths = {"transformers": transformers_step(model), "lean": lean_step(LeanDecoder(model))}
    per_call = LeanDecoder(model)
    if getattr(per_call._kernels, "one_call", None) is not None:  # the layers as one C call: time both ways
        per_call._kernels.one_call = None
        paths["lean per call"] = lean_step(per_call)
    for _ in range(PLACE_AFTER_CALLS + 2):  # the engine's huge-page placement happens here, not while timed
        step.restore()
        paths["transformers"](step)
    outputs = {}
    for name, run in paths.items():  # warm-up, and the bits check
        for _ in range(3):
            step.restore()
            outputs[name] = (run(step), capture.last.clone())
    same = all(torch.equal(a, b) for name in paths for a, b in zip(outputs["transformers"], outputs[name]))
    head = model.get_output_embeddings()
    hidden = torch.randn(rows, 1, model.config.hidden_size).to(model.dtype)
    times = {name: [] for name in (*paths, "LM head", "linears")}
    for repeat in range(args.repeats):
        order = list(paths) if repeat % 2 == 0 else list(reversed(paths))
        for name in order:
            for _ in range(args.calls):
                step.restore()
                start = time.perf_counter()
                paths[name](step)
                times[name].append(time.perf_counter() - start)
        times["LM head"] += time_calls(lambda: head(hidden), args.calls)
        times["linears"] += linears_alone(model, rows, 2)
    ms = {name: 1000 * statistics.median(values) for name, values in times.items()}
    body = {name: ms[name] - ms["LM head"] for name in paths}
    weight_bytes = sum(
        p.numel() * p.element_size() for n, p in model.model.layers.named_parameters() if "layernorm" not in n
    )
    floor = weight_bytes / (args.read_rate * 1e9) * 1000
    print(f"\nrows={rows} context={CONTEXT} bits identical (logits, last hidden): {same}")
    for name in paths:
        print(f"  {name:14s} forward {ms[name]:7.2f} ms   body {body[name]:7.2f} ms")
    print(f"  LM head alone {ms['LM head']:7.2f} ms   body's linears alone {ms['linears']:7.2f} ms")
    print(
        f"  lean vs transformers: forward {ms['transformers'] / ms['lean']:.3f}x, "
        f"body {body['transformers'] / body['lean']:.3f}x"
    )
    print(
        f"  floor: {weight_bytes / 1e6:.1f} MB of body weights at {args.read_rate:.1f} GB/s = {floor:.2f} ms; "
        f"body / floor: transformers {body['transformers'] / floor:.2f}x, lean {body['lean'] / floor:.2f}x; "
        f"body / its linears alone: transformers {body['transformers'] / ms['linears']:.2f}x, "
        f"lean {body['lean'] / ms['linears']:.2f}x"
    )
    if "lean per call" in paths:
        print(
            f"  lean, layers in one C call vs one call per kernel: body {body['lean']:.2f} vs "
            f"{body['lean per call']:.2f} ms ({body['lean per call'] / body['lean']:.3f}x), "
            f"body / floor {body['lean per call'] / floor:.2f}x -> {body['lean'] / floor:.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default=None, help="default: the engine's (auto)")
    parser.add_argument("--rows", default="1,32")
    parser.add_argument("--repeats", type=int, default=10, help="interleaved repeats per path")
    parser.add_argument("--calls", type=int, default=10, help="timed steps per repeat")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    from autodeco_cli.engine.generation import GenerationEngine, HiddenStateCapture
    from autodeco_cli.engine.models import load_base_model

    hf_logging.set_verbosity_error()
    lm = load_base_model(MODEL, device="cpu", dtype=args.dtype)
    engine = GenerationEngine(lm)
    capture = HiddenStateCapture(lm.model)
    args.read_rate = read_rate_gbps()
    print(machine_line())
    print(
        f"Python {platform.python_version()} | "
        f"threads {torch.get_num_threads()} | model {MODEL} {lm.model.dtype} "
        f"attention {lm.model.config._attn_implementation} | read rate {args.read_rate:.1f} GB/s | "
        f"medians over {args.repeats} interleaved repeats x {args.calls} steps"
    )
    with torch.inference_mode():
        for rows in [int(r) for r in args.rows.split(",")]:
            probe(args, engine, capture, rows)


if __name__ == "__main__":
    main()
