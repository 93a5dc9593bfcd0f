"""Which isolation a run gets, and what the fresh root contains.

Modes (see stage.py for how the first two are built):

* ``namespaces`` (root): new mount, net, pid, ipc and uts namespaces; a fresh tmpfs root holding
  only read-only binds of the interpreter, its stdlib and the directories of the shared libraries
  they load; a private /proc, /dev and size-capped /tmp; the program runs as a throw-away uid with
  no capabilities. No host data, repository, socket or process is reachable.
* ``userns`` (non-root with unprivileged user namespaces): the same fresh root and namespaces
  inside a user namespace; the program keeps the caller's uid (so RLIMIT_NPROC is shared with the
  caller's own processes) but has no capabilities.
* ``guard`` (ONLY when asked for, ``AUTODECO_SANDBOX=guard``): no namespaces; a CPython audit
  hook. It sees the host filesystem, so it cannot keep expected outputs secret. See GUARD_WARNING.

``auto`` (the default) picks the fresh-root mode for our uid and, when the probe shows it cannot
work here, raises `SandboxUnavailable` instead of quietly weakening the judge.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

from ...core.errors import UserError

ENV_VAR = "AUTODECO_SANDBOX"
MODES = ("namespaces", "userns", "guard")
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
DEVICES = ("null", "zero", "full", "random", "urandom")

GUARD_WARNING = (
    "AUTODECO_SANDBOX=guard: judged programs run on the host with only a Python audit hook. It does "
    "NOT hide the host filesystem (a program can read the benchmark data, expected outputs included, "
    "and the repository), does not hide other processes (/proc), shares the host network stack, and "
    "a determined program can get past the hook (C extensions, unaudited syscalls). Scores from this "
    "mode are not trustworthy for untrusted model output."
)


class SandboxUnavailable(UserError, RuntimeError):
    """The requested isolation level cannot be provided on this machine (a one-line user error)."""


@dataclass(frozen=True)
class RootLayout:
    """What the fresh root contains besides /proc, /dev and /tmp. Paths are host real paths,
    mounted at the same path inside; symlinks recreate the host's (e.g. /lib -> usr/lib)."""

    binds: tuple[tuple[str, bool], ...]  # (path, is_file), parents first
    symlinks: tuple[tuple[str, str], ...]  # (path, link target)
    hide: tuple[str, ...]  # directories inside a bind that get an empty tmpfs on top
    devices: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    mode: str
    python: str
    drop_uid: bool
    layout: RootLayout | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def fresh_root(self) -> bool:
        return self.mode in ("namespaces", "userns")

    @property
    def label(self) -> str:
        if self.fresh_root:
            uid = "uid-drop" if self.drop_uid else "same-uid"
            return f"{self.mode}(fresh-root,netns,pidns,{uid})"
        return f"guard(audit-hook,host-fs-visible,{'uid-drop' if self.drop_uid else 'same-uid'})"

    def info(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "label": self.label,
            "strong": self.fresh_root,
            "network": "netns" if self.fresh_root else "python-audit-guard",
            "uid_drop": self.drop_uid,
            "pid_namespace": self.fresh_root,
            "readonly_root": self.fresh_root,
            "fresh_root": self.fresh_root,
            "host_filesystem_visible": not self.fresh_root,
            "python": self.python,
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------------------------
# choosing a plan


def requested_mode(isolation: str = "auto") -> str:
    """`isolation` if explicit, else $AUTODECO_SANDBOX, else "auto"."""
    if isolation == "auto":
        isolation = os.environ.get(ENV_VAR, "").strip().lower() or "auto"
    if isolation not in ("auto", *MODES):
        raise UserError(f"{ENV_VAR}={isolation!r} is not a sandbox mode", f"use one of: auto, {', '.join(MODES)}")
    return isolation


def candidate_plan(mode: str) -> Plan:
    """The plan for `mode` on this machine, not yet probed; SandboxUnavailable if it cannot apply."""
    root = os.geteuid() == 0
    python = os.path.realpath(sys.executable)
    if mode == "auto":
        mode = "namespaces" if root else "userns"
    if mode == "namespaces" and not root:
        raise SandboxUnavailable("isolation 'namespaces' needs root", "non-root users get 'userns'")
    if mode == "userns" and root:
        # A root-owned user namespace could only map root itself: the program would keep its
        # capabilities there and escape RLIMIT_NPROC. Root gets the stronger 'namespaces'.
        raise SandboxUnavailable("isolation 'userns' is for non-root users", "root gets 'namespaces'")
    if mode in ("namespaces", "userns"):
        return Plan(mode, python, drop_uid=root, layout=fresh_root_layout(python))
    if root:
        reach = reachable_interpreter()
        if reach:
            return Plan("guard", reach, True)
        return Plan("guard", python, False, notes=("no world-executable python: same uid",))
    return Plan("guard", python, False)


_lock = threading.Lock()
_chosen: dict[str, Plan] = {}
_warned = False


def choose_plan(isolation: str, probe: Callable[[Plan], str | None]) -> Plan:
    """The probed plan for `isolation` (cached per process). `probe` returns None when a plan
    works, else why not."""
    global _warned
    mode = requested_mode(isolation)
    with _lock:
        if mode not in _chosen:
            plan = candidate_plan(mode)
            # The probe runs the real launch path, so a kernel or container that forbids a step
            # (unshare, mount, pivot_root, uid change) is found here, not on every scored sample.
            why = probe(plan)
            if why:
                hint = f"run as root or enable unprivileged user namespaces; {ENV_VAR}=guard accepts a weaker judge"
                raise SandboxUnavailable(f"no isolated sandbox for judging code here ({plan.mode}: {why})", hint)
            _chosen[mode] = plan
        plan = _chosen[mode]
        if plan.mode == "guard" and not _warned:
            _warned = True
            warnings.warn(GUARD_WARNING, RuntimeWarning, stacklevel=3)
        return plan


# --------------------------------------------------------------------------------------------
# the fresh root's contents

_LDD_PATH = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x[0-9a-f]+\)")


def fresh_root_layout(python: str) -> RootLayout:
    """Only what `python -I -S` needs: the executable, the stdlib, lib-dynload, and the directories
    of every shared library those load (plus ld.so.cache so the loader finds them)."""
    stdlib = os.path.realpath(sysconfig.get_path("stdlib"))
    dynload = [os.path.realpath(p) for p in sys.path if p.endswith("lib-dynload") and os.path.isdir(p)]
    symlinks: dict[str, str] = {}
    files = {_resolve(python, symlinks)}
    dirs = {_resolve(stdlib, symlinks), *(_resolve(d, symlinks) for d in dynload)}
    for lib in _shared_libraries([python, *(m for d in dynload for m in _modules_in(d))]):
        dirs.add(os.path.dirname(_resolve(lib, symlinks)))
    if os.path.isfile("/etc/ld.so.cache"):
        files.add(_resolve("/etc/ld.so.cache", symlinks))
    binds = _outermost(dirs, files)
    bound_dirs = [p for p, is_file in binds if not is_file]
    hide = tuple(
        p
        for p in (os.path.join(stdlib, "site-packages"), os.path.join(stdlib, "dist-packages"))
        if os.path.isdir(p) and _under_any(p, bound_dirs)
    )
    # Symlinks inside a bound directory already exist there.
    links = tuple(sorted((p, t) for p, t in symlinks.items() if not _under_any(os.path.dirname(p), bound_dirs)))
    devices = tuple(d for d in DEVICES if os.path.exists(f"/dev/{d}"))
    return RootLayout(binds, links, hide, devices)


def _modules_in(directory: str) -> list[str]:
    return sorted(os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(".so"))


def _shared_libraries(paths: list[str]) -> set[str]:
    """Libraries the dynamic loader resolves for `paths` (ldd), as the paths it names them by."""
    ldd = shutil.which("ldd", path=SAFE_PATH)
    if not ldd:
        # No ldd: fall back to the standard library directories wholesale.
        return {os.path.join(d, "libc.so.6") for d in ("/lib", "/lib64", "/usr/lib", "/usr/lib64") if os.path.isdir(d)}
    out = subprocess.run(
        [ldd, *paths], capture_output=True, text=True, timeout=60, env={"PATH": SAFE_PATH, "LC_ALL": "C"}
    )
    return {m.group(1) for m in _LDD_PATH.finditer(out.stdout) if os.path.exists(m.group(1))}


def _resolve(path: str, symlinks: dict[str, str], depth: int = 0) -> str:
    """The real path of `path`, recording each symlink met on the way (link path -> target)."""
    if depth > 40:
        raise OSError(f"too many symlinks resolving {path}")
    parts = [p for p in path.split("/") if p]
    cur = ""
    for i, part in enumerate(parts):
        nxt = f"{cur}/{part}"
        if os.path.islink(nxt):
            target = os.readlink(nxt)
            symlinks[nxt] = target
            base = target if target.startswith("/") else os.path.normpath(os.path.join(cur or "/", target))
            rest = "/".join(parts[i + 1 :])
            return _resolve(f"{base}/{rest}" if rest else base, symlinks, depth + 1)
        cur = nxt
    return cur or "/"


def _under_any(path: str, dirs: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


def _outermost(dirs: set[str], files: set[str]) -> tuple[tuple[str, bool], ...]:
    """Directory binds without those already inside another, then file binds outside them all."""
    kept: list[str] = []
    for d in sorted(dirs):
        if not _under_any(d, kept):
            kept.append(d)
    binds = [(d, False) for d in kept] + [(f, True) for f in sorted(files) if not _under_any(f, kept)]
    return tuple(sorted(binds))


# --------------------------------------------------------------------------------------------
# guard mode helpers


def others_can_reach(path: str) -> bool:
    """Every ancestor directory is o+x and the file itself o+rx (so a foreign uid can exec it)."""
    path = os.path.realpath(path)
    try:
        st = os.stat(path)
    except OSError:
        return False
    if not (st.st_mode & stat.S_IXOTH and st.st_mode & stat.S_IROTH):
        return False
    parent = os.path.dirname(path)
    while True:
        try:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
        if parent == "/":
            return True
        parent = os.path.dirname(parent)


def reachable_interpreter() -> str | None:
    """A python of our version that a throw-away uid can run (guard mode has no fresh root)."""
    cands = [os.path.realpath(sys.executable)]
    for d in SAFE_PATH.split(":"):
        for name in (f"python{sys.version_info[0]}.{sys.version_info[1]}", "python3"):
            cands.append(os.path.join(d, name))
    for c in cands:
        if os.path.exists(c) and others_can_reach(c):
            return os.path.realpath(c)
    return None
