"""Checks every command shares on the files it reads and writes, each failing as a one-line UserError.

Outputs are checked before any model loads, so an unwritable path costs nothing; text inputs are
decoded as UTF-8 with the offending file and line named; append-only logs cut a partial last line
(a kill mid-write) before they are appended to, so the next record is not glued onto it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import UserError


def _first_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def _probe_folder(folder: Path, what: str, path: Path) -> None:
    """Create and remove a file in `folder`: the only test that also holds for root and read-only mounts."""
    try:
        handle, probe = tempfile.mkstemp(prefix=".autodeco-probe-", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(
            f"{what} {path}: cannot write in {folder} ({exc.strerror or exc})",
            "choose a folder you can write to, or fix its permissions",
        ) from None


def check_writable_output(path: str | Path | None, what: str = "output", *, folder: bool = False) -> Path | None:
    """Fail now, before any work, if `path` (a file, or a folder with folder=True) cannot be written.

    Creates nothing: a missing folder is fine when its nearest existing parent is a writable folder.
    """
    if path is None:
        return None
    path = Path(path).expanduser()
    if folder and path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder", "give a folder path (or move that file away)")
    if not folder and path.is_dir():
        raise UserError(f"{what} {path} is a folder, not a file", f"give a file name, e.g. {path / 'out.jsonl'}")
    existing = _first_existing(path if folder else path.parent)
    if not existing.is_dir():
        raise UserError(
            f"{what} {path}: {existing} is a file, not a folder", "choose a path whose parent folders are folders"
        )
    if not folder and path.is_file():
        try:
            with path.open("ab"):
                pass
        except OSError as exc:
            raise UserError(
                f"{what} {path} is not writable ({exc.strerror or exc})", "choose another path, or fix its permissions"
            ) from None
        return path
    _probe_folder(existing, what, path)
    return path


def _not_utf8(path: Path, data: bytes, exc: UnicodeDecodeError, what: str, first_line: int = 1) -> UserError:
    line = first_line + data[: exc.start].count(b"\n")
    byte = data[exc.start] if exc.start < len(data) else 0
    return UserError(
        f"{path}:{line}: {what} is not UTF-8 text (byte 0x{byte:02x}: a binary file?)",
        "pass a UTF-8 text file (re-save it as UTF-8 if it is text in another encoding)",
    )


def _check_readable_file(path: Path, what: str) -> None:
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder, not a file", "pass a file inside it")
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")


def read_text_file(path: str | Path, what: str = "file") -> str:
    """A whole UTF-8 text file; a folder, a missing file or binary content is a one-line error."""
    path = Path(path).expanduser()
    _check_readable_file(path, what)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{what} {path} cannot be read ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, data, exc, what) from None


def iter_text_lines(path: str | Path, what: str = "file") -> Iterator[tuple[int, str]]:
    """(line number, line) of a UTF-8 text file, read line by line (large training files stay on disk)."""
    path = Path(path).expanduser()
    _check_readable_file(path, what)
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, raw, exc, what, first_line=number) from None


def cut_partial_last_line(path: str | Path) -> bool:
    """Truncate an append-only line log after its last newline; True if a partial line was cut.

    A kill mid-write leaves a partial last line; without this the next append is glued onto it.
    """
    path = Path(path)
    if not path.is_file():
        return False
    with path.open("r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return False
        end = size
        while end > 0:
            chunk_start = max(0, end - 65536)
            handle.seek(chunk_start)
            newline = handle.read(end - chunk_start).rfind(b"\n")
            if newline >= 0:
                end = chunk_start + newline + 1
                break
            end = chunk_start
        if end == size:
            return False
        handle.truncate(end)
    return True


def check_max_new_tokens(max_new_tokens: int | None, config, prompt_tokens: int = 0) -> None:
    """Refuse a generation budget beyond the model's context (`config.max_position_embeddings`)
    minus the longest prompt; with no config (or no such field) there is nothing to check."""
    if max_new_tokens is None:
        return
    context = getattr(config, "max_position_embeddings", None)
    if not isinstance(context, int) or context <= 0:
        return  # the model does not say; nothing to check against
    room = context - prompt_tokens
    if max_new_tokens <= room:
        return
    if prompt_tokens:
        detail = (
            f"the model's context of {context} tokens minus the longest prompt's {prompt_tokens} leaves {max(room, 0)}"
        )
    else:
        detail = f"the model's context is {context} tokens"
    hint = f"use --max-new-tokens {room} or less" if room >= 1 else "shorten the prompt"
    raise UserError(f"--max-new-tokens {max_new_tokens} is more than the model can generate: {detail}", hint)


def check_task_budget(task: str, budget: int, from_task: bool, config, prompt_tokens: int) -> None:
    """Refuse a task's generation budget (its own `max_new_tokens` when `from_task`, else
    --max-new-tokens) that its longest prompt leaves no room for in the model's context."""
    context = getattr(config, "max_position_embeddings", None)
    if not isinstance(context, int) or context <= 0 or budget + prompt_tokens <= context:
        return
    room = context - prompt_tokens
    what = f"its default budget of {budget} new tokens" if from_task else f"--max-new-tokens {budget}"
    raise UserError(
        f"task {task}: {what} plus its longest prompt ({prompt_tokens} tokens) exceeds the model's context of "
        f"{context} tokens",
        f"pass --max-new-tokens {room} or less" if room >= 1 else "use a model with a longer context",
    )


def heads_files(path: str | Path, what: str = "heads") -> list[Path]:
    """The safetensors files of a heads checkpoint (a file, or every one in a folder), found
    without torch. Pickled checkpoints (.bin/.pt) are refused on purpose: loading them runs code."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(
            f"{what} {path}: heads checkpoint not found",
            "pass a folder written by `autodeco train-heads` or an official AutoDeco checkpoint",
        )
    if path.is_file():
        if path.suffix != ".safetensors":
            raise UserError(
                f"{what} {path}: heads must be safetensors, not {path.suffix or 'an unknown format'}",
                "convert the checkpoint to .safetensors; pickled weights are never loaded",
            )
        return [path]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        pickled = [p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
        hint = (
            "pickled weights are never loaded; convert them to safetensors"
            if pickled
            else "expected autodeco_heads.safetensors or model.safetensors"
        )
        only = f" (only {', '.join(pickled)})" if pickled else ""
        raise UserError(f"{what} {path}: no .safetensors heads file found{only}", hint)
    return files
