"""`autodeco train-heads` and `autodeco make-data`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from ..errors import UserError
from ..models import DEFAULT_MODEL
from ..options import ChatOpt, DecodingOpt, DeviceOpt, DtypeOpt, EdtBaseOpt, EdtThetaOpt, MinPOpt, ModelOpt, NSigmaOpt, TemperatureOpt, TopKOpt, TopPOpt

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
    objective: Annotated[str, typer.Option("--objective", help="mle: the paper's next-token loss on --data (default). reward: policy gradient on the tasks' own scorers (fields: tasks=, steps=, group_size=, prompts_per_step=, init_heads=, validation_limit=; see recipes/reward-cpu.yaml).")] = "mle",
):
    """Train the temperature and top-p heads on a frozen base model.

    Fields come from a recipe, then key=value overrides, then the options above.\n
    Examples:\n
      autodeco train-heads -c recipes/smollm2-135m-cpu.yaml\n
      autodeco train-heads -c recipes/smollm2-135m-cpu.yaml learning_rate=5e-4 epochs=3 --resume\n
      torchrun --nproc-per-node 2 -m autodeco_cli.cli train-heads -c recipes/smollm2-135m-cpu.yaml\n
      autodeco train-heads --steer -c recipes/smollm2-135m-cpu.yaml init_heads=runs/heads output_dir=runs/steered max_steps=150\n
    (--steer fields: steer_margin=1.0 in logit units, steer_ranking_weight=1.0, steer_anchor_weight=1.0.)

    --objective reward trains the heads as a sampling policy: each step samples group_size answers to prompts_per_step train questions with the current heads, scores them with the task's own scorer (its question-level metric for distributional tasks), and takes a REINFORCE step with leave-one-out group baselines. The base stays frozen. With validation_limit=N the output folder keeps the heads of the best validation score.

      autodeco train-heads --objective reward -c recipes/reward-cpu.yaml tasks=arith-add init_heads=runs/heads steps=40
    """
    from ..recipes import build_config
    from ..training import HeadTrainer, TrainConfig

    if objective not in ("mle", "reward"):
        raise UserError(f"--objective {objective!r} is not an objective", "use mle (the paper's loss) or reward (policy gradient on the task's scorer)")
    if objective == "reward":
        if steer or data or adapter or lora_r:
            raise UserError("--objective reward takes no --steer, --data, --adapter or --lora-r", "it samples its own answers to the tasks' train questions")
        from ..reward import RewardConfig

        reward_cfg = build_config(RewardConfig, config, overrides or [], output_dir=output_dir, model=model, mode=mode)
        _train_reward(reward_cfg, resume)
        return

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


def _train_reward(cfg, resume: bool) -> None:
    from rich.progress import TextColumn

    from ..progress import progress_bar
    from ..reward import RewardTrainer

    trainer = RewardTrainer(cfg).setup()
    err_console.print(
        f"reward training: {len(trainer.train_questions)} train questions, {cfg.steps} steps of {cfg.prompts_per_step} questions x {cfg.group_size} samples"
        + (f"; validation on {len(trainer.validation_questions)} questions every {cfg.validate_every} steps" if trainer.validation_questions else "")
    )
    with progress_bar(err_console, TextColumn("{task.fields[status]}")) as progress:
        bar = progress.add_task("reward training", total=cfg.steps, completed=0, tokens=0, status="")

        def on_step(record, total):
            status = f"reward {record['reward']:.3f} T̂ {record.get('mean_temperature') or 0:.3f}"
            if "validation" in record:
                status += f" val {record['validation']:.3f}"
            progress.update(bar, completed=record["step"], status=status)

        out = trainer.train(resume=resume, on_step=on_step)
    best = f", best validation score {trainer.best:.4f}" if trainer.best is not None else ""
    err_console.print(f"done: {trainer.step} steps{best}; heads in {out} (last step's in {out / 'last'})")


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
    min_p: MinPOpt = None,
    n_sigma: NSigmaOpt = None,
    edt_theta: EdtThetaOpt = None,
    edt_base: EdtBaseOpt = None,
    max_new_tokens: Annotated[Optional[int], typer.Option("--max-new-tokens", help="Default: the task's own budget.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 16,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    chat: ChatOpt = True,
    balance: Annotated[bool, typer.Option("--balance/--no-balance", help="For tasks with a target distribution (rand-*): keep one accepted sample per distinct pick per question, then cap each list position at the median position count across the task. Cannot add picks the model never makes.")] = True,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
):
    """Build on-policy training data: sample the base model k times per training problem and keep
    the trajectories the task's scorer accepts (the paper's recipe). Re-run the same command to
    resume after an interruption.

    Tasks that declare a target distribution (the rand-* family: a uniform random pick from a
    stated list) are re-balanced, since the model's own picks are skewed to its favourite value:
    per question one accepted sample per distinct pick, then across the task each list position
    capped at the median position count. Values the model never picks stay absent: sample at a
    diversity-giving setting (e.g. -t 1.0 -k 8) so that there are picks to balance.

    Example:

      autodeco make-data --tasks arith-add,arith-mul --limit 400 -k 4 -t 0.8 -o data/arith.jsonl
    """
    from ..decoding import make_strategy
    from ..make_data import make_on_policy_data
    from ..progress import progress_bar
    from ..runtime import open_engine

    if k < 1 or batch_size < 1:
        raise UserError("-k and --batch-size must be at least 1")
    strategy = make_strategy(decoding, temperature, top_p, top_k, min_p=min_p, n_sigma=n_sigma, edt_base=edt_base, edt_theta=edt_theta)
    if strategy.uses_heads:
        raise UserError("make-data samples the base model", "use --decoding static, greedy, min-p, top-n-sigma or edt")
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
            batch_size=batch_size, seed=seed, chat=chat, balance=balance, on_chunk=on_chunk,
        )
    for name, stats in report.per_task.items():
        balanced = f", {stats['dropped_by_balance']} then dropped by position balancing" if "dropped_by_balance" in stats else ""
        err_console.print(f"{name}: {stats['kept']} kept of {stats['samples']} samples this run ({stats['problems']} problems){balanced}")
    err_console.print(f"wrote {report.kept} new trajectories to {output} ({report.skipped_done} problems were already done)")


def register(app: typer.Typer) -> None:
    app.command("make-data")(make_data)
    app.command("train-heads")(train_heads)
