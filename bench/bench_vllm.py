"""vLLM engine vs our engine on one workload, measured side by side in one run (`make bench-vllm`).

1. Eval workload: arith-add prompts × k samples, static (T=0.6, p=0.95) and autodeco, through
   both engines' `generate` (the path `autodeco eval --engine ...` takes). Generated tokens per
   second of generation wall time; engine start-up is reported separately. Ours runs in a fresh
   process before and after vLLM (A-B-A), see `hf_worker`.
2. Autodeco's overhead inside vLLM: one batch of prompts with a fixed length (ignore_eos) on a
   plain base-model vLLM (static) and on the staged AutoDeco model (learned), so the per-token
   cost of the heads, the nucleus cut and the switch is all that differs. A third row runs the
   same AutoDeco engine with the fused learned-step kernel off (torch's ops, with the nucleus
   prefilter), toggled between batches inside its worker: the cost before the kernel.
   Static runs on the plain base, not as opted-out requests on the AutoDeco model: those pay the
   learned distribution too (compute_logits makes it for every row; the switch swaps it out).

In part 2 repetitions are interleaved so drift on a noisy machine hits every variant alike. Needs the
vLLM venv: `make setup-vllm`. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from autodeco_cli.core.cpu_features import cpu_model


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def _measure(engine_name, engine, prompts, args, rates) -> None:
    from autodeco_cli.core.decoding import make_strategy
    from autodeco_cli.engine.requests import build_requests

    for rep in range(args.repeats):
        for strategy in (make_strategy("static", 0.6, 0.95), make_strategy("autodeco")):
            requests = build_requests(engine.tokenizer, prompts, strategy, n=args.k, seed=rep)
            gens, seconds = timed(
                engine.generate, requests, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size
            )
            tokens = sum(len(g.token_ids) for g in gens)
            rates.setdefault(f"{engine_name}/{strategy.name}", []).append(tokens / seconds)
            print(
                f"  {engine_name:5s} rep {rep} {strategy.name:9s} {tokens} tokens {seconds:6.1f} s "
                f"{tokens / seconds:6.1f} tok/s",
                flush=True,
            )


def _prompts(args) -> list:
    from autodeco_cli.evaluation.runner import prepare_task, resolve_tasks

    return [d.prompt for d in prepare_task(resolve_tasks("arith-add")[0], args.questions, None, None).docs]


def hf_worker(args) -> None:
    """Our engine in a fresh process: vLLM, once imported and started, changes the process's
    threading (and its engine processes poll), which slows our engine in the same process."""
    from autodeco_cli.core.decoding import make_strategy
    from autodeco_cli.engine.runtime import EngineSettings, open_engine

    rates: dict[str, list[float]] = {}
    settings = EngineSettings(args.model, dtype=args.dtype)
    engine, start = timed(lambda: open_engine(settings, [make_strategy("autodeco")]))
    _measure("hf", engine, _prompts(args), args, rates)
    engine.close()
    print("RESULT " + json.dumps({"rates": rates, "start": start}), flush=True)


def run_hf_worker(args) -> tuple[dict, float]:
    command = [sys.executable, __file__, "--hf-worker", *sys.argv[1:]]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    print("\n".join(line for line in output.splitlines() if line.startswith("  ")), flush=True)
    result = json.loads(next(line for line in output.splitlines() if line.startswith("RESULT "))[len("RESULT ") :])
    return result["rates"], result["start"]


def eval_workload(args):
    """Ours (fresh process), then vLLM, then ours again (A-B-A, brackets machine drift)."""
    from autodeco_cli.core.decoding import make_strategy
    from autodeco_cli.engine.vllm.engine import VllmSettings, open_vllm_engine

    before, hf_start = run_hf_worker(args)
    rates: dict[str, list[float]] = {}
    vl, vl_start = timed(
        lambda: open_vllm_engine(
            args.model, None, [make_strategy("autodeco")], VllmSettings(dtype=args.dtype, max_num_seqs=args.batch_size)
        )
    )
    _measure("vllm", vl, _prompts(args), args, rates)
    vl.close()
    after, _ = run_hf_worker(args)
    for key in before:
        rates[key] = before[key] + after[key]
    return rates, hf_start, vl_start


OVERHEAD_VARIANTS = ("static", "autodeco", "autodeco, torch path")


def _set_fused_kernel(worker, on: bool) -> None:
    """Runs inside vLLM's worker process (sent by `collective_rpc`), where `compute_logits` runs."""
    from autodeco_cli.core import distribution

    distribution.FUSED_KERNEL = on


def overhead_workload(args):
    """Fixed-length decode on a plain vLLM base (static) vs the AutoDeco model (learned), and the
    AutoDeco model again on torch's path: autodeco's per-token cost, with and without the fused
    kernel. Returns per variant the list of seconds, one per repeat."""
    import os

    import vllm
    from vllm import SamplingParams

    from autodeco_cli.core.heads import heads_digest, load_heads
    from autodeco_cli.engine.heads_source import packaged_heads_path
    from autodeco_cli.engine.vllm.stage import base_model, stage

    # the kernel switch is a function sent to the worker, which vLLM only unpickles with this
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
    base = base_model(args.model)
    heads = load_heads(packaged_heads_path(args.model))
    staged = stage(base, heads, heads_digest(heads))
    prompts = [{"prompt_token_ids": [1, 2, 3, 4, 5, 6, 7, 8 + i]} for i in range(args.overhead_sequences)]
    common = {"max_tokens": args.fixed_tokens, "ignore_eos": True, "seed": 0}
    engine_args = {"dtype": args.dtype, "max_num_seqs": args.batch_size, "gpu_memory_utilization": 0.2, "seed": 0}
    plain = vllm.LLM(model=str(base.folder), **engine_args)
    learned = vllm.LLM(model=str(staged), **engine_args)
    params_plain = SamplingParams(temperature=1.0, top_p=1.0, **common)
    params_learned = SamplingParams(temperature=1.0, top_p=1.0, extra_args={"autodeco": True}, **common)

    def run(variant: str, batch) -> float:
        llm, params = (plain, params_plain) if variant == "static" else (learned, params_learned)
        if variant != "static":
            learned.collective_rpc(_set_fused_kernel, args=(variant == "autodeco",))
        return timed(llm.generate, batch, params, use_tqdm=False)[1]

    for variant in OVERHEAD_VARIANTS:  # warm-up
        run(variant, prompts[:4])
    seconds: dict[str, list[float]] = {name: [] for name in OVERHEAD_VARIANTS}
    for rep in range(args.overhead_repeats):
        # rotate the order, so neither variant always runs first after the other engine woke up
        for variant in OVERHEAD_VARIANTS[rep % 3 :] + OVERHEAD_VARIANTS[: rep % 3]:
            seconds[variant].append(run(variant, prompts))
            print(f"  overhead rep {rep} {variant:19s} {seconds[variant][-1]:6.2f} s", flush=True)
    return seconds


def print_overhead(args, seconds: dict[str, list[float]]) -> None:
    tokens = args.overhead_sequences * args.fixed_tokens
    print(
        f"\n### autodeco inside vLLM: {args.overhead_sequences} sequences × {args.fixed_tokens} tokens (ignore_eos), "
        f"batch {args.batch_size}, {args.dtype}, {args.overhead_repeats} interleaved repeats\n"
    )
    print("| decoding | median tok/s | time per token vs static (median of per-repeat ratios) |\n|---|---|---|")
    for name in OVERHEAD_VARIANTS:
        ratios = [s / base for s, base in zip(seconds[name], seconds["static"])]
        spread = f"{100 * (min(ratios) - 1):+.1f}% .. {100 * (max(ratios) - 1):+.1f}%"
        print(
            f"| {name} | {statistics.median(tokens / s for s in seconds[name]):.1f} | "
            f"{100 * (statistics.median(ratios) - 1):+.1f}% (range {spread}) |"
        )
    print("\ntarget: autodeco ≤ +1.5% time per token over static (paper +1.7%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--questions", type=int, default=50)
    parser.add_argument("-k", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--fixed-tokens", type=int, default=48)
    parser.add_argument("--overhead-sequences", type=int, default=32, help="one batch at the default --batch-size")
    parser.add_argument("--overhead-repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--skip-eval", action="store_true")
    parser.add_argument("--hf-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hf_worker:
        return hf_worker(args)
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores", flush=True)

    if not args.skip_eval:
        rates, hf_start, vl_start = eval_workload(args)
        print(
            f"\n### eval workload: arith-add {args.questions} questions × k={args.k}, ≤{args.max_new_tokens} tokens, "
            f"batch {args.batch_size}, {args.dtype}"
        )
        print(f"start-up: ours {hf_start:.1f} s, vLLM {vl_start:.1f} s\n")
        print("| decoding | ours tok/s | vLLM tok/s | vLLM / ours |\n|---|---|---|---|")
        for name in ("static", "autodeco"):
            ours, theirs = statistics.median(rates[f"hf/{name}"]), statistics.median(rates[f"vllm/{name}"])
            print(f"| {name} | {ours:.1f} | {theirs:.1f} | {theirs / ours:.2f}× |")
    print_overhead(args, overhead_workload(args))


if __name__ == "__main__":  # vLLM spawns engine processes that re-import this module
    main()
