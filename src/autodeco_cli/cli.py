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
from .core.safe_writes import RESUME_HINT, disk_full_error, is_disk_full

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


INTERRUPTED = "interrupted; everything written so far is kept (re-run the same command to resume where supported)"


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2; Ctrl-C one line and 130."""
    try:
        app()
    except UserError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        _interrupted()
    except SystemExit as exc:
        # typer turns Ctrl-C into a silent exit 130; say what it means
        if exc.code == 130 and _caused_by_interrupt(exc):
            _interrupted()
        raise
    except Exception as exc:
        # a full disk where no write path named it (a library's own files): still one line
        if not is_disk_full(exc):
            raise
        filename = getattr(exc, "filename", None)
        _fail(disk_full_error(filename) if filename else UserError("no space left on the device", RESUME_HINT))


def _fail(exc: UserError) -> None:
    from rich.markup import escape

    # escaped: a message's own brackets (a hint's "[a, b]") are text, not markup to swallow
    err_console.print(f"[bold red]error:[/] {escape(exc.one_line())}", highlight=False, soft_wrap=True)
    sys.exit(exc.exit_code)


def _caused_by_interrupt(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _interrupted() -> None:
    # a plain write, not rich: it must reach a pipe or a file as surely as a terminal, even with a
    # progress bar torn down mid-line
    try:
        sys.stderr.write(("\n" if sys.stderr.isatty() else "") + INTERRUPTED + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass  # stderr is gone (a closed pipe): the exit code still says it
    sys.exit(130)


if __name__ == "__main__":
    main()
