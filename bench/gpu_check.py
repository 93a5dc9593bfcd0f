"""GPU check: our engine, head training and eval on a random-weight 8B Llama in bf16, on one GPU.

Needs only what a stock CUDA PyTorch image has (torch, transformers, peft, typer, rich, pyyaml
and their own dependencies): no vLLM, no downloads, no data files. The model is Llama-3-8B's
shape (hidden 4096, 32 layers, 32 heads, 8 KV heads, MLP 14336, vocabulary 128256) built on the
device with random weights; the tokenizer is a small byte-level BPE trained here. The model keeps
its full vocabulary, so the LM head, the sampler and the loss pay for 128k ids; ids the tokenizer
does not know decode to nothing, which only makes eval answers wrong, never slower.

Parts, each timed on its own, with the peak GPU memory it reached:

  setup            build the model (no init, then filled with random weights on the device)
  generate-bN      GenerationEngine.generate at batch N (default 1 and 32): random prompts over the
                   whole vocabulary, static (T=1, p=0.5) vs autodeco with fresh random heads,
                   interleaved repeats; median tokens/s and the heads' overhead in %
  train-cache-off  HeadTrainer (TrainConfig) for 20 optimizer steps, the base forward every step
  train-cache-on   the same with cache_hidden=on: one base pass over the data into the disk cache
  eval             run_eval on arith-add (generated, no data files), 50 questions x 4 samples, autodeco

Before each part the H100 estimate (gpu_estimates.py) is printed; --budget-s skips a part that
no longer fits and stops repeats when the time is out. The table ends with the GPU's name and
the library versions; the JSON goes to --json and, when $OUT is set, to $OUT/gpu-check.json.

Usage:
    PYTHONPATH=src python bench/gpu_check.py                        # one GPU (make gpu-check)
    PYTHONPATH=src python bench/gpu_check.py --estimate-only        # the H100 plan, nothing run
    PYTHONPATH=src python bench/gpu_check.py --device cpu --tiny    # the same code on a tiny model
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from autodeco_cli.core.decoding import make_strategy, strategy_slug
from autodeco_cli.core.heads import fresh_heads
from autodeco_cli.engine.generation import GenerationEngine
from autodeco_cli.engine.models import pick_device, pick_dtype
from autodeco_cli.engine.requests import Request, encode_prompt, request_seed
from autodeco_cli.evaluation.run_store import samples_path
from autodeco_cli.evaluation.runner import run_eval
from autodeco_cli.evaluation.settings import EvalSettings
from autodeco_cli.training.config import TrainConfig
from autodeco_cli.training.data import load_examples
from autodeco_cli.training.trainer import HeadTrainer
from gpu_estimates import H100, LLAMA_8B, TINY, ModelShape, eval_s, generate_s, train_s
from gpu_model import build_tokenizer, random_llama, random_prompts, write_training_data

# The budget counts from here. Importing torch and transformers before this line takes ~5-20 s,
# which the default --budget-s (420 of the 480 s allowed) leaves room for, with the tear-down.
STARTED = time.perf_counter()
EVAL_TASK = "arith-add"
EVAL_NEW_TOKENS = 32  # arith-add's max_new_tokens (evals/arith-add.yaml)
# Fresh random heads predict T̂ ≈ 1 and P̂ ≈ 0.5; a static strategy at those values cuts nuclei of
# the same size, so the autodeco-vs-static difference is the heads' own cost.
STATIC_T, STATIC_P = 1.0, 0.5
WARMUP_TOKENS = 8  # one short untimed run per strategy: CUDA kernels load and cuBLAS picks plans
GIB = 1024**3


@dataclass(frozen=True)
class Plan:
    prompt_tokens: int = 128
    new_tokens: int = 128
    batches: tuple[int, ...] = (1, 32)
    repeats: int = 5
    train_steps: int = 20
    train_epochs: int = 4  # the data set is steps / epochs optimizer steps long, so the cache is reused
    micro_batch: int = 4
    accumulation: int = 8
    completion_words: int = 60
    eval_questions: int = 50
    eval_samples: int = 4
    eval_batch: int = 32

    @property
    def examples_per_step(self) -> int:
        return self.micro_batch * self.accumulation

    @property
    def dataset_examples(self) -> int:
        return self.examples_per_step * max(1, self.train_steps // self.train_epochs)


TINY_PLAN = Plan(
    prompt_tokens=16,
    new_tokens=8,
    batches=(1, 4),
    repeats=2,
    train_steps=4,
    train_epochs=2,
    micro_batch=2,
    accumulation=2,
    completion_words=8,
    eval_questions=4,
    eval_samples=2,
    eval_batch=8,
)
PARTS = ("generate", "train", "eval")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cuda, cuda:1, cpu")
    parser.add_argument("--dtype", default=None, help="default: auto (bf16 on CUDA)")
    parser.add_argument("--tiny", action="store_true", help="a tiny model and small counts (tests, CPU)")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma list of generate, train, eval")
    parser.add_argument("--batches", default=None, help="generate batch sizes, comma list (default 1,32)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per strategy and batch (5)")
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens generated per row (128)")
    parser.add_argument("--train-steps", type=int, default=None, help="optimizer steps per training run (20)")
    parser.add_argument("--eval-questions", type=int, default=None, help="arith-add questions (50)")
    parser.add_argument("--eval-samples", type=int, default=None, help="samples per question (4)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip parts that would end later (420)")
    parser.add_argument("--estimate-only", action="store_true", help="print the H100 estimates and stop")
    parser.add_argument("--json", default="gpu-check.json", help="where the results go (gpu-check.json)")
    parser.add_argument("--work-dir", default=None, help="training data and caches (default: a temp folder)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    plan = TINY_PLAN if args.tiny else Plan()
    overrides = {
        "repeats": args.repeats,
        "new_tokens": args.new_tokens,
        "train_steps": args.train_steps,
        "eval_questions": args.eval_questions,
        "eval_samples": args.eval_samples,
    }
    if args.batches:
        overrides["batches"] = tuple(int(b) for b in args.batches.split(","))
    return replace(plan, **{k: v for k, v in overrides.items() if v is not None})


# ---- the device: every CUDA-only call sits behind one of these (tests/test_gpu_check.py) ----------


def synchronize(device: torch.device) -> None:
    """CUDA queues kernels and returns: a clock read must wait for them."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int | None:
    """The most memory tensors held since the last reset; None where torch keeps no count (CPU)."""
    if device.type != "cuda":
        return None
    return int(torch.cuda.max_memory_allocated(device))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def machine_info(device: torch.device, dtype: torch.dtype) -> dict:
    import transformers

    try:
        import peft

        peft_version = peft.__version__
    except ImportError:  # only LoRA training needs it, and this check trains no LoRA
        peft_version = None
    return {
        "device": device_name(device),
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "peft": peft_version,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


# ---- the budget -----------------------------------------------------------------------------------


@dataclass
class Budget:
    seconds: float
    started: float = STARTED

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def refuses(self, estimate: float) -> str | None:
        """Why a part estimated at `estimate` seconds must be skipped, or None if it fits."""
        if estimate > self.left():
            return f"skipped: estimated {estimate:.0f} s, {max(self.left(), 0):.0f} s of the budget left"
        return None


# ---- the parts ------------------------------------------------------------------------------------


@dataclass
class Context:
    lm: object  # LoadedModel
    heads: object  # AutoDecoHeads
    plan: Plan
    budget: Budget
    work: Path
    data: Path


def _generate_once(ctx: Context, prompts: list[list[int]], name: str, new_tokens: int) -> dict:
    strategy = make_strategy("static", STATIC_T, STATIC_P) if name == "static" else make_strategy("autodeco")
    requests = [Request(key=i, input_ids=p, strategy=strategy, seed=request_seed(0, i)) for i, p in enumerate(prompts)]
    # a static run gets an engine without heads: no hidden-state hook, exactly what `generate` runs
    engine = GenerationEngine(ctx.lm, ctx.heads if name == "autodeco" else None)
    try:
        synchronize(ctx.lm.device)
        start = time.perf_counter()
        generations = engine.generate(requests, max_new_tokens=new_tokens, batch_size=len(prompts))
        synchronize(ctx.lm.device)
        seconds = time.perf_counter() - start
    finally:
        engine.close()
    tokens = sum(len(g.token_ids) for g in generations)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def run_generate(ctx: Context, rows: int) -> dict:
    plan = ctx.plan
    prompts = random_prompts(rows, plan.prompt_tokens, ctx.lm.model.config.vocab_size, seed=rows)
    names = ["static", "autodeco"]
    for name in names:
        _generate_once(ctx, prompts, name, min(WARMUP_TOKENS, plan.new_tokens))
    runs: dict[str, list[dict]] = {name: [] for name in names}
    note = None
    for repeat in range(plan.repeats):
        for name in names if repeat % 2 == 0 else reversed(names):  # drift hits both alike
            runs[name].append(_generate_once(ctx, prompts, name, plan.new_tokens))
        if repeat + 1 < plan.repeats and ctx.budget.left() <= 0:
            note = f"stopped after {repeat + 1} of {plan.repeats} repeats: the budget ran out"
            break
    medians = {name: statistics.median(r["tokens_per_s"] for r in runs[name]) for name in names}
    overhead = 100.0 * (medians["static"] / medians["autodeco"] - 1.0)
    result = {
        "rows": rows,
        "prompt_tokens": plan.prompt_tokens,
        "new_tokens": plan.new_tokens,
        **{name: {"median_tokens_per_s": medians[name], "runs": runs[name]} for name in names},
        "heads_overhead_pct": overhead,
    }
    if note:
        result["note"] = note
    return result


def run_train(ctx: Context, cache: bool) -> dict:
    plan = ctx.plan
    tag = "cache-on" if cache else "cache-off"
    config = TrainConfig(
        data=str(ctx.data),
        output_dir=str(ctx.work / f"train-{tag}"),
        model=ctx.lm.name,
        micro_batch_size=plan.micro_batch,
        gradient_accumulation=plan.accumulation,
        epochs=plan.train_epochs,
        max_steps=plan.train_steps,
        learning_rate=1e-4,
        cache_hidden="on" if cache else "off",
        cache_dir=str(ctx.work / f"hidden-{tag}"),  # its own folder: the cache is built, not found
        device=str(ctx.lm.device),
    )
    trainer = HeadTrainer(config).setup(lm=ctx.lm)
    synchronize(ctx.lm.device)
    start = time.perf_counter()
    result = trainer.train()
    synchronize(ctx.lm.device)
    seconds = time.perf_counter() - start
    return {
        "steps": result.steps,
        "examples_per_step": plan.examples_per_step,
        "dataset_examples": len(trainer.examples),
        "loss_tokens": result.loss_tokens,
        "seconds": seconds,  # the whole train() call: building the cache, the steps, the final save
        "seconds_in_steps": result.seconds,
        "loss_tokens_per_s": result.loss_tokens / seconds,
        "final_loss": result.final_metrics.get("loss"),
    }


def run_eval_part(ctx: Context) -> dict:
    plan = ctx.plan
    strategy = make_strategy("autodeco")
    engine = GenerationEngine(ctx.lm, ctx.heads)
    out = ctx.work / "eval"
    try:
        synchronize(ctx.lm.device)
        start = time.perf_counter()
        results = run_eval(
            engine,
            EVAL_TASK,
            [strategy],
            EvalSettings(k=plan.eval_samples, seeds=(0,), batch_size=plan.eval_batch, limit=plan.eval_questions),
            out_dir=out,
            run_info={"model": ctx.lm.name, "heads": "fresh random heads", "device": str(ctx.lm.device)},
        )
        synchronize(ctx.lm.device)
        seconds = time.perf_counter() - start
    finally:
        engine.close()
    path = samples_path(out, strategy_slug(strategy), EVAL_TASK)
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    tokens = sum(r["num_tokens"] for r in records)
    metrics = results[strategy.label]["results"][EVAL_TASK]
    return {
        "task": EVAL_TASK,
        "questions": plan.eval_questions,
        "samples": len(records),
        "batch_size": plan.eval_batch,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "pass@1": metrics.get("pass@1"),
    }


def part_steps(parts: set[str], plan: Plan) -> list[tuple[str, object]]:
    """(name, function of the Context) for every part asked for, in running order."""
    steps: list[tuple[str, object]] = []
    if "generate" in parts:
        steps += [(f"generate-b{rows}", lambda ctx, rows=rows: run_generate(ctx, rows)) for rows in plan.batches]
    if "train" in parts:
        steps += [
            ("train-cache-off", lambda ctx: run_train(ctx, False)),
            ("train-cache-on", lambda ctx: run_train(ctx, True)),
        ]
    if "eval" in parts:
        steps.append(("eval", run_eval_part))
    return steps


def estimates(shape: ModelShape, plan: Plan, data_report, eval_prompt_tokens: int) -> dict[str, float]:
    """Each part's H100 estimate in seconds (gpu_estimates.py), from the real training data's lengths."""
    per_example = data_report.total_tokens / max(data_report.examples, 1)
    loss_per_example = data_report.loss_tokens / max(data_report.examples, 1)
    out = {"setup": H100.startup}
    for rows in plan.batches:
        out[f"generate-b{rows}"] = generate_s(
            shape, rows, plan.prompt_tokens, plan.new_tokens, 2 * plan.repeats, min(WARMUP_TOKENS, plan.new_tokens)
        )
    for cache in (False, True):
        out["train-cache-on" if cache else "train-cache-off"] = train_s(
            shape,
            plan.train_steps,
            plan.accumulation,
            plan.examples_per_step,
            per_example,
            loss_per_example,
            plan.dataset_examples,
            cache,
        )
    requests = plan.eval_questions * plan.eval_samples
    out["eval"] = eval_s(shape, requests, plan.eval_batch, eval_prompt_tokens, EVAL_NEW_TOKENS)
    return out


def run_parts(report: dict, steps, estimate: dict[str, float], budget: Budget, build, device: torch.device) -> None:
    """Setup, then every part the budget still has room for; each with its wall time and peak memory."""
    names = ["setup"] + [name for name, _ in steps]
    ctx = None
    for name in names:
        left = max(budget.left(), 0)
        print(f"[{name}] H100 estimate {estimate[name]:.1f} s; {left:.0f} s of the budget left", flush=True)
        refusal = budget.refuses(estimate[name]) if ctx is not None or name == "setup" else "skipped: no model"
        if refusal:
            report["skipped"][name] = refusal
            print(f"  {refusal}", flush=True)
            continue
        reset_peak_memory(device)
        start = time.perf_counter()
        if name == "setup":
            ctx = build()
            result = {"params": sum(p.numel() for p in ctx.lm.model.parameters())}
        else:
            result = dict(steps)[name](ctx)
        result.update(
            wall_s=time.perf_counter() - start, estimate_s=estimate[name], peak_memory_bytes=peak_memory_bytes(device)
        )
        report["parts"][name] = result
        print(f"  {summary_line(name, result)}  ({result['wall_s']:.1f} s)", flush=True)


def summary_line(name: str, r: dict) -> str:
    if name == "setup":
        return f"random Llama, {r['params']:,} parameters"
    if name.startswith("generate"):
        return (
            f"static {r['static']['median_tokens_per_s']:,.0f} tok/s, autodeco "
            f"{r['autodeco']['median_tokens_per_s']:,.0f} tok/s, heads {r['heads_overhead_pct']:+.1f}%"
        )
    if name.startswith("train"):
        around = r["seconds"] - r["seconds_in_steps"]
        return (
            f"{r['steps']} steps, {r['loss_tokens']:,} loss tokens, {r['loss_tokens_per_s']:,.0f} loss tok/s; "
            f"steps {r['seconds_in_steps']:.1f} s + {around:.1f} s outside (cache, save)"
        )
    pass_at_1 = "–" if r["pass@1"] is None else f"{r['pass@1']:.1%}"
    return f"{r['samples']} samples, {r['tokens']:,} tokens, {r['tokens_per_s']:,.0f} tok/s, pass@1 {pass_at_1}"


def print_table(report: dict) -> None:
    m = report["machine"]
    print(
        f"\nGPU check on {m['device']} · torch {m['torch']} (CUDA {m['cuda']}) · transformers {m['transformers']} · "
        f"{report['model']} in {m['dtype']}"
    )
    print(f"  {'part':<16} {'H100 est s':>10} {'wall s':>8} {'peak GiB':>9}  result")
    for name, estimate in report["estimates"].items():
        part = report["parts"].get(name)
        if part is None:
            reason = report["skipped"].get(name, "not asked for")
            print(f"  {name:<16} {estimate:10.1f} {'–':>8} {'–':>9}  {reason}")
            continue
        peak = "–" if part["peak_memory_bytes"] is None else f"{part['peak_memory_bytes'] / GIB:.1f}"
        print(f"  {name:<16} {estimate:10.1f} {part['wall_s']:8.1f} {peak:>9}  {summary_line(name, part)}")
    print(f"  total {report['elapsed_s']:.0f} s of a {report['budget_s']:.0f} s budget (from the script's start)")


def write_reports(report: dict, path: str) -> list[Path]:
    targets = [Path(path)]
    if os.environ.get("OUT"):  # the device runner brings back what lands in $OUT
        targets.append(Path(os.environ["OUT"]) / "gpu-check.json")
    text = json.dumps(report, indent=2, default=str) + "\n"
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return targets


def main(argv=None) -> int:
    args = parse_args(argv)
    plan = make_plan(args)
    shape = TINY if args.tiny else LLAMA_8B
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if parts - set(PARTS):
        raise SystemExit(f"--parts: unknown {', '.join(sorted(parts - set(PARTS)))}; choose from {', '.join(PARTS)}")
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        tokenizer = build_tokenizer()
        data = write_training_data(work / "train.jsonl", plan.dataset_examples, plan.completion_words, args.seed)
        _, data_report = load_examples(data, tokenizer)
        eval_prompt = encode_prompt(tokenizer, "What is 27 + 82? Reply with just the number.", chat=True)
        steps = part_steps(parts, plan)
        estimate = estimates(shape, plan, data_report, len(eval_prompt))
        estimate = {name: estimate[name] for name in ["setup"] + [name for name, _ in steps]}
        report = {
            "machine": machine_info(device, dtype),
            "model": f"random Llama {'tiny' if args.tiny else '8B'}",
            "shape": asdict(shape),
            "plan": asdict(plan),
            "training_data": asdict(data_report),
            "budget_s": args.budget_s,
            "estimates": estimate,
            "estimated_total_s": sum(estimate.values()),
            "parts": {},
            "skipped": {},
        }
        print(
            f"H100 estimates (s): {json.dumps({k: round(v, 1) for k, v in estimate.items()})}, "
            f"total {sum(estimate.values()):.0f} s; budget {args.budget_s:.0f} s",
            flush=True,
        )
        if not args.estimate_only:
            budget = Budget(args.budget_s)

            def build() -> Context:
                lm = random_llama(shape, tokenizer, device, dtype, seed=args.seed)
                heads = fresh_heads(shape.hidden, base_model=lm.name, seed=args.seed)
                return Context(lm, heads, plan, budget, work, data)

            run_parts(report, steps, estimate, budget, build, device)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    report["elapsed_s"] = time.perf_counter() - STARTED
    if not args.estimate_only:
        print_table(report)
    for target in write_reports(report, args.json):
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
