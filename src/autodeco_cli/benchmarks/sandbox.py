"""Sandboxed execution and scoring of LiveCodeBench generations.

The program under test is model output and must be treated as hostile. Layers, strongest first:

* ``namespaces`` (root with util-linux ``unshare``/``setpriv``): fresh net, pid, ipc, uts and mount
  namespaces. Inside the mount namespace every mount except /proc, /sys and /dev is remounted
  read-only, the working directory is a size-capped tmpfs and /dev/shm a small private tmpfs, so
  nothing the program writes reaches the host disk. The program then runs as a throw-away uid with
  no capabilities and no_new_privs, so RLIMIT_NPROC binds and it cannot signal the (root) parent,
  which it cannot even name from inside its own pid namespace.
* ``userns`` (non-root with unprivileged user namespaces): the same namespaces, but the uid stays
  the caller's, so RLIMIT_NPROC is shared with the caller's own processes.
* ``guard`` (no usable namespaces): the program runs as a throw-away uid when we are root and a
  world-executable interpreter exists; a CPython audit hook installed before the program starts
  refuses sockets, ctypes, exec/spawn, signalling other processes and writes outside the working
  directory. An audit hook is a speed bump, not a wall; it is here so a box without namespaces still
  has *something*.

All modes add rlimits (CPU, address space, file size, process count, open files, no core dumps), a
scrubbed environment, ``python -I -S -B``, and a wall-clock deadline after which everything the
run started is SIGKILLed. Comparison of outputs follows LiveCodeBench's conventions (see
``_stdout_matches`` and ``_FUNCTIONAL_WRAPPER``).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import resource
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from .types import Doc, Score

__all__ = [
    "SandboxResult",
    "SandboxUnavailable",
    "extract_code",
    "run_sandboxed",
    "sandbox_info",
    "score_code",
]

# A high, random uid per run: it owns nothing on the host, its process count starts at zero, and
# "kill every process of this uid" can only hit processes this run started.
_UID_BASE = 1_900_000_000
_UID_SPAN = 200_000_000
_NOBODY = 65534

_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
_STDERR_HEAD = 4096
_STDERR_TAIL = 12288


class SandboxUnavailable(RuntimeError):
    """The requested isolation level cannot be provided on this machine."""


@dataclass
class SandboxResult:
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    killed_reason: str | None = None
    isolation: str = ""
    wall_s: float = 0.0
    cpu_s: float = 0.0
    uid: int | None = None


# --------------------------------------------------------------------------------------------
# code extraction

_FENCE_RE = re.compile(
    r"^[ \t]*```[ \t]*([A-Za-z0-9_+.#-]*)[^\n]*\n(.*?)^[ \t]*```[ \t]*$", re.MULTILINE | re.DOTALL
)
_PY_LANGS = {"python", "python3", "py", "py3"}


def extract_code(text: str) -> str | None:
    """Last ```python block, else the last fenced block of any language, else None."""
    if not text:
        return None
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE_RE.finditer(text)]
    if not blocks:
        return None
    py = [body for lang, body in blocks if lang in _PY_LANGS]
    body = py[-1] if py else blocks[-1][1]
    body = textwrap.dedent(body).strip("\n")
    return body if body.strip() else None


# --------------------------------------------------------------------------------------------
# isolation plan


@dataclass(frozen=True)
class _Plan:
    mode: str  # "namespaces" | "userns" | "guard"
    python: str
    drop_uid: bool
    unshare: str | None = None
    setpriv: str | None = None
    shell: str | None = None
    hide: str = ""  # a directory the sandbox uid cannot traverse, shadowed by a tmpfs ...
    expose: str = ""  # ... on which the interpreter prefix is re-mounted at its original path
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def network(self) -> str:
        return "netns" if self.mode in ("namespaces", "userns") else "python-audit-guard"

    @property
    def label(self) -> str:
        uid = "uid-drop" if self.drop_uid else "same-uid"
        return f"{self.mode}({self.network},{uid})"


def _others_can_reach(path: str) -> bool:
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


def _first_blocked_ancestor(path: str) -> str | None:
    """Topmost directory on `path` that other users cannot traverse (None when all can)."""
    parts = os.path.realpath(path).strip("/").split("/")
    cur = ""
    for part in parts:
        cur += "/" + part
        try:
            mode = os.stat(cur).st_mode
        except OSError:
            return None
        if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
            return cur
    return None


def _uid_mapped(uid: int) -> bool:
    try:
        with open("/proc/self/uid_map") as f:
            for line in f:
                inside, _outside, count = (int(x) for x in line.split())
                if inside <= uid < inside + count:
                    return True
    except (OSError, ValueError):
        return False
    return False


def _interpreter() -> str:
    return os.path.realpath(sys.executable)


def _reachable_interpreter() -> str | None:
    cands = [_interpreter()]
    for d in _SAFE_PATH.split(":"):
        for name in (f"python{sys.version_info[0]}.{sys.version_info[1]}", "python3"):
            cands.append(os.path.join(d, name))
    for c in cands:
        if os.path.exists(c) and _others_can_reach(c):
            return os.path.realpath(c)
    return None


def _tool(name: str) -> str | None:
    return shutil.which(name, path=_SAFE_PATH + ":/usr/sbin:/sbin")


def _build_plans() -> list[_Plan]:
    """Candidate plans, strongest first; `_plan()` keeps the first one that passes a probe."""
    plans: list[_Plan] = []
    unshare, setpriv, shell = _tool("unshare"), _tool("setpriv"), _tool("sh")
    python = _interpreter()
    root = os.geteuid() == 0
    have_tools = bool(unshare and setpriv and shell and _tool("mount"))
    if have_tools and root:
        hide, expose = "", ""
        if not _others_can_reach(python):
            prefix = os.path.realpath(sys.base_prefix)
            blocked = _first_blocked_ancestor(prefix)
            inside = python.startswith(prefix.rstrip("/") + "/")
            if blocked and blocked != "/" and inside and blocked != prefix:
                hide, expose = blocked, prefix
        if _others_can_reach(python) or hide:
            plans.append(
                _Plan("namespaces", python, True, unshare, setpriv, shell, hide, expose)
            )
    if have_tools and not root:
        plans.append(_Plan("userns", python, False, unshare, setpriv, shell))
    if root:
        reach = _reachable_interpreter()
        if reach:
            plans.append(_Plan("guard", reach, True))
        else:
            plans.append(_Plan("guard", python, False, notes=("no world-executable python",)))
    else:
        plans.append(_Plan("guard", python, False))
    return plans


_plan_lock = threading.Lock()
_plan_cache: dict[str, _Plan] = {}


def _plan(isolation: str) -> _Plan:
    if isolation not in ("auto", "namespaces", "userns", "guard"):
        raise ValueError(f"unknown isolation {isolation!r}")
    with _plan_lock:
        if isolation in _plan_cache:
            return _plan_cache[isolation]
        chosen = None
        for plan in _build_plans():
            if isolation != "auto" and plan.mode != isolation:
                continue
            # The probe runs the real launch path, so a kernel or container that forbids some step
            # (mount, setns, uid change) demotes us instead of failing every scored sample.
            res = _run(plan, "print('ok')", b"", 10.0, 5, 256, 16, 4, 16)
            if res.returncode == 0 and res.stdout.strip() == "ok":
                chosen = plan
                break
        if chosen is None:
            raise SandboxUnavailable(f"no working sandbox for isolation={isolation!r}")
        _plan_cache[isolation] = chosen
        return chosen


def sandbox_info(isolation: str = "auto") -> dict[str, Any]:
    """Which isolation `run_sandboxed` uses here (probes once per process)."""
    p = _plan(isolation)
    return {
        "mode": p.mode,
        "network": p.network,
        "uid_drop": p.drop_uid,
        "pid_namespace": p.mode in ("namespaces", "userns"),
        "readonly_root": p.mode in ("namespaces", "userns"),
        "python": p.python,
        "label": p.label,
        "notes": list(p.notes),
    }


# --------------------------------------------------------------------------------------------
# the launch path

# Runs as root inside the fresh namespaces, before privileges are dropped. It must only touch the
# private mount namespace; propagation is private so the host never sees any of it.
_STAGE_SH = r"""
set -eu
work=$1 uid=$2 work_mb=$3 hide=$4 expose=$5 hold=$6
shift 6
if [ -n "$hide" ]; then
  mount --bind "$expose" "$hold"
  mount -t tmpfs -o mode=0755,size=1m,nosuid,nodev tmpfs "$hide"
  mkdir -p "$expose"
  mount --move "$hold" "$expose"
fi
owner=""
if [ -n "$uid" ]; then owner=",uid=$uid,gid=$uid"; fi
mount -t tmpfs -o "size=${work_mb}m,nr_inodes=8192,mode=0700,nosuid,nodev$owner" tmpfs "$work"
if [ -d /dev/shm ]; then mount -t tmpfs -o size=4m,mode=1777,nosuid,nodev tmpfs /dev/shm || true; fi
mount -o remount,bind,ro /
while read -r _a _b _c _d mp _rest; do
  case "$mp" in /|/proc|/proc/*|/sys|/sys/*|/dev|/dev/*|"$work") continue;; esac
  mount -o remount,bind,ro "$mp" 2>/dev/null || true
done < /proc/self/mountinfo
cd "$work"
# Stay as the namespace's init rather than exec: the program then gets ordinary signal semantics
# (init ignores its own fatal signals) and its status comes back as the shell's 128+N, which
# unshare passes through (it cannot re-raise SIGKILL on itself).
# dash reports a signalled foreground job ("Killed") on whatever fd 2 is while it waits, so run the
# program as an async job with its redirections applied in the child and wait with fd 2 muted.
set +e
exec 3<&0 4>&2 2>/dev/null
"$@" 0<&3 2>&4 3<&- 4>&- &
wait $!
exit $?
"""

# Started as `python -c _BOOT <code-fd> <guard-json>`. Reads the program from an inherited fd so the
# program's path never has to be reachable by the sandbox uid.
_BOOT = r"""
def _autodeco_boot():
    import os, sys, json
    fd = int(sys.argv[1]); cfg = json.loads(sys.argv[2])
    with open(fd, "rb", closefd=True) as f:
        src = f.read()
    if cfg.get("guard"):
        _autodeco_guard(cfg["root"], cfg.get("confine", True))
    import builtins
    if not hasattr(builtins, "exit"):
        builtins.exit = builtins.quit = sys.exit
    sys.argv = ["solution.py"]
    return compile(src, "solution.py", "exec")

def _autodeco_guard(root, confine):
    import os, sys
    realpath, join, getpid, readlink, getcwd = (
        os.path.realpath, os.path.join, os.getpid, os.readlink, os.getcwd)
    fspath, isabs = os.fspath, os.path.isabs
    root = realpath(root)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    deny_prefix = ("socket.", "subprocess.", "ctypes.", "os.exec", "os.posix_spawn", "os.spawn",
                   "os.system", "os.startfile", "os.forkpty", "pty.", "os.killpg", "os.setns",
                   "os.unshare", "os.pidfd_open", "signal.pidfd_send_signal", "webbrowser.",
                   "ftplib.", "smtplib.", "http.client.", "urllib.", "telnetlib.", "poplib.",
                   "imaplib.", "nntplib.")
    # socket stays importable (other modules import it); creating or resolving is refused above.
    deny_modules = {"_ctypes", "ctypes", "_posixsubprocess"}
    # (path arg index, dir_fd arg index) of events that modify the filesystem.
    path_events = {
        "os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.rename": ((0, 2), (1, 3)),
        "os.link": ((0, 2), (1, 3)), "os.symlink": ((1, 2),), "os.mkdir": ((0, 2),),
        "os.chmod": ((0, 2),), "os.chown": ((0, 3),), "os.utime": ((0, 3),),
        "os.truncate": ((0, None),), "os.mkfifo": ((0, 2),), "os.mknod": ((0, 3),),
        "os.setxattr": ((0, None),), "os.removexattr": ((0, None),), "os.chflags": ((0, None),),
        "shutil.rmtree": ((0, 1),), "shutil.copyfile": ((1, None),), "shutil.move": ((1, None),),
    }
    allowed_devices = {"/dev/null", "/dev/stdout", "/dev/stderr"}

    def inside(path, dir_fd=None):
        if path is None or isinstance(path, int):
            return True  # an fd the program already opened through a checked path
        try:
            p = fspath(path)
            if isinstance(p, bytes):
                p = p.decode("utf-8", "surrogateescape")
            if p in allowed_devices:
                return True
            if not isabs(p):
                base = readlink("/proc/self/fd/%d" % dir_fd) if isinstance(dir_fd, int) else getcwd()
                p = join(base, p)
            p = realpath(p)
        except Exception:
            return False
        return p == root or p.startswith(root + "/")

    def hook(event, args):
        if event.startswith(deny_prefix):
            raise PermissionError("sandbox: %s is not allowed" % event)
        if event == "import" and args and str(args[0]).split(".")[0] in deny_modules:
            raise PermissionError("sandbox: import of %s is not allowed" % args[0])
        if event == "os.kill":
            pid = args[0]
            if pid not in (0, getpid()):
                raise PermissionError("sandbox: signalling other processes is not allowed")
        if not confine:
            return
        if event == "open":
            flags = args[2] if len(args) > 2 else 0
            if isinstance(flags, int) and flags & write_flags and not inside(args[0]):
                raise PermissionError("sandbox: writing outside the working directory")
        spec = path_events.get(event)
        if spec:
            for pi, di in spec:
                p = args[pi] if pi < len(args) else None
                d = args[di] if di is not None and di < len(args) else None
                if not inside(p, d):
                    raise PermissionError("sandbox: %s outside the working directory" % event)

    sys.addaudithook(hook)

_autodeco_code = _autodeco_boot()
del _autodeco_boot, _autodeco_guard
__file__ = "solution.py"
# The real __main__ namespace, so pickling and `import __main__` behave as in a normal script.
exec(globals().pop("_autodeco_code"), globals())
"""


def _set_limits(cpu_s: int, memory_mb: int, file_size_mb: int, nproc: int, nofile: int) -> None:
    def lim(which: int, value: int) -> None:
        try:
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError):
            # Never raise a limit above an existing hard cap; lowering is all we need.
            _soft, hard = resource.getrlimit(which)
            if hard != resource.RLIM_INFINITY and value > hard:
                resource.setrlimit(which, (hard, hard))
            else:
                raise

    lim(resource.RLIMIT_CPU, max(1, int(cpu_s)))
    lim(resource.RLIMIT_AS, memory_mb * 1024 * 1024)
    lim(resource.RLIMIT_FSIZE, file_size_mb * 1024 * 1024)
    lim(resource.RLIMIT_NPROC, nproc)
    lim(resource.RLIMIT_NOFILE, nofile)
    lim(resource.RLIMIT_CORE, 0)
    # Python recursion through C frames (lru_cache, sorted keys) needs more than 8 MiB; glibc
    # also uses this as the default thread stack, so keep it well under the address-space cap.
    lim(resource.RLIMIT_STACK, min(64, max(8, memory_mb // 8)) * 1024 * 1024)
    if hasattr(resource, "RLIMIT_MEMLOCK"):
        lim(resource.RLIMIT_MEMLOCK, 0)
    if hasattr(resource, "RLIMIT_MSGQUEUE"):
        lim(resource.RLIMIT_MSGQUEUE, 0)


def _count_tasks_of(uid: int) -> int:
    n = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    n += len(os.listdir(f"/proc/{pid}/task"))
            except OSError:
                pass
    return n


def _pick_uid() -> tuple[int, bool]:
    """(uid, exclusive). Exclusive uids are safe to sweep with kill(-1)."""
    uid = _UID_BASE + secrets.randbelow(_UID_SPAN)
    if _uid_mapped(uid):
        return uid, True
    return _NOBODY, False


def _live_pids_of(uid: int, exclude: int = 0) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == exclude:
            continue
        try:
            if os.stat(f"/proc/{name}").st_uid != uid:
                continue
            with open(f"/proc/{name}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in (b"Z", b"X"):
            pids.append(int(name))
    return pids


def _sweep_uid(uid: int) -> None:
    """SIGKILL every process owned by `uid`, from a helper that itself runs as `uid`.

    kill(-1) reports success whenever any other process exists (EPERM is not an error there), so
    the helper re-checks /proc and repeats, bounded, until the uid has no live process left: a fork
    bomb can spawn between passes.
    """
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            me = os.getpid()
            end = time.monotonic() + 2.0
            while time.monotonic() < end:
                os.kill(-1, signal.SIGKILL)
                if not _live_pids_of(uid, exclude=me):
                    break
                time.sleep(0.002)
        except BaseException:
            pass
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def _children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        return []


class _Capped:
    """Keeps the head and tail of a stream so a chatty program cannot exhaust our memory."""

    def __init__(self, limit: int | None, head: int = _STDERR_HEAD, tail: int = _STDERR_TAIL):
        self.limit = limit  # None: head/tail mode; int: keep everything up to limit then overflow
        self.head_n, self.tail_n = head, tail
        self.buf = bytearray()
        self.tail = bytearray()
        self.total = 0
        self.overflow = False

    def add(self, data: bytes) -> None:
        self.total += len(data)
        if self.limit is not None:
            room = self.limit - len(self.buf)
            self.buf += data[: max(room, 0)]
            if len(data) > room:
                self.overflow = True
            return
        room = self.head_n - len(self.buf)
        if room > 0:
            self.buf += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > self.tail_n:
                del self.tail[: len(self.tail) - self.tail_n]

    def text(self) -> str:
        out = bytes(self.buf)
        if self.limit is None and self.tail:
            skipped = self.total - len(self.buf) - len(self.tail)
            if skipped > 0:
                out += f"\n...[{skipped} bytes truncated]...\n".encode()
            out += bytes(self.tail)
        return out.decode("utf-8", errors="replace")


def _command(plan: _Plan, base: str, uid: int | None, code_fd: int, guard: dict, work_mb: int) -> list[str]:
    py = [plan.python, "-I", "-S", "-B", "-X", "utf8", "-c", _BOOT, str(code_fd), json.dumps(guard)]
    if plan.mode == "guard":
        return py
    assert plan.unshare and plan.setpriv and plan.shell
    drop = []
    if plan.drop_uid and uid is not None:
        drop = [f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    # setpriv re-arms the parent-death signal after the uid change, which otherwise clears it.
    setpriv = [plan.setpriv, *drop, "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs",
               "--pdeathsig=KILL", "--"]
    ns = ["--mount", "--propagation", "private", "--net", "--ipc", "--uts", "--pid", "--fork",
          "--kill-child"]
    if plan.mode == "userns":
        ns = ["--user", "--map-root-user", *ns]
    stage_args = [os.path.join(base, "work"), str(uid) if plan.drop_uid and uid is not None else "",
                  str(work_mb), plan.hide, plan.expose, os.path.join(base, "hold")]
    return [plan.unshare, *ns, "--", plan.shell, "-c", _STAGE_SH, "sandbox-stage", *stage_args,
            *setpriv, *py]


def _run(
    plan: _Plan,
    code: str,
    stdin: bytes,
    timeout_s: float,
    cpu_s: int,
    memory_mb: int,
    file_size_mb: int,
    max_procs: int,
    max_output_mb: int,
    work_mb: int = 64,
) -> SandboxResult:
    root = os.geteuid() == 0
    uid: int | None = None
    exclusive = False
    if plan.drop_uid and root:
        uid, exclusive = _pick_uid()
    nproc = max_procs
    if not root:
        # RLIMIT_NPROC counts every process of our real uid, not just the sandbox's.
        nproc = _count_tasks_of(os.getuid()) + max_procs
    # Namespaced runs need a few extra tasks for unshare/sh/setpriv before the program starts.
    if plan.mode != "guard" and not plan.drop_uid:
        nproc += 4

    base = tempfile.mkdtemp(prefix="autodeco-sbx-")
    work = os.path.join(base, "work")
    os.mkdir(work, 0o700)
    os.mkdir(os.path.join(base, "hold"), 0o700)
    if uid is not None and plan.mode == "guard":
        os.chown(work, uid, uid)
    guard = {"guard": plan.mode == "guard", "root": work, "confine": True}

    code_file = tempfile.TemporaryFile()
    code_file.write(code.encode("utf-8", errors="surrogatepass"))
    code_file.flush()
    code_file.seek(0)
    # Low fds are the stage shell's scratch space (it juggles 3 and 4), so hand the code over above.
    code_fd = fcntl.fcntl(code_file.fileno(), fcntl.F_DUPFD_CLOEXEC, 10)

    env = {
        "PATH": _SAFE_PATH,
        "HOME": work,
        "TMPDIR": work,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONIOENCODING": "utf-8",
        "PYTHONNOUSERSITE": "1",
    }
    cmd = _command(plan, base, uid, code_fd, guard, work_mb)

    def preexec() -> None:
        _set_limits(cpu_s, memory_mb, file_size_mb, nproc, 64)

    popen_kw: dict[str, Any] = {}
    if plan.mode == "guard" and uid is not None:
        popen_kw.update(user=uid, group=uid, extra_groups=[])

    out = _Capped(max_output_mb * 1024 * 1024)
    err = _Capped(None)
    timed_out = False
    start = time.monotonic()
    deadline = start + timeout_s
    proc = None
    rc: int | None = None
    rusage = None
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=work,
            env=env,
            start_new_session=True,
            preexec_fn=preexec,
            pass_fds=(code_fd,),
            umask=0o077,
            close_fds=True,
            **popen_kw,
        )
        code_file.close()
        os.close(code_fd)
        code_fd = -1
        timed_out, must_kill = _pump(proc, stdin, out, err, deadline)
        if must_kill:
            _kill_everything(proc, plan, uid, exclusive)
            rc, rusage = _reap(proc, time.monotonic() + 5)
        else:
            rc, rusage = _reap(proc, deadline)
            if rc is None:
                # Pipes closed but the process lingers (e.g. it closed fds 1 and 2 and kept going).
                timed_out = True
                _kill_everything(proc, plan, uid, exclusive)
                rc, rusage = _reap(proc, time.monotonic() + 5)
        if plan.mode == "guard" and exclusive and uid is not None:
            # Without a pid namespace a double-forked, setsid()ed child outlives the group kill.
            _sweep_uid(uid)
    finally:
        if not code_file.closed:
            code_file.close()
        if code_fd >= 0:
            os.close(code_fd)
        if proc is not None:
            for s in (proc.stdin, proc.stdout, proc.stderr):
                try:
                    if s:
                        s.close()
                except OSError:
                    pass
            if proc.returncode is None:
                _kill_everything(proc, plan, uid, exclusive)
                _reap(proc, time.monotonic() + 5)
        shutil.rmtree(base, ignore_errors=True)

    wall = time.monotonic() - start
    if plan.mode != "guard" and rc is not None and rc > 128 and _is_signal(rc - 128):
        rc = -(rc - 128)
    cpu = (rusage.ru_utime + rusage.ru_stime) if rusage is not None else 0.0
    stderr = err.text()
    reason = _killed_reason(rc, timed_out, out.overflow, cpu, cpu_s, stderr)
    return SandboxResult(
        returncode=rc,
        stdout=out.text(),
        stderr=stderr,
        timed_out=timed_out,
        killed_reason=reason,
        isolation=plan.label,
        wall_s=wall,
        cpu_s=cpu,
        uid=uid,
    )


def _is_signal(n: int) -> bool:
    try:
        signal.Signals(n)
    except ValueError:
        return False
    return True


def _exited(pid: int) -> bool:
    """Whether `pid` has exited, without reaping it (so wait4 still gets its rusage)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


_LINGER_S = 0.3


def _pump(proc: subprocess.Popen, stdin: bytes, out: _Capped, err: _Capped, deadline: float) -> tuple[bool, bool]:
    """Feed stdin and drain stdout/stderr until EOF, the deadline, or the output cap.

    Returns (timed_out, must_kill). A background process that inherited the pipes would keep them
    open after the program itself finished; once the direct child is gone we only wait a moment
    for the rest of its output, then report must_kill without calling it a time-out.
    """
    sel = selectors.DefaultSelector()
    assert proc.stdin and proc.stdout and proc.stderr
    pending = memoryview(stdin)
    if pending:
        os.set_blocking(proc.stdin.fileno(), False)
        sel.register(proc.stdin, selectors.EVENT_WRITE)
    else:
        proc.stdin.close()
    sel.register(proc.stdout, selectors.EVENT_READ, out)
    sel.register(proc.stderr, selectors.EVENT_READ, err)
    linger_until: float | None = None
    try:
        while sel.get_map():
            now = time.monotonic()
            if now >= deadline:
                return True, True
            if linger_until is None and _exited(proc.pid):
                linger_until = now + _LINGER_S
            if linger_until is not None and now >= linger_until:
                return False, True
            wait = min(deadline, linger_until or deadline) - now
            for key, _ev in sel.select(min(wait, 0.25)):
                if key.fileobj is proc.stdin:
                    try:
                        n = os.write(key.fd, pending[:65536])
                    except BlockingIOError:
                        continue
                    except OSError:  # the program closed stdin or exited: drop the rest
                        n = len(pending)
                    pending = pending[n:]
                    if not pending:
                        sel.unregister(proc.stdin)
                        proc.stdin.close()
                    continue
                data = os.read(key.fd, 65536)
                if not data:
                    sel.unregister(key.fileobj)
                    continue
                key.data.add(data)
                if key.data.overflow:
                    return False, True
        return False, False
    finally:
        sel.close()


def _reap(proc: subprocess.Popen, deadline: float) -> tuple[int | None, Any]:
    """(exit code as Popen reports it, rusage) or (None, None) if still running at `deadline`."""
    if proc.returncode is not None:
        return proc.returncode, None
    while True:
        try:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:
            proc.returncode = -signal.SIGKILL
            return proc.returncode, None
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, rusage
        if time.monotonic() >= deadline:
            return None, None
        time.sleep(0.005)


def _kill_everything(proc: subprocess.Popen, plan: _Plan, uid: int | None, exclusive: bool) -> None:
    # The namespace's init is the only process that matters there (its death takes the namespace
    # with it), and it may have left our process group or cleared its parent-death signal.
    for child in _children_of(proc.pid):
        try:
            os.kill(child, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if exclusive and uid is not None:
        _sweep_uid(uid)


def _killed_reason(rc: int | None, timed_out: bool, overflow: bool, cpu: float, cpu_limit: int, stderr: str) -> str | None:
    if timed_out:
        return "timeout"
    if overflow:
        return "output_limit"
    if rc is None or rc == 0:
        return None
    tail = stderr[-2000:]
    if rc < 0:
        sig = -rc
        if sig in (signal.SIGXCPU, signal.SIGKILL) and cpu >= cpu_limit * 0.9:
            return "cpu"
        if sig == signal.SIGXFSZ:
            return "file_size"
        try:
            return f"signal:{signal.Signals(sig).name}"
        except ValueError:
            return f"signal:{sig}"
    if "MemoryError" in tail:
        return "memory"
    if "File too large" in tail:
        return "file_size"
    if "No space left on device" in tail:
        return "disk_full"
    return None


def run_sandboxed(
    code: str,
    stdin: str = "",
    *,
    timeout_s: float = 6.0,
    cpu_s: int = 4,
    memory_mb: int = 512,
    max_procs: int = 32,
    file_size_mb: int = 8,
    max_output_mb: int = 32,
    work_mb: int = 64,
    isolation: str = "auto",
) -> SandboxResult:
    """Run `code` as a Python program with `stdin`, under the strongest available isolation.

    `killed_reason` is one of None, "timeout" (wall clock), "cpu", "memory", "file_size",
    "disk_full" (the tmpfs working directory), "output_limit" or "signal:NAME". `isolation` may
    force "namespaces", "userns" or "guard" (mainly for tests); "auto" picks the strongest that
    works and raises SandboxUnavailable only if none does.
    """
    plan = _plan(isolation)
    return _run(plan, code, stdin.encode("utf-8", errors="surrogatepass"), float(timeout_s),
                int(cpu_s), int(memory_mb), int(file_size_mb), int(max_procs), int(max_output_mb),
                int(work_mb))


# --------------------------------------------------------------------------------------------
# LiveCodeBench scoring

# LiveCodeBench executes every solution after these imports (so solutions may use e.g. `deque` or
# `gcd` without importing them) and with a raised recursion limit; a faithful score needs the same.
_LCB_STAR_MODULES = (
    "string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math", "random",
    "statistics", "itertools", "functools", "operator", "io", "sys", "json", "builtins", "typing",
)
_LCB_PRELUDE = (
    "".join(f"from {m} import *\n" for m in _LCB_STAR_MODULES)
    + "".join(f"import {m}\n" for m in _LCB_STAR_MODULES if m not in ("builtins", "typing"))
    + "sys.setrecursionlimit(50000)\n"
)

# stdin problems: the solution runs as __main__; like LCB, SystemExit is a normal end of the program.
_STDIN_WRAPPER = """\
exec({prelude!r}, globals())
try:
    exec(compile({src!r}, "solution.py", "exec"), globals())
except SystemExit:
    pass
"""

# functional (LeetCode) problems: instantiate Solution, call the method on the JSON-decoded args
# (one per line), turn a tuple result into a list and compare with ==, as LCB does. The verdict
# goes to a private dup of stdout; the solution's own prints are diverted to stderr.
_FUNCTIONAL_WRAPPER = """\
import os as _o, json as _j
_out = _o.fdopen(_o.dup(1), "w")
_o.dup2(2, 1)
_src = {src!r}
_g = {{"__name__": "tmp_sol", "__builtins__": __builtins__}}
exec({prelude!r}, _g)
exec(compile(_src, "solution.py", "exec"), _g)
if "class Solution" in _src:
    _fn = getattr(_g["Solution"](), {func!r})
else:
    _fn = _g[{func!r}]
_args = [_j.loads(_l) for _l in {args!r}.split("\\n") if _l.strip()]
_exp = _j.loads({expected!r})
_res = _fn(*_args)
if isinstance(_res, tuple):
    _res = list(_res)
_ok = bool(_res == _exp)
_out.write({mark!r} + _j.dumps({{"ok": _ok, "got": repr(_res)[:300]}}) + "\\n")
_out.flush()
"""


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().split("\n")]


def _as_decimals(line: str) -> list[Decimal] | None:
    try:
        return [Decimal(tok) for tok in line.split()]
    except (InvalidOperation, ValueError):
        return None


def _stdout_matches(got: str, expected: str) -> bool:
    """LCB: strip, split lines, strip each; equal line counts; each line equal verbatim or as
    whitespace-separated Decimals (exact, so 1e17 and 1e17+1 still differ)."""
    g, e = _lines(got), _lines(expected)
    if len(g) != len(e):
        return False
    for gl, el in zip(g, e):
        if gl == el:
            continue
        gd, ed = _as_decimals(gl), _as_decimals(el)
        if gd is None or ed is None or gd != ed:
            return False
    return True


def _func_name(meta: dict[str, Any]) -> str | None:
    name = meta.get("func_name")
    md = meta.get("metadata")
    if not name and isinstance(md, str):
        try:
            md = json.loads(md)
        except ValueError:
            md = None
    if not name and isinstance(md, dict):
        name = md.get("func_name")
    if not name and meta.get("starter_code"):
        m = re.search(r"def\s+(\w+)\s*\(\s*self", meta["starter_code"])
        name = m.group(1) if m else None
    return name or None


def _tests(meta: dict[str, Any]) -> list[dict[str, Any]]:
    tests = meta.get("public_test_cases") or []
    if isinstance(tests, str):
        tests = json.loads(tests)
    return list(tests)


def _run_one_test(code: str, test: dict[str, Any], func: str | None, limits: dict[str, Any]) -> tuple[bool, SandboxResult]:
    kind = test.get("testtype", "stdin")
    if kind == "functional":
        if not func:
            return False, SandboxResult(None, "", "no func_name for a functional test", False)
        mark = f"@@autodeco-verdict-{secrets.token_hex(8)}@@"
        program = _FUNCTIONAL_WRAPPER.format(
            src=code, prelude=_LCB_PRELUDE, func=func, args=test["input"],
            expected=test["output"], mark=mark,
        )
        res = run_sandboxed(program, "", **limits)
        if res.returncode != 0 or res.timed_out:
            return False, res
        verdicts = [ln for ln in res.stdout.splitlines() if ln.startswith(mark)]
        if not verdicts:
            return False, res
        try:
            return bool(json.loads(verdicts[-1][len(mark):])["ok"]), res
        except (ValueError, KeyError, TypeError):
            return False, res
    program = _STDIN_WRAPPER.format(prelude=_LCB_PRELUDE, src=code)
    res = run_sandboxed(program, test.get("input", ""), **limits)
    if res.returncode != 0 or res.timed_out or res.killed_reason:
        return False, res
    return _stdout_matches(res.stdout, test.get("output", "")), res


def score_code(doc: Doc, completion_text: str, **limits: Any) -> Score:
    """pass@1 on the public tests: correct only if the extracted program passes every one.

    Tests run one process each. After a time-out the remaining tests are not run (they count as
    failed): a program that exceeds the limit once will almost surely do so again, and each try
    costs the full wall-clock limit. `limits` are forwarded to `run_sandboxed`.
    """
    tests = _tests(doc.meta)
    total = len(tests)
    code = extract_code(completion_text)
    metrics: dict[str, float] = {"tests_passed": 0.0, "tests_total": float(total), "timed_out": 0.0}
    if code is None:
        return Score(correct=False, extracted=None, metrics=metrics)
    func = _func_name(doc.meta)
    passed = 0
    for test in tests:
        ok, res = _run_one_test(code, test, func, limits)
        passed += ok
        if res.timed_out or res.killed_reason == "cpu":
            metrics["timed_out"] = 1.0
            break
    metrics["tests_passed"] = float(passed)
    return Score(correct=total > 0 and passed == total, extracted=code, metrics=metrics)
