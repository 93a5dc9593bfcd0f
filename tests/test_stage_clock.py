"""Stage times of resumable pipelines add up over invocations and survive a failing stage."""

from __future__ import annotations

import json

import pytest

from autodeco_cli.studies.stage_clock import StageClock


def test_stage_times_accumulate_over_invocations_and_are_saved_per_stage(tmp_path):
    path = tmp_path / "timings.json"
    logged = []
    clock = StageClock(path, logged.append)
    with clock.stage("data"):
        pass
    first = json.loads(path.read_text())["data"]
    with pytest.raises(RuntimeError):
        with clock.stage("train"):
            raise RuntimeError("killed")
    assert set(json.loads(path.read_text())) == {"data", "train"}  # written even when a stage fails
    again = StageClock(path, logged.append)
    with again.stage("data"):
        pass
    assert again.timings["data"] >= first and logged == ["[bold]== data[/]", "[bold]== train[/]", "[bold]== data[/]"]
    table = again.markdown()
    assert table[:2] == ["| stage | seconds |", "|---|---|"] and any(line.startswith("| train |") for line in table)
