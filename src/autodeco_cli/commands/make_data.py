"""`autodeco make-data`: on-policy training data, the base model's own accepted answers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ..core.consoles import err_console
from ..core.errors import UserError
from ..engine.model_names import DEFAULT_MODEL
from .common import DecodingOptions, EngineOptions, option_group
from .options import (
    ChatOpt,
    ChatTemplateKwargsOpt,
    DataParallelOpt,
    DecodingOpt,
    DeviceOpt,
    DtypeOpt,
    EdtBaseOpt,
    EdtThetaOpt,
    EngineOpt,
    MinPOpt,
    ModelOpt,
    NSigmaOpt,
    SystemPromptOpt,
    TemperatureOpt,
    TensorParallelOpt,
    TopKOpt,
    TopPOpt,
)

if TYPE_CHECKING:
    from ..engine.interface import Engine

TasksOpt = Annotated[
    str, typer.Option("--tasks", help="Comma list of tasks with a train split (gsm8k, math500, arith-add, ...).")
]
OutputOpt = Annotated[Path, typer.Option("--output", "-o", help="JSONL of {prompt, completion} lines for train-heads.")]
KOpt = Annotated[int, typer.Option("-k", help="Samples per problem.")]
SplitOpt = Annotated[str, typer.Option("--split", help="Which split to sample problems from.")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", help="Problems per task.")]
MaxNewTokensOpt = Annotated[Optional[int], typer.Option("--max-new-tokens", help="Default: the task's own budget.")]
BalanceOpt = Annotated[
    bool,
    typer.Option(
        "--balance/--no-balance",
        help="For tasks with a target distribution (rand-*): keep one accepted sample per distinct pick per "
        "question, then cap each list position at the median position count across the task. Cannot add picks "
        "the model never makes.",
    ),
]

# The --help text. Concatenated rather than a docstring wrapped at 120 columns: typer's rich mode
# keeps single line breaks, so wrapping would show in the help.
MAKE_DATA_HELP = (
    "Build on-policy training data: sample the base model k times per training problem and keep\n"
    "the trajectories the task's scorer accepts (the paper's recipe). Re-run the same command to\n"
    "resume after an interruption.\n"
    "\n"
    "Tasks that declare a target distribution (the rand-* family: a uniform random pick from a\n"
    "stated list) are re-balanced, since the model's own picks are skewed to its favourite value:\n"
    "per question one accepted sample per distinct pick, then across the task each list position\n"
    "capped at the median position count. Values the model never picks stay absent: sample at a\n"
    "diversity-giving setting (e.g. -t 1.0 -k 8) so that there are picks to balance.\n"
    "\n"
    "Example:\n"
    "\n"
    "  autodeco make-data --tasks arith-add,arith-mul --limit 400 -k 4 -t 0.8 -o data/arith.jsonl"
)


def make_data(
    tasks: TasksOpt = "gsm8k,math500",
    output: OutputOpt = Path("data/on_policy.jsonl"),
    k: KOpt = 4,
    split: SplitOpt = "train",
    limit: LimitOpt = None,
    model: ModelOpt = DEFAULT_MODEL,
    decoding: DecodingOpt = "static",
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    top_k: TopKOpt = None,
    min_p: MinPOpt = None,
    n_sigma: NSigmaOpt = None,
    edt_theta: EdtThetaOpt = None,
    edt_base: EdtBaseOpt = None,
    max_new_tokens: MaxNewTokensOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 16,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    chat: ChatOpt = True,
    balance: BalanceOpt = True,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    engine_name: EngineOpt = "hf",
    tensor_parallel_size: TensorParallelOpt = 1,
    data_parallel_size: DataParallelOpt = 1,
    system_prompt: SystemPromptOpt = None,
    chat_template_kwargs: ChatTemplateKwargsOpt = None,
):
    """Build on-policy training data (see MAKE_DATA_HELP, the command's --help)."""
    params = dict(locals())
    # make-data samples the base model as it is: no heads, adapter or remote code to choose
    engine_options = option_group(EngineOptions, params, heads=None, trust_remote_code=False, adapter=None)
    decoding_options = option_group(
        DecodingOptions, params, temperature_scale=1.0, top_p_scale=1.0, mean_from=None, active_heads="both"
    )
    from ..core.io_checks import check_max_new_tokens, check_writable_output
    from ..tasks.registry import expand, get_task

    # make_on_policy_data does not check these: k=0 would mark every problem done with no samples
    if k < 1 or batch_size < 1:
        raise UserError("-k and --batch-size must be at least 1")
    strategy = decoding_options.strategy()
    if strategy.uses_heads:
        raise UserError("make-data samples the base model", "use --decoding static, greedy, min-p, top-n-sigma or edt")
    for name in expand(tasks):  # a task name's typo, a missing split or data file: before the model loads
        get_task(name).load_docs(split=split, limit=limit)
    check_writable_output(output, "--output")  # before the model loads
    engine = engine_options.open([strategy], seed=seed)
    check_max_new_tokens(max_new_tokens, engine.lm.config)
    settings = {
        "k": k,
        "split": split,
        "limit": limit,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "seed": seed,
        "chat": chat,
        "balance": balance,
    }
    report = _sample(engine, tasks, output, strategy, settings)
    for name, stats in report.per_task.items():
        balanced = (
            f", {stats['dropped_by_balance']} then dropped by position balancing"
            if "dropped_by_balance" in stats
            else ""
        )
        err_console.print(
            f"{name}: {stats['kept']} kept of {stats['samples']} samples this run "
            f"({stats['problems']} problems){balanced}"
        )
    err_console.print(
        f"wrote {report.kept} new trajectories to {output} ({report.skipped_done} problems were already done)"
    )


def _sample(engine: Engine, tasks: str, output: Path, strategy, settings: dict):
    """make_on_policy_data under a progress bar of problems done and tokens per second."""
    from ..core.progress import progress_bar
    from ..training.on_policy_data import make_on_policy_data

    with progress_bar(err_console) as progress:
        bar = progress.add_task("sampling problems", total=None, tokens=0)
        tokens = 0

        def on_chunk(problems, samples, new_tokens):
            nonlocal tokens
            tokens += new_tokens
            progress.update(bar, advance=problems, tokens=tokens)

        return make_on_policy_data(engine, tasks, output, strategy, **settings, on_chunk=on_chunk)


def register(app: typer.Typer) -> None:
    app.command("make-data", help=MAKE_DATA_HELP)(make_data)
