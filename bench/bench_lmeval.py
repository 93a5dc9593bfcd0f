"""Eval throughput: `autodeco eval`'s runner vs lm-evaluation-harness's HF backend, side by side.

The same 800 generations through both: arith-add's 200 test questions x 4 samples, the prompts
our `eval` builds (the model's chat template, no system prompt), the task's max_new_tokens (32)
and stop strings (none: EOS ends a row), static sampling T=0.6 p=0.95 (top-k off), batch 32.

- **ours**: `evaluation.runner.run_eval`, called in-process as bench/bench_eval.py does (it also
  scores, writes samples.jsonl and results.json).
- **lm-eval (same model)**: lm-eval 0.4.13's `HFLM(pretrained=<our loaded model>, tokenizer=...)`
  and its `generate_until`, fed `Instance`s built here (no Hub task: a task's `repeats: 4` is the
  request listed 4 times, which is what lm-eval's evaluator hands the model). It runs the very
  model object ours runs, so with `--dtype auto` it gets our CPU bf16 paths too (grouped decode
  attention, pre-packed linears): a generous baseline.
- **lm-eval (own load)**: `HFLM(pretrained=<the converted model folder>, dtype=...)`, what a user
  of lm-eval gets: transformers' own bf16 model, torch SDPA attention.

All three run in one process; flush-to-zero of subnormals, which our loader turns on, is
process-wide, so the lm-eval paths get it too. Each path is timed end to end, scoring included
(lm-eval's returned strings go through the same task scorer). The figure of merit is

    ratio = (generated tokens/s, ours) / (generated tokens/s, lm-eval)           target >= 5 (#23)

Generated tokens count each row up to and including its EOS, for every path. Repeats are
interleaved with alternating order after a warm-up. `--profile` runs lm-eval once more under
cProfile and prints where its time goes.

Usage (one dtype per model load; `default` is what `autodeco eval` resolves with no --dtype):
    python bench/bench_lmeval.py [--dtypes default,float32] [--paths ours,lmeval,lmeval-own]
                                 [--limit 200] [--samples 4] [--batch-size 32] [--repeats 1] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import time

import torch

from bench_eval import runner
from engine_limits import machine_info

PATHS = ("ours", "lmeval", "lmeval-own")
LABELS = {"ours": "autodeco eval runner", "lmeval": "lm-eval HF, same model", "lmeval-own": "lm-eval HF, own load"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--task", default="arith-add")
    parser.add_argument("--limit", type=int, default=200, help="questions (default 200)")
    parser.add_argument("--samples", type=int, default=4, help="samples per question (default 4)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's own")
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--dtypes", default="default", help="comma list of default, float32, bfloat16")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma list of {', '.join(PATHS)}")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=1, help="timed repeats per path, interleaved (default 1)")
    parser.add_argument("--profile", action="store_true", help="profile one extra lm-eval (same model) pass")
    return parser.parse_args(argv)


def build_requests(hflm, task, docs, samples: int, max_new_tokens: int, temperature: float, top_p: float):
    """lm-eval `Instance`s for `samples` generations of each doc, as its evaluator would pass them:
    the context chat-templated as our eval does (lm-eval's own `apply_chat_template`, no system
    prompt of ours), the request repeated `samples` times, gen_kwargs as a task's `generation_kwargs`."""
    from lm_eval.api.instance import Instance

    from autodeco_cli.core.prompt_format import PLAIN
    from autodeco_cli.tasks.registry import task_chat, task_stop

    stop = list(task_stop(task) or [])
    chat = task_chat(task, True)  # `autodeco eval` defaults to --chat
    gen_kwargs = {
        "until": stop, "max_gen_toks": max_new_tokens, "do_sample": True,
        "temperature": temperature, "top_p": top_p, "top_k": 0,
    }  # fmt: skip
    requests = []
    for index, doc in enumerate(docs):
        context = hflm.apply_chat_template(PLAIN.messages(doc.prompt)) if chat else doc.prompt
        instance = Instance(
            request_type="generate_until",
            doc={"doc_id": doc.doc_id},
            arguments=(context, dict(gen_kwargs)),
            idx=0,
            metadata=(task.name, index, samples),
        )
        requests.extend([instance] * instance.repeats)
    return requests


def lmeval_path(hflm, task, docs, requests, eos_ids: set[int]):
    """Run lm-eval's generate_until; returns (generated tokens, correct samples, rows x decode steps).

    Tokens are counted on the tensors its `_model_generate` returns (up to and including the
    first EOS or pad), since generate_until hands back only strings."""
    tokens = row_steps = 0
    generate = hflm._model_generate
    stops = eos_ids | {hflm.tokenizer.pad_token_id}

    def counting_generate(context, *args, **kwargs):
        nonlocal tokens, row_steps
        out = generate(context, *args, **kwargs)
        width = context.shape[1]
        row_steps += out.shape[0] * (out.shape[1] - width)
        for new in out[:, width:].tolist():
            tokens += next((i + 1 for i, t in enumerate(new) if t in stops), len(new))
        return out

    hflm._model_generate = counting_generate
    try:
        torch.manual_seed(0)  # lm-eval's evaluator seeds torch once; HF generate draws from it
        texts = hflm.generate_until(requests, disable_tqdm=True)
    finally:
        del hflm._model_generate
    by_id = {doc.doc_id: doc for doc in docs}
    correct = sum(bool(task.score(by_id[r.doc["doc_id"]], text).correct) for r, text in zip(requests, texts))
    return tokens, correct, row_steps


def open_paths(args, dtype: str, wanted: list[str], task, docs, budget: int):
    """Load the model(s) for one dtype; returns ({path: (run, warm_up)}, engine)."""
    from lm_eval.models.huggingface import HFLM

    from autodeco_cli.core.decoding import make_strategy
    from autodeco_cli.engine.models import convert_gguf, resolve_model_source
    from autodeco_cli.engine.runtime import EngineSettings, open_engine

    strategy = make_strategy("static", temperature=args.temperature, top_p=args.top_p)
    engine = open_engine(EngineSettings(args.model, device="cpu", dtype=None if dtype == "default" else dtype))
    eos = engine.lm.model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    hflms = {}
    if "lmeval" in wanted:
        hflms["lmeval"] = HFLM(pretrained=engine.lm.model, tokenizer=engine.lm.tokenizer, batch_size=args.batch_size)
    if "lmeval-own" in wanted:
        kind, location = resolve_model_source(args.model)
        folder = convert_gguf(location) if kind == "gguf" else location
        hflms["lmeval-own"] = HFLM(pretrained=str(folder), device="cpu", dtype=engine.dtype, batch_size=args.batch_size)
    paths = {}
    if "ours" in wanted:
        paths["ours"] = (
            lambda: runner(engine, task, strategy, args.samples, args.batch_size, args.limit, budget),
            lambda: runner(engine, task, strategy, 1, args.batch_size, 2, 4),
        )
    for name, hflm in hflms.items():
        full = build_requests(hflm, task, docs, args.samples, budget, args.temperature, args.top_p)
        small = build_requests(hflm, task, docs[:2], 1, 4, args.temperature, args.top_p)
        paths[name] = (
            lambda hflm=hflm, full=full: lmeval_path(hflm, task, docs, full, eos_ids),
            lambda hflm=hflm, small=small: lmeval_path(hflm, task, docs[:2], small, eos_ids),
        )
    return paths, engine


def time_paths(paths, docs, samples: int, repeats: int, dtype: str) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {name: [] for name in paths}
    for repeat in range(repeats):
        order = list(paths) if repeat % 2 == 0 else list(reversed(paths))
        for name in order:
            t0 = time.perf_counter()
            tokens, correct, row_steps = paths[name][0]()
            seconds = time.perf_counter() - t0
            rates[name].append(tokens / seconds)
            accuracy = correct / (len(docs) * samples)
            print(
                f"{dtype:<9} {repeat:>6}  {LABELS[name]:<24} {tokens:>7} {seconds:>8.1f} {tokens / seconds:>9.1f} "
                f"{accuracy:>9.3f} {tokens / row_steps:>8.0%}",
                flush=True,
            )
    return rates


def profile_lmeval(path, top: int = 25) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    path()
    profiler.disable()
    for order in ("tottime", "cumulative"):
        stream = io.StringIO()
        pstats.Stats(profiler, stream=stream).sort_stats(order).print_stats(top)
        print(f"\nlm-eval (same model), one pass under cProfile, by {order}:")
        print(stream.getvalue())


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from autodeco_cli.tasks.registry import get_task

    wanted = [p for p in args.paths.split(",") if p]
    if unknown := set(wanted) - set(PATHS):
        raise SystemExit(f"unknown --paths {sorted(unknown)}; use {', '.join(PATHS)}")
    info = machine_info(torch.get_num_threads())
    print(
        f"machine: {info['cpu']}; native bf16: {info['native_bf16']}; torch {info['torch']}; "
        f"{torch.get_num_threads()} torch threads"
    )
    task = get_task(args.task)
    docs = task.load_docs(limit=args.limit)
    budget = args.max_new_tokens or task.max_new_tokens
    print(
        f"{args.task}: {len(docs)} questions x {args.samples} samples, batch {args.batch_size}, max_new_tokens "
        f"{budget}, T={args.temperature:g} p={args.top_p:g} top-k off; timings include scoring"
    )
    header = (
        f"{'dtype':<9} {'repeat':>6}  {'path':<24} {'tokens':>7} {'seconds':>8} {'tokens/s':>9} {'accuracy':>9} "
        f"{'tok/row':>8}"
    )
    print(header)
    print("-" * len(header))
    summary = []
    for dtype in args.dtypes.split(","):
        paths, engine = open_paths(args, dtype, wanted, task, docs, budget)
        resolved = str(engine.dtype).removeprefix("torch.")
        for _, warm_up in paths.values():  # one-time kernel and allocator costs
            warm_up()
        label = f"{dtype}" if dtype != "default" else f"default ({resolved})"
        rates = time_paths(paths, docs, args.samples, args.repeats, resolved)
        summary.append((label, {name: statistics.median(r) for name, r in rates.items()}))
        if args.profile and "lmeval" in paths:
            profile_lmeval(paths["lmeval"][0])
        engine.close()
    print()
    for label, medians in summary:
        if "ours" not in medians:
            continue
        for name in (n for n in medians if n != "ours"):
            ratio = medians["ours"] / medians[name]
            verdict = "ok" if ratio >= 5 else "BELOW TARGET"
            print(f"{label}: ours / {LABELS[name]} = {ratio:.2f}x  (median tokens/s; target >= 5x: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
