"""core/startup_gc: the collector is off while an engine opens (or train-heads and the studies load
their model) and back on afterwards, whatever happens."""

from __future__ import annotations

import gc

import pytest

from autodeco_cli.core.startup_gc import paused_then_frozen


@pytest.fixture
def collector():
    was_enabled = gc.isenabled()
    gc.enable()
    yield
    gc.unfreeze()  # what the tests froze becomes collectable again
    if not was_enabled:
        gc.disable()


def test_the_collector_is_off_inside_and_on_after_with_the_loaded_objects_frozen(collector):
    gc.unfreeze()
    with paused_then_frozen():
        assert not gc.isenabled()
        loaded = [object() for _ in range(10)]
    assert gc.isenabled()
    assert gc.get_freeze_count() > 0
    assert loaded


def test_the_collector_comes_back_on_when_opening_fails(collector):
    with pytest.raises(RuntimeError):
        with paused_then_frozen():
            raise RuntimeError("the model did not load")
    assert gc.isenabled()


def test_only_the_first_opening_freezes(collector, monkeypatch):
    # Counted by the calls, not by gc.get_freeze_count(): a frozen object that dies (one a background thread of an
    # earlier test lets go) leaves the permanent generation, so that count can drop at any moment.
    freezes = []
    real_freeze = gc.freeze
    monkeypatch.setattr(gc, "freeze", lambda: (freezes.append(1), real_freeze()))
    gc.unfreeze()
    with paused_then_frozen():
        pass
    assert len(freezes) == 1
    with paused_then_frozen():
        [object() for _ in range(10)]
    assert len(freezes) == 1


def test_a_collector_someone_turned_off_stays_off(collector):
    gc.disable()
    with paused_then_frozen():
        pass
    assert not gc.isenabled()


class _Loaded(Exception):
    """Raised by the stand-in loaders: the test ends where the model would have loaded."""


def _recording(seen: list):
    def stand_in(*args, **kwargs):
        seen.append(gc.isenabled())
        raise _Loaded

    return stand_in


@pytest.mark.parametrize("objective", ["mle", "steer", "reward"])
def test_train_heads_sets_up_with_the_collector_paused(collector, monkeypatch, tmp_path, objective):
    from autodeco_cli.commands.train import train_heads
    from autodeco_cli.training.reward import RewardTrainer
    from autodeco_cli.training.trainer import HeadTrainer

    seen: list = []
    monkeypatch.setattr(HeadTrainer, "setup", _recording(seen))
    monkeypatch.setattr(RewardTrainer, "setup", _recording(seen))
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "1 + 1?", "completion": "2"}\n')
    (tmp_path / "heads").mkdir()  # init_heads for --steer: it must exist (setup, which would read it, is stubbed)
    (tmp_path / "heads" / "autodeco_heads.safetensors").write_bytes(b"")
    options = {
        "mle": {"data": str(data)},
        "steer": {"data": str(data), "steer": True, "overrides": [f"init_heads={tmp_path / 'heads'}"]},
        "reward": {"objective": "reward", "overrides": ["tasks=arith-add"]},  # tasks is text: [arith-add] names no task
    }[objective]
    with pytest.raises(_Loaded):
        train_heads(output_dir=str(tmp_path / "out"), **options)
    assert seen == [False]
    assert gc.isenabled()


@pytest.mark.parametrize("study", ["reproduce", "where-it-wins", "ablation"])
def test_the_studies_load_their_model_with_the_collector_paused(collector, monkeypatch, tmp_path, study):
    from autodeco_cli.engine import models
    from autodeco_cli.studies import ablation, reproduce, where_it_wins

    seen: list = []
    monkeypatch.setattr(models, "load_base_model", _recording(seen))
    settings = {"workdir": str(tmp_path / "work"), "threads": None}
    run, config = {
        "reproduce": (reproduce.run_reproduce, reproduce.ReproduceConfig(**settings)),
        "where-it-wins": (where_it_wins.run_where_it_wins, where_it_wins.WhereItWinsConfig(**settings)),
        "ablation": (ablation.run_ablation, ablation.AblationConfig(**settings, rows=[{"name": "a", "data": "a"}])),
    }[study]
    with pytest.raises(_Loaded):
        run(config, log=lambda *args, **kwargs: None)
    assert seen == [False]
    assert gc.isenabled()
