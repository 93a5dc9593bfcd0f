"""The subcommands. Each module defines `register(app)`; heavy imports stay inside the command
functions so `autodeco --help` starts fast."""

from __future__ import annotations

import importlib

import typer

# Listed explicitly (not discovered) so the order in `--help` is deliberate. A module missing
# here is a broken install or checkout, so its ImportError is raised, never skipped.
COMMAND_MODULES = (
    "generate",
    "make_data",
    "train",
    "evaluate",
    "grid_search",
    "diagnose",
    "studies",
    "tools",
    "tasks",
    "serve",
)


def register_all(app: typer.Typer) -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(app)
