"""HeadTrainer before `setup()`: construction checks the config and knows the paths without a
model, so listing and pruning checkpoints and refusing to overwrite a run work on their own; plus
the LR schedules and the steering config that `train-heads --steer` reads from one recipe.

No case loads a model except the last one (the tiny one of conftest.py, two steering steps).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from autodeco_cli.core.errors import UserError
from autodeco_cli.training.config import SteerConfig, SteerRecipe, TrainConfig
from autodeco_cli.training.recipes import build_config
from autodeco_cli.training.run_folder import CHECKPOINTS_DIR, TRAINER_STATE_FILE
from autodeco_cli.training.trainer import HeadTrainer, lr_lambda
from conftest import write_jsonl

NO_MODEL = "/nonexistent/model-that-never-loads"


def config(tmp_path: Path, **fields) -> TrainConfig:
    return TrainConfig(
        **{"data": str(tmp_path / "train.jsonl"), "output_dir": str(tmp_path / "run"), "model": NO_MODEL, **fields}
    )


def fake_checkpoint(out: Path, step: int, complete: bool = True) -> Path:
    """A step folder as save_checkpoint leaves it; without trainer_state.pt it is an unfinished one."""
    folder = out / CHECKPOINTS_DIR / f"step-{step}"
    folder.mkdir(parents=True)
    if complete:
        (folder / TRAINER_STATE_FILE).write_bytes(b"state")
    return folder


def names(folders) -> list[str]:
    return [f.name for f in folders]


# ---- construction without a model --------------------------------------------------------------


def test_construction_needs_no_model_and_lists_checkpoints_in_step_order(tmp_path):
    trainer = HeadTrainer(config(tmp_path))
    assert trainer.checkpoint_dirs() == [] and trainer.step == 0
    out = tmp_path / "run"
    for step in (10, 2, 9):
        fake_checkpoint(out, step)
    fake_checkpoint(out, 11, complete=False)  # a crash mid-save: not a checkpoint
    (out / CHECKPOINTS_DIR / ".step-12.tmp").mkdir()
    assert names(trainer.checkpoint_dirs()) == ["step-2", "step-9", "step-10"]
    assert not hasattr(trainer, "lm")  # nothing was loaded


def test_refusal_to_overwrite_a_run_comes_before_setup(tmp_path):
    trainer = HeadTrainer(config(tmp_path))
    trainer.check_output_dir(resume=False)  # an empty output_dir is fine
    fake_checkpoint(tmp_path / "run", 3)
    with pytest.raises(UserError, match="already holds checkpoints") as refused:
        trainer.check_output_dir(resume=False)
    assert "--resume" in refused.value.one_line()
    trainer.check_output_dir(resume=True)


def test_only_the_main_rank_refuses(tmp_path, monkeypatch):
    fake_checkpoint(tmp_path / "run", 3)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    trainer = HeadTrainer(config(tmp_path))
    assert (trainer.dist.rank, trainer.dist.world_size) == (1, 2) and not trainer.dist.is_main
    trainer.check_output_dir(resume=False)  # rank 0 speaks for the run
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UserError, match="already holds checkpoints"):
        HeadTrainer(config(tmp_path)).check_output_dir(resume=False)


def test_invalid_config_is_refused_at_construction(tmp_path):
    with pytest.raises(UserError, match="schedule"):
        HeadTrainer(config(tmp_path, schedule="cyclic"))
    with pytest.raises(UserError, match="no training data"):
        HeadTrainer(TrainConfig(model=NO_MODEL))


def test_train_before_setup_is_a_programming_error(tmp_path):
    with pytest.raises(RuntimeError, match="setup"):
        HeadTrainer(config(tmp_path)).train()


def test_cli_refuses_an_existing_run_without_loading_the_model(cli, tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"prompt": "a", "completion": "b"}])
    fake_checkpoint(tmp_path / "run", 4)
    # a folder the up-front path check accepts, but no loader could open: refusing must come first
    unloadable = tmp_path / "unloadable-model"
    unloadable.mkdir()
    (unloadable / "config.json").write_text("{}")
    code, _, err = cli(
        "train-heads", f"data={tmp_path / 'train.jsonl'}", f"output_dir={tmp_path / 'run'}", f"model={unloadable}"
    )
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert "already holds checkpoints" in lines[0] and "--resume" in lines[0]


# ---- pruning ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "keep, kept", [(2, ["step-10", "step-11"]), (1, ["step-11"]), (5, ["step-2", "step-9", "step-10", "step-11"])]
)
def test_pruning_keeps_the_newest_complete_checkpoints(tmp_path, keep, kept):
    out = tmp_path / "run"
    for step in (2, 9, 10, 11):
        fake_checkpoint(out, step)
    unfinished = fake_checkpoint(out, 12, complete=False)
    trainer = HeadTrainer(config(tmp_path, keep_checkpoints=keep))
    trainer.prune_checkpoints()
    assert names(trainer.checkpoint_dirs()) == kept  # by step number, not by name (step-9 < step-10)
    assert unfinished.is_dir()  # not a checkpoint, so not counted and not deleted


# ---- LR schedules -------------------------------------------------------------------------------


def test_linear_schedule_warms_up_then_falls_to_zero():
    factor = lr_lambda("linear", warmup_steps=2, total_steps=10)
    assert [factor(s) for s in (0, 1)] == [0.5, 1.0]  # warmup: (step + 1) / warmup
    # after warmup: 1 - (step - warmup) / (total - warmup)
    assert [factor(s) for s in (2, 6, 9, 10)] == pytest.approx([1.0, 0.5, 0.125, 0.0])
    assert factor(14) == 0.0  # past the end it stays at zero, never negative


def test_linear_without_warmup_and_the_other_schedules():
    linear = lr_lambda("linear", warmup_steps=0, total_steps=4)
    assert [linear(s) for s in range(5)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    cosine = lr_lambda("cosine", warmup_steps=0, total_steps=4)
    assert [cosine(s) for s in (0, 2, 4)] == pytest.approx([1.0, 0.5, 0.0])
    assert cosine(1) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    constant = lr_lambda("constant", warmup_steps=2, total_steps=4)
    assert [constant(s) for s in range(5)] == [0.5, 1.0, 1.0, 1.0, 1.0]


def test_linear_schedule_drives_the_optimizer():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda("linear", 1, 5))
    seen = []
    for _ in range(5):
        seen.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.1, 0.1, 0.075, 0.05, 0.025])


# ---- the steering config: its own dataclass, the recipe's steer_* keys -------------------------


def test_steer_fields_come_from_the_recipe_and_overrides(tmp_path):
    recipe = tmp_path / "steer.yaml"
    recipe.write_text(
        yaml.safe_dump({"data": "d.jsonl", "init_heads": "runs/heads", "steer_margin": 2, "max_steps": 5})
    )
    train, steer = build_config(SteerRecipe, recipe, ["steer_anchor_weight=0.5", "learning_rate=1e-3"]).split()
    assert steer == SteerConfig(margin=2.0, ranking_weight=1.0, anchor_weight=0.5)
    assert type(steer.margin) is float
    assert type(train) is TrainConfig and not any(name.startswith("steer_") for name in TrainConfig.field_names())
    assert (train.data, train.init_heads, train.max_steps, train.learning_rate) == ("d.jsonl", "runs/heads", 5, 1e-3)
    assert steer.as_recipe() == {"steer_margin": 2.0, "steer_ranking_weight": 1.0, "steer_anchor_weight": 0.5}


def test_steer_fields_are_not_training_fields_and_are_validated():
    with pytest.raises(UserError, match="unknown field 'steer_margin'"):
        build_config(TrainConfig, None, ["steer_margin=2"])
    with pytest.raises(UserError, match="expects float"):
        build_config(SteerRecipe, None, ["steer_margin=wide"])
    for bad, field in (
        (SteerConfig(margin=0.0), "steer_margin"),
        (SteerConfig(anchor_weight=-1.0), "steer_anchor_weight"),
    ):
        with pytest.raises(UserError, match=field):
            bad.validate()


def test_steered_heads_record_the_steer_fields_and_their_steps(tiny_model_dir, tiny_heads_dir, tmp_path):
    from autodeco_cli.training.steering import train_steering

    data = write_jsonl(
        tmp_path / "steer.jsonl",
        [{"prompt": "What is 1 + 2?", "completion": "3"}, {"prompt": "Hi", "completion": "Hello"}],
    )
    cfg = TrainConfig(
        data=str(data), output_dir=str(tmp_path / "steered"), model=str(tiny_model_dir), init_heads=str(tiny_heads_dir),
        micro_batch_size=2, max_steps=2, cache_hidden="off", seed=3,
    )  # fmt: skip
    out = train_steering(cfg, SteerConfig(margin=0.5))
    provenance = json.loads((out / "config.json").read_text())["autodeco_cli"]["provenance"]
    assert provenance["steps"] == 2
    assert provenance["config"]["steer_margin"] == 0.5 and provenance["config"]["init_heads"] == str(tiny_heads_dir)
    assert len((out / "steer_metrics.jsonl").read_text().splitlines()) == 2
