"""core/startup_gc: the collector is off while an engine opens and back on afterwards, whatever happens."""

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


def test_only_the_first_opening_freezes(collector):
    gc.unfreeze()
    with paused_then_frozen():
        pass
    frozen = gc.get_freeze_count()
    with paused_then_frozen():
        [object() for _ in range(10)]
    assert gc.get_freeze_count() == frozen


def test_a_collector_someone_turned_off_stays_off(collector):
    gc.disable()
    with paused_then_frozen():
        pass
    assert not gc.isenabled()
