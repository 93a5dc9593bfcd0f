"""Probe (#23): can one process use two cores by decoding two halves of a call in two Python threads?

The idea: split a generate call's requests by prompt (as `--dp 2` does), run each half's decode
loop in its own Python thread at one intra-op thread (torch's thread count is per OS thread), on
the same model weights. ATen releases the GIL inside every op, so the serial small-op time of
the two halves might overlap. Two measurements, side by side in one process:

1. GIL micro-benchmark: the same work in one Python thread, then twice over in two threads at
   once: ~2 us bf16 elementwise ops (a decode layer's norms, residuals, casts) vs one
   [32, 576] x [576, 1536] bf16 linear. Scaling = 2 x one-thread time / two-thread time.
2. The chat workload of bench_engine.py (32 prompts x 4, <= 48 tokens, T 0.6 p 0.95, batch 32,
   default dtype): one thread at 2 intra-op threads, vs the two halves in two Python threads,
   vs `--dp 2` (two processes at one thread each); repeats interleaved. Then whether the
   threaded halves drew the same tokens as each half run alone.

    OMP_NUM_THREADS=2 .venv/bin/python bench/probe_thread_split.py --repeats 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time

import torch

from autodeco_cli.core.cpu_features import cpu_model
from bench_engine import CHAT_PROMPTS, MODEL


def in_threads(work, count: int) -> float:
    """Seconds for `count` Python threads running `work()` at once, one intra-op thread each."""

    def run():
        torch.set_num_threads(1)
        with torch.inference_mode():
            work()

    threads = [threading.Thread(target=run) for _ in range(count)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start


def gil_probe() -> None:
    x = torch.randn(32, 576, dtype=torch.bfloat16)
    scale = torch.randn(576, dtype=torch.bfloat16)
    weight = torch.randn(1536, 576, dtype=torch.bfloat16)

    def small_ops():
        for _ in range(20000):
            y = (x * scale + x).float()
            y.to(torch.bfloat16)

    def linears():
        for _ in range(2000):
            torch.nn.functional.linear(x, weight)

    for name, work in (("small elementwise ops", small_ops), ("bf16 linear 32x576x1536", linears)):
        one, two = in_threads(work, 1), in_threads(work, 2)
        print(f"GIL probe, {name}: 1 thread {one:.2f} s, 2 threads (twice the work) {two:.2f} s: {2 * one / two:.2f}x")


def split_halves(engine, requests, **kwargs) -> list:
    """The two halves of `--dp 2`'s split, decoded in two Python threads of this process."""
    from autodeco_cli.engine.data_parallel import split_by_prompt

    results: list = [None] * len(requests)

    def half(shard):
        torch.set_num_threads(1)
        for index, generation in zip(shard, engine.generate([requests[i] for i in shard], **kwargs)):
            results[index] = generation

    threads = [threading.Thread(target=half, args=(shard,)) for shard in split_by_prompt(requests, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from transformers.utils import logging as hf_logging

    from autodeco_cli.core.decoding import make_strategy
    from autodeco_cli.engine.data_parallel import split_by_prompt
    from autodeco_cli.engine.generation import GenerationEngine
    from autodeco_cli.engine.models import load_base_model
    from autodeco_cli.engine.requests import build_requests
    from autodeco_cli.engine.runtime import EngineSettings, open_engine

    hf_logging.set_verbosity_error()
    torch.set_num_threads(2)
    print(f"machine: {cpu_model()}; torch {torch.__version__}; Python {sys.version.split()[0]}", flush=True)
    gil_probe()
    engine = GenerationEngine(load_base_model(MODEL, device="cpu"))
    dp = open_engine(EngineSettings(MODEL, data_parallel_size=2))  # sets this thread to 1 intra-op thread
    strategy = make_strategy("static", 0.6, 0.95)
    requests = build_requests(engine.tokenizer, CHAT_PROMPTS, strategy, n=4, seed=0)
    kwargs = dict(max_new_tokens=48, batch_size=32)

    def one_process():
        torch.set_num_threads(2)
        return engine.generate(requests, **kwargs)

    def two_threads():
        return split_halves(engine, requests, **kwargs)

    def data_parallel():
        torch.set_num_threads(1)
        return dp.generate(requests, **kwargs)

    variants = {"one thread, 2 intra-op": one_process, "two Python threads": two_threads, "--dp 2": data_parallel}
    # warm-up: one thread first, past the huge-page placements (at the 64th forward call), which
    # would move weights under the other thread's feet
    for run in (one_process, *variants.values()):
        run()
    rates: dict[str, list[float]] = {name: [] for name in variants}
    outputs = {}
    for repeat in range(args.repeats):
        for name in list(variants) if repeat % 2 == 0 else list(reversed(variants)):
            start = time.perf_counter()
            outputs[name] = variants[name]()
            seconds = time.perf_counter() - start
            tokens = sum(len(g.token_ids) for g in outputs[name])
            rates[name].append(tokens / seconds)
            print(
                f"  rep {repeat} {name:24s} {tokens} tokens {seconds:6.2f} s {tokens / seconds:7.1f} tok/s", flush=True
            )
    reference = statistics.median(rates["one thread, 2 intra-op"])
    for name, values in rates.items():
        print(f"{name:24s} median {statistics.median(values):7.1f} tok/s  {statistics.median(values) / reference:.2f}x")
    torch.set_num_threads(1)
    alone = [None] * len(requests)
    for shard in split_by_prompt(requests, 2):
        for index, generation in zip(shard, engine.generate([requests[i] for i in shard], **kwargs)):
            alone[index] = generation
    for name in ("two Python threads", "--dp 2"):
        same = sum(a.token_ids == b.token_ids for a, b in zip(outputs[name], alone))
        print(f"{name}: {same}/{len(requests)} generations equal each half's run alone")
    dp.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
