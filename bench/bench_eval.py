"""Eval throughput: `autodeco eval`'s runner vs a plain `model.generate` loop, side by side.

Both paths get the same model object (loaded once), the same task questions (chat-templated the
same way), the same number of samples per question, the same batch size, max_new_tokens and
sampling (T, p). They are timed end to end including scoring; the runner also writes its JSONL
and results.json. Repeats are interleaved with alternating order after a warm-up, so drift in
machine load hits both alike. The figure of merit is

    ratio = (generated tokens/s, runner) / (generated tokens/s, plain loop)        target >= 1.5

"Generated tokens" counts each row up to and including its EOS, the same way for both. The
table also shows tokens per computed row: generated tokens / (rows x decode forward passes).
The plain loop decodes every batch until its longest row ends, so it stays below 100% (the
rest is work on finished rows). The runner's rows are unique token histories: finished requests
leave, waiting ones join (continuous batching) and samples that agree share a row, so it can
exceed 100%.

The plain loop is what one writes without the runner: questions in file order, each repeated
for its samples, cut into batches of the same size, left-padded, and sampled by HF generate
(do_sample, temperature, top_p, top_k off), no sorting.

lm-evaluation-harness's HF backend is the other baseline, in its own script: bench/bench_lmeval.py
builds its requests by hand (no Hub task) and runs `HFLM.generate_until` on the same model object
and the same 800 generations, in the `make setup` venv (lm-eval is installed there).

Usage:
    python bench/bench_eval.py [--task arith-add] [--limit 32] [--samples 4] [--batch-size 8]
                                    [--threads 1] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from engine_limits import machine_line


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--task", default="arith-add", help="registry task (default arith-add)")
    parser.add_argument("--limit", type=int, default=32, help="questions (default 32)")
    parser.add_argument("--samples", type=int, default=4, help="samples per question (default 4)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's own")
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats per path, interleaved (default 2)")
    return parser.parse_args(argv)


def plain_generate_loop(
    lm, task, docs, samples: int, batch_size: int, max_new_tokens: int, temperature: float, top_p: float
):
    """The baseline: HF sampling over doc-major rows, fixed batches, no sorting.

    Returns (generated tokens, correct samples, rows x decode steps computed)."""
    from transformers import GenerationConfig

    from autodeco_cli.engine.requests import encode_prompt

    tokenizer, model = lm.tokenizer, lm.model
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    rows = [(doc, encode_prompt(tokenizer, doc.prompt, chat=True)) for doc in docs for _ in range(samples)]
    config = GenerationConfig(
        do_sample=True, temperature=temperature, top_p=top_p, top_k=0, max_new_tokens=max_new_tokens,
        eos_token_id=list(eos_ids), pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    tokens = correct = row_steps = 0
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        width = max(len(ids) for _, ids in batch)
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(ids)) + ids for _, ids in batch])
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for _, ids in batch])
        with torch.inference_mode():
            out = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config)
        row_steps += len(batch) * (out.shape[1] - width)
        for (doc, _), new in zip(batch, out[:, width:].tolist()):
            kept = next((new[: i + 1] for i, t in enumerate(new) if t in eos_ids), new)
            tokens += len(kept)
            text = tokenizer.decode([t for t in kept if t not in eos_ids], skip_special_tokens=True)
            correct += bool(task.score(doc, text).correct)
    return tokens, correct, row_steps


def runner(engine, task, strategy, samples: int, batch_size: int, limit: int, max_new_tokens: int):
    from autodeco_cli.evaluation.runner import run_eval
    from autodeco_cli.evaluation.settings import EvalSettings

    row_steps = 0
    forward = engine._forward

    def counting_forward(input_ids, *args):
        nonlocal row_steps
        if input_ids.shape[1] == 1:  # decode steps only, as for the plain loop
            row_steps += input_ids.shape[0]
        return forward(input_ids, *args)

    engine._forward = counting_forward
    try:
        with tempfile.TemporaryDirectory() as out:
            settings = EvalSettings(
                k=samples, seeds=[0], batch_size=batch_size, limit=limit, max_new_tokens=max_new_tokens
            )
            results = run_eval(engine, [task], [strategy], settings, out_dir=Path(out))
    finally:
        del engine._forward
    m = next(iter(results.values()))["results"][task.name]
    n = m["n_questions"] * m["samples_per_question"]
    return round(m["mean_tokens"] * n), round(m["pass@1"] * n), row_steps


def main(argv=None) -> int:
    args = parse_args(argv)
    print(machine_line(), flush=True)  # gains differ between CPUs: every run names its machine
    if args.threads:
        torch.set_num_threads(args.threads)
    from autodeco_cli.core.decoding import make_strategy
    from autodeco_cli.engine.runtime import EngineSettings, open_engine
    from autodeco_cli.tasks.registry import get_task

    start = time.perf_counter()
    strategy = make_strategy("static", temperature=args.temperature, top_p=args.top_p)
    engine = open_engine(EngineSettings(args.model, device="cpu"), [strategy])
    task = get_task(args.task)
    docs = task.load_docs(limit=args.limit)
    budget = args.max_new_tokens or task.max_new_tokens
    print(
        f"model {args.model} loaded in {time.perf_counter() - start:.1f} s; threads={torch.get_num_threads()}",
        file=sys.stderr,
    )

    paths = {
        "autodeco eval runner": lambda: runner(
            engine, task, strategy, args.samples, args.batch_size, args.limit, budget
        ),
        "plain generate loop": lambda: plain_generate_loop(
            engine.lm, task, docs, args.samples, args.batch_size, budget, args.temperature, args.top_p
        ),
    }
    # warm-up on a couple of questions: one-time kernel and allocator costs
    runner(engine, task, strategy, 1, args.batch_size, 2, 4)
    plain_generate_loop(engine.lm, task, docs[:2], 1, args.batch_size, 4, args.temperature, args.top_p)

    rates: dict[str, list[float]] = {name: [] for name in paths}
    print(
        f"\n{args.task}: {len(docs)} questions x {args.samples} samples, batch {args.batch_size}, max_new_tokens "
        f"{budget}, T={args.temperature:g} p={args.top_p:g}"
    )
    header = f"{'repeat':>6}  {'path':<22} {'tokens':>7} {'seconds':>8} {'tokens/s':>9} {'accuracy':>9} {'tok/row':>8}"
    print(header)
    print("-" * len(header))
    for repeat in range(args.repeats):
        order = list(paths) if repeat % 2 == 0 else list(reversed(paths))
        for name in order:
            t0 = time.perf_counter()
            tokens, correct, row_steps = paths[name]()
            seconds = time.perf_counter() - t0
            rates[name].append(tokens / seconds)
            accuracy = correct / (len(docs) * args.samples)
            print(
                f"{repeat:>6}  {name:<22} {tokens:>7} {seconds:>8.1f} {tokens / seconds:>9.1f} {accuracy:>9.3f} "
                f"{tokens / row_steps:>8.0%}"
            )
    ratio = statistics.median(rates["autodeco eval runner"]) / statistics.median(rates["plain generate loop"])
    verdict = "ok" if ratio >= 1.5 else "BELOW TARGET"
    print(f"\nthroughput runner / plain loop = {ratio:.2f}x  (median tokens/s; target >= 1.5x: {verdict})")
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
