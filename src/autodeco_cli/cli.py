"""The `autodeco` command line. Thin: parse, validate, call the library, print.

Each command lives in `commands/` (registered in the order of `commands.COMMAND_MODULES`); every
generating command takes the same decoding and model options (see `commands/options.py`).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from .commands import register_all
from .core.consoles import console, err_console
from .core.errors import UserError

app = typer.Typer(
    name="autodeco",
    help=(
        "End-to-end decoding: learned per-token temperature and top-p (AutoDeco, arXiv 2510.26697).\n\n"
        "Typical flow: `train-heads` on a frozen model, then `generate`, `eval` and `grid-search` "
        "with --decoding greedy|static|autodeco|mean-shift, or the training-free adaptive min-p|top-n-sigma|edt."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True)] = False,
):
    """autodeco: learned per-token decoding."""
    if version:
        from . import __version__

        console.print(f"autodeco {__version__}")
        raise typer.Exit()


register_all(app)


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2."""
    try:
        app()
    except UserError as exc:
        err_console.print(f"[bold red]error:[/] {exc.one_line()}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print(
            "interrupted; everything written so far is kept (re-run the same command to resume where supported)"
        )
        sys.exit(130)


if __name__ == "__main__":
    main()
