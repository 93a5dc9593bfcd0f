"""Decoding overhead of AutoDeco: tokens/s of `autodeco` vs `static` sampling, side by side.

Both strategies run through the same GenerationEngine in one process, on the same prompts, with
the same max_new_tokens, interleaved repeat by repeat (order alternating) after a warm-up, so
drift in machine load hits both alike. EOS is disabled by default so every row decodes the full
budget (identical sequence lengths, so identical model work); the table still counts the tokens
actually generated. The figure of merit is

    ratio = (seconds per token, autodeco) / (seconds per token, static)       target <= 1.03

Run-to-run drift on a shared machine is itself a few percent, so the script also reports the
heads' own time inside the autodeco runs (the only work autodeco adds) relative to the rest of
those runs: an overhead measured within each run.

The heads are the package's shipped ones by default, those `generate`, `eval` and `serve` decode
with. Their cost depends on what they predict: the top-p head's features skip the vocabulary
blocks far below the row's max at T̂, so a higher T̂ leaves more of each row to exponentiate and
log (fresh heads predict T̂ ~0.9 here, the shipped ones ~0.34: reports/engine-speed.md, "The
logits' block maxima"). The run prints the mean T̂ and P̂ it decoded with; `--heads fresh` times
untrained heads.

Usage:
    python bench/bench_decoding.py [--threads 2] [--repeats 5] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from engine_limits import machine_line

PROMPTS = [
    "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle.",
    "Explain in detail how a refrigerator works, step by step.",
    "Describe the history of the Roman Empire in several paragraphs.",
    "Write a detailed recipe for baking bread at home, with every step explained.",
    "Explain how photosynthesis works to a high-school student, in depth.",
    "Write a long letter to a friend describing your summer holiday.",
    "List and explain ten tips for learning a new programming language.",
    "Describe a walk through a busy city market, in vivid detail.",
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default="smollm2-135m-instruct", help="model spec (default: the alias smollm2-135m-instruct)"
    )
    parser.add_argument(
        "--heads",
        default=None,
        help="heads checkpoint, or 'fresh' for untrained heads (default: the model's shipped heads; their cost "
        "follows their T̂: see above)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per cell, interleaved (default 5)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-sizes", default="1,8", help="comma-separated (default 1,8)")
    parser.add_argument("--temperature", type=float, default=0.6, help="static T (default 0.6)")
    parser.add_argument("--top-p", type=float, default=0.95, help="static p (default 0.95)")
    parser.add_argument(
        "--allow-eos", action="store_true", help="let rows stop at EOS (default: decode the full budget)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--torch-path", action="store_true", help="decode without the fused learned-step kernel (torch's ops)"
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    print(machine_line(), flush=True)  # gains differ between CPUs: every run names its machine
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the disabled-EOS warning would repeat on every call

    from autodeco_cli.core import distribution
    from autodeco_cli.core.decoding import make_strategy
    from autodeco_cli.core.heads import fresh_heads, load_heads
    from autodeco_cli.engine import sampler
    from autodeco_cli.engine.generation import GenerationEngine
    from autodeco_cli.engine.heads_source import packaged_heads_path
    from autodeco_cli.engine.models import load_base_model
    from autodeco_cli.engine.requests import build_requests

    distribution.FUSED_KERNEL = not args.torch_path
    start = time.perf_counter()
    lm = load_base_model(args.model, device="cpu")
    print(
        f"model {args.model}: loaded in {time.perf_counter() - start:.1f} s; threads={torch.get_num_threads()}",
        file=sys.stderr,
    )
    source = args.heads or packaged_heads_path(args.model)
    if source is None:
        sys.exit(f"error: {args.model} has no shipped heads; pass --heads FOLDER or --heads fresh")
    heads = (
        fresh_heads(lm.hidden_size, base_model=args.model)
        if source == "fresh"
        else load_heads(source, expected_hidden_size=lm.hidden_size)
    )
    if not args.allow_eos:
        # The engine stops rows at model.generation_config.eos_token_id; an id no token has
        # keeps every row going for exactly max_new_tokens. Same for both strategies.
        lm.model.generation_config.eos_token_id = [-1]
    engine = GenerationEngine(lm, heads)

    strategies = {
        "static": make_strategy("static", temperature=args.temperature, top_p=args.top_p),
        "autodeco": make_strategy("autodeco"),
    }
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    requests = {
        (name, bs): build_requests(
            lm.tokenizer, (PROMPTS * ((bs + len(PROMPTS) - 1) // len(PROMPTS)))[:bs], strategy, seed=args.seed
        )
        for name, strategy in strategies.items()
        for bs in batch_sizes
    }

    # The heads' own time inside each autodeco run: the overhead measured within one run, so it
    # is immune to the machine's drift between runs (which on a shared VM is several percent).
    head_seconds = [0.0]
    head_values = sampler.Sampler.head_values
    predicted = [0.0, 0.0, 0]  # sums of T̂ and P̂ over the rows the heads saw, and their count

    def timed_head_values(self, *a):
        t0 = time.perf_counter()
        values = head_values(self, *a)
        head_seconds[0] += time.perf_counter() - t0
        for temperature, top_p in values.values():
            predicted[0] += temperature
            predicted[1] += top_p
            predicted[2] += 1
        return values

    sampler.Sampler.head_values = timed_head_values
    head_share: dict[int, list[float]] = {}

    def run(name: str, bs: int) -> tuple[float, int]:
        reqs = requests[(name, bs)]
        head_seconds[0] = 0.0
        t0 = time.perf_counter()
        gens = engine.generate(reqs, max_new_tokens=args.max_new_tokens, batch_size=bs)
        seconds = time.perf_counter() - t0
        if name == "autodeco":
            head_share.setdefault(bs, []).append(head_seconds[0] / (seconds - head_seconds[0]))
        return seconds, sum(len(g.token_ids) for g in gens)

    # warm-up: every cell once (allocator, one-time kernels, page cache)
    for bs in batch_sizes:
        for name in strategies:
            run(name, bs)

    times: dict[tuple[str, int], list[float]] = {key: [] for key in requests}
    tokens: dict[tuple[str, int], list[int]] = {key: [] for key in requests}
    for repeat in range(args.repeats):
        for bs in batch_sizes:
            order = list(strategies) if repeat % 2 == 0 else list(reversed(strategies))
            for name in order:
                seconds, count = run(name, bs)
                times[(name, bs)].append(seconds)
                tokens[(name, bs)].append(count)

    rows_seen = max(1, predicted[2])
    print(f"\nheads: {source}; over the autodeco runs' steps mean T̂ {predicted[0] / rows_seen:.3f}, "
          f"mean P̂ {predicted[1] / rows_seen:.3f}")  # fmt: skip
    from autodeco_cli.core import learned_kernels

    # the kernel's name only where it loads on this CPU (a CPU without AVX2 and FMA, or no compiler: torch's path)
    step = "torch" if args.torch_path else "fused kernel" if learned_kernels.learned_step() else "torch (no kernel)"
    print(f"\nmodel={args.model}  threads={args.threads}  max_new_tokens={args.max_new_tokens}  repeats={args.repeats} "
          " "
          f"static: T={args.temperature:g} p={args.top_p:g}  eos={'on' if args.allow_eos else 'off'}  "
          f"learned step: {step}")  # fmt: skip
    header = f"{'batch':>5}  {'strategy':<9} {'tokens':>7} {'median s':>9} {'ms/token':>9} {'tokens/s':>9}"
    print(header)
    print("-" * len(header))
    ratios = {}
    for bs in batch_sizes:
        per_token = {}
        for name in strategies:
            # per-repeat seconds per generated token; median over repeats
            spt = [s / max(1, n) for s, n in zip(times[(name, bs)], tokens[(name, bs)])]
            per_token[name] = statistics.median(spt)
            print(
                f"{bs:>5}  {name:<9} {statistics.median(tokens[(name, bs)]):>7.0f} "
                f"{statistics.median(times[(name, bs)]):>9.3f} "
                f"{1000 * per_token[name]:>9.2f} {1 / per_token[name]:>9.1f}"
            )
        ratios[bs] = per_token["autodeco"] / per_token["static"]
    print()
    for bs, ratio in ratios.items():
        verdict = "ok" if ratio <= 1.03 else "ABOVE TARGET"
        print(f"batch {bs}: time per token autodeco / static = {ratio:.3f}  (target <= 1.03: {verdict})")
    for bs, shares in head_share.items():
        print(
            f"batch {bs}: heads' own time within autodeco runs = +{100 * statistics.median(shares):.1f}% of the rest "
            "of the run (in-run, drift-free)"
        )
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
