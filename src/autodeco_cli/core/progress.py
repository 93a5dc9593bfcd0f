"""One rich progress bar style for every long-running command (samples, tokens/s, ETA)."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class TokensPerSecond(ProgressColumn):
    """Generated (or trained) tokens per second, from the task's `tokens` field."""

    def render(self, task) -> Text:
        tokens = task.fields.get("tokens", 0)
        # a finished task's `elapsed` keeps growing until the whole bar stops; its rate must not
        elapsed = (task.finished_time if task.finished else task.elapsed) or 0
        rate = tokens / elapsed if elapsed > 0 else 0.0
        return Text(f"{rate:,.0f} tok/s", style="cyan")


def progress_bar(console, *extra_columns: ProgressColumn) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TokensPerSecond(),
        *extra_columns,
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
