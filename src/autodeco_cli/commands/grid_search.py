"""`autodeco grid-search`: a thin wrapper over `grid/search.py` (the oracle static baseline)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ..core.consoles import console, err_console
from ..core.errors import UserError
from ..engine.model_names import DEFAULT_MODEL
from .common import DEFAULT_OUTPUT_ROOT, EngineOptions, folder_name, option_group
from .options import (
    AdapterOpt,
    BatchSizeOpt,
    ChatOpt,
    ChatTemplateKwargsOpt,
    DataDirOpt,
    DataParallelOpt,
    DeviceOpt,
    DtypeOpt,
    EdtBaseOpt,
    EngineOpt,
    HeadsOpt,
    ModelOpt,
    SplitOpt,
    SystemPromptOpt,
    TensorParallelOpt,
    TrustOpt,
)

# Above this many cells a sweep needs --yes: 200 × 100 values are easy to type and take days.
LARGE_GRID_CELLS = 500
# For the time estimate only: the default 135M model batched on 2 CPU cores (reports/engine-speed.md).
ROUGH_TOKENS_PER_S = 300

if TYPE_CHECKING:
    from ..engine.interface import Engine
    from ..evaluation.runner import TaskRun
    from ..evaluation.settings import EvalSettings
    from ..grid.search import GridSpec

BenchmarkOpt = Annotated[
    str, typer.Option("--benchmark", "-b", help="One task (a registry name such as arith-add or gsm8k).")
]
ModeOpt = Annotated[
    Optional[str],
    typer.Option(
        "--mode",
        help="full (every T × p cell), expert (tune T at p=1, then p at the best T) or cells (--cells). "
        "Default: cells if --cells is given, else full.",
    ),
]
FamilyOpt = Annotated[
    str,
    typer.Option(
        "--family",
        help="What the grid sweeps: static (T × top-p, the default), or a training-free adaptive decoder: "
        "min-p (T × --min-ps), top-n-sigma (T × --n-sigmas) or edt (max temperature T₀ × --edt-thetas, "
        "base N from --edt-base). Adaptive families run in full or cells mode.",
    ),
]
TemperaturesOpt = Annotated[
    Optional[str],
    typer.Option(
        "--temperatures",
        help="START:STOP:STEP (STOP included) or a comma list; several ranges may be comma-joined. "
        "Default: static 0.1:1.5:0.1; min-p and top-n-sigma 0.7,1.0,1.5; edt (T₀) 0.5,0.7,1.0.",
    ),
]
TopPsOpt = Annotated[
    Optional[str],
    typer.Option(
        "--top-ps",
        help="static: the top-p axis, same syntax as --temperatures, values in (0, 1] (default 0.1:1.0:0.1).",
    ),
]
MinPsOpt = Annotated[
    Optional[str], typer.Option("--min-ps", help="min-p: the min_p axis, values in (0, 1] (default 0.05,0.1,0.2,0.3).")
]
NSigmasOpt = Annotated[
    Optional[str], typer.Option("--n-sigmas", help="top-n-sigma: the n axis, values in (0, 10] (default 0.5,1.0,1.5).")
]
EdtThetasOpt = Annotated[
    Optional[str], typer.Option("--edt-thetas", help="edt: the θ axis, values in (0, 10] (default 0.1,0.5,1.0).")
]
CellsOpt = Annotated[
    Optional[str],
    typer.Option(
        "--cells",
        help="Explicit T:V pairs for --mode cells, V the family's second value: 0.6:0.95,1.0:1.0 (static T:P), "
        "or with --family min-p 1.0:0.1,0.7:0.05 (T:MIN_P).",
    ),
]
KOpt = Annotated[
    int,
    typer.Option(
        "-k", help="Samples per question per seed, for every cell (use your eval runs' k to compare with them)."
    ),
]
SeedsOpt = Annotated[str, typer.Option("--seeds", help="Number of seeds (2 = seeds 0,1) or a comma list (0,3,5).")]
LimitOpt = Annotated[
    Optional[int],
    typer.Option("--limit", help="Only the first N questions (a seeded subset for tasks that define one)."),
]
MaxNewTokensOpt = Annotated[
    Optional[int], typer.Option("--max-new-tokens", help="Generation budget per sample (default: the task's own).")
]
OutputDirOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--output-dir",
        "-o",
        help="Run folder (default eval-results/<model>/grid-<benchmark>): one subfolder per cell, "
        "as `autodeco eval` writes, plus grid.json and heatmap.png.",
    ),
]
EarlyStopOpt = Annotated[
    bool,
    typer.Option(
        "--early-stop/--no-early-stop",
        help="Score cells on 25%, 50%, then 100% of the questions and drop cells a paired one-sided test "
        "(Wilcoxon, p<0.01) finds clearly worse than the current best. Off by default.",
    ),
]
ThenEvalOpt = Annotated[
    bool,
    typer.Option(
        "--then-eval",
        help="Then build the benchmark's comparison table: greedy, default (T=1,p=1), oracle, autodeco (--heads), "
        "mean-shift and the T̂-only/P̂-only ablations.",
    ),
]

YesOpt = Annotated[
    bool,
    typer.Option(
        "--yes",
        help=f"Run a grid of more than {LARGE_GRID_CELLS} cells. Without it such a grid stops before the model "
        "loads, with its cell count and a rough time estimate.",
    ),
]

# The command's --help. Concatenated rather than a docstring wrapped at 120 columns: typer's rich
# mode keeps single line breaks, so wrapping would show in the help.
GRID_SEARCH_HELP = (
    "Find the best static (T, p) on a benchmark: the paper's oracle static baseline; or, with --family, the best "
    "setting of a training-free adaptive decoder.\n"
    "\n"
    "Families and their default grids: static T 0.1:1.5:0.1 × top-p 0.1:1.0:0.1; min-p T {0.7, 1.0, 1.5} × min_p "
    "{0.05, 0.1, 0.2, 0.3}; top-n-sigma T {0.7, 1.0, 1.5} × n {0.5, 1.0, 1.5}; edt T₀ {0.5, 0.7, 1.0} × θ {0.1, "
    "0.5, 1.0} at N = 0.8. grid.json, the heatmap and the table name the family's axes; --then-eval's oracle row "
    "is the family's best cell.\n"
    "\n"
    "Every cell is `static(T, p)` (or the family's strategy) scored exactly like `autodeco eval --decoding static "
    "-t T -p P` (or `--decoding min-p -t T --min-p V`, ...) with the same -k/--seeds/--limit (same folder per "
    "cell, same samples), so cells and eval runs are directly comparable and resume into each other. The model is "
    "loaded once and all cells of a stage share batches.\n"
    "\n"
    "Writes OUT/grid.json (every cell's pass@1 ± SE, the oracle cell, the cells statistically tied with it, "
    "early-stopping decisions), OUT/heatmap.png and prints a table. Interrupted? Re-run the same command: it "
    "resumes sample by sample and reproduces the same decisions. The oracle is picked on the test questions "
    "themselves, so it is an optimistic bound for any static setting.\n"
    "\n"
    "With --then-eval it also writes OUT/comparison.json and OUT/comparison.md: each row pass@1 ± SE and its "
    "paired difference against default (T=1, p=1).\n"
    "\n"
    "Examples:\n"
    "\n"
    "  autodeco grid-search -b arith-add --limit 50 -k 4                      # 15 × 10 cells\n"
    "\n"
    "  autodeco grid-search -b arith-add --mode expert -k 4 --seeds 2         # T at p=1, then p at the best T\n"
    "\n"
    "  autodeco grid-search -b gsm8k --temperatures 0.3,0.6,1.0 --top-ps 0.9:1.0:0.05 --early-stop\n"
    "\n"
    "  autodeco grid-search -b aime --cells 0.6:0.95,1.0:1.0 --then-eval --heads heads/\n"
    "\n"
    "  autodeco grid-search -b arith-add --family min-p                      # T {0.7,1,1.5} × min_p "
    "{0.05,0.1,0.2,0.3}\n"
    "\n"
    "  autodeco grid-search -b arith-add --family edt --edt-thetas 0.2,1,2 --edt-base 0.8"
)


def grid_search_command(
    benchmark: BenchmarkOpt,
    mode: ModeOpt = None,
    family: FamilyOpt = "static",
    temperatures: TemperaturesOpt = None,
    top_ps: TopPsOpt = None,
    min_ps: MinPsOpt = None,
    n_sigmas: NSigmasOpt = None,
    edt_thetas: EdtThetasOpt = None,
    edt_base: EdtBaseOpt = None,
    cells: CellsOpt = None,
    model: ModelOpt = DEFAULT_MODEL,
    heads: HeadsOpt = None,
    k: KOpt = 4,
    seeds: SeedsOpt = "1",
    limit: LimitOpt = None,
    max_new_tokens: MaxNewTokensOpt = None,
    batch_size: BatchSizeOpt = 8,
    output_dir: OutputDirOpt = None,
    early_stop: EarlyStopOpt = False,
    then_eval: ThenEvalOpt = False,
    yes: YesOpt = False,
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
    """The oracle static baseline (see GRID_SEARCH_HELP, the command's --help)."""
    params = dict(locals())
    engine_options = option_group(EngineOptions, params)
    # Every check below runs before torch is imported (tests/test_lazy_imports.py): a typo costs no model load.
    from ..core.decoding import make_strategy
    from ..core.folder_lock import folder_lock
    from ..core.io_checks import check_writable_output
    from ..evaluation.runner import parse_seeds
    from ..evaluation.settings import EvalSettings
    from ..grid.search import GridSpec, check_mode

    mode = mode or ("cells" if cells is not None else "full")
    check_mode(mode)
    if cells is not None and mode != "cells":
        raise UserError(f"--cells is for --mode cells, not --mode {mode}", "drop --cells, or use --mode cells")
    axis_texts = {"--top-ps": top_ps, "--min-ps": min_ps, "--n-sigmas": n_sigmas, "--edt-thetas": edt_thetas}
    grid_family, temperature_list, value_list, cell_list = _grid_axes(
        family, edt_base, mode, temperatures, axis_texts, cells
    )
    settings = option_group(EvalSettings, params, seeds=parse_seeds(seeds))
    settings.check()
    axes = {"temperatures": temperature_list, "values": value_list, "cells": cell_list}
    run = _task_run(benchmark, settings)  # a task name's typo, a group, a missing split or data file
    _check_grid_size(mode, axes, settings, grid_family, yes, run)
    spec = GridSpec(mode=mode, family=grid_family, early_stop=early_stop, **axes)
    # each family its own default folder: grid.json is one sweep's record
    prefix = "grid" if grid_family.is_static else f"grid-{grid_family.name}"
    out = output_dir or DEFAULT_OUTPUT_ROOT / folder_name(model) / f"{prefix}-{folder_name(benchmark)}"
    check_writable_output(out, "--output-dir", folder=True)
    autodeco = make_strategy("autodeco")
    strategies = [autodeco] if then_eval else [make_strategy("static")]
    engine_options.check()  # before the lock makes the folder
    started = time.perf_counter()
    with folder_lock(out):  # one sweep per folder: a second would redo every cell this one is doing
        engine = engine_options.open(strategies, seed=settings.seeds[0])
        run_info = engine_options.run_record(engine, engine_options.heads_label(autodeco) if then_eval else None)
        grid, comparison = _sweep(engine, benchmark, spec, settings, out, run_info, then_eval)
    _report(grid, comparison, out, started)


def _sweep(
    engine: Engine, benchmark: str, spec: GridSpec, settings: EvalSettings, out: Path, run_info: dict, then_eval: bool
) -> tuple[dict, dict | None]:
    """The grid (and with --then-eval the comparison table) under one progress bar; closes the engine."""
    from ..core.progress import progress_bar
    from ..grid.comparison import run_comparison
    from ..grid.search import run_grid

    common = {"out_dir": out, "run_info": run_info}
    try:
        with progress_bar(err_console) as progress:
            grid = run_grid(engine, benchmark, spec, settings, **common, progress=progress, log=progress.console.print)
            comparison = None
            if then_eval:
                sampling = {"batch_size": settings.batch_size, "data_dir": settings.data_dir}
                comparison = run_comparison(engine, benchmark, grid, **sampling, **common, progress=progress)
    finally:
        engine.close()
    return grid, comparison


def _report(grid: dict, comparison: dict | None, out: Path, started: float) -> None:
    from ..grid.comparison import COMPARISON_FILE, COMPARISON_MD, comparison_rich_table
    from ..grid.report import grid_summary_lines, grid_table
    from ..grid.search import GRID_FILE, HEATMAP_FILE

    console.print(grid_table(grid))
    for line in grid_summary_lines(grid):
        console.print(line, highlight=False)
    if comparison is not None:
        console.print(comparison_rich_table(comparison))
    written = [out / GRID_FILE, out / HEATMAP_FILE] + (
        [out / COMPARISON_FILE, out / COMPARISON_MD] if comparison else []
    )
    err_console.print(f"wrote {', '.join(str(p) for p in written)} ({time.perf_counter() - started:.0f} s)")


def _grid_axes(family: str, edt_base, mode: str, temperatures: str | None, axis_texts: dict, cells: str | None):
    """The family and its checked axes (defaults filled in) and cells, before the model loads."""
    from ..grid.cells import parse_cells, parse_values
    from ..grid.families import axis_text, get_family

    grid_family = get_family(family, edt_base)
    if mode == "expert" and not grid_family.is_static:
        # grid.run_grid refuses this too, but only after the model has loaded
        raise UserError(
            f"--mode expert is the static (T, p) recipe, not for --family {family}",
            "use --mode full (the default) or --mode cells",
        )
    # None is "not given" (the default); an empty text is a mistake, refused by the parsers
    values = axis_text(grid_family, axis_texts)
    values = grid_family.default_values if values is None else values
    cell_list = parse_cells(cells, grid_family) if mode == "cells" and cells is not None else None
    temperatures = grid_family.default_temperatures if temperatures is None else temperatures
    temperature_list = parse_values(temperatures, "--temperatures")
    return grid_family, temperature_list, parse_values(values, grid_family.option), cell_list


def _task_run(benchmark: str, settings: EvalSettings) -> TaskRun:
    """The benchmark's questions, loaded as the sweep will load them (one task, its split, its data
    file, the scorer's dependencies), so that what would fail there fails before the model loads."""
    from ..evaluation.runner import prepare_task
    from ..grid.search import one_task

    return prepare_task(one_task(benchmark), settings.limit, settings.max_new_tokens, settings.data_dir, settings.split)


def _check_grid_size(mode: str, axes: dict, settings: EvalSettings, family, yes: bool, run: TaskRun) -> None:
    """A grid above LARGE_GRID_CELLS cells runs only with --yes, checked before the model loads;
    its size and a rough time go into the error, or with --yes into a note."""
    from ..grid.cells import cell_count

    cells = cell_count(mode, axes["temperatures"], axes["values"], axes["cells"])
    if cells <= LARGE_GRID_CELLS:
        return
    questions = len(run.docs)
    per_question = settings.k * len(settings.seeds)
    samples = cells * questions * per_question
    budget = run.max_new_tokens
    hours = samples * budget / ROUGH_TOKENS_PER_S / 3600
    shape = (
        f"{len(axes['temperatures'])} temperatures × {len(axes['values'])} {family.axis_label} values"
        if mode == "full"
        else f"--mode {mode}"
    )
    size = (
        f"grid of {cells:,} cells ({shape}) × {questions} questions × {per_question} samples per question = "
        f"{samples:,} samples of up to {budget} tokens: roughly {hours:,.1f} h at {ROUGH_TOKENS_PER_S} tokens/s "
        "(a rough estimate: the default small model on CPU; other models and devices differ)"
    )
    if not yes:
        raise UserError(
            size,
            f"pass --yes to run it, or shrink the grid to {LARGE_GRID_CELLS} cells or fewer "
            "(fewer --temperatures or axis values, --mode expert, or --mode cells)",
        )
    err_console.print(f"note: {size}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("grid-search", help=GRID_SEARCH_HELP)(grid_search_command)
