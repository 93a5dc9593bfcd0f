"""Tests for the LiveCodeBench sandbox: scoring conventions and hostile programs.

Hostile tests run under every isolation mode this machine offers (the strongest one, which
`score_code` uses, and the audit-hook fallback), and each asserts an observable effect on the host
(a file, a listening socket, a process, this very pytest process) rather than just an exit code.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import textwrap
import time
from pathlib import Path

import pytest

from autodeco_cli.tasks.sandbox import run_sandboxed, sandbox_info, score_code
from autodeco_cli.tasks.sandbox.isolation import SandboxUnavailable
from autodeco_cli.tasks.sandbox.livecodebench import extract_code
from autodeco_cli.tasks.types import Doc

MODES = ["namespaces", "userns", "guard"]


def _available(mode: str) -> bool:
    try:
        sandbox_info(mode)
    except SandboxUnavailable:
        return False
    return True


@pytest.fixture(params=MODES)
def mode(request) -> str:
    if not _available(request.param):
        pytest.skip(f"isolation {request.param!r} not available here")
    return request.param


def _procs_of(uid: int | None, settle_s: float = 2.0) -> list[int]:
    """Live (non-zombie) processes of `uid`, polling briefly: SIGKILL is not instantaneous."""
    if uid is None:
        return []
    end = time.monotonic() + settle_s
    while True:
        pids = []
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                if os.stat(f"/proc/{name}").st_uid != uid:
                    continue
                with open(f"/proc/{name}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state not in ("Z", "X"):
                pids.append(int(name))
        if not pids or time.monotonic() >= end:
            return pids
        time.sleep(0.05)


def _doc(tests, func_name=None, starter=""):
    return Doc(
        doc_id="t",
        prompt="",
        gold=None,
        meta={"public_test_cases": tests, "starter_code": starter, "func_name": func_name},
    )


def _fenced(code: str) -> str:
    return "Here you go:\n```python\n" + textwrap.dedent(code).strip() + "\n```\n"


# ----------------------------------------------------------------------------------------------
# extract_code


@pytest.mark.parametrize(
    "text,expected",
    [
        ("```python\nprint(1)\n```", "print(1)"),
        ("a\n```python\nprint(1)\n```\nthen\n```python\nprint(2)\n```\nend", "print(2)"),
        # a later non-python block (e.g. sample output) must not win over the python one
        ("```python\nprint(3)\n```\n```text\n3\n```", "print(3)"),
        ("```\nprint(4)\n```", "print(4)"),
        ("```py\nx = 5\n```", "x = 5"),
        ("   ```python\n   if x:\n       y()\n   ```", "if x:\n    y()"),
        ("no code here", None),
        ("```python\nprint('unterminated')", None),
        ("```python\n\n```", None),
        ("", None),
    ],
)
def test_extract_code(text, expected):
    assert extract_code(text) == expected


# ----------------------------------------------------------------------------------------------
# scoring conventions


def test_isolation_report():
    info = sandbox_info()
    assert info["mode"] in MODES
    if os.geteuid() == 0 and shutil.which("unshare") and shutil.which("setpriv"):
        # Root with util-linux should never silently fall back to the weaker guard.
        assert info["mode"] == "namespaces", info
        assert info["network"] == "netns" and info["uid_drop"]


def test_stdin_program_passes_and_wrong_output_fails():
    tests = [
        {"input": "3 4\n", "output": "7\n", "testtype": "stdin"},
        {"input": "10 -2\n", "output": "8", "testtype": "stdin"},
    ]
    good = score_code(_doc(tests), _fenced("a, b = map(int, input().split())\nprint(a + b)"))
    assert good.correct
    assert good.metrics["tests_passed"] == 2 and good.metrics["tests_total"] == 2
    assert good.extracted.startswith("a, b")

    bad = score_code(_doc(tests), _fenced("a, b = map(int, input().split())\nprint(a * b - 5)"))
    # 3*4-5 == 7 passes the first test only: partial credit is reported, pass@1 is not given.
    assert not bad.correct
    assert bad.metrics["tests_passed"] == 1


def test_stdin_comparison_follows_livecodebench():
    tests = [{"input": "", "output": "1.5 2\nyes\n", "testtype": "stdin"}]
    # trailing spaces, \r\n and numerically equal decimals are accepted
    assert score_code(_doc(tests), _fenced("print('1.50  2.0 \\r')\nprint('yes  ')")).correct
    # an extra line, a different token or a float that differs in the last digit are not
    assert not score_code(_doc(tests), _fenced("print('1.5 2')\nprint('yes')\nprint()\nprint('x')")).correct
    assert not score_code(_doc(tests), _fenced("print('1.5 2')\nprint('Yes')")).correct
    assert not score_code(_doc(tests), _fenced("print('1.5000001 2')\nprint('yes')")).correct


def test_stdin_conventions_prelude_sysexit_and_crash():
    tests = [{"input": "5\n", "output": "5\n", "testtype": "stdin"}]
    # LCB pre-imports collections/math/... and treats SystemExit as a normal end
    assert score_code(_doc(tests), _fenced("d = deque([int(input())])\nprint(gcd(d[0], 10))\nexit(3)")).correct
    # output followed by an exception is a runtime error
    assert not score_code(_doc(tests), _fenced("print(5)\nraise ValueError")).correct


def test_no_code_block_is_unparseable():
    score = score_code(_doc([{"input": "", "output": "1", "testtype": "stdin"}]), "print(1)")
    assert score.correct is False and score.extracted is None
    assert score.metrics["tests_total"] == 1 and score.metrics["tests_passed"] == 0


def test_functional_passes_and_fails():
    tests = [
        {"input": "[1, 2, 3]\n2", "output": "[3, 4, 5]", "testtype": "functional"},
        {"input": "[]\n7", "output": "[]", "testtype": "functional"},
    ]
    good = """
    class Solution:
        def addAll(self, nums: List[int], k: int) -> List[int]:
            print("debug output must not confuse the verdict")
            return tuple(x + k for x in nums)
    """
    s = score_code(_doc(tests, "addAll"), _fenced(good))
    assert s.correct and s.metrics["tests_passed"] == 2

    wrong = """
    class Solution:
        def addAll(self, nums, k):
            return [x + k + 1 for x in nums]
    """
    s = score_code(_doc(tests, "addAll"), _fenced(wrong))
    assert not s.correct and s.metrics["tests_passed"] == 1  # the empty list still matches

    crash = "class Solution:\n    def addAll(self, nums, k):\n        return nums[10]"
    assert not score_code(_doc(tests, "addAll"), _fenced(crash)).correct
    # func_name falls back to the starter code when metadata lacks it
    s = score_code(_doc(tests, None, starter="class Solution:\n    def addAll(self, nums, k):\n"), _fenced(good))
    assert s.correct


def test_functional_cannot_fake_verdict_with_prints():
    tests = [{"input": "1", "output": "2", "testtype": "functional"}]
    cheat = """
    import sys
    print('{"ok": true}')
    sys.__stdout__.write('{"ok": true}\\n')
    class Solution:
        def f(self, x):
            return 0
    """
    assert not score_code(_doc(tests, "f"), _fenced(cheat)).correct


def test_timeout_stops_remaining_tests():
    tests = [{"input": "", "output": "1", "testtype": "stdin"}] * 3
    t0 = time.monotonic()
    s = score_code(_doc(tests), _fenced("while True: pass"), timeout_s=1.0, cpu_s=5)
    assert time.monotonic() - t0 < 4.0  # one time-out, not three
    assert not s.correct and s.metrics["timed_out"] == 1.0


# ----------------------------------------------------------------------------------------------
# hostile programs


def test_basic_run_and_limits_report(mode):
    r = run_sandboxed("import os, sys\nprint(sys.stdin.read().upper(), os.getcwd())", "hi", isolation=mode)
    assert r.returncode == 0 and r.stdout.startswith("HI ")
    assert r.isolation.startswith(mode)
    cwd = r.stdout.split()[1]
    assert not os.path.exists(cwd), "the working directory must be removed afterwards"


def test_infinite_loop_times_out(mode):
    t0 = time.monotonic()
    r = run_sandboxed("while True:\n    pass", timeout_s=1.5, cpu_s=10, isolation=mode)
    assert r.timed_out and r.killed_reason == "timeout"
    assert time.monotonic() - t0 < 4.0
    assert _procs_of(r.uid) == []


def test_sleeping_program_times_out(mode):
    r = run_sandboxed("import time\ntime.sleep(60)", timeout_s=1.0, isolation=mode)
    assert r.timed_out and r.wall_s < 3.0


def test_cpu_limit(mode):
    # CPU time, not wall time: on 2 cores shared with other runs a second of CPU can take many
    # seconds of wall time. The limit stops it at 1 s of CPU by the kernel's count, long before the
    # wall-clock timeout; rusage can read as little as ~0.7 s of it under load (limits.apply_rlimits).
    r = run_sandboxed("while True:\n    pass", timeout_s=120, cpu_s=1, isolation=mode)
    assert not r.timed_out and r.killed_reason == "cpu" and r.returncode == -signal.SIGXCPU
    assert 0.5 <= r.cpu_s < 3.0, r.cpu_s


def test_cpu_limit_of_a_program_that_catches_sigxcpu(mode):
    program = "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass"
    r = run_sandboxed(program, timeout_s=120, cpu_s=1, isolation=mode)
    assert not r.timed_out and r.killed_reason == "cpu" and r.returncode == -signal.SIGKILL
    assert r.cpu_s < 4.0, r.cpu_s


def test_fork_bomb(mode):
    bomb = textwrap.dedent(
        """
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """
    )
    t0 = time.monotonic()
    r = run_sandboxed(bomb, timeout_s=2.0, cpu_s=3, max_procs=16, isolation=mode)
    assert time.monotonic() - t0 < 6.0
    assert r.timed_out or r.killed_reason
    assert _procs_of(r.uid) == [], "fork bomb survivors"
    # the machine is still usable
    ok = run_sandboxed("print(sum(range(10)))", isolation=mode)
    assert ok.returncode == 0 and ok.stdout.strip() == "45" and ok.wall_s < 3.0


def test_detached_daemon_is_killed(mode):
    prog = textwrap.dedent(
        """
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(120)
            os._exit(0)
        print("main done", flush=True)
        """
    )
    t0 = time.monotonic()
    r = run_sandboxed(prog, timeout_s=8.0, isolation=mode)
    assert time.monotonic() - t0 < 4.0, "must not wait for the daemon"
    assert r.returncode == 0 and "main done" in r.stdout and not r.timed_out
    assert _procs_of(r.uid) == []


def test_memory_bomb(mode):
    prog = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024 * 1024))"
    t0 = time.monotonic()
    r = run_sandboxed(prog, timeout_s=10.0, memory_mb=256, isolation=mode)
    assert time.monotonic() - t0 < 8.0
    assert r.returncode != 0 and r.killed_reason == "memory"
    # a single huge allocation is refused outright
    r = run_sandboxed("x = bytearray(8 * 1024 ** 3)", memory_mb=256, isolation=mode)
    assert r.killed_reason == "memory"


def test_huge_file(mode):
    prog = textwrap.dedent(
        """
        import os
        print(os.getcwd(), flush=True)
        with open("big.bin", "wb") as f:
            for _ in range(64):
                f.write(b"x" * (1024 * 1024))
        """
    )
    r = run_sandboxed(prog, file_size_mb=4, isolation=mode)
    assert r.returncode != 0 and r.killed_reason == "file_size"
    assert "File too large" in r.stderr
    assert not os.path.exists(r.stdout.split()[0])


@pytest.fixture
def outside_dir(tmp_path):
    """A root-owned directory the sandbox uid can see but must not modify.

    pytest's base temp dir is 0700, which would make the attack trivially fail; open up the chain
    (and restore it) so the test can actually catch a broken sandbox.
    """
    chain = []
    p = tmp_path
    while str(p) not in ("/", "/tmp", tempfile_root()):
        chain.append((p, stat.S_IMODE(p.stat().st_mode)))
        p = p.parent
    for d, _ in chain:
        d.chmod(0o755)
    target = tmp_path / "outside"
    target.mkdir(mode=0o755)
    target.chmod(0o755)
    sentinel = target / "sentinel.txt"
    sentinel.write_text("precious")
    sentinel.chmod(0o644)
    yield target, sentinel
    for d, m in chain:
        d.chmod(m)


def tempfile_root() -> str:
    import tempfile

    return tempfile.gettempdir()


def test_cannot_touch_files_outside(mode, outside_dir):
    target, sentinel = outside_dir
    escape = Path(tempfile_root()) / f"autodeco-escape-{os.getpid()}-{mode}"
    prog = textwrap.dedent(
        f"""
        import os, shutil
        target, sentinel, escape = {str(target)!r}, {str(sentinel)!r}, {str(escape)!r}
        try:
            print("seen", open(sentinel).read())
        except OSError:
            print("hidden")
        attacks = {{
            "remove": lambda: os.remove(sentinel),
            "overwrite": lambda: open(sentinel, "w").write("pwned"),
            "append": lambda: open(sentinel, "a").write("pwned"),
            "rename": lambda: os.rename(sentinel, sentinel + ".moved"),
            "create": lambda: open(os.path.join(target, "new.txt"), "w").write("x"),
            "rmtree": lambda: shutil.rmtree(target),
            "chmod": lambda: os.chmod(sentinel, 0o777),
            "escape_tmp": lambda: open(escape, "w").write("x"),
            "os_open": lambda: os.open(sentinel, os.O_WRONLY | os.O_TRUNC),
        }}
        for name, attack in attacks.items():
            try:
                attack()
                print("DID", name)
            except Exception as e:
                print("blocked", name, type(e).__name__)
        """
    )
    try:
        r = run_sandboxed(prog, isolation=mode)
        if sandbox_info(mode)["fresh_root"]:
            # Stronger than blocking the writes: the host path does not exist inside at all
            # (writes to paths that do exist inside are in test_sandbox_cheats.py), and /tmp is
            # the run's private tmpfs, so writing there succeeds without reaching the host.
            assert "hidden" in r.stdout and "seen" not in r.stdout, (r.stdout, r.stderr)
            assert [ln for ln in r.stdout.splitlines() if "DID" in ln] == ["DID escape_tmp"], r.stdout
            assert r.stdout.count("blocked") == 8
        else:
            assert "seen precious" in r.stdout, (r.stdout, r.stderr)  # the attack really had a target
            assert "DID" not in r.stdout, r.stdout
            assert r.stdout.count("blocked") == 9
        assert sentinel.read_text() == "precious"
        assert stat.S_IMODE(sentinel.stat().st_mode) == 0o644
        assert sorted(p.name for p in target.iterdir()) == ["sentinel.txt"]
        assert not escape.exists()
    finally:
        if escape.exists():
            escape.unlink()


def test_network_is_unreachable(mode):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    prog = textwrap.dedent(
        f"""
        import socket
        def tcp(host, port):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(1.0)
            s.connect((host, port))
            s.sendall(b"hello")
        def udp():
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.sendto(b"x", ("8.8.8.8", 53))
        def dns():
            socket.getaddrinfo("example.com", 80)
        for name, f in [("loopback", lambda: tcp("127.0.0.1", {port})),
                        ("outside", lambda: tcp("1.1.1.1", 80)), ("udp", udp), ("dns", dns)]:
            try:
                f()
                print("CONNECTED", name)
            except Exception as e:
                print("failed", name, type(e).__name__)
        """
    )
    try:
        r = run_sandboxed(prog, timeout_s=8.0, isolation=mode)
        assert "CONNECTED" not in r.stdout, r.stdout
        assert r.stdout.count("failed") == 4, (r.stdout, r.stderr)
        listener.settimeout(0.3)
        with pytest.raises(socket.timeout):
            listener.accept()
    finally:
        listener.close()


def test_cannot_kill_parent_or_pytest(mode):
    me = os.getpid()
    prog = textwrap.dedent(
        f"""
        import os, signal
        for pid in sorted({{os.getppid(), {me}}}):
            for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGSTOP):
                try:
                    os.kill(pid, sig)
                    print("SENT", pid, sig)
                except Exception as e:
                    print("blocked", pid, type(e).__name__)
        try:
            os.kill(-1, signal.SIGKILL)  # everything this uid may signal, excluding ourselves
            print("swept")
        except Exception as e:
            print("sweep blocked", type(e).__name__)
        print("still here")
        """
    )
    r = run_sandboxed(prog, isolation=mode)
    # reaching this line at all means pytest survived
    assert os.getpid() == me
    assert "SENT" not in r.stdout, r.stdout
    assert "still here" in r.stdout, (r.stdout, r.stderr)


# ----------------------------------------------------------------------------------------------
# real data


def _lcb_rows() -> list[dict]:
    data_dir = Path(os.environ.get("AUTODECO_DATA_DIR", Path.cwd().parent / "shared" / "data"))
    f = data_dir / "livecodebench" / "lcb_release_v5_2408_2502_public.jsonl"
    if not f.exists():
        pytest.skip(f"no LiveCodeBench data at {f}")
    with f.open() as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _row_doc(row: dict) -> Doc:
    meta = row.get("metadata") or {}
    if isinstance(meta, str):
        meta = json.loads(meta)
    return Doc(
        doc_id=row["question_id"],
        prompt=row["question_content"],
        gold=None,
        meta={
            "public_test_cases": row["public_test_cases"],
            "starter_code": row.get("starter_code", ""),
            "func_name": meta.get("func_name"),
        },
    )


def test_real_stdin_problem():
    rows = {r["question_id"]: r for r in _lcb_rows()}
    if "abc365_a" not in rows:
        pytest.skip("Leap Year problem not in this data file")
    doc = _row_doc(rows["abc365_a"])
    right = """
    y = int(input())
    print(366 if (y % 4 == 0 and y % 100 != 0) or y % 400 == 0 else 365)
    """
    s = score_code(doc, _fenced(right))
    assert s.correct and s.metrics["tests_passed"] == s.metrics["tests_total"] == 4
    s = score_code(doc, _fenced("input()\nprint(365)"))  # right on the non-leap samples only
    assert not s.correct and s.metrics["tests_passed"] == 2


def test_real_functional_problem():
    rows = {r["question_id"]: r for r in _lcb_rows()}
    if "3517" not in rows:
        pytest.skip("problem 3517 not in this data file")
    doc = _row_doc(rows["3517"])
    assert doc.meta["func_name"] == "shortestDistanceAfterQueries"
    right = """
    class Solution:
        def shortestDistanceAfterQueries(self, n: int, queries: List[List[int]]) -> List[int]:
            adj = [[i + 1] for i in range(n)]
            out = []
            for u, v in queries:
                adj[u].append(v)
                dist = [-1] * n
                dist[0] = 0
                q = deque([0])
                while q:
                    x = q.popleft()
                    for y in adj[x]:
                        if y < n and dist[y] < 0:
                            dist[y] = dist[x] + 1
                            q.append(y)
                out.append(dist[n - 1])
            return out
    """
    s = score_code(doc, _fenced(right))
    assert s.correct, s
    wrong = (
        "class Solution:\n    def shortestDistanceAfterQueries(self, n, queries):\n        return [n - 1] * "
        "len(queries)"
    )
    s = score_code(doc, _fenced(wrong))
    assert not s.correct and s.metrics["tests_passed"] == 0


def test_real_first_problems_reject_trivial_programs():
    rows = _lcb_rows()[:6]
    for row in rows:
        doc = _row_doc(row)
        s = score_code(doc, _fenced("print('definitely-wrong-answer')"))
        assert not s.correct and s.extracted is not None
        assert s.metrics["tests_total"] == len(row["public_test_cases"])
