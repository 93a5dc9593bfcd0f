"""Nothing hostile ends in a traceback or a hang: a full disk, a data-parallel replica that is killed
or stopped, a lead that dies under its replicas, two runs on one output folder, Ctrl-C.

Each case is one line on stderr (exit 2, or 130 for Ctrl-C), no temporary file left behind, and a
re-run that completes what the first run began. Processes are synchronised through pipes and
events, never through sleeps; the only waits are generous bounds on something that must happen.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

import autodeco_cli
from autodeco_cli.core import safe_writes
from autodeco_cli.core.decoding import make_strategy
from autodeco_cli.core.errors import UserError
from autodeco_cli.core.folder_lock import LOCK_FILE
from autodeco_cli.core.safe_writes import Appender, write_atomically
from autodeco_cli.engine.data_parallel import DataParallelEngine, split_by_prompt
from autodeco_cli.engine.generation import GenerationEngine
from autodeco_cli.engine.requests import Generation, Request
from autodeco_cli.engine.runtime import EngineSettings, open_engine
from autodeco_cli.evaluation.runner import run_eval
from autodeco_cli.evaluation.settings import EvalSettings
from conftest import FakeTask, write_jsonl

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SRC = Path(autodeco_cli.__file__).resolve().parents[1]  # children import the package this process does
TESTS = Path(__file__).resolve().parent
BOUND_S = 120  # generous: what it bounds happens in well under a second on an idle machine
TORCH_SHORT_WRITE = "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"
TRAIN_ROWS = [{"prompt": f"What is {i} + {i}?", "completion": f"The answer is {2 * i}."} for i in range(1, 9)]


def one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    return errors[0]


def leftovers(folder: Path) -> list[str]:
    """Temporary files and folders a write left behind (ours and the old `*.tmp` names)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".tmp" in p.name or p.name == LOCK_FILE)


def _child_env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)]), "OMP_NUM_THREADS": "1"}


# ---- a full disk ---------------------------------------------------------------------------------


class FullDisk:
    """Stands in for `safe_writes._write_all`: the `nth` write to a file whose name contains `name`
    writes half its bytes, then fails as a full device does."""

    def __init__(self, name: str, nth: int = 1):
        self.name, self.nth, self.seen = name, nth, 0
        self.real = safe_writes._write_all

    def __call__(self, handle: int, payload: bytes) -> None:
        if self.name in os.readlink(f"/proc/self/fd/{handle}"):
            self.seen += 1
            if self.seen == self.nth:
                os.write(handle, payload[: len(payload) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.real(handle, payload)


def _eval_args(model_dir: Path, out: Path) -> list:
    return ["eval", "-b", "fake", "--model", model_dir, "--decoding", "static", "-t", "0.8", "-p", "0.9"] + [
        "-k", "2", "--seeds", "1", "--batch-size", "2", "-o", out,
    ]  # fmt: skip


def _samples(folder: Path) -> dict:
    lines = (folder / "static-T0.8-p0.9" / "samples_fake.jsonl").read_text().splitlines()
    return {(r["doc_id"], r["sample"]): (r["text"], r["correct"]) for r in map(json.loads, lines)}


@pytest.mark.parametrize(
    "name, nth",
    [("run_config.json", 1), ("samples_fake.jsonl", 2), ("results.json", 1)],
    ids=["run-config", "samples", "results"],
)
def test_a_full_disk_during_eval_is_one_line_and_the_rerun_completes(
    cli, tiny_model_dir, fake_registry, tmp_path, monkeypatch, name, nth
):
    reference = tmp_path / "reference"
    assert cli(*_eval_args(tiny_model_dir, reference))[0] == 0
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        patch.setattr(safe_writes, "_write_all", FullDisk(name, nth))
        code, _, err = cli(*_eval_args(tiny_model_dir, out))
    assert code == 2
    line = one_error_line(err)
    assert re.search(
        rf"no space left on the device to write \S+/{re.escape(name)} \([\d.]+ \w+ to write, [\d.]+ \w+ free\)", line
    )
    assert "re-run the same command" in line
    assert leftovers(out) == []
    samples = out / "static-T0.8-p0.9" / "samples_fake.jsonl"
    if samples.exists():  # whole records only: the half batch was cut back off
        text = samples.read_text()
        assert text.endswith("\n") and all(json.loads(line) for line in text.splitlines())
    assert cli(*_eval_args(tiny_model_dir, out))[0] == 0
    assert _samples(out) == _samples(reference)
    assert leftovers(out) == []


def test_a_full_disk_at_a_checkpoint_is_one_line_and_resume_finishes_the_run(
    cli, tiny_model_dir, tmp_path, monkeypatch
):
    data = write_jsonl(tmp_path / "train.jsonl", TRAIN_ROWS)
    fields = ["micro_batch_size=2", "gradient_accumulation=1", "epochs=1", "head_width=32", "seed=7"]
    fields += ["save_every=1", "cache_hidden=off"]

    def train(out: Path, *extra):
        return cli("train-heads", *fields, "--data", data, "--model", tiny_model_dir, "-o", out, *extra)

    assert train(tmp_path / "reference")[0] == 0
    out = tmp_path / "out"
    real_save, calls = torch.save, []

    def short_write(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) == 2:  # step 2's state: half a zip, then torch's error for a short write
            Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
            raise RuntimeError(TORCH_SHORT_WRITE)
        return real_save(obj, f, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", short_write)
        code, _, err = train(out)
    assert code == 2
    line = one_error_line(err)
    assert f"no space left on the device to write {out / 'checkpoints' / 'step-2'} (about " in line
    assert "re-run the same command with --resume: training continues from step-1" in line
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-1"]
    assert leftovers(out) == []
    assert train(out, "--resume")[0] == 0
    ours = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    reference = json.loads((tmp_path / "reference" / "metrics.jsonl").read_text().splitlines()[-1])
    assert ours["step"] == reference["step"] == 4
    from safetensors.torch import load_file

    got = load_file(str(out / "autodeco_heads.safetensors"))
    expected = load_file(str(tmp_path / "reference" / "autodeco_heads.safetensors"))
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0.0, atol=1e-6)


def test_an_append_that_fills_the_disk_is_cut_back_to_the_last_whole_record(tmp_path, monkeypatch):
    log = Appender(tmp_path / "log.jsonl")
    log.append(['{"a": 1}'])
    monkeypatch.setattr(safe_writes, "_write_all", FullDisk("log.jsonl"))
    with pytest.raises(UserError, match=r"log\.jsonl \(18 bytes to write, .* free\)"):
        log.append(['{"b": 2}', '{"c": 3}'])
    monkeypatch.undo()
    log.append(['{"d": 4}'])
    log.close()
    assert (tmp_path / "log.jsonl").read_text() == '{"a": 1}\n{"d": 4}\n'


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = write_atomically(tmp_path / "grid.json", "old\n")
    monkeypatch.setattr(safe_writes, "_write_all", FullDisk("grid.json"))
    with pytest.raises(UserError, match="grid.json"):
        write_atomically(path, "new\n" * 100)
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["grid.json"]


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 256 KB tmpfs, unmounted afterwards; skipped where this process may not mount one."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_eval_on_a_really_full_tmpfs_fails_in_one_line_and_resumes_once_space_is_freed(
    cli, tiny_model_dir, fake_registry, tmp_path, tiny_tmpfs
):
    filler = tiny_tmpfs / "filler"
    with filler.open("wb", buffering=0) as handle:
        with pytest.raises(OSError) as full:
            while True:
                handle.write(b"\0" * 4096)
    assert full.value.errno == errno.ENOSPC
    out = tiny_tmpfs / "eval"
    code, _, err = cli(*_eval_args(tiny_model_dir, out))
    assert code == 2
    assert f"no space left on the device to write {out / 'static-T0.8-p0.9'}/" in one_error_line(err)
    assert leftovers(tiny_tmpfs) == []
    filler.unlink()
    reference = tmp_path / "reference"
    assert cli(*_eval_args(tiny_model_dir, reference))[0] == 0
    assert cli(*_eval_args(tiny_model_dir, out))[0] == 0
    assert _samples(out) == _samples(reference)


# ---- data-parallel replicas that die, stop, or lose their lead --------------------------------------


def _requests(n: int) -> list[Request]:
    greedy = make_strategy("greedy")
    return [Request(key=i, input_ids=[10 + i], strategy=greedy, seed=0) for i in range(n)]


def _generation(request: Request) -> Generation:
    return Generation(request.key, f"text {request.key}", [1, 2], "stop", strategy=request.strategy)


class ScriptedLead:
    """A lead engine that finishes one request per batch and calls `before(i)` before the i-th."""

    name, dtype, prompt_format, tokenizer, lm, heads = "fake", "float32", None, None, None, None

    def __init__(self, before=None):
        self.before = before or (lambda i: None)
        self.made: list = []

    def generate(self, requests, *, on_batch_done=None, **kwargs):
        out = []
        for i, request in enumerate(requests):
            self.before(i)
            out.append(_generation(request))
            self.made.append(request.key)
            if on_batch_done is not None:
                on_batch_done([out[-1]])
        return out

    def close(self) -> None:
        pass


class StallingReplica:
    """A replica engine that finishes the first request of its shard, says so, then never returns."""

    def __init__(self, news):
        self.news = news

    def generate(self, requests, *, on_batch_done=None, **kwargs):
        on_batch_done([_generation(requests[0])])  # sent to the lead before `news` hears of it
        self.news.send(("sent", os.getpid()))
        threading.Event().wait()


def open_stalling_replica(news):
    """The replica's opener (runs in the spawned process)."""
    news.send(("opened", os.getpid()))
    return StallingReplica(news)


def open_real_stalling_replica(settings, strategies, news):
    """The real engine on the tiny model, stalling after its first finished batch like StallingReplica."""
    engine = open_engine(settings, strategies)
    real = engine.generate

    def generate(requests, *, on_batch_done, **kwargs):
        def first_then_stall(batch):
            on_batch_done(batch)
            news.send(("sent", os.getpid()))
            threading.Event().wait()

        return real(requests, on_batch_done=first_then_stall, **kwargs)

    engine.generate = generate
    return engine


def _news(reader, kind: str) -> int:
    while True:
        assert reader.poll(BOUND_S), f"no {kind!r} from the replica"
        got, pid = reader.recv()
        if got == kind:
            return pid


def _wait_for_state(pid: int, states: str) -> None:
    """Until the process is in one of `states` (/proc's letters); bounded."""
    deadline = time.monotonic() + BOUND_S
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            state = "X"
        if state in states:
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} never reached state {states}")


def _wait_until_reapable(pid: int) -> None:
    """Until our child `pid` has exited whole (every thread: a zombie leader whose threads are still
    exiting cannot be waited for yet), without reaping it, so that its Process object still can."""
    deadline = time.monotonic() + BOUND_S
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} never exited")


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def news():
    reader, writer = multiprocessing.get_context("spawn").Pipe(duplex=False)
    yield reader, writer
    reader.close()
    writer.close()


def test_a_replica_killed_mid_call_fails_it_at_the_leads_next_batch(news, restore_threads):
    reader, writer = news
    requests = _requests(8)
    shards = split_by_prompt(requests, 2)

    def kill_the_replica(i):
        if i == 1:
            pid = _news(reader, "sent")
            os.kill(pid, signal.SIGKILL)
            _wait_until_reapable(pid)

    lead = ScriptedLead(kill_the_replica)
    engine = DataParallelEngine(lead, 2, open_stalling_replica, {"news": writer}, heartbeat_s=600)
    reported = []
    try:
        with pytest.raises(UserError) as lost:
            engine.generate(requests, max_new_tokens=4, on_batch_done=lambda b: reported.extend(g.key for g in b))
        with pytest.raises(UserError):  # and it stays failed
            engine.generate(requests, max_new_tokens=4)
    finally:
        engine.close()
    message = lost.value.one_line()
    assert re.fullmatch(r"data-parallel replica 1 \(pid \d+\) was killed by SIGKILL\. .*", message), message
    assert "re-run the same command to resume" in message
    # the lead stopped at its next batch, not at the end of its shard; what was finished was handed on
    assert lead.made == [requests[i].key for i in shards[0][:2]]
    assert sorted(reported) == sorted([requests[shards[1][0]].key, *lead.made])


def test_a_stopped_replica_fails_the_call_after_the_heartbeat_timeout(news, restore_threads):
    reader, writer = news
    requests = _requests(6)
    shards = split_by_prompt(requests, 2)
    stopped = []

    def stop_the_replica(i):
        if i == 1:
            stopped.append(_news(reader, "sent"))
            os.kill(stopped[0], signal.SIGSTOP)
            _wait_for_state(stopped[0], "T")

    engine = DataParallelEngine(ScriptedLead(stop_the_replica), 2, open_stalling_replica, {"news": writer}, 1.0)
    reported = []
    try:
        with pytest.raises(UserError) as lost:
            engine.generate(requests, max_new_tokens=4, on_batch_done=lambda b: reported.extend(g.key for g in b))
    finally:
        engine.close()  # SIGKILL ends a stopped process too
    _wait_for_state(stopped[0], "ZX")
    message = lost.value.one_line()
    assert f"data-parallel replica 1 (pid {stopped[0]}) stopped answering: no heartbeat for 1 s" in message
    assert "AUTODECO_DP_HEARTBEAT_S" in message and "re-run the same command to resume" in message
    assert requests[shards[1][0]].key in reported


LEAD_SCRIPT = textwrap.dedent(
    """
    import multiprocessing, sys
    from autodeco_cli.engine.data_parallel import DataParallelEngine
    from test_robustness import ScriptedLead, _news, _requests, open_stalling_replica

    if __name__ == "__main__":
        reader, writer = multiprocessing.get_context("spawn").Pipe(duplex=False)

        def announce_then_wait(i):
            if i == 1:
                print(_news(reader, "sent"), flush=True)
                sys.stdin.read()

        engine = DataParallelEngine(ScriptedLead(announce_then_wait), 2, open_stalling_replica, {"news": writer}, 600)
        if sys.argv[1] == "idle":
            print(_news(reader, "opened"), flush=True)
            sys.stdin.read()
        engine.generate(_requests(6), max_new_tokens=4)
    """
)


@pytest.mark.parametrize("replica_state", ["idle", "busy"])
def test_a_replica_whose_lead_is_killed_exits_quietly(replica_state):
    lead = subprocess.Popen(
        [sys.executable, "-c", LEAD_SCRIPT, replica_state],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_child_env(),
        text=True,
    )
    replica = None
    try:
        replica = int(lead.stdout.readline())
        lead.kill()
        # the replica holds the same stderr: it reaches EOF only once the replica has exited too
        _, err = lead.communicate(timeout=BOUND_S)
    finally:
        lead.kill()
        if replica is not None and Path(f"/proc/{replica}").exists():
            os.kill(replica, signal.SIGKILL)
    assert "Traceback" not in err and "Error" not in err, err
    _wait_for_state(replica, "ZX")


def test_a_run_cut_short_by_a_lost_replica_resumes_to_the_single_process_results(
    tiny_model_dir, tiny_lm, news, tmp_path, restore_threads
):
    """The samples finished before a replica was killed are kept, and the re-run completes them
    into exactly what one uninterrupted process writes."""
    reader, writer = news
    strategy = make_strategy("static", temperature=0.8, top_p=0.9)
    settings = EvalSettings(k=2, seeds=[0], batch_size=2)
    task = FakeTask()
    reference = run_eval(GenerationEngine(tiny_lm), [task], [strategy], settings, out_dir=tmp_path / "reference")

    replica_settings = {"settings": EngineSettings(str(tiny_model_dir)), "strategies": [strategy], "news": writer}
    engine = DataParallelEngine(GenerationEngine(tiny_lm), 2, open_real_stalling_replica, replica_settings, 600)

    def kill_when_it_stalls():
        pid = _news(reader, "sent")
        os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_when_it_stalls, daemon=True)
    killer.start()
    out = tmp_path / "out"
    try:
        with pytest.raises(UserError, match=r"replica 1 \(pid \d+\) was killed by SIGKILL"):
            run_eval(engine, [task], [strategy], settings, out_dir=out)
    finally:
        engine.close()
        killer.join(BOUND_S)
    kept = (out / "static-T0.8-p0.9" / "samples_fake.jsonl").read_text().splitlines()
    assert 1 <= len(kept) < 8
    resumed = run_eval(GenerationEngine(tiny_lm), [task], [strategy], settings, out_dir=out)
    assert _samples(out) == _samples(tmp_path / "reference")
    ours, theirs = resumed[strategy.label]["results"], reference[strategy.label]["results"]
    assert ours == theirs


@pytest.mark.parametrize("value", ["soon", "0", "-3", "inf"])
def test_a_bad_heartbeat_setting_is_one_line_naming_the_variable(monkeypatch, value):
    from autodeco_cli.engine.data_parallel import heartbeat_timeout

    monkeypatch.setenv("AUTODECO_DP_HEARTBEAT_S", value)
    with pytest.raises(UserError, match=f"AUTODECO_DP_HEARTBEAT_S='{value}' is not a number of seconds"):
        heartbeat_timeout()


# ---- one run per output folder -------------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys
    from autodeco_cli.core.folder_lock import folder_lock

    with folder_lock(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.read()
    """
)


@pytest.fixture
def lock_holder():
    """Start a process that holds the lock of a folder until it is killed; yields start(folder) -> pid."""
    started = []

    def start(folder: Path) -> subprocess.Popen:
        child = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(folder)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=_child_env(),
            text=True,
        )
        started.append(child)
        assert child.stdout.readline().strip() == "locked"
        return child

    yield start
    for child in started:
        child.kill()
        child.wait(BOUND_S)


@pytest.mark.parametrize("command", ["eval", "grid-search", "train-heads"])
def test_a_second_run_on_a_locked_folder_is_refused_naming_the_holder(
    cli, tiny_model_dir, fake_registry, tmp_path, lock_holder, command
):
    out = tmp_path / "out"
    args = {
        "eval": (_eval_args(tiny_model_dir, out), out / "static-T0.8-p0.9", "--output-dir"),
        "grid-search": (
            ["grid-search", "-b", "fake", "--model", tiny_model_dir, "--temperatures", "0.8", "--top-ps", "0.9"]
            + ["-k", "1", "--seeds", "1", "-o", out],
            out,
            "--output-dir",
        ),
        "train-heads": (
            ["train-heads", "--data", write_jsonl(tmp_path / "t.jsonl", TRAIN_ROWS), "--model", tiny_model_dir]
            + ["-o", out, "micro_batch_size=2", "epochs=1", "head_width=32", "cache_hidden=off"],
            out,
            "output_dir",
        ),
    }
    argv, folder, option = args[command]
    holder = lock_holder(folder)
    code, _, err = cli(*argv)
    assert code == 2
    line = one_error_line(err)
    assert f"{folder} is in use by another autodeco run (PID {holder.pid})" in line
    assert f"or give this run another {option}" in line
    # a holder that dies (even by SIGKILL) releases it: the lock file it left blocks no one
    holder.kill()
    holder.wait(BOUND_S)
    code, _, err = cli(*argv)
    assert code == 0, err
    assert not (folder / LOCK_FILE).exists()


# ---- Ctrl-C --------------------------------------------------------------------------------------

# The child first makes SIGINT deliverable the way a terminal's foreground command has it: a child
# inherits an ignored or blocked SIGINT, and in full-suite runs the pytest process had one of them
# by then (the child sat the signal out until the timeout).
INTERRUPTIBLE = textwrap.dedent(
    """
    import signal, sys
    from autodeco_cli import cli

    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.default_int_handler)

    @cli.app.command("wait-for-ctrl-c")
    def wait_for_ctrl_c():
        print("waiting", flush=True)
        sys.stdin.read()

    sys.argv = ["autodeco", "wait-for-ctrl-c"]
    cli.main()
    """
)


def test_ctrl_c_says_interrupted_on_a_redirected_stderr_and_exits_130():
    child = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTIBLE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_child_env(),
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "waiting"
        child.send_signal(signal.SIGINT)
        # stdin stays open: communicate() would close it, and a child that ignored the signal would
        # then read EOF and exit 0
        child.wait(timeout=BOUND_S)
        err = child.stderr.read()
    finally:
        child.kill()
    assert child.returncode == 130, (child.returncode, err)
    assert "Traceback" not in err, err
    assert "interrupted; everything written so far is kept (re-run the same command to resume where supported)" in (
        err.splitlines()
    ), err


FAILING_WRITE = textwrap.dedent(
    """
    import errno, sys
    from autodeco_cli import cli

    kind = sys.argv[1]

    @cli.app.command("write-somewhere")
    def write_somewhere():
        if kind == "os":
            raise OSError(errno.ENOSPC, "No space left on device", "/data/out/model.safetensors")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    sys.argv = ["autodeco", "write-somewhere"]
    cli.main()
    """
)


@pytest.mark.parametrize(
    "kind, needle",
    [("os", "no space left on the device to write /data/out/model.safetensors"), ("torch", "no space left")],
)
def test_a_full_disk_in_a_write_we_do_not_wrap_is_still_one_line(kind, needle):
    """A library writing its own files (a tokenizer, a PEFT adapter) on a full disk: exit 2, one line."""
    done = subprocess.run(
        [sys.executable, "-c", FAILING_WRITE, kind], capture_output=True, text=True, env=_child_env(), timeout=BOUND_S
    )
    assert done.returncode == 2
    assert needle in one_error_line(done.stderr)
