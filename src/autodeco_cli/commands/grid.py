"""`autodeco grid-search`: a thin wrapper over `grid.py` (the oracle static baseline)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import UserError
from ..models import DEFAULT_MODEL
from ..options import AdapterOpt, BatchSizeOpt, ChatOpt, DataDirOpt, DeviceOpt, DtypeOpt, EdtBaseOpt, HeadsOpt, ModelOpt, SplitOpt, TrustOpt
from .evaluate import DEFAULT_OUTPUT_ROOT, _folder_name, _heads_label, console, err_console


def grid_search_command(
    benchmark: Annotated[str, typer.Option("--benchmark", "-b", help="One task (a registry name such as arith-add or gsm8k).")],
    mode: Annotated[Optional[str], typer.Option("--mode", help="full (every T × p cell), expert (tune T at p=1, then p at the best T) or cells (--cells). Default: cells if --cells is given, else full.")] = None,
    family: Annotated[str, typer.Option("--family", help="What the grid sweeps: static (T × top-p, the default), or a training-free adaptive decoder: min-p (T × --min-ps), top-n-sigma (T × --n-sigmas) or edt (max temperature T₀ × --edt-thetas, base N from --edt-base). Adaptive families run in full or cells mode.")] = "static",
    temperatures: Annotated[Optional[str], typer.Option("--temperatures", help="START:STOP:STEP (STOP included) or a comma list; several ranges may be comma-joined. Default: static 0.1:1.5:0.1; min-p and top-n-sigma 0.7,1.0,1.5; edt (T₀) 0.5,0.7,1.0.")] = None,
    top_ps: Annotated[Optional[str], typer.Option("--top-ps", help="static: the top-p axis, same syntax as --temperatures, values in (0, 1] (default 0.1:1.0:0.1).")] = None,
    min_ps: Annotated[Optional[str], typer.Option("--min-ps", help="min-p: the min_p axis, values in (0, 1] (default 0.05,0.1,0.2,0.3).")] = None,
    n_sigmas: Annotated[Optional[str], typer.Option("--n-sigmas", help="top-n-sigma: the n axis, values in (0, 10] (default 0.5,1.0,1.5).")] = None,
    edt_thetas: Annotated[Optional[str], typer.Option("--edt-thetas", help="edt: the θ axis, values in (0, 10] (default 0.1,0.5,1.0).")] = None,
    edt_base: EdtBaseOpt = None,
    cells: Annotated[Optional[str], typer.Option("--cells", help="Explicit T:V pairs for --mode cells, V the family's second value: 0.6:0.95,1.0:1.0 (static T:P), or with --family min-p 1.0:0.1,0.7:0.05 (T:MIN_P).")] = None,
    model: ModelOpt = DEFAULT_MODEL,
    heads: HeadsOpt = None,
    k: Annotated[int, typer.Option("-k", help="Samples per question per seed, for every cell (use your eval runs' k to compare with them).")] = 4,
    seeds: Annotated[str, typer.Option("--seeds", help="Number of seeds (2 = seeds 0,1) or a comma list (0,3,5).")] = "1",
    limit: Annotated[Optional[int], typer.Option("--limit", help="Only the first N questions (a seeded subset for tasks that define one).")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option("--max-new-tokens", help="Generation budget per sample (default: the task's own).")] = None,
    batch_size: BatchSizeOpt = 8,
    output_dir: Annotated[Optional[Path], typer.Option("--output-dir", "-o", help="Run folder (default eval-results/<model>/grid-<benchmark>): one subfolder per cell, as `autodeco eval` writes, plus grid.json and heatmap.png.")] = None,
    early_stop: Annotated[bool, typer.Option("--early-stop/--no-early-stop", help="Score cells on 25%, 50%, then 100% of the questions and drop cells a paired one-sided test (Wilcoxon, p<0.01) finds clearly worse than the current best. Off by default.")] = False,
    then_eval: Annotated[bool, typer.Option("--then-eval", help="Then build the benchmark's comparison table: greedy, default (T=1,p=1), oracle, autodeco (--heads), mean-shift and the T̂-only/P̂-only ablations.")] = False,
    chat: ChatOpt = True,
    split: SplitOpt = "test",
    data_dir: DataDirOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    trust_remote_code: TrustOpt = False,
    adapter: AdapterOpt = None,
):
    """Find the best static (T, p) on a benchmark: the paper's oracle static baseline; or, with --family, the best setting of a training-free adaptive decoder.

    Families and their default grids: static T 0.1:1.5:0.1 × top-p 0.1:1.0:0.1; min-p T {0.7, 1.0, 1.5} × min_p {0.05, 0.1, 0.2, 0.3}; top-n-sigma T {0.7, 1.0, 1.5} × n {0.5, 1.0, 1.5}; edt T₀ {0.5, 0.7, 1.0} × θ {0.1, 0.5, 1.0} at N = 0.8. grid.json, the heatmap and the table name the family's axes; --then-eval's oracle row is the family's best cell.

    Every cell is `static(T, p)` (or the family's strategy) scored exactly like `autodeco eval --decoding static -t T -p P` (or `--decoding min-p -t T --min-p V`, ...) with the same -k/--seeds/--limit (same folder per cell, same samples), so cells and eval runs are directly comparable and resume into each other. The model is loaded once and all cells of a stage share batches.

    Writes OUT/grid.json (every cell's pass@1 ± SE, the oracle cell, the cells statistically tied with it, early-stopping decisions), OUT/heatmap.png and prints a table. Interrupted? Re-run the same command: it resumes sample by sample and reproduces the same decisions. The oracle is picked on the test questions themselves, so it is an optimistic bound for any static setting.

    With --then-eval it also writes OUT/comparison.json and OUT/comparison.md: each row pass@1 ± SE and its paired difference against default (T=1, p=1).

    Examples:\n
      autodeco grid-search -b arith-add --limit 50 -k 4                      # 15 × 10 cells\n
      autodeco grid-search -b arith-add --mode expert -k 4 --seeds 2         # T at p=1, then p at the best T\n
      autodeco grid-search -b gsm8k --temperatures 0.3,0.6,1.0 --top-ps 0.9:1.0:0.05 --early-stop\n
      autodeco grid-search -b aime --cells 0.6:0.95,1.0:1.0 --then-eval --heads heads/\n
      autodeco grid-search -b arith-add --family min-p                      # T {0.7,1,1.5} × min_p {0.05,0.1,0.2,0.3}\n
      autodeco grid-search -b arith-add --family edt --edt-thetas 0.2,1,2 --edt-base 0.8
    """
    from ..decoding import make_strategy
    from ..evaluation import parse_seeds
    from ..grid import COMPARISON_FILE, COMPARISON_MD, GRID_FILE, HEATMAP_FILE, MODES, comparison_rich_table, grid_summary_lines, grid_table, run_comparison, run_grid
    from ..progress import progress_bar
    from ..runtime import open_engine

    if k < 1 or batch_size < 1:
        raise UserError("-k and --batch-size must be at least 1")
    mode = mode or ("cells" if cells else "full")
    if mode not in MODES:
        raise UserError(f"--mode {mode!r} is not a mode", f"use one of: {', '.join(MODES)}")
    if cells and mode != "cells":
        raise UserError(f"--cells is for --mode cells, not --mode {mode}", "drop --cells, or use --mode cells")
    axis_texts = {"--top-ps": top_ps, "--min-ps": min_ps, "--n-sigmas": n_sigmas, "--edt-thetas": edt_thetas}
    grid_family, temperature_list, value_list, cell_list = _grid_axes(family, edt_base, mode, temperatures, axis_texts, cells)
    seed_list = parse_seeds(seeds)
    # each family its own default folder: grid.json is one sweep's record
    prefix = "grid" if grid_family.is_static else f"grid-{grid_family.name}"
    out = output_dir or DEFAULT_OUTPUT_ROOT / _folder_name(model) / f"{prefix}-{_folder_name(benchmark)}"
    autodeco = make_strategy("autodeco")
    strategies = [autodeco] if then_eval else [make_strategy("static")]
    started = time.perf_counter()
    engine = open_engine(model, heads, strategies, device=device, dtype=dtype, trust_remote_code=trust_remote_code, adapter=adapter)
    run_info = {"model": model, "heads": _heads_label(heads, model, autodeco) if then_eval else None, "adapter": adapter, "dtype": dtype or "auto", "device": str(engine.lm.device)}
    try:
        with progress_bar(err_console) as progress:
            grid = run_grid(
                engine, benchmark, mode=mode, family=grid_family, temperatures=temperature_list, values=value_list, cells=cell_list, k=k, seeds=seed_list,
                limit=limit, max_new_tokens=max_new_tokens, batch_size=batch_size, out_dir=out, chat=chat, progress=progress,
                data_dir=data_dir, run_info=run_info, split=split, early_stop=early_stop, log=progress.console.print,
            )  # fmt: skip
            comparison = None
            if then_eval:
                comparison = run_comparison(engine, benchmark, grid, out_dir=out, batch_size=batch_size, progress=progress, data_dir=data_dir, run_info=run_info)
    finally:
        engine.close()
    console.print(grid_table(grid))
    for line in grid_summary_lines(grid):
        console.print(line, highlight=False)
    if comparison is not None:
        console.print(comparison_rich_table(comparison))
    written = [out / GRID_FILE, out / HEATMAP_FILE] + ([out / COMPARISON_FILE, out / COMPARISON_MD] if comparison else [])
    err_console.print(f"wrote {', '.join(str(p) for p in written)} ({time.perf_counter() - started:.0f} s)")


def _grid_axes(family: str, edt_base, mode: str, temperatures: str | None, axis_texts: dict, cells: str | None):
    """The family and its checked axes (defaults filled in) and cells, before the model loads."""
    from ..grid import parse_cells, parse_values
    from ..grid_families import axis_text, get_family

    grid_family = get_family(family, edt_base)
    if mode == "expert" and not grid_family.is_static:
        raise UserError(f"--mode expert is the static (T, p) recipe, not for --family {family}", "use --mode full (the default) or --mode cells")
    values = axis_text(grid_family, axis_texts) or grid_family.default_values
    cell_list = parse_cells(cells, grid_family) if mode == "cells" and cells else None
    return grid_family, parse_values(temperatures or grid_family.default_temperatures, "--temperatures"), parse_values(values, grid_family.option), cell_list


def register(app: typer.Typer) -> None:
    app.command("grid-search")(grid_search_command)
