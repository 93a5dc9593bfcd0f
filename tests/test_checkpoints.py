"""The one checkpoint scheme (training/checkpoints.py) and the three trainers on it: atomic step
folders, pruning, falling back past a broken newest checkpoint, RNG states restored, and the head
trainer, the reward trainer and steering resuming to what an uninterrupted run ends with (the
reward trainer also from a folder of the old one-`checkpoint/` layout).

The store's own cases save small tensors; the trainers' cases run a few steps of the tiny model.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from autodeco_cli.core import safe_writes
from autodeco_cli.core.errors import UserError
from autodeco_cli.core.heads import load_heads
from autodeco_cli.tasks.types import Doc, Score
from autodeco_cli.training.checkpoints import CheckpointStore
from autodeco_cli.training.config import RewardConfig, TrainConfig
from autodeco_cli.training.reward import RewardTrainer
from autodeco_cli.training.run_folder import CHECKPOINTS_DIR, REWARD_LEGACY_DIR, TRAINER_STATE_FILE
from autodeco_cli.training.trainer import HeadTrainer
from conftest import write_jsonl

pytestmark = pytest.mark.usefixtures("torch_single_thread")


class Killed(Exception):
    """Stands for the process dying at that point."""


class Recorder:
    """A console that keeps what is printed, as plain lines."""

    def __init__(self):
        self.lines: list[str] = []

    def print(self, text, **_):
        from rich.text import Text

        self.lines.append(Text.from_markup(text).plain)


def weights_writer(value: float):
    """write_files for the store: one small safetensors file, as a trainer's heads would be."""
    return lambda folder: save_file({"w": torch.full((4,), value)}, str(folder / "weights.safetensors"))


def restorer(into: list):
    """restore for the store: reads the weights file (so a damaged one is a broken checkpoint) and records."""

    def restore(folder: Path, state: dict) -> None:
        into.append((folder.name, state["step"], float(load_file(str(folder / "weights.safetensors"))["w"][0])))

    return restore


def store_with(tmp_path: Path, steps, keep: int = 0) -> CheckpointStore:
    store = CheckpointStore(tmp_path, keep=keep)
    for step in steps:
        store.save(step, {"step": step}, weights_writer(float(step)))
    return store


def names(folders) -> list[str]:
    return [f.name for f in folders]


# ---- the store ----------------------------------------------------------------------------------


def test_a_crash_mid_write_leaves_nothing_a_resume_would_pick(tmp_path, monkeypatch):
    store = store_with(tmp_path, [1])

    def dies_halfway(folder: Path) -> None:
        weights_writer(2.0)(folder)
        raise Killed

    with pytest.raises(Killed):
        store.save(2, {"step": 2}, dies_halfway)

    # killed after the state file was written, just before the rename: still not a checkpoint (a
    # SIGKILL runs no clean-up, so the staging folder stays behind)
    def killed(*args):
        raise Killed

    monkeypatch.setattr(safe_writes.os, "replace", killed)
    monkeypatch.setattr(safe_writes, "_remove", lambda path: None)
    with pytest.raises(Killed):
        store.save(3, {"step": 3}, weights_writer(3.0))
    monkeypatch.undo()
    assert (tmp_path / CHECKPOINTS_DIR / ".step-3.tmp" / TRAINER_STATE_FILE).is_file()
    assert names(store.folders()) == ["step-1"]
    restored = []
    assert store.load_newest(restorer(restored)).name == "step-1" and restored == [("step-1", 1, 1.0)]
    # the next save clears what the crashes left behind
    store.save(4, {"step": 4}, weights_writer(4.0))
    assert sorted(p.name for p in (tmp_path / CHECKPOINTS_DIR).iterdir()) == ["step-1", "step-4"]


@pytest.mark.parametrize(
    "keep, kept", [(1, ["step-10"]), (2, ["step-9", "step-10"]), (0, ["step-2", "step-9", "step-10"])]
)
def test_saving_prunes_to_the_newest_by_step_number(tmp_path, keep, kept):
    store = store_with(tmp_path, [2, 9, 10], keep=keep)
    assert names(store.folders()) == kept  # 0 keeps all; step-9 is older than step-10


def test_a_broken_newest_checkpoint_falls_back_to_the_one_before_with_a_one_line_warning(tmp_path):
    store = store_with(tmp_path, [1, 2, 3])
    newest = tmp_path / CHECKPOINTS_DIR / "step-3" / TRAINER_STATE_FILE
    newest.write_bytes(newest.read_bytes()[:100])  # truncated state
    (tmp_path / CHECKPOINTS_DIR / "step-2" / "weights.safetensors").write_bytes(b"not safetensors")  # damaged weights
    console, restored = Recorder(), []
    assert store.load_newest(restorer(restored), console).name == "step-1"
    assert restored[-1] == ("step-1", 1, 1.0)
    assert len(console.lines) == 2 and all("\n" not in line for line in console.lines)
    assert "step-3 is broken" in console.lines[0] and "trainer_state.pt" in console.lines[0]
    assert "resuming from step-2" in console.lines[0]
    assert "step-2 is broken" in console.lines[1] and "resuming from step-1" in console.lines[1]
    assert "trainer_state.pt" not in console.lines[1]  # the state read fine: the folder's weights did not


def test_when_every_checkpoint_is_broken_the_error_is_one_line(tmp_path):
    store = store_with(tmp_path, [1, 2])
    for folder in store.folders():
        (folder / TRAINER_STATE_FILE).write_bytes(b"")
    with pytest.raises(UserError, match="no earlier complete checkpoint") as info:
        store.load_newest(restorer([]), Recorder())
    line = info.value.one_line()
    assert "\n" not in line and "step-1" in line and "truncated or empty" in line
    assert f"Delete {tmp_path / CHECKPOINTS_DIR}" in line
    assert CheckpointStore(tmp_path / "empty", keep=2).load_newest(restorer([])) is None


def _draws() -> tuple:
    return torch.rand(3).tolist(), random.random(), float(np.random.rand())


def test_rng_states_are_restored_so_the_next_draws_are_the_uninterrupted_ones(tmp_path):
    torch.manual_seed(1), random.seed(2), np.random.seed(3)
    _draws()  # some way into the run
    store = store_with(tmp_path, [5])
    uninterrupted = _draws()
    torch.manual_seed(11), random.seed(12), np.random.seed(13)  # a new process, seeded its own way
    store.load_newest(restorer([]))
    assert _draws() == uninterrupted


def test_cuda_rng_states_round_trip_on_the_devices_there_are(tmp_path, monkeypatch):
    """The CUDA lines run on CPU too (no devices); with fake devices they save each one's state and
    restore the devices the resuming machine has."""
    saved = [torch.tensor([1, 2], dtype=torch.uint8), torch.tensor([3, 4], dtype=torch.uint8)]
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: saved)
    store = store_with(tmp_path, [1])
    restored = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((device, state.tolist())))
    store.load_newest(restorer([]))
    assert restored == [(0, [1, 2])]


# ---- the head trainer ---------------------------------------------------------------------------

ROWS = [{"prompt": f"What is {a} + {a}?", "completion": f"It is {2 * a}."} for a in range(1, 9)]


def head_config(model_dir, data: Path, out: Path, **overrides) -> TrainConfig:
    fields = dict(data=str(data), output_dir=str(out), model=str(model_dir), micro_batch_size=2,
                  gradient_accumulation=2, learning_rate=3e-3, head_width=16, seed=7, cache_hidden="off",
                  epochs=2, save_every=1, keep_checkpoints=3)  # fmt: skip
    return TrainConfig(**{**fields, **overrides})


def test_head_trainer_resume_restores_the_rng_states(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", ROWS)
    expected = {}

    def at_step_two(metrics, total):
        if metrics["step"] == 2:
            expected["draws"] = _draws()
            raise Killed

    trainer = HeadTrainer(head_config(tiny_model_dir, data, tmp_path / "run")).setup()
    torch.manual_seed(1), random.seed(2), np.random.seed(3)
    with pytest.raises(Killed):
        trainer.train(on_step=at_step_two)
    resumed = HeadTrainer(head_config(tiny_model_dir, data, tmp_path / "run")).setup()
    torch.manual_seed(11), random.seed(12), np.random.seed(13)
    assert resumed.resume() == 2
    assert _draws() == expected["draws"]


def test_head_trainer_resume_logs_each_step_once(tiny_model_dir, tmp_path):
    """Killed after logging step 3 but before its checkpoint: the resumed run trains step 3 again,
    and metrics.jsonl used to list it twice."""
    data = write_jsonl(tmp_path / "train.jsonl", ROWS)
    config = head_config(tiny_model_dir, data, tmp_path / "run", save_every=2, max_steps=4)

    def after_step_three(metrics, total):
        if metrics["step"] == 3:
            raise Killed

    with pytest.raises(Killed):
        HeadTrainer(config).setup().train(on_step=after_step_three)
    log = tmp_path / "run" / "metrics.jsonl"
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3]
    HeadTrainer(config).setup().train(resume=True)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3, 4]


# ---- the reward trainer -------------------------------------------------------------------------


@dataclass(frozen=True)
class EchoTask:
    name: str = "echo"
    max_new_tokens: int = 4
    splits: tuple = ("train",)

    def load_docs(self, split="train", limit=None, data_dir=None):
        return [Doc(f"echo/{split}/{i}", "say " * (1 + i % 3) + "now", None, {}) for i in range(6)]

    def score(self, doc, text):
        return Score(bool(text), text)


def token_reward(task, doc, generations):
    """A reward the sampled tokens decide, so every group has some signal."""
    from autodeco_cli.training.reward import group_advantages

    rewards = [float(sum(g.token_ids) % 5) for g in generations]
    metric = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return group_advantages(rewards, metric), metric(rewards)


def reward_trainer(tiny_lm, out: Path) -> RewardTrainer:
    config = RewardConfig(tasks="echo", output_dir=str(out), mode="temperature", learning_rate=0.05, steps=4,
                          prompts_per_step=2, group_size=4, batch_size=8, validate_every=1, seed=0)  # fmt: skip
    return RewardTrainer(config, reward_fn=token_reward).setup(lm=tiny_lm, tasks=[EchoTask()])


def heads_of(folder: Path) -> dict[str, torch.Tensor]:
    return load_heads(folder).state_dict()


def assert_same_heads(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


@pytest.fixture(scope="module")
def reward_reference(tiny_lm, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reward") / "full"
    reward_trainer(tiny_lm, out).train()
    return out


def test_reward_trainer_keeps_step_folders_and_falls_back_past_a_broken_one(
    tiny_lm, reward_reference, tmp_path, capsys
):
    out = tmp_path / "run"
    reward_trainer(tiny_lm, out).train()
    assert names(CheckpointStore(out, keep=2).folders()) == ["step-3", "step-4"]
    assert not (out / REWARD_LEGACY_DIR).exists()
    newest = out / CHECKPOINTS_DIR / "step-4" / TRAINER_STATE_FILE
    newest.write_bytes(newest.read_bytes()[:200])
    resumed = reward_trainer(tiny_lm, out)
    capsys.readouterr()
    resumed.train(resume=True)  # step 4 again, from step-3
    err = capsys.readouterr().err
    assert "step-4 is broken" in err and "resuming from step-3" in err and "Traceback" not in err
    assert resumed.step == 4
    assert_same_heads(resumed.heads.state_dict(), heads_of(reward_reference))
    assert_same_heads(heads_of(out), heads_of(reward_reference))


def test_reward_trainer_resumes_a_legacy_checkpoint_folder(tiny_lm, reward_reference, tmp_path):
    """A run of the old scheme: one `checkpoint/` folder, no RNG states. Made here from a step-2
    folder, it resumes to the uninterrupted run's heads and is pruned once newer ones exist."""
    out = tmp_path / "old"
    interrupted = reward_trainer(tiny_lm, out)

    def killed_after_two(record, total):
        if record["step"] == 2:
            raise Killed

    with pytest.raises(Killed):
        interrupted.train(on_step=killed_after_two)
    legacy = out / REWARD_LEGACY_DIR
    (out / CHECKPOINTS_DIR / "step-2").rename(legacy)
    shutil.rmtree(out / CHECKPOINTS_DIR)
    state = torch.load(legacy / TRAINER_STATE_FILE, weights_only=True)
    del state["rng"]
    torch.save(state, legacy / TRAINER_STATE_FILE)

    with pytest.raises(UserError, match="already holds checkpoints"):
        reward_trainer(tiny_lm, out).train()
    resumed = reward_trainer(tiny_lm, out)
    assert resumed.resume() == 2
    resumed.train(resume=True)
    assert_same_heads(resumed.heads.state_dict(), heads_of(reward_reference))
    assert not legacy.exists() and names(resumed.checkpoints.folders()) == ["step-3", "step-4"]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]


# ---- steering -----------------------------------------------------------------------------------


def steer_config(model_dir, data: Path, out: Path, heads: Path, **overrides) -> TrainConfig:
    fields = dict(data=str(data), output_dir=str(out), model=str(model_dir), init_heads=str(heads),
                  micro_batch_size=2, gradient_accumulation=1, learning_rate=3e-3, seed=3, cache_hidden="off",
                  easy_drop_probability=0.0, max_steps=4, save_every=2)  # fmt: skip
    return TrainConfig(**{**fields, **overrides})


def test_steering_checkpoints_and_resumes_to_the_uninterrupted_heads(
    tiny_model_dir, tiny_heads_dir, tmp_path, monkeypatch
):
    from autodeco_cli.training import steering

    data = write_jsonl(tmp_path / "steer.jsonl", ROWS[:4])
    full = steering.train_steering(steer_config(tiny_model_dir, data, tmp_path / "full", tiny_heads_dir))
    assert names(HeadTrainer(steer_config(tiny_model_dir, data, full, tiny_heads_dir)).checkpoint_dirs()) == [
        "step-2",
        "step-4",
    ]
    out = tmp_path / "cut"
    original = steering._SteerLoop.step

    def dies_in_step_four(loop, step):
        if step == 3:
            raise Killed
        return original(loop, step)

    monkeypatch.setattr(steering._SteerLoop, "step", dies_in_step_four)
    with pytest.raises(Killed):
        steering.train_steering(steer_config(tiny_model_dir, data, out, tiny_heads_dir))
    monkeypatch.undo()
    with pytest.raises(UserError, match="already holds checkpoints"):
        steering.train_steering(steer_config(tiny_model_dir, data, out, tiny_heads_dir))
    steering.train_steering(steer_config(tiny_model_dir, data, out, tiny_heads_dir), resume=True)
    assert_same_heads(heads_of(out), heads_of(full))
    assert (out / "steer_metrics.jsonl").read_text() == (full / "steer_metrics.jsonl").read_text()
