"""Subcommands beyond `generate`. Each module defines `register(app)`; heavy imports stay inside
the command functions so `autodeco --help` starts fast."""

from __future__ import annotations

import importlib

import typer

# Listed explicitly (not discovered) so the order in `--help` is deliberate.
COMMAND_MODULES = ("train", "evaluate", "grid", "tools")


def register_all(app: typer.Typer) -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue  # not written yet in this checkout
            raise
        module.register(app)
