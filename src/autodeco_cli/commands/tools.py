"""`steer-report`, `merge` and `split`: inspecting and packaging heads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..core.consoles import console, err_console
from ..engine.model_names import DEFAULT_MODEL
from ..engine.option_checks import check_engine_options
from .options import BatchSizeOpt, DeviceOpt, DtypeOpt, HeadsOpt, ModelOpt


def steer_report(
    benchmark: Annotated[
        str, typer.Option("--benchmark", "-b", help="Task whose questions are used (held-out split).")
    ] = "arith-add",
    n: Annotated[int, typer.Option("--n", help="Number of questions.")] = 50,
    offset: Annotated[
        int, typer.Option("--offset", help="Skip this many questions first (keep them disjoint from steer training).")
    ] = 0,
    model: ModelOpt = DEFAULT_MODEL,
    heads: HeadsOpt = None,
    max_new_tokens: Annotated[Optional[int], typer.Option("--max-new-tokens")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    batch_size: BatchSizeOpt = 16,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the report as JSON.")] = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
):
    """Does a plain-language command move the heads? Mean T̂/P̂ with no command, a low-diversity and a
    high-diversity command; ΔT̂, ΔP̂ and consistency (share of questions moving the right way)."""
    from ..core.decoding import make_strategy
    from ..core.io_checks import check_writable_output
    from ..core.startup_gc import paused_then_frozen
    from ..tasks.registry import get_task

    get_task(benchmark).load_docs(limit=offset + n)  # as the report loads them, before torch is imported
    check_writable_output(output, "--output")
    check_engine_options(model=model, heads=heads, device=device, dtype=dtype)  # before torch is imported
    with paused_then_frozen():  # torch, transformers and the model: see core/startup_gc
        from ..engine.runtime import EngineSettings, open_engine
        from ..training.steering import steer_report as run_report

        engine = open_engine(EngineSettings(model, heads, device=device, dtype=dtype), [make_strategy("autodeco")])
    report = run_report(
        engine, benchmark, n=n, offset=offset, max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size
    )
    from rich.table import Table

    table = Table(title=f"steer-report on {benchmark} ({report.questions} questions)")
    for column in ("condition", "mean T̂", "ΔT̂", "T̂ consistency", "mean P̂", "ΔP̂", "P̂ consistency"):
        table.add_column(column, justify="right")
    table.add_row(
        "no command", f"{report.mean_temperature['none']:.4f}", "", "", f"{report.mean_top_p['none']:.4f}", "", ""
    )
    for condition in ("low", "high"):
        table.add_row(
            f"{condition} diversity",
            f"{report.mean_temperature[condition]:.4f}",
            f"{report.delta_temperature[condition]:+.4f}",
            f"{report.consistency_temperature[condition]:.0%}",
            f"{report.mean_top_p[condition]:.4f}",
            f"{report.delta_top_p[condition]:+.4f}",
            f"{report.consistency_top_p[condition]:.0%}",
        )
    console.print(table)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report.to_dict(), indent=2) + "\n")


def merge_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="New folder for the merged checkpoint.")],
    model: ModelOpt = DEFAULT_MODEL,
    heads: Annotated[str, typer.Option("--heads", help="Heads checkpoint folder.")] = ...,
    dtype: DtypeOpt = None,
):
    """Merge heads and base model into one folder (official AutoDeco layout: `llm.` base weights + heads).
    autodeco loads it with `--model DIR` (heads are taken from it automatically)."""
    from ..core.io_checks import check_writable_output

    check_writable_output(output, "--output", folder=True)  # before the model loads
    check_engine_options(model=model, heads=heads, dtype=dtype)  # and before torch is imported
    from ..engine.export import merge

    path = merge(model, heads, output, dtype=dtype)
    err_console.print(f"merged checkpoint written to {path}")


def split_command(
    merged: Annotated[Path, typer.Argument(help="A merged AutoDeco folder.")],
    base_output: Annotated[Path, typer.Option("--base-output", help="Folder for the plain base model.")],
    heads_output: Annotated[Path, typer.Option("--heads-output", help="Folder for the heads checkpoint.")],
):
    """Split a merged AutoDeco folder back into a plain HF base model and a heads checkpoint."""
    from ..engine.export import split

    base, heads = split(merged, base_output, heads_output)
    err_console.print(f"base model in {base}, heads in {heads}")


def register(app: typer.Typer) -> None:
    app.command("steer-report")(steer_report)
    app.command("merge")(merge_command)
    app.command("split")(split_command)
