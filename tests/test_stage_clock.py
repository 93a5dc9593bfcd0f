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


def test_the_invocation_total_stays_the_last_row_when_a_later_invocation_adds_a_stage(tmp_path):
    path = tmp_path / "timings.json"
    clock = StageClock(path, lambda *a: None)
    with clock.stage("data"):
        pass
    clock.close_invocation()
    clock.save()
    again = StageClock(path, lambda *a: None)
    with again.stage("new stage"):
        pass
    again.close_invocation()
    assert list(again.timings) == ["data", "new stage", "total (this invocation)"]
    table = again.markdown()
    summed = sum(v for k, v in again.timings.items() if k != "total (this invocation)")
    assert table[4:6] == [
        f"| all stages, summed over invocations | {summed:.0f} |",
        f"| total (this invocation) | {again.timings['total (this invocation)']:.0f} |",
    ]


def test_the_machines_that_ran_stages_are_kept_and_named_above_the_table(tmp_path, monkeypatch):
    import torch

    from autodeco_cli.studies import stage_clock

    n = torch.get_num_threads()  # threads=None leaves the count as it is (a number would set it for the session)
    monkeypatch.setattr("autodeco_cli.core.cpu_features.cpu_model", lambda: "CPU A")
    clock = StageClock.start(tmp_path, None)
    assert clock.machine == f"CPU A, {n} threads" and clock.machines == []  # noted once a stage ends
    with clock.stage("data"):
        pass
    assert json.loads((tmp_path / "timings.json").read_text())[stage_clock.MACHINES] == [f"CPU A, {n} threads"]
    monkeypatch.setattr("autodeco_cli.core.cpu_features.cpu_model", lambda: "CPU B")
    again = StageClock.start(tmp_path, None)
    with again.stage("train"):
        pass
    with again.stage("eval"):
        pass
    again.close_invocation()
    assert list(again.timings) == ["data", "train", "eval", "total (this invocation)"]  # not a stage
    table = again.markdown()
    assert table[0] == f"Measured on: CPU A, {n} threads; CPU B, {n} threads."
    assert table[1:4] == ["", "| stage | seconds |", "|---|---|"]
    assert not any(line.startswith("| machines |") for line in table)
