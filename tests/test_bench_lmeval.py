"""bench/bench_lmeval.py's plumbing on the tiny model: the lm-eval requests are the 800 generations
our eval runs (same prompt tokens, 4 per question, the task's budget and sampling), and the token
count it times matches what lm-eval generated. No timing is checked here."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

pytest.importorskip("lm_eval.models.huggingface")
pytestmark = pytest.mark.usefixtures("torch_single_thread")

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module("bench_lmeval")


@pytest.fixture
def hflm(tiny_lm):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=tiny_lm.model, tokenizer=tiny_lm.tokenizer, batch_size=32)


def test_requests_are_our_evals_800_generations(bench, hflm, tiny_lm):
    from autodeco_cli.engine.requests import encode_prompt
    from autodeco_cli.tasks.registry import get_task

    task = get_task("arith-add")
    docs = task.load_docs(limit=200)
    requests = bench.build_requests(hflm, task, docs, 4, task.max_new_tokens, 0.6, 0.95)

    assert len(requests) == 800
    for index, doc in enumerate(docs):
        group = requests[4 * index : 4 * index + 4]
        assert {r.doc["doc_id"] for r in group} == {doc.doc_id}
        context, gen_kwargs = group[0].args
        assert all(r.args == (context, gen_kwargs) for r in group)
        assert hflm.tok_encode(context) == encode_prompt(tiny_lm.tokenizer, doc.prompt, chat=True)
    assert gen_kwargs == {
        "until": [], "max_gen_toks": 32, "do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 0,
    }  # fmt: skip


def test_lmeval_path_counts_the_tokens_it_generated(bench, hflm, tiny_lm):
    from autodeco_cli.tasks.registry import get_task

    task = get_task("arith-add")
    docs = task.load_docs(limit=2)
    requests = bench.build_requests(hflm, task, docs, 2, 5, 1.0, 1.0)
    eos = tiny_lm.tokenizer.eos_token_id
    tokens, correct, row_steps = bench.lmeval_path(hflm, task, docs, requests, {eos})

    assert 4 <= tokens <= row_steps <= 4 * 5
    assert 0 <= correct <= 4
