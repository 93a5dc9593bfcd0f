"""The learned decoding step alone, torch vs the fused C kernel, side by side on the same rows.

One step is what the vLLM AutoDeco model's `compute_logits` and our sampler do per decode step
on top of the base model: the heads (T̂, then the top-p head on the softmax features, P̂) and
the hard nucleus cut as logits. Rows are real: the default model's hidden states and logits at
the last four positions of eight prompts (fp32), with its shipped heads. The two paths alternate
in blocks so drift hits both alike; the figure is the median time per call and the ratio.

    flock /work/heavy.lock env PYTHONPATH=src .venv/bin/python bench/bench_learned_step.py [--profile]

`--profile` also prints torch.profiler's table of the torch path at the largest batch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from autodeco_cli.core.cpu_features import cpu_model
from bench_decoding import PROMPTS  # the same long-answer prompts


def real_rows(model_name: str, rows: int):
    """Hidden states and logits at each prompt's last position and a few positions before it."""
    from autodeco_cli.core.heads import load_heads
    from autodeco_cli.engine.heads_source import packaged_heads_path
    from autodeco_cli.engine.models import load_base_model

    lm = load_base_model(model_name, dtype="float32")
    hidden, logits = [], []
    with torch.inference_mode():
        for prompt in PROMPTS:
            ids = lm.tokenizer(prompt, return_tensors="pt").input_ids
            out = lm.model(ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-1][0, -4:].float())
            logits.append(out.logits[0, -4:].float())
    hidden, logits = torch.cat(hidden), torch.cat(logits)
    repeat = -(-rows // hidden.shape[0])
    heads = load_heads(packaged_heads_path(model_name)).float().eval()
    return hidden.repeat(repeat, 1)[:rows].contiguous(), logits.repeat(repeat, 1)[:rows].contiguous(), heads


def learned_step(heads, hidden, logits):
    from autodeco_cli.core.distribution import decoding_logits

    temperature, top_p = heads(hidden, logits)
    return decoding_logits(logits, temperature, top_p)


def time_paths(heads, hidden, logits, repeats: int, block: int = 10) -> dict[str, float]:
    """Median seconds per call of each path. The paths alternate in blocks of `block` calls (the
    first two of each block untimed): call-by-call alternation would time each path in the
    other's wake (its freed buffers, its allocator state), which neither engine ever sees."""
    from autodeco_cli.core import distribution

    seconds: dict[str, list[float]] = {"torch": [], "kernel": []}
    with torch.inference_mode():
        for rep in range(max(1, repeats // block)):
            for path in ("torch", "kernel") if rep % 2 == 0 else ("kernel", "torch"):
                distribution.FUSED_KERNEL = path == "kernel"
                for call in range(block):
                    start = time.perf_counter()
                    learned_step(heads, hidden, logits)
                    if call >= 2:
                        seconds[path].append(time.perf_counter() - start)
    distribution.FUSED_KERNEL = True
    return {path: statistics.median(values) for path, values in seconds.items()}


def profile_torch(heads, hidden, logits) -> None:
    from torch.profiler import ProfilerActivity, profile

    from autodeco_cli.core import distribution

    distribution.FUSED_KERNEL = False
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(20):
            learned_step(heads, hidden, logits)
    distribution.FUSED_KERNEL = True
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--repeats", type=int, default=200, help="calls per path (default 200)")
    parser.add_argument("--threads", type=int, default=2, help="torch and OpenMP threads (default 2)")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from autodeco_cli.core import learned_kernels

    if learned_kernels.learned_step() is None:
        print("the learned-step kernel does not load here (no compiler, no AVX-512, or AUTODECO_CPU_KERNEL=0)")
        return 1
    sizes = [int(size) for size in args.batch_sizes.split(",")]
    hidden, logits, heads = real_rows(args.model, max(sizes))
    machine = f"{cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}, {args.threads} threads"
    print(f"{machine}; vocab {logits.shape[-1]}\n")
    print("| rows | torch (ms) | kernel (ms) | kernel / torch |\n|---|---|---|---|")
    for size in sizes:
        times = time_paths(heads, hidden[:size], logits[:size], args.repeats)
        print(
            f"| {size} | {1e3 * times['torch']:.2f} | {1e3 * times['kernel']:.2f} | "
            f"{times['kernel'] / times['torch']:.3f} |",
            flush=True,
        )
    if args.profile:
        profile_torch(heads, hidden, logits)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
