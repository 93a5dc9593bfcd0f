"""make-data (make_data.make_on_policy_data) with a scripted engine on arith-add: which samples are
kept (the finish-reason filter), exact resume after a kill, the truncation of lines a cut chunk
left behind, and the settings claim on the output.

The engine is a stand-in that returns fixed texts per (question, sample), so what is kept is known
exactly; the generation engine itself is tested elsewhere. (Refusing other settings through the
CLI is in test_bad_input.py; the rand-* re-balancing in test_random_choice.py.)
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from autodeco_cli.core.decoding import make_strategy
from autodeco_cli.core.errors import UserError
from autodeco_cli.core.prompt_format import PLAIN
from autodeco_cli.engine.requests import Generation
from autodeco_cli.tasks.registry import get_task
from autodeco_cli.training.on_policy_data import make_on_policy_data, progress_path, settings_path
from conftest import Killed

TASK = "arith-add"
LIMIT = 7
K = 3
STRATEGY = make_strategy("static", temperature=1.0, top_p=1.0)


@pytest.fixture(scope="module")
def docs():
    return {d.doc_id: d for d in get_task(TASK).load_docs("train", limit=LIMIT)}


class ScriptedEngine:
    """Per question: sample 0 answers right and stops, sample 1 answers right but runs out of
    tokens (finish 'length'), sample 2 answers wrong and stops. Only sample 0 may be kept."""

    name, prompt_format, lm = "hf", PLAIN, SimpleNamespace(name=None, config=None)  # what make-data records
    dtype = "float32"

    def __init__(self, tokenizer, docs, die_on_call: int | None = None):
        self.tokenizer, self.docs, self.die_on_call = tokenizer, docs, die_on_call
        self.calls: list[list[tuple]] = []

    def generate(self, requests, max_new_tokens, batch_size, stop=None):
        if self.die_on_call is not None and len(self.calls) + 1 >= self.die_on_call:
            raise Killed()
        self.calls.append([r.key for r in requests])
        out = []
        for r in requests:
            doc_id, sample = r.key
            gold = int(self.docs[doc_id].gold)
            text = {0: f"{gold}", 1: f"{gold} and then some more", 2: f"{gold + 1}"}[sample]
            out.append(Generation(r.key, text, [1, 2], "length" if sample == 1 else "stop"))
        return out


def _make(engine, out, **kwargs):
    settings = {"k": K, "limit": LIMIT, "chunk_problems": 3, "max_new_tokens": 8, **kwargs}
    return make_on_policy_data(engine, TASK, out, STRATEGY, **settings)


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def reference(tiny_lm, docs, tmp_path_factory):
    """One uninterrupted run: (output path, its report)."""
    out = tmp_path_factory.mktemp("reference") / "data.jsonl"
    return out, _make(ScriptedEngine(tiny_lm.tokenizer, docs), out)


def test_keeps_only_scored_samples_that_finished(reference, docs):
    out, report = reference
    lines = _lines(out)
    # a right answer cut by the token budget is not a demonstration; a wrong one is not either
    assert [(r["doc_id"], r["sample"]) for r in lines] == [(doc_id, 0) for doc_id in docs]
    for r in lines:
        assert r["task"] == TASK and r["completion"] == str(docs[r["doc_id"]].gold)
        assert r["prompt"] == [{"role": "user", "content": docs[r["doc_id"]].prompt}]  # chat messages
    assert (report.problems, report.samples, report.kept, report.skipped_done) == (LIMIT, LIMIT * K, LIMIT, 0)
    assert report.per_task[TASK] == {"problems": LIMIT, "samples": LIMIT * K, "kept": LIMIT}
    assert [json.loads(line)["doc_id"] for line in progress_path(out).read_text().splitlines()] == list(docs)


def test_resume_after_a_kill_equals_an_uninterrupted_run(reference, tiny_lm, docs, tmp_path):
    whole, _ = reference
    out = tmp_path / "data.jsonl"
    with pytest.raises(Killed):
        _make(ScriptedEngine(tiny_lm.tokenizer, docs, die_on_call=2), out)  # chunk 1 of 3 done
    assert [r["doc_id"] for r in _lines(out)] == list(docs)[:3]
    engine = ScriptedEngine(tiny_lm.tokenizer, docs)
    report = _make(engine, out)
    # only the problems not yet done are sampled again
    assert sorted({key[0] for call in engine.calls for key in call}) == sorted(list(docs)[3:])
    assert (report.problems, report.skipped_done) == (LIMIT - 3, 3)
    assert out.read_text() == whole.read_text()
    # a finished run re-runs without sampling anything
    again = ScriptedEngine(tiny_lm.tokenizer, docs)
    assert _make(again, out).problems == 0 and again.calls == [] and out.read_text() == whole.read_text()


def test_lines_of_a_cut_chunk_are_dropped_and_the_chunk_redone(reference, tiny_lm, docs, tmp_path):
    """A kill between writing a chunk's samples and its progress records (the last of them maybe
    cut mid-line) leaves samples without a progress record: they are dropped, then redone once."""
    whole, _ = reference
    out = tmp_path / "data.jsonl"
    with pytest.raises(Killed):
        _make(ScriptedEngine(tiny_lm.tokenizer, docs, die_on_call=3), out)  # chunks 1-2 done
    with out.open("a", encoding="utf-8") as handle:  # chunk 3's samples, the last line cut
        handle.write(whole.read_text(encoding="utf-8").splitlines()[6] + "\n" + '{"prompt": "cut')
    engine = ScriptedEngine(tiny_lm.tokenizer, docs)
    report = _make(engine, out)
    assert sorted({key[0] for call in engine.calls for key in call}) == sorted(list(docs)[6:])
    assert report.skipped_done == 6
    assert out.read_text() == whole.read_text()
    assert [json.loads(line)["doc_id"] for line in progress_path(out).read_text().splitlines()] == list(docs)


def test_a_progress_line_cut_by_a_kill_costs_no_later_record(reference, tiny_lm, docs, tmp_path):
    whole, _ = reference
    out = tmp_path / "data.jsonl"
    with pytest.raises(Killed):
        _make(ScriptedEngine(tiny_lm.tokenizer, docs, die_on_call=3), out)  # chunks 1-2 done
    with progress_path(out).open("a") as handle:
        handle.write('{"task": "arith-add", "doc_')  # a record of chunk 3, cut mid-write
    _make(ScriptedEngine(tiny_lm.tokenizer, docs), out)
    again = ScriptedEngine(tiny_lm.tokenizer, docs)
    _make(again, out)
    assert again.calls == [] and out.read_text() == whole.read_text()


def test_settings_claim(reference, tiny_lm, docs, tmp_path):
    whole, _ = reference
    recorded = json.loads(settings_path(whole).read_text())
    assert recorded["k"] == K and recorded["decoding"] == STRATEGY.to_dict() and recorded["engine"] == "hf"
    assert recorded["max_new_tokens"] == 8 and recorded["split"] == "train"

    # an output made before settings were recorded adopts the current ones
    out = tmp_path / "old.jsonl"
    _make(ScriptedEngine(tiny_lm.tokenizer, docs), out, limit=3)
    settings_path(out).unlink()
    _make(ScriptedEngine(tiny_lm.tokenizer, docs), out, limit=3)
    assert json.loads(settings_path(out).read_text()) == json.loads(settings_path(whole).read_text())
    # more problems (a larger --limit) extend the data; other sampling settings are refused
    grown = _make(ScriptedEngine(tiny_lm.tokenizer, docs), out)
    assert (grown.problems, grown.skipped_done) == (LIMIT - 3, 3) and out.read_text() == whole.read_text()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(UserError, match=r"k: 3 -> 2"):
        _make(ScriptedEngine(tiny_lm.tokenizer, docs), out, k=2)
    with pytest.raises(UserError, match=r"seed: 0 -> 1"):
        _make(ScriptedEngine(tiny_lm.tokenizer, docs), out, seed=1)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing touched
    # an unreadable settings file is a one-line error, not a traceback
    settings_path(out).write_text("{not json")
    with pytest.raises(UserError, match="not a make-data settings file"):
        _make(ScriptedEngine(tiny_lm.tokenizer, docs), out)
