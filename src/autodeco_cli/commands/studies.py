"""`reproduce`, `where-it-wins` and `ablation`: the studies, each a resumable pipeline writing a report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..core.consoles import err_console

# The --help texts. Concatenated rather than docstrings wrapped at 120 columns: typer's rich mode
# keeps single line breaks, so wrapping would show in the help.
WHERE_IT_WINS_HELP = (
    "Where per-token decoding beats every static setting: arithmetic and the random-choice family.\n"
    "\n"
    "Trains MLE heads and reward heads (chosen on validation), then per benchmark scores greedy, default, the "
    "test-set static oracle, min-p, top-nσ and EDT (their cells chosen on validation), both autodeco heads, "
    "mean-shift of each, and (config ablations) the T̂-only/P̂-only rows, all paired per question against the "
    "oracle. Then one setting for all traffic: a suite of the benchmarks plus the unseen families, where the heads "
    "meet the best single static and adaptive cells (chosen on the benchmarks' validation questions) and the "
    "per-task test-tuned oracle; and `autodeco diagnose` on the chosen heads (their shuffled selves). Writes "
    "reports/where-it-wins.md with tables, verdicts, per-token traces and the static heatmap. Every stage resumes: "
    "re-run the same command after an interruption."
)

ABLATION_HELP = (
    "Why MLE heads settle where they do: heads trained on each data setting / loss change, scored on validation "
    "questions.\n"
    "\n"
    "Writes reports/ablation.md: per task, each row's mean T̂/P̂, pass@1 ± SE and its paired difference against "
    "the best static reference on the same validation questions. Every stage resumes."
)


def reproduce_command(
    overrides: Annotated[
        Optional[list[str]], typer.Argument(help="key=value overrides, e.g. limit=50 k=2 benchmarks=[arith-add].")
    ] = None,
    config: Annotated[
        Optional[Path],
        typer.Option("--config", "-c", help="Reproduction recipe YAML (see recipes/reproduce-cpu.yaml)."),
    ] = None,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick", help="Smoke version of the same pipeline on a sliver of the data (about 2 minutes on 2 cores)."
        ),
    ] = False,
):
    """The paper's comparison end to end: on-policy data, heads, oracle grid, the comparison table
    (greedy, default, oracle, autodeco, mean-shift, T̂-only, P̂-only), figures and a markdown
    report. Every stage resumes: re-run the same command after an interruption."""
    from ..studies.reproduce import config_from, run_reproduce

    cfg = config_from(str(config) if config else None, overrides or [], quick)
    report = run_reproduce(cfg, log=err_console.print)
    err_console.print(f"report written to {report}")


def where_it_wins_command(
    overrides: Annotated[
        Optional[list[str]], typer.Argument(help="key=value overrides, e.g. selection_limit=30 workdir=runs/wiw-small.")
    ] = None,
    config: Annotated[
        Optional[Path], typer.Option("--config", "-c", help="Study recipe YAML (see recipes/where-it-wins-cpu.yaml).")
    ] = None,
):
    """Where per-token decoding beats every static setting (see WHERE_IT_WINS_HELP)."""
    from ..studies.where_it_wins import WhereItWinsConfig, run_where_it_wins
    from ..training.recipes import build_config

    cfg = build_config(WhereItWinsConfig, str(config) if config else None, overrides or [])
    report = run_where_it_wins(cfg, log=err_console.print)
    err_console.print(f"report written to {report}")


def ablation_command(
    overrides: Annotated[
        Optional[list[str]], typer.Argument(help="key=value overrides, e.g. validation_limit=50.")
    ] = None,
    config: Annotated[
        Optional[Path], typer.Option("--config", "-c", help="Ablation recipe YAML (see recipes/ablation-cpu.yaml).")
    ] = None,
):
    """Why MLE heads settle where they do (see ABLATION_HELP)."""
    from ..studies.ablation import AblationConfig, run_ablation
    from ..training.recipes import build_config

    cfg = build_config(AblationConfig, str(config) if config else "recipes/ablation-cpu.yaml", overrides or [])
    report = run_ablation(cfg, log=err_console.print)
    err_console.print(f"report written to {report}")


def register(app: typer.Typer) -> None:
    app.command("ablation", help=ABLATION_HELP)(ablation_command)
    app.command("reproduce")(reproduce_command)
    app.command("where-it-wins", help=WHERE_IT_WINS_HELP)(where_it_wins_command)
