"""`autodeco train-heads`: the heads by the paper's loss (optionally steered), or by reward."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..core.consoles import err_console
from ..core.errors import UserError

OverridesArg = Annotated[
    Optional[list[str]],
    typer.Argument(help="key=value overrides of recipe fields, e.g. learning_rate=1e-3 epochs=3."),
]
RecipeOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="Recipe YAML (see recipes/).")]
DataOpt = Annotated[
    Optional[str], typer.Option("--data", help="Training JSONL: {prompt, completion} or {messages} per line.")
]
OutputDirOpt = Annotated[
    Optional[str], typer.Option("--output-dir", "-o", help="Where heads, checkpoints and metrics.jsonl go.")
]
BaseModelOpt = Annotated[
    Optional[str], typer.Option("--model", "-m", help="Base model (folder, hub id, .gguf, alias).")
]
AdapterOpt = Annotated[
    Optional[str], typer.Option("--adapter", help="Train heads for base+LoRA adapter (PEFT folder).")
]
LoraOpt = Annotated[
    Optional[int],
    typer.Option("--lora-r", help="Also train a LoRA adapter of this rank (end-to-end variant). Off by default."),
]
ModeOpt = Annotated[Optional[str], typer.Option("--mode", help="joint (default), temperature or top_p.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint in --output-dir.")]
SteerOpt = Annotated[
    bool,
    typer.Option(
        "--steer",
        help="Instruction-steered training on top of trained heads (init_heads=DIR): commands in the prompt "
        "learn to move T̂/P̂ (see steer-report).",
    ),
]
ObjectiveOpt = Annotated[
    str,
    typer.Option(
        "--objective",
        help="mle: the paper's next-token loss on --data (default). reward: policy gradient on the tasks' own "
        "scorers (fields: tasks=, steps=, group_size=, prompts_per_step=, init_heads=, validation_limit=; "
        "see recipes/reward-cpu.yaml).",
    ),
]

# The --help text. Concatenated rather than a docstring wrapped at 120 columns: typer's rich mode
# keeps single line breaks, so wrapping would show in the help.
TRAIN_HEADS_HELP = (
    "Train the temperature and top-p heads on a frozen base model.\n"
    "\n"
    "Fields come from a recipe, then key=value overrides, then the options above.\n"
    "\n"
    "Examples:\n"
    "\n"
    "  autodeco train-heads -c recipes/smollm2-135m-cpu.yaml\n"
    "\n"
    "  autodeco train-heads -c recipes/smollm2-135m-cpu.yaml learning_rate=5e-4 epochs=3 --resume\n"
    "\n"
    "  torchrun --nproc-per-node 2 -m autodeco_cli.cli train-heads -c recipes/smollm2-135m-cpu.yaml\n"
    "\n"
    "  autodeco train-heads --steer -c recipes/smollm2-135m-cpu.yaml init_heads=runs/heads output_dir=runs/steered "
    "max_steps=150\n"
    "\n"
    "(--steer fields: steer_margin=1.0 in logit units, steer_ranking_weight=1.0, steer_anchor_weight=1.0.)\n"
    "\n"
    "--objective reward trains the heads as a sampling policy: each step samples group_size answers to "
    "prompts_per_step train questions with the current heads, scores them with the task's own scorer (its "
    "question-level metric for distributional tasks), and takes a REINFORCE step with leave-one-out group "
    "baselines. The base stays frozen. With validation_limit=N the output folder keeps the heads of the best "
    "validation score.\n"
    "\n"
    "  autodeco train-heads --objective reward -c recipes/reward-cpu.yaml tasks=arith-add init_heads=runs/heads "
    "steps=40"
)


def train_heads(
    overrides: OverridesArg = None,
    config: RecipeOpt = None,
    data: DataOpt = None,
    output_dir: OutputDirOpt = None,
    model: BaseModelOpt = None,
    adapter: AdapterOpt = None,
    lora_r: LoraOpt = None,
    mode: ModeOpt = None,
    resume: ResumeOpt = False,
    steer: SteerOpt = False,
    objective: ObjectiveOpt = "mle",
):
    """Train the temperature and top-p heads on a frozen base model (see TRAIN_HEADS_HELP)."""
    from ..core.io_checks import check_writable_output
    from ..engine.option_checks import check_recipe_fields
    from ..training.recipes import build_config

    if objective not in ("mle", "reward"):
        raise UserError(
            f"--objective {objective!r} is not an objective",
            "use mle (the paper's loss) or reward (policy gradient on the task's scorer)",
        )
    if objective == "reward":
        if steer or data or adapter or lora_r:
            raise UserError(
                "--objective reward takes no --steer, --data, --adapter or --lora-r",
                "it samples its own answers to the tasks' train questions",
            )
        from ..training.config import RewardConfig

        reward_cfg = build_config(RewardConfig, config, overrides or [], output_dir=output_dir, model=model, mode=mode)
        _check_reward_inputs(reward_cfg, resume)
        _train_reward(reward_cfg, resume)
        return
    explicit = {
        "data": data,
        "output_dir": output_dir,
        "model": model,
        "adapter": adapter,
        "lora_r": lora_r,
        "mode": mode,
    }
    from ..training.data import check_data_file

    if steer:
        from ..training.config import SteerRecipe, check_steer_base
        from ..training.data import steer_records
        from ..training.run_folder import check_steer_folder

        # one recipe holds both: the training fields and the steer_* ones
        cfg, steer_cfg = build_config(SteerRecipe, config, overrides or [], **explicit).split()
        # train_steering checks all of these again, after torch is imported: here a bad input fails at once
        cfg.validate()
        steer_cfg.validate()
        check_steer_base(cfg)
        check_writable_output(cfg.output_dir, "output_dir", folder=True)  # before the model loads
        check_steer_folder(cfg.output_dir, resume)  # an earlier run's checkpoints, or none to resume
        steer_records(check_data_file(cfg.data), cfg.limit)  # a bad record, too: steering reads them after the load
        check_recipe_fields(cfg)  # the model and heads it names
        _train_steering(cfg, steer_cfg, resume)
        return
    from ..training.config import TrainConfig
    from ..training.run_folder import refuse_earlier_run

    cfg = build_config(TrainConfig, config, overrides or [], **explicit)
    cfg.validate()  # HeadTrainer checks it again, after torch is imported: a bad field fails at once here
    check_writable_output(cfg.output_dir, "output_dir", folder=True)  # before the model loads
    refuse_earlier_run(cfg.output_dir, resume)  # HeadTrainer again, under the output folder's lock
    check_data_file(cfg.data)  # and before torch is imported: a typo fails at once
    check_recipe_fields(cfg)
    _train_mle(cfg, resume)


def _check_reward_inputs(cfg, resume: bool) -> None:
    """Every input of `--objective reward` that can be checked before torch is imported; RewardTrainer
    checks the fields, the splits and the folder again after (and the folder under its lock)."""
    from ..core.io_checks import check_writable_output
    from ..engine.option_checks import check_recipe_fields
    from ..evaluation.runner import resolve_tasks
    from ..training.reward_splits import check_reward_splits
    from ..training.run_folder import REWARD_LEGACY_DIR, refuse_earlier_run

    cfg.validate()
    check_reward_splits(resolve_tasks(cfg.tasks), cfg.validation_limit)  # a task typo, or one without the splits
    check_writable_output(cfg.output_dir, "output_dir", folder=True)
    refuse_earlier_run(cfg.output_dir, resume, REWARD_LEGACY_DIR)
    check_recipe_fields(cfg)  # the model and init_heads paths


def _train_steering(cfg, steer_cfg, resume: bool) -> None:
    from ..training.steering import train_steering

    with _output_lock(cfg.output_dir):
        train_steering(cfg, steer_cfg, resume=resume, console=err_console)


def _output_lock(output_dir):
    """One run per output_dir (two would both write its checkpoints). Under torchrun only rank 0
    takes it: every rank of one run shares the folder."""
    from ..core.folder_lock import folder_lock
    from ..training.trainer import Distributed

    if not Distributed.from_launcher().is_main:
        return contextlib.nullcontext()
    return folder_lock(output_dir, "output_dir")


def _train_mle(cfg, resume: bool) -> None:
    from ..core.startup_gc import paused_then_frozen

    with contextlib.ExitStack() as run:
        with paused_then_frozen():  # torch, transformers, the model and the data: see core/startup_gc
            run.enter_context(_output_lock(cfg.output_dir))
            from ..training.trainer import HeadTrainer

            trainer = HeadTrainer(cfg)
            trainer.check_output_dir(resume)  # again, now that the folder is locked: before the model loads
            trainer.setup()
        _report_and_train(trainer, cfg, resume)


def _report_and_train(trainer, cfg, resume: bool) -> None:
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
        nan = float("nan")
        err_console.print(
            f"done: {result.steps} steps, {result.loss_tokens:,} tokens in {result.seconds:.1f}s "
            f"({result.loss_tokens / max(result.seconds, 1e-9):.0f} tok/s); final loss {m.get('loss', nan):.4f} "
            f"(T {m.get('temperature_loss', nan):.4f}, p {m.get('top_p_loss', nan):.4f}); heads in {result.output_dir}"
        )


def _train_with_progress(trainer, resume: bool):
    from rich.progress import TextColumn

    from ..core.progress import progress_bar

    if not trainer.dist.is_main:
        return trainer.train(resume=resume)
    with progress_bar(err_console, TextColumn("{task.fields[losses]}")) as progress:
        task = progress.add_task("training heads", total=trainer.total_steps, tokens=0, losses="")
        tokens = 0

        def on_step(metrics, total):
            nonlocal tokens
            tokens += metrics["tokens"]
            losses = (
                f"loss {metrics.get('loss', 0):.3f} T {metrics.get('temperature_loss', 0):.3f} "
                f"p {metrics.get('top_p_loss', 0):.3f}"
            )
            progress.update(task, completed=metrics["step"], tokens=tokens, losses=losses)

        return trainer.train(resume=resume, on_step=on_step)


def _train_reward(cfg, resume: bool) -> None:
    from ..core.startup_gc import paused_then_frozen

    with contextlib.ExitStack() as run:
        with paused_then_frozen():  # the model, the heads and the questions: see core/startup_gc
            run.enter_context(_output_lock(cfg.output_dir))
            from ..training.reward import RewardTrainer

            trainer = RewardTrainer(cfg).setup()
        _reward_steps(trainer, cfg, resume)


def _reward_steps(trainer, cfg, resume: bool) -> None:
    from rich.progress import TextColumn

    from ..core.progress import progress_bar

    validation = trainer.validation_questions
    err_console.print(
        f"reward training: {len(trainer.train_questions)} train questions, "
        f"{cfg.steps} steps of {cfg.prompts_per_step} questions x {cfg.group_size} samples"
        + (f"; validation on {len(validation)} questions every {cfg.validate_every} steps" if validation else "")
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


def register(app: typer.Typer) -> None:
    app.command("train-heads", help=TRAIN_HEADS_HELP)(train_heads)
