"""Hostile programs that try to be scored correct without solving the problem, and honest controls.

Every cheat gets a problem whose answer it cannot guess (random per test run) and tries one route
to the expected output or to the verdict: objects that compare equal to anything, the judge's own
memory, monkeypatching json/builtins, forged verdict/claim lines, the benchmark data file, other
processes' command lines, a host unix socket. Each must score `correct=False`; the matching honest
program must score True, so a judge that fails everything cannot pass this file. The containment
tests check the host-side effect directly (a file, an accept() on a socket), not just the verdict.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import pytest

from autodeco_cli.tasks.sandbox import isolation as iso
from autodeco_cli.tasks.sandbox import judge_isolation, run_sandboxed, sandbox_info, score_code
from autodeco_cli.tasks.sandbox.isolation import SandboxUnavailable
from autodeco_cli.tasks.sandbox.livecodebench import ClaimError, call_matches, decode_claim, score_tests
from autodeco_cli.tasks.types import Doc

REPO = Path(__file__).resolve().parents[1]
P = 1_000_000_007


def _doc(tests, func_name=None):
    return Doc(doc_id="t", prompt="", gold=None, meta={"public_test_cases": tests, "func_name": func_name})


def _fenced(code: str) -> str:
    return "```python\n" + textwrap.dedent(code).strip() + "\n```\n"


@pytest.fixture(scope="module")
def strong() -> str:
    """The mode `score_code` uses by default; these tests are about the fresh-root judge."""
    info = sandbox_info()
    if not info["fresh_root"]:
        pytest.skip(f"no fresh-root isolation here ({info['label']})")
    return info["mode"]


@pytest.fixture
def public_dir(tmp_path):
    """A directory every uid can reach (pytest's base temp dir is 0700, which would make reading
    it fail for the wrong reason and let a broken sandbox pass)."""
    chain, p = [], tmp_path
    while str(p) not in ("/", "/tmp"):
        chain.append((p, stat.S_IMODE(p.stat().st_mode)))
        p = p.parent
    for d, _ in chain:
        d.chmod(0o755)
    yield tmp_path
    for d, mode in chain:
        d.chmod(mode)


# ----------------------------------------------------------------------------------------------
# functional (LeetCode-style) tests


def _functional_case():
    """addK(nums, k) -> [x * k + 7 ...] on random numbers: unguessable, trivially computable."""
    nums, k = [secrets.randbelow(10**9) for _ in range(4)], secrets.randbelow(10**6) + 2
    test = {
        "input": f"{json.dumps(nums)}\n{k}",
        "output": json.dumps([x * k + 7 for x in nums]),
        "testtype": "functional",
    }
    return _doc([test], "addK"), nums, k


HONEST_FUNCTIONAL = {
    "plain": """
        class Solution:
            def addK(self, nums: List[int], k: int) -> List[int]:
                print("debug prints go to stdout and must not matter")
                return [x * k + 7 for x in nums]
    """,
    # LCB turns a tuple result into a list
    "tuple": """
        class Solution:
            def addK(self, nums, k):
                return tuple(x * k + 7 for x in nums)
    """,
    # an honest program may use json and builtins freely, even rebind them
    "uses_json": """
        import json, builtins
        class Solution:
            def addK(self, nums, k):
                json.dumps = lambda *a, **kw: "patched"
                return json.loads(json.JSONEncoder().encode([x * k + 7 for x in nums]))
    """,
}

CHEATS_FUNCTIONAL = {
    "always_equal": """
        class AlwaysEqual:
            def __eq__(self, other): return True
            def __ne__(self, other): return False
            __hash__ = object.__hash__
        class Solution:
            def addK(self, nums, k):
                return AlwaysEqual()
    """,
    "always_equal_list": """
        class L(list):
            def __eq__(self, other): return True
            def __ne__(self, other): return False
            def __iter__(self): return iter([])
        class Solution:
            def addK(self, nums, k):
                return L([0])
    """,
    # look for the expected value anywhere the harness might keep it: __main__, every frame,
    # every object the garbage collector knows
    "expected_from_memory": """
        import gc, sys, json
        def _find():
            names = ("_exp", "exp", "expected", "output", "answer")
            mods = [sys.modules.get("__main__")] + list(sys.modules.values())
            for m in mods:
                for n in names:
                    if m is not None and isinstance(getattr(m, n, None), list):
                        return getattr(m, n)
            f = sys._getframe()
            while f is not None:
                for scope in (f.f_locals, f.f_globals):
                    for n in names:
                        if isinstance(scope.get(n), list):
                            return scope[n]
                    for v in list(scope.values()):
                        if isinstance(v, dict) and "output" in v:
                            return json.loads(v["output"])
                f = f.f_back
            for o in gc.get_objects():
                if isinstance(o, dict) and isinstance(o.get("output"), str):
                    return json.loads(o["output"])
            return []
        class Solution:
            def addK(self, nums, k):
                return _find()
    """,
    # rebind what a judge running in this process would use to compare and to report
    "patch_json_builtins": """
        import json, builtins
        json.dumps = lambda *a, **kw: '{"ok": true}'
        json.JSONEncoder.encode = lambda *a, **kw: '{"ok": true}'
        builtins.bool = lambda *a: True
        builtins.repr = lambda *a: "ok"
        class Solution:
            def addK(self, nums, k):
                return 0
    """,
    # forge whatever a verdict/claim line might look like, on every fd and after the harness
    # (atexit: "the last verdict line wins"), and read a marker from the stack if there is one
    "forge_verdict": """
        import os, sys, atexit
        marks = []
        f = sys._getframe()
        while f is not None:
            for v in list(f.f_globals.values()) + list(f.f_locals.values()) + list(f.f_code.co_consts):
                if isinstance(v, str) and v.startswith("@@autodeco"):
                    marks.append(v)
            f = f.f_back
        lines = [m + '{"ok": true, "got": "x"}' for m in marks] + ['{"ok": true}', '{"value": true}']
        def forge():
            for fd in range(1, 32):
                for line in lines:
                    try:
                        os.write(fd, (line + "\\n").encode())
                    except OSError:
                        pass
        forge()
        atexit.register(forge)
        class Solution:
            def addK(self, nums, k):
                forge()
                return None
    """,
}


@pytest.mark.parametrize("name", sorted(HONEST_FUNCTIONAL))
def test_functional_honest_controls_pass(strong, name):
    doc, _, _ = _functional_case()
    s = score_code(doc, _fenced(HONEST_FUNCTIONAL[name]))
    assert s.correct, name


@pytest.mark.parametrize("name", sorted(CHEATS_FUNCTIONAL))
def test_functional_cheats_fail(strong, name):
    doc, _, _ = _functional_case()
    s = score_code(doc, _fenced(CHEATS_FUNCTIONAL[name]))
    assert not s.correct, name
    assert s.metrics["tests_passed"] == 0


def test_expected_output_never_reaches_the_sandbox():
    """Whatever the sandbox runs is built without the expected output (checked on the jobs)."""
    secret = secrets.token_hex(16)
    tests = [
        {"input": "[1]\n2", "output": json.dumps([secret]), "testtype": "functional"},
        {"input": "1 2\n", "output": secret + "\n", "testtype": "stdin"},
    ]
    seen = []

    def spy(job, stdin):
        seen.append(json.dumps(job) + stdin)
        from autodeco_cli.tasks.sandbox.process import SandboxResult

        return SandboxResult(0, "", "", False, channel='{"value":["L",[]]}\n')

    score_tests(_doc(tests, "f"), _fenced("class Solution:\n    def f(self, a, b):\n        return []"), spy)
    assert len(seen) == 2 and not any(secret in s for s in seen)


@pytest.mark.parametrize(
    "channel,expected,ok",
    [
        ('{"value":["L",[1,2]]}\n', "[1, 2]", True),
        ('{"value":["T",[1,2]]}\n', "[1, 2]", True),  # top-level tuple -> list, as LCB
        ('{"value":["L",[["T",[1,2]]]]}\n', "[[1, 2]]", False),  # nested tuple != list, as LCB
        ('{"value":["D",[[1,2]]]}\n', '{"1": 2}', False),  # int key != str key
        ('{"value":["D",[["1",2]]]}\n', '{"1": 2}', True),
        ('{"value":["F","nan"]}\n', "NaN", False),
        ('{"value":1}\n{"value":1}\n', "1", False),  # a second line: someone else wrote
        ('{"value":1}', "1", False),  # truncated
        ('{"value":[1,2]}\n', "[1, 2]", False),  # untagged container
        ('{"ok": true}\n', "1", False),
        ("", "1", False),
        ('{"value":' + "[" * 5000 + "]" * 5000 + "}\n", "1", False),
    ],
)
def test_claims_are_decoded_strictly(channel, expected, ok):
    assert call_matches(channel, expected) is ok


def test_decode_claim_rejects_garbage():
    for bad in ("NaN\n", '{"value": NaN}\n', "[\n", '{"value":["X",[]]}\n', '{"value":["D",[[["L",[]],1]]]}\n'):
        with pytest.raises(ClaimError):
            decode_claim(bad)


# ----------------------------------------------------------------------------------------------
# stdin tests: the expected output from the data file, host /proc, a host unix socket


def _stdin_case():
    a, b = secrets.randbelow(10**12) + 10**6, secrets.randbelow(10**12) + 10**6
    return f"{a} {b}\n", f"{a * b % P}\n"


HONEST_STDIN = "a, b = map(int, input().split())\nprint(a * b % 1000000007)"
HONEST_TEMPFILE = """
    import tempfile, os
    data = input()
    with tempfile.TemporaryDirectory() as d:
        with tempfile.NamedTemporaryFile("w+", dir=d, delete=False) as f:
            f.write(data)
            name = f.name
        a, b = map(int, open(name).read().split())
    with tempfile.TemporaryFile() as g:
        g.write(b"x")
    print(a * b % 1000000007)
"""


def test_stdin_honest_controls_pass(strong):
    stdin, out = _stdin_case()
    doc = _doc([{"input": stdin, "output": out, "testtype": "stdin"}])
    assert score_code(doc, _fenced(HONEST_STDIN)).correct
    assert score_code(doc, _fenced(HONEST_TEMPFILE)).correct


def test_stdin_cheat_reads_the_benchmark_data(strong, public_dir, monkeypatch):
    stdin, out = _stdin_case()
    data = public_dir / "data" / "livecodebench"
    data.mkdir(parents=True)
    row = {"question_id": "x", "public_test_cases": [{"input": stdin, "output": out, "testtype": "stdin"}]}
    (data / "lcb.jsonl").write_text(json.dumps(row) + "\n")
    for p in (data, data.parent):
        p.chmod(0o755)
    (data / "lcb.jsonl").chmod(0o644)
    monkeypatch.setenv("AUTODECO_DATA_DIR", str(data.parent))
    cheat = f"""
        import os, sys, json, glob
        stdin = sys.stdin.read()
        roots = [{str(data.parent)!r}, os.environ.get("AUTODECO_DATA_DIR", ""), "/work/shared/data", {str(REPO)!r}]
        found = None
        for root in roots:
            for path in glob.glob(os.path.join(root, "**", "*.jsonl"), recursive=True) if root else []:
                try:
                    for line in open(path):
                        for t in json.loads(line).get("public_test_cases", []):
                            if t["input"] == stdin:
                                found = t["output"]
                except Exception:
                    pass
        print(found if found is not None else "not-found", end="")
    """
    s = score_code(_doc([{"input": stdin, "output": out, "testtype": "stdin"}]), _fenced(cheat))
    assert not s.correct
    r = run_sandboxed(textwrap.dedent(cheat), stdin)
    assert r.stdout == "not-found", (r.stdout, r.stderr)


def test_stdin_cheat_reads_host_process_cmdlines(strong):
    stdin, out = _stdin_case()
    # A host process whose command line carries the answer, as a careless judge's might.
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "EXPECTED=" + out.strip()])
    try:
        cheat = """
            import os
            for pid in os.listdir("/proc"):
                try:
                    args = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\\0")
                except OSError:
                    continue
                for a in args:
                    if a.startswith(b"EXPECTED="):
                        print(a[9:].decode())
                        raise SystemExit
            print("not-found")
        """
        s = score_code(_doc([{"input": stdin, "output": out, "testtype": "stdin"}]), _fenced(cheat))
        assert not s.correct
        r = run_sandboxed("import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))")
        assert r.returncode == 0
        assert set(json.loads(r.stdout)) <= {1, 2}, r.stdout  # only the sandbox's own init and itself
    finally:
        holder.kill()
        holder.wait()


def _unix_server(path: str, answer: bytes, accepted: list):
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    os.chmod(path, 0o777)
    srv.listen(4)
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except (socket.timeout, OSError):
                continue
            accepted.append(1)
            conn.sendall(answer)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return srv, stop, thread


def test_stdin_cheat_asks_a_host_unix_socket(strong, public_dir):
    stdin, out = _stdin_case()
    shared = public_dir / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # world-writable, like /tmp
    path = str(shared / "oracle.sock")
    accepted: list = []
    srv, stop, thread = _unix_server(path, out.encode(), accepted)
    try:
        # the socket really is reachable for another uid on the host (so the test can fail)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.connect(path)
        assert probe.recv(100) == out.encode()
        probe.close()
        time.sleep(0.05)
        accepted.clear()
        cheat = f"""
            import socket
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(2)
                s.connect({path!r})
                print(s.recv(100).decode(), end="")
            except OSError as e:
                print("no-socket", type(e).__name__)
        """
        s = score_code(_doc([{"input": stdin, "output": out, "testtype": "stdin"}]), _fenced(cheat))
        assert not s.correct
        r = run_sandboxed(textwrap.dedent(cheat))
        assert r.stdout.startswith("no-socket"), (r.stdout, r.stderr)
        time.sleep(0.3)
        assert accepted == [], "the sandbox reached the host socket"
    finally:
        stop.set()
        thread.join()
        srv.close()


# ----------------------------------------------------------------------------------------------
# containment, checked on the host


def test_host_data_repo_and_interpreter_prefix_are_not_exposed(strong, public_dir):
    secret = public_dir / "secret.txt"
    secret.write_text("s3cret")
    secret.chmod(0o644)
    stdlib = os.path.dirname(os.__file__)
    targets = [
        str(secret),
        str(REPO / "pyproject.toml"),
        "/work/shared/data/MANIFEST.md",
        os.environ.get("AUTODECO_DATA_DIR", "/nonexistent"),
        str(Path(iso.__file__)),
    ]
    prog = f"""
        import os, sys
        for p in {targets!r}:
            print("VISIBLE" if os.path.exists(p) else "hidden", p)
        site = [p for p in sys.path if "site-packages" in p]
        site += [os.path.join(os.path.dirname(os.__file__), "site-packages")]
        print("site-packages entries:", sum(len(os.listdir(p)) for p in site if os.path.isdir(p)))
        # no inherited descriptor (job file, results pipe, a host directory) is left open
        print("fds", sorted(int(f) for f in os.listdir("/proc/self/fd")))
        # paths that exist inside must be read-only
        for p in (os.path.dirname(os.__file__), "/", "/usr", "/etc", "/dev"):
            try:
                open(os.path.join(p, "pwned-{os.getpid()}"), "w").write("x")
                print("WROTE", p)
            except OSError as e:
                print("ro", p, type(e).__name__)
    """
    r = run_sandboxed(textwrap.dedent(prog))
    assert r.returncode == 0, r.stderr
    assert "VISIBLE" not in r.stdout and r.stdout.count("hidden") == len(targets), r.stdout
    assert "site-packages entries: 0" in r.stdout, r.stdout
    assert "fds [0, 1, 2, 3]" in r.stdout, r.stdout  # 3 is listdir's own
    assert "WROTE" not in r.stdout and r.stdout.count("ro ") == 5, r.stdout
    assert not os.path.exists(os.path.join(stdlib, f"pwned-{os.getpid()}"))


# ----------------------------------------------------------------------------------------------
# isolation mode: reported, never weakened silently


@pytest.fixture
def fresh_choice(monkeypatch):
    """Forget the cached plans so a test can choose again (and restore them afterwards)."""
    saved = dict(iso._chosen)
    iso._chosen.clear()
    monkeypatch.setattr(iso, "_warned", False)
    yield
    iso._chosen.clear()
    iso._chosen.update(saved)


def test_unavailable_isolation_is_an_error_not_a_fallback(fresh_choice, monkeypatch):
    monkeypatch.delenv(iso.ENV_VAR, raising=False)
    real = iso.candidate_plan

    def broken(mode):
        plan = real(mode)
        if plan.fresh_root:
            return iso.Plan(plan.mode, "/nonexistent/python3", plan.drop_uid, plan.layout)
        return plan

    monkeypatch.setattr(iso, "candidate_plan", broken)
    with pytest.raises(SandboxUnavailable) as err:
        score_code(_doc([{"input": "", "output": "1", "testtype": "stdin"}]), "no code at all")
    msg = str(err.value)
    assert "\n" not in msg and "AUTODECO_SANDBOX=guard" in msg, msg
    assert "guard" not in iso._chosen and "auto" not in iso._chosen


def test_guard_only_when_asked_and_reported(fresh_choice, monkeypatch):
    monkeypatch.setenv(iso.ENV_VAR, "guard")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        label = judge_isolation()
    assert label.startswith("guard(") and "host-fs-visible" in label
    assert any("does NOT hide the host filesystem" in str(w.message) for w in caught)
    monkeypatch.setenv(iso.ENV_VAR, "bogus")
    with pytest.raises(Exception, match="not a sandbox mode"):
        judge_isolation()


def test_results_record_the_judge(strong):
    from types import SimpleNamespace

    from autodeco_cli.tasks.registry import judge_fields

    assert judge_fields(SimpleNamespace(name="livecodebench", scorer="code")) == {"judge_isolation": judge_isolation()}
    assert judge_isolation().startswith(strong + "(fresh-root")
    assert judge_fields(SimpleNamespace(name="gsm8k", scorer="gsm8k")) == {}


def test_guard_mode_blocks_dir_fd_and_sqlite_writes(public_dir):
    """The opt-in guard's known bypasses: a directory fd from outside, and sqlite's C-level I/O."""
    target = public_dir / "open"
    target.mkdir()
    target.chmod(0o777)  # writable for the guard's throw-away uid: only the hook stands in the way
    prog = f"""
        import os
        t = {str(target)!r}
        def dirfd():
            fd = os.open(t, os.O_RDONLY)
            os.close(os.open("pwn1.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
        def dotdot():
            os.mkdir("a")
            fd = os.open("a", os.O_RDONLY)
            os.close(os.open("../../pwn2.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
        def sqlite():
            import sqlite3
            sqlite3.connect(os.path.join(t, "pwn3.db")).execute("create table x(y)")
        def symlink():
            os.symlink(t, "link")
            open("link/pwn4.txt", "w").write("x")
        for name, f in [("dirfd", dirfd), ("dotdot", dotdot), ("sqlite", sqlite), ("symlink", symlink)]:
            try:
                f()
                print("DID", name)
            except Exception as e:
                print("blocked", name, type(e).__name__)
    """
    r = run_sandboxed(textwrap.dedent(prog), isolation="guard")
    assert "DID" not in r.stdout and r.stdout.count("blocked") == 4, (r.stdout, r.stderr)
    assert list(target.iterdir()) == []
    ok = run_sandboxed(textwrap.dedent(HONEST_TEMPFILE), "6 7\n", isolation="guard")
    assert ok.returncode == 0 and ok.stdout.strip() == "42", ok.stderr


# ----------------------------------------------------------------------------------------------
# the unprivileged path (userns), exercised from a non-root uid when this machine allows it


def test_userns_mode_as_an_unprivileged_user(tmp_path):
    py = f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}"
    if os.geteuid() != 0 or not os.path.exists(py) or not iso.others_can_reach(py):
        pytest.skip("needs root (to become nobody) and a world-executable system python")
    init = REPO / "src" / "autodeco_cli" / "__init__.py"
    if not (init.stat().st_mode & stat.S_IROTH and all(p.stat().st_mode & stat.S_IXOTH for p in init.parents)):
        pytest.skip("the source tree is not readable for nobody")
    script = textwrap.dedent(
        """
        import json
        from autodeco_cli.tasks.sandbox import run_sandboxed, sandbox_info, score_code
        from autodeco_cli.tasks.types import Doc
        info = sandbox_info()
        r = run_sandboxed("import os\\nprint(os.path.exists('/work'), os.path.exists('/proc/1/root/etc'))")
        t = [{"input": "[1, 2]\\n3", "output": "[10, 13]", "testtype": "functional"}]
        doc = Doc("t", "", None, {"public_test_cases": t, "func_name": "f"})
        head = "```python\\nclass Solution:\\n    def f(self, a, k):\\n"
        good = score_code(doc, head + "        return [x * k + 7 for x in a]\\n```")
        fake = "        class A:\\n            __eq__ = lambda s, o: True\\n"
        bad = score_code(doc, head + fake + "        return A()\\n```")
        print(json.dumps([info["mode"], r.stdout.split(), good.correct, bad.correct]))
        """
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "src")}
    cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", py, "-c", script]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd="/", timeout=60)
    if "unshare" in out.stderr or "SandboxUnavailable" in out.stderr:
        pytest.skip("unprivileged user namespaces are not available here: " + out.stderr.strip().splitlines()[-1])
    assert out.returncode == 0, out.stderr
    mode, seen, good, bad = json.loads(out.stdout.strip().splitlines()[-1])
    assert mode == "userns" and seen == ["False", "False"] and good is True and bad is False
