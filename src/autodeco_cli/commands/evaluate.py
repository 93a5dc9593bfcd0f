"""`autodeco eval` and `autodeco compare`: thin wrappers over `evaluation/runner.py`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..core.consoles import console, err_console
from ..core.errors import UserError
from ..engine.model_names import DEFAULT_MODEL
from .common import DEFAULT_OUTPUT_ROOT, DecodingOptions, EngineOptions, folder_name, option_group
from .options import (
    AdapterOpt,
    BatchSizeOpt,
    ChatOpt,
    ChatTemplateKwargsOpt,
    DataDirOpt,
    DataParallelOpt,
    DecodingOpt,
    DeviceOpt,
    DtypeOpt,
    EdtBaseOpt,
    EdtThetaOpt,
    EngineOpt,
    HeadsOpt,
    MeanFromOpt,
    MinPOpt,
    ModelOpt,
    NSigmaOpt,
    SplitOpt,
    SystemPromptOpt,
    TemperatureOpt,
    TempScaleOpt,
    TensorParallelOpt,
    TopKOpt,
    TopPOpt,
    TopPScaleOpt,
    TrustOpt,
)

BenchmarkOpt = Annotated[
    str,
    typer.Option(
        "--benchmark", "-b", help="Task(s): a name, a comma list, or a group (e.g. aime = aime24+aime25, small, paper)."
    ),
]
KOpt = Annotated[int, typer.Option("-k", help="Samples per question per seed (greedy always uses 1).")]
SeedsOpt = Annotated[
    str,
    typer.Option(
        "--seeds", help="Number of seeds (8 = seeds 0..7) or a comma list (0,3,5). Greedy uses the first only."
    ),
]
MaxNewTokensOpt = Annotated[
    Optional[int], typer.Option("--max-new-tokens", help="Generation budget per sample (default: each task's own).")
]
LimitOpt = Annotated[
    Optional[int],
    typer.Option(
        "--limit", help="Only the first N questions of each task (a seeded subset for tasks that define one)."
    ),
]
OutputDirOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--output-dir",
        "-o",
        help="Run folder (default eval-results/<model>); one subfolder per decoding strategy.",
    ),
]

# The --help texts. Concatenated rather than docstrings wrapped at 120 columns: typer's rich mode
# keeps single line breaks, so wrapping would show in the help.
EVAL_HELP = (
    "Score a decoding strategy on benchmarks: pass@1 ± SE, seed spread, pass@k, maj@k.\n"
    "\n"
    "Every sample is appended to OUT/<strategy>/samples_<task>.jsonl as soon as it is scored, so an interrupted "
    "run resumes where it stopped: re-run the same command. The summary is OUT/<strategy>/results.json "
    "(lm-evaluation-harness layout plus per-question scores for `autodeco compare`). Autodeco runs also record the "
    "mean T̂/P̂ that `--decoding mean-shift --mean-from` reads. Greedy is collapsed to one sample per question. "
    "LiveCodeBench is the release_v5 window (2024-08 to 2025-01) scored on public tests only.\n"
    "\n"
    "Examples:\n"
    "\n"
    "  autodeco eval -b arith-add --limit 50 -k 4 --seeds 2 --decoding autodeco --heads heads/\n"
    "\n"
    "  autodeco eval -b gsm8k,math500 --decoding static -t 0.6 -p 0.95\n"
    "\n"
    "  autodeco eval -b aime --decoding greedy          # one sample per question\n"
    "\n"
    "  autodeco eval -b arith-add --decoding min-p -t 1.0 --min-p 0.1    # also top-n-sigma (--n-sigma), edt "
    "(--edt-theta)\n"
    "\n"
    "  autodeco eval -b aime --decoding mean-shift --mean-from eval-results/M/autodeco/results.json\n"
    "\n"
    "  autodeco compare eval-results/M/autodeco eval-results/M/static-T1-p1"
)


def eval_command(
    benchmark: BenchmarkOpt,
    model: ModelOpt = DEFAULT_MODEL,
    heads: HeadsOpt = None,
    decoding: DecodingOpt = "autodeco",
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    top_k: TopKOpt = None,
    temperature_scale: TempScaleOpt = 1.0,
    top_p_scale: TopPScaleOpt = 1.0,
    mean_from: MeanFromOpt = None,
    min_p: MinPOpt = None,
    n_sigma: NSigmaOpt = None,
    edt_theta: EdtThetaOpt = None,
    edt_base: EdtBaseOpt = None,
    k: KOpt = 16,
    seeds: SeedsOpt = "8",
    max_new_tokens: MaxNewTokensOpt = None,
    batch_size: BatchSizeOpt = 8,
    limit: LimitOpt = None,
    output_dir: OutputDirOpt = None,
    chat: ChatOpt = True,
    split: SplitOpt = "test",
    data_dir: DataDirOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    trust_remote_code: TrustOpt = False,
    adapter: AdapterOpt = None,
    engine_name: EngineOpt = "hf",
    tensor_parallel_size: TensorParallelOpt = 1,
    data_parallel_size: DataParallelOpt = 1,
    system_prompt: SystemPromptOpt = None,
    chat_template_kwargs: ChatTemplateKwargsOpt = None,
):
    """Score a decoding strategy on benchmarks (see EVAL_HELP, the command's --help)."""
    params = dict(locals())
    engine_options = option_group(EngineOptions, params)
    decoding_options = option_group(DecodingOptions, params, active_heads="both")
    from ..core.decoding import strategy_slug
    from ..core.folder_lock import folder_lock
    from ..core.io_checks import check_max_new_tokens, check_writable_output
    from ..core.progress import progress_bar
    from ..evaluation.report import summary_table
    from ..evaluation.runner import parse_seeds, prepare_task, resolve_tasks, run_eval
    from ..evaluation.settings import EvalSettings

    settings = option_group(EvalSettings, params, seeds=parse_seeds(seeds))
    settings.check()  # before the model loads
    tasks = resolve_tasks(benchmark)  # a typo should fail before the model loads
    for task in tasks:  # so should a missing split or data file (run_eval loads them again: milliseconds)
        prepare_task(task, settings.limit, settings.max_new_tokens, settings.data_dir, settings.split)
    strategy = _mean_shift_for_task(decoding_options, tasks) or decoding_options.strategy()
    out = output_dir or DEFAULT_OUTPUT_ROOT / folder_name(model)
    check_writable_output(out, "--output-dir", folder=True)  # before the model loads
    engine_options.check()  # and before the lock makes the strategy's folder
    if strategy.is_greedy and (k, len(settings.seeds)) != (1, 1):
        err_console.print(
            f"note: greedy is deterministic: 1 sample per question and seed {settings.seeds[0]} "
            f"(not -k {k} x {len(settings.seeds)} seeds)"
        )
    # one run per strategy folder: a second would redo every sample this one is doing
    with folder_lock(out / strategy_slug(strategy)):
        engine = engine_options.open([strategy], seed=settings.seeds[0])
        run_info = engine_options.run_record(engine, engine_options.heads_label(strategy))
        try:
            check_max_new_tokens(max_new_tokens, engine.lm.config)
            with progress_bar(err_console) as progress:
                results = run_eval(
                    engine, tasks, [strategy], settings, out_dir=out, progress=progress, run_info=run_info
                )
        finally:
            engine.close()
    console.print(summary_table(results))
    _print_labels(results)
    err_console.print(f"wrote {out / strategy_slug(strategy) / 'results.json'}")


def _mean_shift_for_task(options: DecodingOptions, tasks):
    """The mean-shift baseline is per benchmark: take the task's own mean T̂/P̂ from --mean-from.
    A file without that task is an error: another benchmark's means are not this one's baseline."""
    if options.decoding != "mean-shift" or options.mean_from is None:
        return None
    if options.temperature is not None or options.top_p is not None:
        return None  # DecodingOptions.strategy refuses the mix
    if len(tasks) != 1:
        names = ", ".join(t.name for t in tasks)
        raise UserError(
            f"--mean-from gives one benchmark's mean T̂/P̂, but -b names {len(tasks)} tasks ({names})",
            "run mean-shift on one --benchmark at a time",
        )
    from ..core.decoding import mean_shift_from_results

    return mean_shift_from_results(options.mean_from, tasks[0].name)


def _print_labels(results: dict) -> None:
    metrics = [(task, m) for result in results.values() for task, m in result["results"].items()]
    for task, label in {task: m["label"] for task, m in metrics if "label" in m}.items():
        console.print(f"[bold]{task}[/]: {label}")
    for task, m in {task: m for task, m in metrics if "judge_isolation" in m}.items():
        mix = m.get("judge_isolation_samples")
        mixed = f" (samples: {', '.join(f'{n} in {label}' for label, n in mix.items())})" if mix else ""
        console.print(f"[bold]{task}[/]: judged in {m['judge_isolation']}{mixed}")


COMPARE_HELP = (
    "Paired per-question comparison of two eval runs: Δ = A − B with SE and bootstrap 95% CI.\n"
    "\n"
    "Pairing by question removes the between-question variance, so it detects differences that two separate error "
    "bars hide. Only questions both runs scored are compared.\n"
    "\n"
    "Example:\n"
    "\n"
    "  autodeco compare eval-results/M/autodeco/results.json eval-results/M/static-T1-p1/results.json\n"
    "\n"
    "Suite table (one setting for all traffic): each --row NAME=RESULTS[,RESULTS...] is one decoding choice for "
    "every task; the suite score is the mean over tasks of each task's question score, ± SE, and Δ vs the "
    "reference row (--reference, default the first) is paired per question within each task, with a stratified "
    "bootstrap 95% CI:\n"
    "\n"
    "  autodeco compare --row autodeco=runs/suite/autodeco --row static=runs/suite/static-T0.5-p1"
)


def compare_command(
    result_a: Annotated[Optional[Path], typer.Argument(help="results.json (or its strategy folder) of run A.")] = None,
    result_b: Annotated[Optional[Path], typer.Argument(help="results.json (or its strategy folder) of run B.")] = None,
    benchmark: Annotated[
        Optional[str],
        typer.Option("--benchmark", "-b", help="Only these tasks (comma list); default: every task both runs have."),
    ] = None,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Bootstrap resamples for the CI.")] = 10_000,
    seed: Annotated[int, typer.Option("--seed", help="Bootstrap seed (the CI is reproducible).")] = 0,
    rows: Annotated[
        Optional[list[str]],
        typer.Option("--row", help="Suite table: NAME=RESULTS[,RESULTS...], one per row (instead of A and B)."),
    ] = None,
    reference: Annotated[
        Optional[str], typer.Option("--reference", help="Suite table: the row every other is paired with.")
    ] = None,
):
    """Paired per-question comparison of two eval runs (see COMPARE_HELP, the command's --help)."""
    from ..evaluation.report import compare_results, comparison_table, load_results

    if bootstrap < 1:
        raise UserError("--bootstrap must be at least 1")
    tasks = [t.strip() for t in benchmark.split(",") if t.strip()] if benchmark else None
    if rows or reference:
        return _compare_suite(rows or [], reference, tasks, result_a, bootstrap, seed)
    if result_a is None or result_b is None:
        raise UserError("compare needs two results files (A and B), or --row for a suite table", "see --help")
    path_a, a = load_results(result_a)
    path_b, b = load_results(result_b)
    comparisons = compare_results(a, b, tasks, n_boot=bootstrap, seed=seed, names=(str(path_a), str(path_b)))
    console.print(comparison_table(comparisons, _run_name(path_a, a), _run_name(path_b, b)))


def _compare_suite(rows: list[str], reference: str | None, tasks, stray: Path | None, n_boot: int, seed: int):
    from ..evaluation.suite_report import build_suite_table, load_row, parse_row, suite_rich_table

    if stray is not None:
        raise UserError(f"{stray}: give results files inside --row NAME=RESULTS, not beside it", "see --help")
    loaded = [load_row(*parse_row(spec)) for spec in rows]
    console.print(suite_rich_table(build_suite_table(loaded, reference, tasks, n_boot=n_boot, seed=seed)))


def _run_name(path: Path, results: dict) -> str:
    label = results.get("decoding", {}).get("label", "?")
    return f"{label} ({results.get('model', '?')}) — {path}"


def register(app: typer.Typer) -> None:
    app.command("eval", help=EVAL_HELP)(eval_command)
    app.command("compare", help=COMPARE_HELP)(compare_command)
