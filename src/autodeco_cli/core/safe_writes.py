"""Every file we write goes through here: whole or not at all, and a full disk is one line.

- `staged(path)` / `staged_folder(path)`: write into a temporary name beside `path`, publish it with
  one rename; on any failure the temporary is deleted, so no half file (and no `*.tmp` litter) is
  left and the previous version, if any, stays. `write_atomically` is the common case.
- `Appender`: an append-only line log written a whole batch of lines per call; a failed write is
  cut back off, so the file never ends in half a record.
- A full disk (ENOSPC, a quota, torch's short-write error, safetensors' wrapped one) becomes a
  UserError naming the path, the size being written and the space left: the user frees space and
  re-runs the same command, which resumes (nothing already published was touched).
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import UserError

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# how a failed write reads when a library does not raise OSError: torch.save's zip writer
# ("unexpected pos 576 vs 534" after a short write) and safetensors' wrapped Rust io::Error
_DISK_FULL_TEXTS = ("unexpected pos", "file write failed", "No space left on device", "Disk quota exceeded")


def is_disk_full(exc: BaseException) -> bool:
    """True when `exc` says the device (or the user's quota) had no room for a write."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return True
    if isinstance(exc, (OSError, UserError)):
        return False
    return isinstance(exc, Exception) and any(text in str(exc) for text in _DISK_FULL_TEXTS)


def human_size(size: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"  # unreachable; keeps type checkers content


def free_space(path: Path) -> int | None:
    for folder in (path, *path.parents):
        try:
            return shutil.disk_usage(folder).free
        except OSError:
            continue
    return None


RESUME_HINT = (
    "free some space (or choose another output folder), then re-run the same command: it resumes where it "
    "stopped and nothing already written is lost"
)


def disk_full_error(
    path: str | Path, size: int | None = None, *, about: bool = False, hint: str = RESUME_HINT
) -> UserError:
    """The one line a full disk is: the path, what was being written and what is left."""
    path = Path(path)
    free = free_space(path.parent)
    parts = []
    if size is not None:
        parts.append(f"{'about ' if about else ''}{human_size(size)} to write")
    if free is not None:
        parts.append(f"{human_size(free)} free")
    detail = f" ({', '.join(parts)})" if parts else ""
    return UserError(f"no space left on the device to write {path}{detail}", hint)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _temporary_beside(path: Path) -> Path:
    # a unique name: two writers of one path never share a temporary
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


@contextmanager
def staged(path: str | Path, size: int | None = None) -> Iterator[Path]:
    """A temporary path to write `path`'s new content to; published by one rename when the block
    succeeds, deleted when it fails. `size`: the bytes being written, when known (for the message)."""
    path = Path(path)
    with _failing_as_disk_full(path, size):
        path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_beside(path)
    try:
        with _failing_as_disk_full(path, size):
            yield temporary
            os.replace(temporary, path)
    finally:
        _remove(temporary)


@contextmanager
def staged_folder(
    path: str | Path, staging: Path | None = None, size: int | None = None, hint: str = RESUME_HINT
) -> Iterator[Path]:
    """`staged` for a folder: the block fills the (new, empty) staging folder, which then replaces
    `path`. `size`: about how much the folder holds (a previous copy's size), for the message."""
    path = Path(path)
    staging = staging or _temporary_beside(path)
    try:
        with _failing_as_disk_full(path, size, about=True, hint=hint):
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            yield staging
            shutil.rmtree(path, ignore_errors=True)
            os.replace(staging, path)
    finally:
        _remove(staging)


def write_atomically(path: str | Path, data: str | bytes) -> Path:
    """Write a whole file (text as UTF-8) so that a reader, a kill or a full disk never sees half of it."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with staged(path, len(payload)) as temporary:
        handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            _write_all(handle, payload)
        finally:
            os.close(handle)
    return Path(path)


def _write_all(handle: int, payload: bytes) -> None:
    """Every byte, or an OSError (a short write is retried: it is how a filling disk first shows)."""
    view = memoryview(payload)
    while view:
        view = view[os.write(handle, view) :]


def folder_size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


@contextmanager
def _failing_as_disk_full(path: Path, size: int | None, about: bool = False, hint: str = RESUME_HINT) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        if is_disk_full(exc):
            raise disk_full_error(path, size, about=about, hint=hint) from None
        raise


class Appender:
    """An append-only line log (samples, metrics), opened on the first write.

    Each `append` writes its lines whole or not at all: a write that fails (a full disk, Ctrl-C)
    is cut back to where it began, so the file ends on a newline and the next run appends cleanly.
    Once `append` returns the lines are in the file (no buffer of ours), so a kill cannot lose them.
    """

    def __init__(self, path: str | Path, *, truncate: bool = False):
        self.path = Path(path)
        self._flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if truncate else 0)
        self._file = None  # a file object only to own the descriptor: it closes when collected

    def append(self, lines: list[str]) -> None:
        if not lines:
            return
        payload = "".join(line + "\n" for line in lines).encode("utf-8")
        if self._file is None:
            with _failing_as_disk_full(self.path, len(payload)):
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = os.fdopen(os.open(self.path, self._flags, 0o666), "ab", buffering=0)
                self._flags &= ~os.O_TRUNC  # truncate once, when first opened
        handle = self._file.fileno()
        start = os.fstat(handle).st_size
        try:
            _write_all(handle, payload)
        except BaseException as exc:
            # cut a half-written batch back off: the file ends on a whole record, as before the call
            os.ftruncate(handle, start)
            if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
                raise disk_full_error(self.path, len(payload)) from None
            raise

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
