"""`autodeco train-heads` and `autodeco make-data`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from ..errors import UserError
from ..models import DEFAULT_MODEL
from ..options import ChatOpt, DecodingOpt, DeviceOpt, DtypeOpt, ModelOpt, TemperatureOpt, TopKOpt, TopPOpt

err_console = Console(stderr=True)


def train_heads(
    overrides: Annotated[Optional[list[str]], typer.Argument(help="key=value overrides of recipe fields, e.g. learning_rate=1e-3 epochs=3.")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Recipe YAML (see recipes/).")] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="Training JSONL: {prompt, completion} or {messages} per line.")] = None,
    output_dir: Annotated[Optional[str], typer.Option("--output-dir", "-o", help="Where heads, checkpoints and metrics.jsonl go.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Base model (folder, hub id, .gguf, alias).")] = None,
    adapter: Annotated[Optional[str], typer.Option("--adapter", help="Train heads for base+LoRA adapter (PEFT folder).")] = None,
    lora_r: Annotated[Optional[int], typer.Option("--lora-r", help="Also train a LoRA adapter of this rank (end-to-end variant). Off by default.")] = None,
    mode: Annotated[Optional[str], typer.Option("--mode", help="joint (default), temperature or top_p.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint in --output-dir.")] = False,
    steer: Annotated[bool, typer.Option("--steer", help="Instruction-steered training on top of trained heads (init_heads=DIR): commands in the prompt learn to move T̂/P̂ (see steer-report).")] = False,
):
    """Train the temperature and top-p heads on a frozen base model.

    Fields come from a recipe, then key=value overrides, then the options above.\n
    Examples:\n
      autodeco train-heads -c recipes/smollm2-135m-cpu.yaml\n
      autodeco train-heads -c recipes/smollm2-135m-cpu.yaml learning_rate=5e-4 epochs=3 --resume\n
      torchrun --nproc-per-node 2 -m autodeco_cli.cli train-heads -c recipes/smollm2-135m-cpu.yaml\n
      autodeco train-heads --steer -c recipes/smollm2-135m-cpu.yaml init_heads=runs/heads output_dir=runs/steered max_steps=150\n
    (--steer fields: steer_margin=1.0 in logit units, steer_ranking_weight=1.0, steer_anchor_weight=1.0.)
    """
    from ..recipes import build_config
    from ..training import HeadTrainer, TrainConfig

    cfg = build_config(TrainConfig, config, overrides or [], data=data, output_dir=output_dir, model=model, adapter=adapter, lora_r=lora_r, mode=mode)
    if steer:
        from ..steering import train_steering

        train_steering(cfg, resume=resume, console=err_console)
        return
    trainer = HeadTrainer(cfg)
    report = trainer.data_report
    if trainer.dist.is_main:
        err_console.print(
            f"data: {report['examples']} examples, {report['loss_tokens']:,} loss tokens "
            f"({report['truncated']} truncated, {report['dropped']} dropped); "
            f"{trainer.total_steps} steps of {trainer.global_batch} sequences; cache={'on' if cfg.use_cache else 'off'}"
        )
    result = _train_with_progress(trainer, resume)
    if trainer.dist.is_main:
        m = result.final_metrics
        err_console.print(
            f"done: {result.steps} steps, {result.loss_tokens:,} tokens in {result.seconds:.1f}s "
            f"({result.loss_tokens / max(result.seconds, 1e-9):.0f} tok/s); final loss {m.get('loss', float('nan')):.4f} "
            f"(T {m.get('temperature_loss', float('nan')):.4f}, p {m.get('top_p_loss', float('nan')):.4f}); heads in {result.output_dir}"
        )


def _train_with_progress(trainer, resume: bool):
    from rich.progress import TextColumn

    from ..progress import progress_bar

    if not trainer.dist.is_main:
        return trainer.train(resume=resume)
    with progress_bar(err_console, TextColumn("{task.fields[losses]}")) as progress:
        task = progress.add_task("training heads", total=trainer.total_steps, tokens=0, losses="")
        tokens = 0

        def on_step(metrics, total):
            nonlocal tokens
            tokens += metrics["tokens"]
            losses = f"loss {metrics.get('loss', 0):.3f} T {metrics.get('temperature_loss', 0):.3f} p {metrics.get('top_p_loss', 0):.3f}"
            progress.update(task, completed=metrics["step"], tokens=tokens, losses=losses)

        return trainer.train(resume=resume, on_step=on_step)


def make_data(
    tasks: Annotated[str, typer.Option("--tasks", help="Comma list of tasks with a train split (gsm8k, math500, arith-add, ...).")] = "gsm8k,math500",
    output: Annotated[Path, typer.Option("--output", "-o", help="JSONL of {prompt, completion} lines for train-heads.")] = Path("data/on_policy.jsonl"),
    k: Annotated[int, typer.Option("-k", help="Samples per problem.")] = 4,
    split: Annotated[str, typer.Option("--split", help="Which split to sample problems from.")] = "train",
    limit: Annotated[Optional[int], typer.Option("--limit", help="Problems per task.")] = None,
    model: ModelOpt = DEFAULT_MODEL,
    decoding: DecodingOpt = "static",
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    top_k: TopKOpt = None,
    max_new_tokens: Annotated[Optional[int], typer.Option("--max-new-tokens", help="Default: the task's own budget.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 16,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    chat: ChatOpt = True,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
):
    """Build on-policy training data: sample the base model k times per training problem and keep
    the trajectories the task's scorer accepts (the paper's recipe). Re-run the same command to
    resume after an interruption.

    Example:

      autodeco make-data --tasks arith-add,arith-mul --limit 400 -k 4 -t 0.8 -o data/arith.jsonl
    """
    from ..decoding import make_strategy
    from ..make_data import make_on_policy_data
    from ..progress import progress_bar
    from ..runtime import open_engine

    if k < 1 or batch_size < 1:
        raise UserError("-k and --batch-size must be at least 1")
    strategy = make_strategy(decoding, temperature, top_p, top_k)
    if strategy.uses_heads:
        raise UserError("make-data samples the base model", "use --decoding static or greedy")
    engine = open_engine(model, None, [strategy], device=device, dtype=dtype)
    with progress_bar(err_console) as progress:
        bar = progress.add_task("sampling problems", total=None, tokens=0)
        tokens = 0

        def on_chunk(problems, samples, new_tokens):
            nonlocal tokens
            tokens += new_tokens
            progress.update(bar, advance=problems, tokens=tokens)

        report = make_on_policy_data(
            engine, tasks, output, strategy, k=k, split=split, limit=limit, max_new_tokens=max_new_tokens,
            batch_size=batch_size, seed=seed, chat=chat, on_chunk=on_chunk,
        )
    for name, stats in report.per_task.items():
        err_console.print(f"{name}: {stats['kept']} kept of {stats['samples']} samples this run ({stats['problems']} problems)")
    err_console.print(f"wrote {report.kept} new trajectories to {output} ({report.skipped_done} problems were already done)")


def register(app: typer.Typer) -> None:
    app.command("make-data")(make_data)
    app.command("train-heads")(train_heads)
