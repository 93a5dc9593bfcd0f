"""`autodeco tasks`: every registered task listed with its split sizes, metric and source."""

from __future__ import annotations

import json

from autodeco_cli.tasks.catalogue import describe
from autodeco_cli.tasks.registry import list_tasks


def test_lists_every_task_and_group(cli):
    code, out, err = cli("tasks")
    assert code == 0, err
    for name in list_tasks():
        assert name in out
    assert "arith:" in out and "arith-add" in out


def test_json_lines_carry_sizes_metric_and_source(cli):
    code, out, err = cli("tasks", "arith-add", "rand-times", "--json")
    assert code == 0, err
    rows = {row["name"]: row for row in map(json.loads, out.strip().splitlines())}
    assert rows["arith-add"]["splits"] == {"test": 200, "validation": 200, "train": 3850}
    assert rows["arith-add"]["metric"] == "pass@1" and rows["arith-add"]["source"] == "generated (arithmetic)"
    assert rows["rand-times"]["metric"] == "exact×(1−TV)"


def test_a_split_whose_file_is_absent_is_missing_not_downloaded(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTODECO_DATA_DIR", str(tmp_path))
    info = describe("gsm8k")
    assert {s.name: s.size for s in info.splits} == {"test": None, "train": None}
    assert all(s.problem for s in info.splits)
    assert "openai/gsm8k" in info.source


def test_unknown_task_is_one_line_exit_2(cli):
    code, _, err = cli("tasks", "no-such-task")
    assert code == 2 and "Traceback" not in err
    assert "Unknown task 'no-such-task'" in err
