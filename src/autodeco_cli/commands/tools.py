"""`steer-report`, `merge` and `split`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..models import DEFAULT_MODEL
from ..options import BatchSizeOpt, DeviceOpt, DtypeOpt, HeadsOpt, ModelOpt

console = Console()
err_console = Console(stderr=True)


def steer_report(
    benchmark: Annotated[str, typer.Option("--benchmark", "-b", help="Task whose questions are used (held-out split).")] = "arith-add",
    n: Annotated[int, typer.Option("--n", help="Number of questions.")] = 50,
    offset: Annotated[int, typer.Option("--offset", help="Skip this many questions first (keep them disjoint from steer training).")] = 0,
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
    from ..decoding import make_strategy
    from ..runtime import open_engine
    from ..steering import steer_report as run_report

    engine = open_engine(model, heads, [make_strategy("autodeco")], device=device, dtype=dtype)
    report = run_report(engine, benchmark, n=n, offset=offset, max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size)
    table = Table(title=f"steer-report on {benchmark} ({report.questions} questions)")
    for column in ("condition", "mean T̂", "ΔT̂", "T̂ consistency", "mean P̂", "ΔP̂", "P̂ consistency"):
        table.add_column(column, justify="right")
    table.add_row("no command", f"{report.mean_temperature['none']:.4f}", "", "", f"{report.mean_top_p['none']:.4f}", "", "")
    for condition in ("low", "high"):
        table.add_row(
            f"{condition} diversity",
            f"{report.mean_temperature[condition]:.4f}", f"{report.delta_temperature[condition]:+.4f}", f"{report.consistency_temperature[condition]:.0%}",
            f"{report.mean_top_p[condition]:.4f}", f"{report.delta_top_p[condition]:+.4f}", f"{report.consistency_top_p[condition]:.0%}",
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
    from ..export import merge

    path = merge(model, heads, output, dtype=dtype)
    err_console.print(f"merged checkpoint written to {path}")


def split_command(
    merged: Annotated[Path, typer.Argument(help="A merged AutoDeco folder.")],
    base_output: Annotated[Path, typer.Option("--base-output", help="Folder for the plain base model.")],
    heads_output: Annotated[Path, typer.Option("--heads-output", help="Folder for the heads checkpoint.")],
):
    """Split a merged AutoDeco folder back into a plain HF base model and a heads checkpoint."""
    from ..export import split

    base, heads = split(merged, base_output, heads_output)
    err_console.print(f"base model in {base}, heads in {heads}")


def reproduce_command(
    overrides: Annotated[Optional[list[str]], typer.Argument(help="key=value overrides, e.g. limit=50 k=2 benchmarks=[arith-add].")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Reproduction recipe YAML (see recipes/reproduce-cpu.yaml).")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Smoke version of the same pipeline on a sliver of the data (about 2 minutes on 2 cores).")] = False,
):
    """The paper's comparison end to end: on-policy data, heads, oracle grid, the comparison table
    (greedy, default, oracle, autodeco, mean-shift, T̂-only, P̂-only), figures and a markdown
    report. Every stage resumes: re-run the same command after an interruption."""
    from ..reproduce import config_from, run_reproduce

    cfg = config_from(str(config) if config else None, overrides or [], quick)
    report = run_reproduce(cfg, log=err_console.print)
    err_console.print(f"report written to {report}")


def where_it_wins_command(
    overrides: Annotated[Optional[list[str]], typer.Argument(help="key=value overrides, e.g. selection_limit=30 workdir=runs/wiw-small.")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Study recipe YAML (see recipes/where-it-wins-cpu.yaml).")] = None,
):
    """Where per-token decoding beats every static setting: arithmetic and the random-choice family.

    Trains MLE heads and reward heads (chosen on validation), then per benchmark scores greedy, default, the test-set static oracle, min-p, top-nσ and EDT (their cells chosen on validation), both autodeco heads, mean-shift of each, and the T̂-only/P̂-only ablations, all paired per question against the oracle. Writes reports/where-it-wins.md with tables, verdicts, per-token traces and the static heatmap. Every stage resumes: re-run the same command after an interruption.
    """
    from ..recipes import build_config
    from ..where_it_wins import WhereItWinsConfig, run_where_it_wins

    cfg = build_config(WhereItWinsConfig, str(config) if config else None, overrides or [])
    report = run_where_it_wins(cfg, log=err_console.print)
    err_console.print(f"report written to {report}")


def ablation_command(
    overrides: Annotated[Optional[list[str]], typer.Argument(help="key=value overrides, e.g. validation_limit=50.")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Ablation recipe YAML (see recipes/ablation-cpu.yaml).")] = None,
):
    """Why MLE heads settle where they do: heads trained on each data setting / loss change, scored on validation questions.

    Writes reports/ablation.md: per task, each row's mean T̂/P̂, pass@1 ± SE and its paired difference against the best static reference on the same validation questions. Every stage resumes.
    """
    from ..ablation import AblationConfig, run_ablation
    from ..recipes import build_config

    cfg = build_config(AblationConfig, str(config) if config else "recipes/ablation-cpu.yaml", overrides or [])
    report = run_ablation(cfg, log=err_console.print)
    err_console.print(f"report written to {report}")


def register(app: typer.Typer) -> None:
    app.command("ablation")(ablation_command)
    app.command("reproduce")(reproduce_command)
    app.command("where-it-wins")(where_it_wins_command)
    app.command("steer-report")(steer_report)
    app.command("merge")(merge_command)
    app.command("split")(split_command)
