"""Running one sandboxed job as a process tree: spawn it, pump its pipes, reap it, kill what is left.

A job is the JSON that harness.py reads (program text, and for calls the arguments). It reaches
the child through an inherited fd (never a path the sandbox could see), stdin/stdout/stderr are
pipes, and a separate pipe carries the harness's result claim. Everything the child sends back is
size-capped here; the verdict is decided by the caller on what `run_job` returns.
"""

from __future__ import annotations

import json
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .isolation import SAFE_PATH, Plan
from .limits import Limits, apply_rlimits

# A high, random uid per run: it owns nothing on the host, its process count starts at zero, and
# "kill every process of this uid" can only hit processes this run started.
_UID_BASE = 1_900_000_000
_UID_SPAN = 200_000_000
_NOBODY = 65534
_STDERR_HEAD = 4096
_STDERR_TAIL = 12288
_LINGER_S = 0.3
_STAGE_FAILED = 125

_HERE = Path(__file__).resolve().parent
HARNESS_SRC = (_HERE / "harness.py").read_text(encoding="utf-8")
STAGE_SRC = (_HERE / "stage.py").read_text(encoding="utf-8")


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
    channel: str = ""  # what arrived on the results pipe (a claim, see harness.py)


class Capped:
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


# --------------------------------------------------------------------------------------------
# the run


def run_job(plan: Plan, job: dict[str, Any], stdin: bytes, limits: Limits) -> SandboxResult:
    """Run one job under `plan` and `limits`; never raises for anything the program does."""
    uid, exclusive = pick_uid(plan)
    base = tempfile.mkdtemp(prefix="autodeco-sbx-")
    out, err, chan = Capped(limits.max_output_mb << 20), Capped(None), Capped(limits.max_output_mb << 20)
    start = time.monotonic()
    fds: list[int] = []
    proc = None
    try:
        job_fd = _job_fd({**job, **_guard_workdir(plan, base, uid)})
        fds.append(job_fd)
        res_r, res_w = os.pipe()
        fds += [res_r, res_w]
        argv, env, cwd, popen_kw = _launch(plan, base, uid, limits, job_fd, res_w)
        proc = spawn(argv, env, cwd, limits, _nproc(plan, limits), (job_fd, res_w), popen_kw)
        for fd in (job_fd, res_w):  # the child has its copies; ours would keep the pipe open
            os.close(fd)
            fds.remove(fd)
        sinks = {proc.stdout.fileno(): out, proc.stderr.fileno(): err, res_r: chan}
        timed_out, rc, rusage = _supervise(proc, stdin, sinks, start + limits.timeout_s, plan, uid, exclusive)
    finally:
        for fd in fds:
            os.close(fd)
        if proc is not None:
            _cleanup(proc, plan, uid, exclusive)
        shutil.rmtree(base, ignore_errors=True)
    return _result(plan, uid, limits, rc, rusage, timed_out, out, err, chan, time.monotonic() - start)


def _supervise(
    proc: subprocess.Popen,
    stdin: bytes,
    sinks: dict[int, Capped],
    deadline: float,
    plan: Plan,
    uid: int | None,
    exclusive: bool,
) -> tuple[bool, int | None, Any]:
    """Pump until done, then reap; kill everything on a time-out, an overflow or a lingerer."""
    timed_out, must_kill = pump(proc, stdin, sinks, deadline)
    if not must_kill:
        rc, rusage = reap(proc, deadline)
        if rc is not None:
            return timed_out, rc, rusage
        # Pipes closed but the process lingers (e.g. it closed fds 1 and 2 and kept going).
        timed_out = True
    kill_everything(proc, plan, uid, exclusive)
    rc, rusage = reap(proc, time.monotonic() + 5)
    return timed_out, rc, rusage


def _result(
    plan: Plan,
    uid: int | None,
    limits: Limits,
    rc: int | None,
    rusage: Any,
    timed_out: bool,
    out: Capped,
    err: Capped,
    chan: Capped,
    wall: float,
) -> SandboxResult:
    if plan.fresh_root and rc is not None and rc > 128 and _is_signal(rc - 128):
        rc = -(rc - 128)  # the stage reports a signalled program as 128+N, like a shell
    cpu = (rusage.ru_utime + rusage.ru_stime) if rusage is not None else 0.0
    stderr = err.text()
    reason = killed_reason(rc, timed_out, out.overflow or chan.overflow, cpu, limits.cpu_s, stderr)
    if plan.fresh_root and rc == _STAGE_FAILED and "sandbox-stage:" in stderr:
        reason = "sandbox_error"
    return SandboxResult(rc, out.text(), stderr, timed_out, reason, plan.label, wall, cpu, uid, chan.text())


# --------------------------------------------------------------------------------------------
# spawn


def _guard_workdir(plan: Plan, base: str, uid: int | None) -> dict[str, str]:
    """Guard mode runs on the host: make its working directory, and tell the harness's audit hook."""
    if plan.mode != "guard":
        return {}
    work = os.path.join(base, "work")
    os.mkdir(work, 0o700)
    if uid is not None:
        os.chown(work, uid, uid)
        # Absolute paths into the working directory (tempfile uses them) must resolve for the
        # throw-away uid: let it traverse, not list, the mkdtemp parent.
        os.chmod(base, 0o711)
    return {"guard_root": work}


def _job_fd(job: dict[str, Any]) -> int:
    """The job as an anonymous file the child inherits: no path to it exists for the sandbox."""
    with tempfile.TemporaryFile() as f:
        f.write(json.dumps(job).encode("utf-8", errors="surrogatepass"))
        f.flush()
        f.seek(0)
        return os.dup(f.fileno())  # shares the offset (0); the file lives while any fd does


def _launch(
    plan: Plan, base: str, uid: int | None, limits: Limits, job_fd: int, res_w: int
) -> tuple[list[str], dict[str, str], str, dict[str, Any]]:
    """(argv, env, cwd, extra Popen kwargs) for `plan`."""
    harness = [plan.python, "-I", "-S", "-B", "-X", "utf8", "-c", HARNESS_SRC, str(job_fd), str(res_w)]
    if plan.mode == "guard":
        work = os.path.join(base, "work")
        kw = {"user": uid, "group": uid, "extra_groups": []} if uid is not None else {}
        return harness, _program_env(work, work), work, kw
    assert plan.layout is not None
    ids = (uid, uid) if uid is not None else (os.getuid(), os.getgid())
    # Inside, the working directory is a fresh name on the private /tmp; it never exists on the host.
    cwd = "/tmp/" + os.path.basename(base)
    os.mkdir(os.path.join(base, "root"), 0o700)
    cfg = {
        "userns": plan.mode == "userns",
        "drop_uid": uid is not None,
        "uid": ids[0],
        "gid": ids[1],
        "root": os.path.join(base, "root"),
        "cwd": cwd,
        "tmp_mb": limits.work_mb,
        "binds": plan.layout.binds,
        "symlinks": plan.layout.symlinks,
        "hide": plan.layout.hide,
        "devices": plan.layout.devices,
        "keep_fds": [job_fd, res_w],
        "argv": harness,
        "env": _program_env(cwd, "/tmp"),
    }
    stage = [plan.python, "-I", "-S", "-B", "-c", STAGE_SRC, json.dumps(cfg)]
    return stage, {"PATH": SAFE_PATH, "LC_ALL": "C.UTF-8"}, base, {}


def _program_env(home: str, tmpdir: str) -> dict[str, str]:
    return {
        "PATH": SAFE_PATH,
        "HOME": home,
        "TMPDIR": tmpdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONIOENCODING": "utf-8",
        "PYTHONNOUSERSITE": "1",
    }


def spawn(
    argv: list[str],
    env: dict[str, str],
    cwd: str,
    limits: Limits,
    nproc: int,
    pass_fds: tuple[int, ...],
    popen_kw: dict[str, Any],
) -> subprocess.Popen:
    """Start the child in its own session with every rlimit applied before exec."""
    return subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=env,
        start_new_session=True,
        preexec_fn=lambda: apply_rlimits(limits, nproc),
        pass_fds=pass_fds,
        umask=0o077,
        close_fds=True,
        **popen_kw,
    )


def pick_uid(plan: Plan) -> tuple[int | None, bool]:
    """(uid, exclusive) for the program. Exclusive uids are safe to sweep with kill(-1)."""
    if not (plan.drop_uid and os.geteuid() == 0):
        return None, False
    uid = _UID_BASE + secrets.randbelow(_UID_SPAN)
    if _uid_mapped(uid):
        return uid, True
    return _NOBODY, False


def _nproc(plan: Plan, limits: Limits) -> int:
    if os.geteuid() == 0:
        return limits.max_procs
    # RLIMIT_NPROC counts every process of our real uid, not just the sandbox's; the stage adds
    # two of its own (P0 and P1) before the program starts.
    return _count_tasks_of(os.getuid()) + limits.max_procs + (2 if plan.fresh_root else 0)


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


# --------------------------------------------------------------------------------------------
# pump


def pump(proc: subprocess.Popen, stdin: bytes, sinks: dict[int, Capped], deadline: float) -> tuple[bool, bool]:
    """Feed stdin and drain every fd in `sinks` until EOF, the deadline, or an output cap.

    Returns (timed_out, must_kill). A background process that inherited the pipes would keep them
    open after the program itself finished; once the direct child is gone we only wait a moment
    for the rest of its output, then report must_kill without calling it a time-out.
    """
    sel = selectors.DefaultSelector()
    assert proc.stdin is not None
    pending = memoryview(stdin)
    if pending:
        os.set_blocking(proc.stdin.fileno(), False)
        sel.register(proc.stdin.fileno(), selectors.EVENT_WRITE)
    else:
        proc.stdin.close()
    for fd, sink in sinks.items():
        sel.register(fd, selectors.EVENT_READ, sink)
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
                if key.data is None:
                    pending = _feed(sel, proc, key.fd, pending)
                    continue
                data = os.read(key.fd, 65536)
                if not data:
                    sel.unregister(key.fd)
                    continue
                key.data.add(data)
                if key.data.overflow:
                    return False, True
        return False, False
    finally:
        sel.close()


def _feed(sel: selectors.BaseSelector, proc: subprocess.Popen, fd: int, pending: memoryview) -> memoryview:
    try:
        n = os.write(fd, pending[:65536])
    except BlockingIOError:
        return pending
    except OSError:  # the program closed stdin or exited: drop the rest
        n = len(pending)
    pending = pending[n:]
    if not pending:
        sel.unregister(fd)
        assert proc.stdin is not None
        proc.stdin.close()
    return pending


def _exited(pid: int) -> bool:
    """Whether `pid` has exited, without reaping it (so wait4 still gets its rusage)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


# --------------------------------------------------------------------------------------------
# reap and kill


def reap(proc: subprocess.Popen, deadline: float) -> tuple[int | None, Any]:
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


def kill_everything(proc: subprocess.Popen, plan: Plan, uid: int | None, exclusive: bool) -> None:
    # With a fresh root the namespace's init (our child's child) is the one that matters: its
    # death takes the whole pid namespace with it, even processes that left our process group.
    for child in _children_of(proc.pid):
        try:
            os.kill(child, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if plan.mode == "guard" and exclusive and uid is not None:
        # Without a pid namespace a double-forked, setsid()ed child outlives the group kill.
        sweep_uid(uid)


def _cleanup(proc: subprocess.Popen, plan: Plan, uid: int | None, exclusive: bool) -> None:
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        try:
            if stream:
                stream.close()
        except OSError:
            pass
    if proc.returncode is None:
        kill_everything(proc, plan, uid, exclusive)
        reap(proc, time.monotonic() + 5)
    elif plan.mode == "guard" and exclusive and uid is not None:
        sweep_uid(uid)


def _children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        return []


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


def sweep_uid(uid: int) -> None:
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


def _is_signal(n: int) -> bool:
    try:
        signal.Signals(n)
    except ValueError:
        return False
    return True


def killed_reason(
    rc: int | None, timed_out: bool, overflow: bool, cpu: float, cpu_limit: int, stderr: str
) -> str | None:
    """None, "timeout", "output_limit", "cpu", "memory", "file_size", "disk_full" or "signal:NAME"."""
    if timed_out:
        return "timeout"
    if overflow:
        return "output_limit"
    if rc is None or rc == 0:
        return None
    if rc < 0:
        sig = -rc
        # SIGXCPU comes only from RLIMIT_CPU. A SIGKILL is the hard limit a second later when the
        # program caught SIGXCPU; rusage's time then reads low under load (see limits.apply_rlimits)
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= cpu_limit * 0.5):
            return "cpu"
        if sig == signal.SIGXFSZ:
            return "file_size"
        try:
            return f"signal:{signal.Signals(sig).name}"
        except ValueError:
            return f"signal:{sig}"
    tail = stderr[-2000:]
    if "MemoryError" in tail:
        return "memory"
    if "File too large" in tail:
        return "file_size"
    if "No space left on device" in tail:
        return "disk_full"
    return None
