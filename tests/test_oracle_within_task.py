"""bench/oracle_within_task.py: the oracle is re-chosen on the question range it is scored on."""

from __future__ import annotations

import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _run(folder: Path, task: str, scores: list[float]) -> None:
    folder.mkdir(parents=True)
    rows = [{"doc_id": f"{task}/test/{i}-x", "score": s} for i, s in enumerate(scores)]
    (folder / "results.json").write_text(json.dumps({"per_question": {task: rows}}))


def test_the_oracle_is_the_best_cell_on_the_range_and_the_delta_is_paired(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH))
    import oracle_within_task

    task = "rand-times"
    _run(tmp_path / "heads" / "autodeco", task, [0.5, 0.6, 1.0, 0.8])
    # cell A wins on questions 0-1, cell B on questions 2-3: each range must pick its own oracle
    _run(tmp_path / "grid" / "static-T1-p0.8", task, [0.6, 0.6, 0.1, 0.1])
    _run(tmp_path / "grid" / "static-T1.5-p0.5", task, [0.0, 0.0, 0.8, 0.8])
    (tmp_path / "grid" / "greedy").mkdir()  # not a static cell: never the oracle

    oracle_within_task.main([task, str(tmp_path / "heads"), str(tmp_path / "grid"), "--questions", "0:2"])
    out = capsys.readouterr().out
    assert "n=2" in out and "oracle static-T1-p0.8 0.600" in out and "Δ -0.050" in out

    oracle_within_task.main([task, str(tmp_path / "heads"), str(tmp_path / "grid"), "--questions", "2:4"])
    out = capsys.readouterr().out
    assert "oracle static-T1.5-p0.5 0.800" in out and "Δ +0.100" in out
