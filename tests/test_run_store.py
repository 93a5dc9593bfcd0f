"""The run store shared by eval and make-data: sample logs (kill-safe appends, keyed and unkeyed,
strict and lenient), rewrites, and the settings claim."""

from __future__ import annotations

import json

import pytest

from autodeco_cli.core.errors import UserError
from autodeco_cli.evaluation.run_store import SampleLog, claim_settings, setting_changes, write_json


def test_log_cuts_a_partial_line_and_appends_cleanly(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"doc_id": "a", "seed": 0, "sample": 0}\n{"doc_id": "b", "se')
    log = SampleLog(path)
    assert list(log.records) == [("a", 0, 0)]
    log.append([{"doc_id": "b", "seed": 0, "sample": 0}])
    log.close()
    assert [json.loads(line)["doc_id"] for line in path.read_text().splitlines()] == ["a", "b"]


def test_strict_and_lenient_logs(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"task": "t", "doc_id": "a"}\nnot json\n[1, 2]\n{"task": "t", "doc_id": "b"}\n')
    with pytest.raises(UserError, match=":2 is not a sample record"):
        SampleLog(path, key=lambda r: (r["task"], r["doc_id"]))
    lenient = SampleLog(path, key=lambda r: (r["task"], r["doc_id"]), strict=False)
    assert list(lenient.records) == [("t", "a"), ("t", "b")]


def test_unkeyed_log_keeps_every_record_and_rewrites(tmp_path):
    path = tmp_path / "data.jsonl"
    log = SampleLog(path, key=None)
    log.append([{"x": 1}, {"x": 1}, {"x": 2}])
    assert len(log.records) == 3
    log.rewrite(r for r in log.records.values() if r["x"] == 1)
    log.append([{"x": 3}])
    log.close()
    assert [json.loads(line)["x"] for line in path.read_text().splitlines()] == [1, 1, 3]
    assert [r["x"] for r in SampleLog(path, key=None).records.values()] == [1, 1, 3]


def test_settings_claim(tmp_path):
    path, holder = tmp_path / "settings.json", tmp_path / "out"
    current = {"k": 2, "decoding": {"temperature": 1.0, "top_p": 1.0}}
    changes = lambda previous: setting_changes(previous, current)  # noqa: E731
    assert claim_settings(path, changes, holder=holder, hint="h") == {}  # nothing recorded yet
    write_json(path, {"k": 1, "decoding": {"temperature": 0.5, "top_p": 1.0}, "old": True})
    refused = r"holds samples made with other settings \(k: 1 -> 2, decoding.temperature: 0.5 -> 1.0\)"
    with pytest.raises(UserError, match=refused):
        claim_settings(path, changes, holder=holder, hint="h")
    assert claim_settings(path, changes, holder=holder, hint="h", started=False) == {}  # not started: adopts
    path.write_text("{broken")
    with pytest.raises(UserError, match="is not a settings file"):
        claim_settings(path, changes, holder=holder, hint="h")
