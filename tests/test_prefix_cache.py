"""The shared prompt prefix is prefilled once, and generations do not change."""

from __future__ import annotations

import pytest

from autodeco_cli.core.decoding import make_strategy
from autodeco_cli.core.heads import fresh_heads
from autodeco_cli.engine import generation, prefix_cache
from autodeco_cli.engine.generation import GenerationEngine
from autodeco_cli.engine.prefix_cache import MIN_SHARED_TOKENS, shared_prefix_length
from autodeco_cli.engine.requests import build_requests
from conftest import TINY_HIDDEN

pytestmark = pytest.mark.usefixtures("torch_single_thread")

INSTRUCTION = "You are a careful assistant. Answer with one word only, then stop. Question: "
QUESTIONS = ["what colour is the sky", "name a fruit", "what is two plus two", "pick a number", "say hi"]


def test_shared_prefix_length():
    long = list(range(100, 100 + 2 * MIN_SHARED_TOKENS))
    assert shared_prefix_length([long + [1, 2], long + [3]]) == len(long)
    assert shared_prefix_length([long + [1], long + [1]]) == 0  # one distinct prompt: shared whole
    assert shared_prefix_length([long, long + [5, 6]]) == len(long) - 1  # each keeps a token of its own
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 9]]) == 0  # too short to pay
    assert shared_prefix_length([long + [1], [7] + long]) == 0


@pytest.fixture(scope="module")
def engine(tiny_lm):
    engine = GenerationEngine(tiny_lm, fresh_heads(TINY_HIDDEN, seed=0))
    yield engine
    engine.close()


@pytest.mark.parametrize("batch_size", [2, 16])
def test_generations_are_the_same_with_and_without_the_shared_prefix(engine, tiny_lm, monkeypatch, batch_size):
    """Greedy, sampled and autodeco requests, several samples per prompt (later samples copy a
    running row's prompt columns, which now have padding after the prefix), rows joining a
    running batch: every token and every traced T̂/P̂ is the same as with full prefills."""
    tok = tiny_lm.tokenizer
    prompts = [INSTRUCTION + q for q in QUESTIONS]
    requests = []
    for name, seed in (("greedy", 0), ("autodeco", 3)):
        requests += build_requests(tok, prompts, make_strategy(name), n=2, seed=seed)
    requests += build_requests(tok, prompts, make_strategy("static", temperature=1.3, top_p=0.9), n=3, seed=5)
    assert shared_prefix_length([r.input_ids for r in requests]) >= MIN_SHARED_TOKENS

    prefills, widths = [], []
    real_prefill, real_forward = prefix_cache.SharedPrefix._prefill, engine._forward

    def counting_prefill(self, eng):
        prefills.append(len(self.tokens))
        return real_prefill(self, eng)

    def recording_forward(input_ids, *rest):
        if input_ids.shape[1] > 1:
            widths.append(input_ids.shape[1])
        return real_forward(input_ids, *rest)

    monkeypatch.setattr(prefix_cache.SharedPrefix, "_prefill", counting_prefill)
    monkeypatch.setattr(engine, "_forward", recording_forward)
    engine.share_prefix = True
    shared = engine.generate(requests, max_new_tokens=10, batch_size=batch_size, trace=True)
    shared_widths, widths[:] = list(widths), []
    engine.share_prefix = False
    try:
        full = engine.generate(requests, max_new_tokens=10, batch_size=batch_size, trace=True)
    finally:
        engine.share_prefix = True
    assert len(prefills) == 1  # once per generate call
    longest = max(len(r.input_ids) for r in requests)
    assert max(widths) == longest and max(w for w in shared_widths if w != prefills[0]) < longest
    for a, b in zip(shared, full):
        assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
        if a.trace:
            values = [v for t in a.trace for v in (t.temperature, t.top_p)]
            assert values == pytest.approx([v for t in b.trace for v in (t.temperature, t.top_p)], abs=1e-5)


def test_later_samples_copy_prompt_columns_from_a_row_with_padding_after_the_prefix(engine, tiny_lm, monkeypatch):
    tok = tiny_lm.tokenizer
    prompts = [INSTRUCTION + "a", INSTRUCTION + "a much longer question than the other one"]
    requests = build_requests(tok, prompts, make_strategy("static", temperature=1.5, top_p=1.0), n=6, seed=2)
    copies = []
    real = generation._DecodeState._copy_prompt_row
    monkeypatch.setattr(generation._DecodeState, "_copy_prompt_row", lambda s, m: copies.append(m) or real(s, m))
    together = engine.generate(requests, max_new_tokens=12, batch_size=2)
    assert copies
    monkeypatch.undo()
    for g, request in zip(together, requests):
        assert g.token_ids == engine.generate([request], max_new_tokens=12)[0].token_ids
