"""`autodeco diagnose`: a thin wrapper over `evaluation/diagnose.py` (does the per-token variation
of T̂/P̂ matter, or only its mean?)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..core.consoles import console, err_console
from ..core.errors import UserError
from ..engine.model_names import DEFAULT_MODEL
from .common import DEFAULT_OUTPUT_ROOT, EngineOptions, folder_name, option_group
from .options import (
    BatchSizeOpt,
    ChatOpt,
    DataDirOpt,
    DataParallelOpt,
    DeviceOpt,
    DtypeOpt,
    HeadsOpt,
    ModelOpt,
    SplitOpt,
    TrustOpt,
)

BenchmarkOpt = Annotated[str, typer.Option("--benchmark", "-b", help="One task, e.g. rand-times or arith-add.")]
KOpt = Annotated[int, typer.Option("-k", help="Samples per question per seed, in every row.")]
SeedsOpt = Annotated[str, typer.Option("--seeds", help="Number of seeds (2 = seeds 0, 1) or a comma list.")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", help="Only the first N questions of the task.")]
MaxNewTokensOpt = Annotated[
    Optional[int], typer.Option("--max-new-tokens", help="Generation budget per sample (default: the task's own).")
]
OutputDirOpt = Annotated[
    Optional[Path],
    typer.Option("--output-dir", "-o", help="Output folder (default eval-results/<model>/diagnose-<task>)."),
]
ShuffleSeedOpt = Annotated[int, typer.Option("--shuffle-seed", help="Seed of the permutations (not of sampling).")]
BinsOpt = Annotated[int, typer.Option("--bins", help="Relative-position bins of the T̂/P̂ profile.")]
ReplayOpt = Annotated[
    bool,
    typer.Option("--replay/--no-replay", help="Also replay the trace as a schedule (checks the schedule path)."),
]
BootstrapOpt = Annotated[int, typer.Option("--bootstrap", help="Bootstrap resamples for the 95% CIs.")]

DIAGNOSE_HELP = (
    "Does the per-token variation of the heads' T̂/P̂ matter, or only their mean? (the SimpleDeco critique, "
    "'Token-Level Control or Just a Better Mean?')\n"
    "\n"
    "autodeco runs once on the task and records each sequence's per-token (T̂, P̂). Then the same samples are "
    "redrawn with the same random numbers (same request seeds: common random numbers), the per-token (T, p) "
    "read not from the heads but from a schedule:\n"
    "\n"
    "  shuffle-within: each sequence's own (T̂, P̂) pairs, permuted within the sequence. Same values, same mean; "
    "if autodeco beats it, which token gets which value matters.\n"
    "\n"
    "  shuffle-across: at each position t, the pairs the task's sequences predicted at t, permuted among the "
    "sequences that reach t. Same position profile; if autodeco beats it, the values belong to their own "
    "sequence (its question and sampled path), not just to a position.\n"
    "\n"
    "  mean-shift: one static (T, p) at the run's mean T̂/P̂. If autodeco beats it, more than the heads' mean "
    "matters on this task (the per-task question).\n"
    "\n"
    "  replay (a check, --no-replay skips it): the trace itself as the schedule; it redraws autodeco's samples, "
    "so its Δ is ≈ 0.\n"
    "\n"
    "Tokens a rerun generates past its schedule's end are sampled at the sequence's own mean T̂/P̂ (the report "
    "counts them). Each row's score is paired with autodeco per question: Δ = autodeco − row, its SE and a "
    "bootstrap 95% CI. The per-token claim holds only where autodeco beats both its shuffled selves with a CI that "
    "excludes 0; the verdict says so in those words. Also reported: the variance of T̂ and P̂ within sequences vs "
    "between sequences, and their mean by relative position on the output and for digit vs other tokens.\n"
    "\n"
    "Writes OUT/diagnose.json, OUT/diagnose.md and OUT/diagnose.png, and one eval folder per row: an interrupted "
    "run resumes where it stopped (re-run the same command). Runs on our engine (--engine hf).\n"
    "\n"
    "Example:\n"
    "\n"
    "  autodeco diagnose -b rand-times --limit 40 -k 4"
)


def diagnose_command(
    benchmark: BenchmarkOpt,
    model: ModelOpt = DEFAULT_MODEL,
    heads: HeadsOpt = None,
    k: KOpt = 4,
    seeds: SeedsOpt = "1",
    limit: LimitOpt = None,
    max_new_tokens: MaxNewTokensOpt = None,
    batch_size: BatchSizeOpt = 8,
    split: SplitOpt = "test",
    chat: ChatOpt = True,
    data_dir: DataDirOpt = None,
    output_dir: OutputDirOpt = None,
    shuffle_seed: ShuffleSeedOpt = 0,
    bins: BinsOpt = 10,
    replay: ReplayOpt = True,
    bootstrap: BootstrapOpt = 10_000,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    trust_remote_code: TrustOpt = False,
    data_parallel_size: DataParallelOpt = 1,
):
    """Shuffle tests of the heads' per-token T̂/P̂ (see DIAGNOSE_HELP, the command's --help)."""
    params = dict(locals())
    engine_options = option_group(
        EngineOptions,
        params,
        adapter=None,
        engine_name="hf",  # the schedule strategy runs on our sampler only
        tensor_parallel_size=1,
        system_prompt=None,
        chat_template_kwargs=None,
    )
    from ..core.decoding import make_strategy
    from ..core.io_checks import check_max_new_tokens, check_writable_output
    from ..core.progress import progress_bar
    from ..evaluation.diagnose import SUMMARY_FILE, DiagnoseOptions, run_diagnose
    from ..evaluation.diagnose_report import check_lines, mean_shift_line, rows_table
    from ..evaluation.runner import parse_seeds, resolve_tasks
    from ..evaluation.settings import EvalSettings

    settings = option_group(EvalSettings, params, seeds=parse_seeds(seeds))
    settings.check()  # before the model loads
    if bins < 1 or bootstrap < 1:
        raise UserError("--bins and --bootstrap must be at least 1")
    tasks = resolve_tasks(benchmark)
    if len(tasks) != 1:
        raise UserError(f"-b {benchmark} names {len(tasks)} tasks; diagnose runs on one", "pass one task name")
    out = output_dir or DEFAULT_OUTPUT_ROOT / folder_name(model) / f"diagnose-{folder_name(tasks[0].name)}"
    check_writable_output(out, "--output-dir", folder=True)
    options = DiagnoseOptions(shuffle_seed=shuffle_seed, bins=bins, replay=replay, n_boot=bootstrap)
    autodeco = make_strategy("autodeco")
    started = time.monotonic()
    engine = engine_options.open([autodeco], seed=settings.seeds[0])
    run_info = engine_options.run_record(engine, engine_options.heads_label(autodeco))
    try:
        check_max_new_tokens(max_new_tokens, engine.lm.config)
        with progress_bar(err_console) as progress:
            report = run_diagnose(
                engine, tasks[0], settings, options, out_dir=out, progress=progress, run_info=run_info
            )
    finally:
        engine.close()
    for line in rows_table(report):
        console.print(line, highlight=False, soft_wrap=True)
    console.print(f"\n[bold]verdict:[/] {report['verdict']['text']}.", highlight=False, soft_wrap=True)
    for line in [mean_shift_line(report), *check_lines(report)]:
        console.print(line, highlight=False, soft_wrap=True)
    variance = report["variance"]
    shares = ", ".join(
        f"{label} {variance[name]['within_share']:.0%} of {variance[name]['pooled_token_variance']:.2g}"
        for name, label in (("temperature", "T̂"), ("top_p", "P̂"))
        if variance[name]["within_share"] is not None
    )
    console.print(f"share of variance within sequences: {shares or '– (no variation)'}", highlight=False)
    err_console.print(f"wrote {out / SUMMARY_FILE} ({time.monotonic() - started:.0f} s)")


def register(app: typer.Typer) -> None:
    app.command("diagnose", help=DIAGNOSE_HELP)(diagnose_command)
