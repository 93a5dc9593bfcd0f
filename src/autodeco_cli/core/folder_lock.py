"""One run per output folder: an advisory lock held while a command writes there.

Two runs on one folder would each see the same samples missing and each generate them (work done
twice, records appended twice). `folder_lock` takes an exclusive `flock` on FOLDER/.autodeco.lock
for the run; a second run fails at once with a one-line error naming the folder and the PID that
holds it. The kernel drops the lock when its holder exits, however it exits (a SIGKILL included),
so a stale lock file never blocks the next run. Where flock is not supported (some network file
systems) the run goes ahead unlocked rather than not at all.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import UserError

try:
    import fcntl
except ImportError:  # not POSIX: no advisory locks to take
    fcntl = None

LOCK_FILE = ".autodeco.lock"


@contextmanager
def folder_lock(folder: str | Path, option: str = "--output-dir") -> Iterator[None]:
    """Hold FOLDER's lock for the block (creating the folder; the folders made here are removed
    again on the way out while empty, so a run that fails before writing leaves nothing behind)."""
    folder = Path(folder)
    created = [path for path in (folder, *folder.parents) if not path.exists()]  # innermost first
    folder.mkdir(parents=True, exist_ok=True)
    handle = _acquire(folder, option) if fcntl is not None else None
    try:
        yield
    finally:
        if handle is not None:
            _release(folder / LOCK_FILE, handle)
        for path in created:
            try:
                path.rmdir()  # only when empty
            except OSError:
                break


def _acquire(folder: Path, option: str) -> int | None:
    path = folder / LOCK_FILE
    while True:
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(handle)
            os.close(handle)
            raise UserError(
                f"{folder} is in use by another autodeco run ({holder})",
                f"wait for it to finish (or stop it), or give this run another {option}",
            ) from None
        except OSError:
            os.close(handle)
            return None  # this file system has no flock
        if _still_there(handle, path):
            break
        # the previous holder deleted the file after we opened it: lock the file that is there now
        os.close(handle)
    try:
        os.ftruncate(handle, 0)
        os.pwrite(handle, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass  # a full disk: the lock holds all the same, only its PID is not recorded
    return handle


def _release(path: Path, handle: int) -> None:
    # deleted while still held, so no one can lock this file after we let go of it
    try:
        path.unlink()
    except OSError:
        pass
    os.close(handle)


def _still_there(handle: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(handle), os.stat(path))
    except FileNotFoundError:
        return False


def _holder(handle: int) -> str:
    try:
        pid = os.pread(handle, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        pid = ""
    return f"PID {pid}" if pid.isdigit() else "PID unknown"
