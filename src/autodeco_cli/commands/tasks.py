"""`autodeco tasks`: the task catalogue, as `lm-eval ls tasks` gives it."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from ..core.consoles import console


def tasks_command(
    names: Annotated[
        Optional[list[str]],
        typer.Argument(help="Tasks or groups to describe (default: every task), e.g. arith-add or paper."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per task on stdout.")] = False,
):
    """List tasks and groups: split sizes on this machine, the question metric, scorer and data source.

    Sizes come from the data directory (AUTODECO_DATA_DIR); a split whose file is absent is shown as
    missing and is not downloaded. LiveCodeBench is the v5 window with public tests only."""
    from rich.table import Table

    from ..tasks.catalogue import describe
    from ..tasks.registry import expand, list_groups, list_tasks

    selected = expand(",".join(names)) if names else list_tasks()
    infos = [describe(name) for name in selected]
    if as_json:
        for info in infos:  # JSON lines: rich would wrap long lines
            typer.echo(json.dumps(info.to_dict(), ensure_ascii=False))
        return
    table = Table(title=f"{len(infos)} tasks (sizes: questions on this machine)")
    table.add_column("task", no_wrap=True)
    for column in ("splits", "metric", "source"):
        table.add_column(column, overflow="fold")
    for info in infos:
        splits = ", ".join(f"{s.name} {s.size}" if s.size is not None else f"{s.name} missing" for s in info.splits)
        table.add_row(info.name, splits, f"{info.metric} ({info.scorer})", _short(info.source))
    console.print(table)
    for group, members in sorted(list_groups().items()):
        if not names or group in names:
            console.print(f"[bold]{group}[/]: {', '.join(members)}")


def _short(source: str) -> str:
    """The table's source: up to the first aside (`--json` has the whole text)."""
    cut = min((i for i in (source.find(" ("), source.find(";")) if i > 0), default=len(source))
    return source[:cut]


def register(app: typer.Typer) -> None:
    app.command("tasks")(tasks_command)
