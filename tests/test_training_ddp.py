"""DDP training under torchrun (2 CPU processes, gloo) equals one process with the same global batch.

Both torchrun launches start at once (they overlap on 2 cores) from a module fixture; the
single-process references run in-process. If torchrun cannot start at all (no free port, no
loopback), the tests are skipped with the launcher's reason.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from autodeco_cli.core.heads import load_heads
from autodeco_cli.training.config import TrainConfig
from autodeco_cli.training.trainer import HeadTrainer
from conftest import write_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_single_thread")]

# 10 examples, global batch 4 (2 per micro-batch x 2 ranks): steps of 4, 4 and 2 sequences, so the
# last step of each epoch gives rank 1 nothing to do.
ROWS = [{"prompt": f"What is {i} + {i + 3}?", "completion": f"The answer is {2 * i + 3}."} for i in range(10)]
COMMON = dict(micro_batch_size=2, epochs=2, head_width=32, learning_rate=3e-3, seed=7, easy_drop_probability=0.6)
# Both launches share one deadline from their start. It bounds a hang (a rank waiting forever in
# a collective), not speed: both finish in ~25 s on 2 lightly loaded cores, several times that
# when other test runs share them. Limits near the normal duration (120 s for the main run, then
# 20 s for the small one after the main one ended) killed runs that were merely slow, and the
# tests failed with no error in the run's own log.
LAUNCH_TIMEOUT_S = 600
STARTUP_FAILURES = (
    "EADDRINUSE",
    "Address already in use",
    "address already in use",
    "Connection refused",
    "failed to bind",
    "Failed to bind",
    "RendezvousConnectionError",
    "RendezvousTimeoutError",
    "DistNetworkError",
    "Name or service not known",
)


def _torchrun(model_dir: Path, data: Path, out: Path, log: Path, **fields) -> subprocess.Popen:
    args = [f"{k}={v}" for k, v in {"model": model_dir, "data": data, "output_dir": out, **fields}.items()]
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "COLUMNS")
    }
    env["OMP_NUM_THREADS"] = "1"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--standalone",
        "-m",
        "autodeco_cli.cli",
        "train-heads",
        *args,
    ]
    # output to a file, not a pipe: a killed launcher's workers must not keep us waiting on it
    with log.open("w") as handle:
        return subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT, text=True)


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _finish(proc: subprocess.Popen, log: Path, deadline: float) -> tuple[int | None, str]:
    """(returncode, output); returncode None means it was still running at the deadline and was
    stopped: the launcher and the workers it started (each by its own pid)."""
    try:
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        return proc.returncode, log.read_text(errors="replace")
    except subprocess.TimeoutExpired:
        workers = _children(proc.pid)
        proc.terminate()  # torchrun forwards SIGTERM to its workers
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return None, log.read_text(errors="replace")


@pytest.fixture(scope="module")
def launches(tiny_model_dir, tmp_path_factory):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("this torch build has no torch.distributed/gloo")
    root = tmp_path_factory.mktemp("ddp")
    data = write_jsonl(root / "train.jsonl", ROWS)
    small = write_jsonl(root / "small.jsonl", ROWS[:2])
    main_out, small_out = root / "ddp", root / "ddp-small"
    logs = {"main": root / "main.log", "small": root / "small.log"}
    procs = {
        "main": _torchrun(tiny_model_dir, data, main_out, logs["main"], gradient_accumulation=1, **COMMON),
        # 2 examples < one micro-batch per rank: rank 1 has no data in the very first step
        "small": _torchrun(
            tiny_model_dir, small, small_out, logs["small"], gradient_accumulation=1, **{**COMMON, "epochs": 1}
        ),
    }
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    results = {name: _finish(procs[name], logs[name], deadline) for name in ("main", "small")}
    code, output = results["main"]
    if code not in (0, None) and any(s in output for s in STARTUP_FAILURES):
        pytest.skip(f"torchrun could not start 2 gloo workers here: {next(s for s in STARTUP_FAILURES if s in output)}")
    return {
        "root": root,
        "data": data,
        "small": small,
        "main_out": main_out,
        "small_out": small_out,
        "results": results,
    }


def _single(model_dir, data, out, **fields) -> HeadTrainer:
    cfg = TrainConfig(data=str(data), output_dir=str(out), model=str(model_dir), cache_hidden="off", **fields)
    trainer = HeadTrainer(cfg).setup()
    trainer.train()
    return trainer


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_ddp_heads_equal_single_process_with_same_global_batch(launches, tiny_model_dir, tmp_path):
    code, output = launches["results"]["main"]
    assert code == 0, f"torchrun failed (code {code}):\n{output[-4000:]}"
    single = _single(tiny_model_dir, launches["data"], tmp_path / "single", gradient_accumulation=2, **COMMON)
    assert single.step == 6
    ddp = load_heads(launches["main_out"]).state_dict()
    ref = single.heads.state_dict()
    for key in ref:
        torch.testing.assert_close(ddp[key], ref[key], rtol=0.0, atol=1e-5, msg=key)
    # only rank 0 writes: one metrics line per step, one final checkpoint
    metrics = _metrics(launches["main_out"])
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    assert [m["lr"] for m in metrics] == pytest.approx([m["lr"] for m in _metrics(tmp_path / "single")])
    assert (launches["main_out"] / "checkpoints" / "step-6").is_dir()
    # the DDP run used the hidden-state cache (epochs > 1), the reference did not
    assert list((launches["main_out"] / "hidden_cache").glob("hidden-*.safetensors"))


def test_ddp_reports_the_tokens_of_all_ranks(launches, tiny_model_dir, tmp_path):
    """`tokens` in metrics.jsonl under torchrun counts the micro-batches of every rank, so each
    step reports what a single-process run of the same data reports. (Regression: only rank 0's
    were counted, under-reporting throughput ~world_size-fold.)"""
    code, output = launches["results"]["main"]
    assert code == 0, output[-4000:]
    single = _single(tiny_model_dir, launches["data"], tmp_path / "single-tokens", gradient_accumulation=2, **COMMON)
    expected = [m["tokens"] for m in _metrics(tmp_path / "single-tokens")]
    assert sum(expected) == 2 * sum(e.num_loss_tokens for e in single.examples)
    assert [m["tokens"] for m in _metrics(launches["main_out"])] == expected


def test_ddp_rank_without_data_in_a_step_does_not_hang(launches, tiny_model_dir, tmp_path):
    """A rank with no micro-batch in a step (a dataset smaller than the global batch; in practice a
    run resumed into the uneven last step of an epoch) still joins the gradient all-reduce, so
    the run finishes, with the heads a single process trains on the same data. (Regression: such
    a rank had no .grad tensors, skipped dist.all_reduce, and the other rank waited forever.)"""
    code, output = launches["results"]["small"]
    assert code is not None, (
        f"torchrun hung (still running {LAUNCH_TIMEOUT_S} s after launch) when rank 1 had no micro-batch "
        f"(killed):\n{output[:800]}"
    )
    assert code == 0, output[-4000:]
    single = _single(
        tiny_model_dir, launches["small"], tmp_path / "single-small", gradient_accumulation=2, **{**COMMON, "epochs": 1}
    )
    ddp = load_heads(launches["small_out"]).state_dict()
    for key, value in single.heads.state_dict().items():
        torch.testing.assert_close(ddp[key], value, rtol=0.0, atol=1e-5, msg=key)
