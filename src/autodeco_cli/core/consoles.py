"""The two rich consoles every module prints through: results on stdout, the rest on stderr.

One of each for the whole program, so that stdout stays machine-readable (JSONL, tables) while
progress bars, notes, warnings and errors all go to the same stderr stream, and a test captures
them the same way whichever module printed. Both resolve sys.stdout/sys.stderr when they print,
so capture (pytest, typer's CliRunner) works with these module-level objects.
"""

from __future__ import annotations

from rich.console import Console

console = Console()
err_console = Console(stderr=True)
