"""The generation engine on a tiny random Llama: greedy parity, seeding, traces, stops, merged folders."""

from __future__ import annotations

import pytest
import torch

from autodeco_cli.core.decoding import make_strategy
from autodeco_cli.core.heads import MAX_TEMPERATURE, fresh_heads
from autodeco_cli.engine.generation import GenerationEngine
from autodeco_cli.engine.models import load_base_model
from autodeco_cli.engine.requests import Request, build_requests, request_seed
from conftest import TINY_HIDDEN, build_merged_folder, save_tiny_model

PROMPTS = [
    "hello",
    "What is 27 + 82? Tell me a joke about a cat and a mouse, please.",
    "The quick brown fox",
    "Once upon a time there was a small model that liked to count: one two three",
]
MAX_NEW = 16

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def engine(tiny_lm):
    engine = GenerationEngine(tiny_lm, fresh_heads(TINY_HIDDEN, seed=0))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def plain_engine(tiny_lm):
    return GenerationEngine(tiny_lm)


def hf_greedy(lm, ids_rows: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """transformers' own greedy on a left-padded batch; returns the new tokens per row."""
    tok = lm.tokenizer
    width = max(len(r) for r in ids_rows)
    input_ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in ids_rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in ids_rows])
    with torch.inference_mode():
        out = lm.model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
    return out[:, width:].tolist()


def strip_after_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def manual_argmax(lm, ids: list[int], steps: int) -> list[int]:
    """The base model's greedy path without generate(): argmax of the raw logits, no processors."""
    cur = torch.tensor([ids])
    out = []
    with torch.inference_mode():
        for _ in range(steps):
            nxt = int(lm.model(cur).logits[0, -1].argmax())
            out.append(nxt)
            if nxt == lm.tokenizer.eos_token_id:
                break
            cur = torch.cat([cur, torch.tensor([[nxt]])], dim=1)
    return out


# ---- greedy parity ---------------------------------------------------------------------------


def test_prompts_have_different_lengths(tiny_lm):
    reqs = build_requests(tiny_lm.tokenizer, PROMPTS, make_strategy("greedy"))
    assert len({len(r.input_ids) for r in reqs}) == len(PROMPTS)


@pytest.mark.parametrize("trace", [False, True])
def test_greedy_matches_hf_generate_single(plain_engine, engine, tiny_lm, trace):
    eos = tiny_lm.tokenizer.eos_token_id
    use = engine if trace else plain_engine  # trace=True runs the DecodingProcessor path with p=0
    for prompt in PROMPTS:
        req = build_requests(tiny_lm.tokenizer, [prompt], make_strategy("greedy"))
        gen = use.generate(req, max_new_tokens=MAX_NEW, trace=trace)[0]
        expected = strip_after_eos(hf_greedy(tiny_lm, [req[0].input_ids], MAX_NEW)[0], eos)
        assert gen.token_ids == expected
        assert gen.token_ids == manual_argmax(tiny_lm, req[0].input_ids, MAX_NEW)


@pytest.mark.parametrize("trace", [False, True])
def test_greedy_batched_left_padding_matches_hf(engine, tiny_lm, trace):
    eos = tiny_lm.tokenizer.eos_token_id
    reqs = build_requests(tiny_lm.tokenizer, PROMPTS, make_strategy("greedy"))
    gens = engine.generate(reqs, max_new_tokens=MAX_NEW, batch_size=len(reqs), trace=trace)
    # the engine sorts by length; compare with HF greedy on the same (sorted, padded) batch ...
    order = sorted(range(len(reqs)), key=lambda i: -len(reqs[i].input_ids))
    batch_ref = hf_greedy(tiny_lm, [reqs[i].input_ids for i in order], MAX_NEW)
    for rank, i in enumerate(order):
        assert gens[i].token_ids == strip_after_eos(batch_ref[rank], eos), i
    # ... and with each prompt generated alone, unpadded (left padding must not change greedy)
    for i, req in enumerate(reqs):
        alone = strip_after_eos(hf_greedy(tiny_lm, [req.input_ids], MAX_NEW)[0], eos)
        assert gens[i].token_ids == alone, f"prompt {i} differs when left-padded in a batch"
        assert gens[i].key == (i, 0)


def test_greedy_ignores_model_generation_config_penalties(tmp_path):
    """The engine builds its own GenerationConfig so that a model's generation_config (sampling,
    top-k, penalties) cannot sit on top of the decoding distribution; greedy is documented to be
    the base model's own argmax. A shipped repetition_penalty / no_repeat_ngram_size (Qwen2.5
    instruct models ship repetition_penalty=1.05) must therefore not change greedy output."""
    folder = save_tiny_model(
        tmp_path / "penalised", generation_overrides={"repetition_penalty": 5.0, "no_repeat_ngram_size": 1}
    )
    lm = load_base_model(str(folder), device="cpu")
    engine = GenerationEngine(lm)
    req = build_requests(lm.tokenizer, [PROMPTS[0]], make_strategy("greedy"))
    gen = engine.generate(req, max_new_tokens=24)[0]
    assert gen.token_ids == manual_argmax(lm, req[0].input_ids, 24)


def test_static_tiny_p_equals_greedy(engine, tiny_lm):
    greedy = engine.generate(
        build_requests(tiny_lm.tokenizer, PROMPTS, make_strategy("greedy")), max_new_tokens=MAX_NEW
    )
    for T in (0.3, 1.0, 2.0):
        static = engine.generate(
            build_requests(tiny_lm.tokenizer, PROMPTS, make_strategy("static", temperature=T, top_p=1e-6), seed=3),
            max_new_tokens=MAX_NEW,
            trace=True,
        )
        for g, s in zip(greedy, static):
            assert s.token_ids == g.token_ids
            assert all(t.nucleus_size == 1 for t in s.trace)


def test_static_top_k_one_equals_greedy(engine, tiny_lm):
    greedy = engine.generate(
        build_requests(tiny_lm.tokenizer, PROMPTS, make_strategy("greedy")), max_new_tokens=MAX_NEW
    )
    topk = engine.generate(
        build_requests(
            tiny_lm.tokenizer, PROMPTS, make_strategy("static", temperature=1.5, top_p=1.0, top_k=1), seed=1
        ),
        max_new_tokens=MAX_NEW,
    )
    assert [g.token_ids for g in topk] == [g.token_ids for g in greedy]


# ---- sampling: seeds and batch independence ------------------------------------------------


@pytest.mark.parametrize("strategy", [make_strategy("static", temperature=1.0, top_p=0.95), make_strategy("autodeco")])
def test_same_seed_same_samples_different_seed_differs(engine, tiny_lm, strategy):
    def run(seed):
        reqs = build_requests(tiny_lm.tokenizer, PROMPTS, strategy, n=2, seed=seed)
        return [g.token_ids for g in engine.generate(reqs, max_new_tokens=MAX_NEW)]

    first, again, other = run(0), run(0), run(1)
    assert first == again
    assert first != other
    # the n samples of one prompt differ from each other (own per-request seeds)
    assert first[0] != first[1]


def test_request_seed_is_stable():
    assert request_seed(0, 1, 2) == request_seed(0, 1, 2)
    assert len({request_seed(0, 0, 0), request_seed(0, 0, 1), request_seed(0, 1, 0), request_seed(1, 0, 0)}) == 4
    assert 0 <= request_seed(123, "x", 9) < 2**63


@pytest.mark.parametrize("strategy", [make_strategy("static", temperature=1.2, top_p=0.9), make_strategy("autodeco")])
def test_sample_independent_of_batch_mates(engine, tiny_lm, strategy):
    reqs = build_requests(tiny_lm.tokenizer, PROMPTS, strategy, n=2, seed=7)
    together = engine.generate(reqs, max_new_tokens=MAX_NEW, batch_size=len(reqs))
    one_by_one = engine.generate(reqs, max_new_tokens=MAX_NEW, batch_size=1)
    pairs = engine.generate(list(reversed(reqs)), max_new_tokens=MAX_NEW, batch_size=3)[::-1]
    for i in range(len(reqs)):
        assert together[i].token_ids == one_by_one[i].token_ids, f"request {reqs[i].key} depends on its batch"
        assert pairs[i].token_ids == one_by_one[i].token_ids, f"request {reqs[i].key} depends on its batch"


def test_mixed_strategies_in_one_batch(engine, tiny_lm):
    tok = tiny_lm.tokenizer
    greedy = build_requests(tok, PROMPTS[:2], make_strategy("greedy"), seed=2)
    static = build_requests(tok, PROMPTS[2:], make_strategy("static", temperature=0.8, top_p=0.9), seed=2)
    auto = [
        Request(key=("a", i), input_ids=r.input_ids, strategy=make_strategy("autodeco"), seed=r.seed)
        for i, r in enumerate(greedy)
    ]
    mixed = engine.generate(greedy + static + auto, max_new_tokens=MAX_NEW, batch_size=8, trace=True)
    alone = [engine.generate([r], max_new_tokens=MAX_NEW, trace=True)[0] for r in greedy + static + auto]
    assert [g.token_ids for g in mixed] == [g.token_ids for g in alone]
    for g in mixed[:2]:
        assert all(t.nucleus_size == 1 for t in g.trace)
    for g in mixed[2:4]:
        assert all(t.temperature == pytest.approx(0.8) and t.top_p == pytest.approx(0.9) for t in g.trace)


# ---- traces, limits, stops -------------------------------------------------------------------


def test_trace_lengths_and_ranges(engine, tiny_lm):
    reqs = build_requests(tiny_lm.tokenizer, PROMPTS, make_strategy("autodeco"), n=2, seed=0)
    gens = engine.generate(reqs, max_new_tokens=MAX_NEW, trace=True)
    vocab = tiny_lm.model.config.vocab_size
    for g in gens:
        assert g.trace is not None and len(g.trace) == len(g.token_ids) > 0
        for step, t in enumerate(g.trace):
            assert t.token_id == g.token_ids[step]
            assert t.token == tiny_lm.tokenizer.decode([t.token_id])
            assert 0.0 < t.temperature < MAX_TEMPERATURE
            assert 0.0 < t.top_p < 1.0
            assert 1 <= t.nucleus_size <= vocab
        assert g.mean_temperature == pytest.approx(sum(t.temperature for t in g.trace) / len(g.trace))
    # untrained heads still vary from token to token
    assert len({round(t.temperature, 6) for g in gens for t in g.trace}) > 1
    assert engine.generate(reqs[:1], max_new_tokens=4, trace=False)[0].trace is None


def test_autodeco_trace_equals_heads_on_first_token(engine, tiny_lm):
    """The first step's T/p in the trace are exactly the heads on the prompt's last hidden state."""
    req = build_requests(tiny_lm.tokenizer, [PROMPTS[1]], make_strategy("autodeco"))[0]
    g = engine.generate([req], max_new_tokens=1, trace=True)[0]
    with torch.inference_mode():
        out = tiny_lm.model(torch.tensor([req.input_ids]), output_hidden_states=True)
        T, p = engine.heads(out.hidden_states[-1][:, -1], out.logits[:, -1])
    assert g.trace[0].temperature == pytest.approx(float(T), rel=1e-5)
    assert g.trace[0].top_p == pytest.approx(float(p), rel=1e-5)


def test_autodeco_scales(engine, tiny_lm):
    tok = tiny_lm.tokenizer
    base = engine.generate(
        build_requests(tok, PROMPTS, make_strategy("autodeco"), seed=5), max_new_tokens=3, trace=True
    )
    scaled = engine.generate(
        build_requests(tok, PROMPTS, make_strategy("autodeco", temperature_scale=0.5, top_p_scale=1.5), seed=5),
        max_new_tokens=3,
        trace=True,
    )
    for b, s in zip(base, scaled):
        # step 0 sees the same prompt, so the heads' raw outputs are identical
        assert s.trace[0].temperature == pytest.approx(0.5 * b.trace[0].temperature, rel=1e-5)
        assert s.trace[0].top_p == pytest.approx(min(1.0, 1.5 * b.trace[0].top_p), rel=1e-5)
    wide = engine.generate(
        build_requests(tok, PROMPTS, make_strategy("autodeco", top_p_scale=100.0), seed=5), max_new_tokens=3, trace=True
    )
    vocab = tiny_lm.model.config.vocab_size
    for g in wide:
        assert all(t.top_p == 1.0 and t.nucleus_size == vocab for t in g.trace)
    narrow = engine.generate(
        build_requests(tok, PROMPTS, make_strategy("autodeco", top_p_scale=1e-6), seed=5), max_new_tokens=MAX_NEW
    )
    greedy = engine.generate(build_requests(tok, PROMPTS, make_strategy("greedy")), max_new_tokens=MAX_NEW)
    assert [g.token_ids for g in narrow] == [g.token_ids for g in greedy]


@pytest.mark.parametrize("active", ["temperature", "top_p"])
def test_autodeco_active_heads_ablation(engine, tiny_lm, active):
    tok = tiny_lm.tokenizer
    both = engine.generate(
        build_requests(tok, PROMPTS, make_strategy("autodeco"), seed=5), max_new_tokens=1, trace=True
    )
    only = engine.generate(
        build_requests(tok, PROMPTS, make_strategy("autodeco", active_heads=active), seed=5),
        max_new_tokens=4,
        trace=True,
    )
    for b, o in zip(both, only):
        if active == "temperature":
            assert all(t.top_p == 1.0 and t.nucleus_size == tiny_lm.model.config.vocab_size for t in o.trace)
            assert o.trace[0].temperature == pytest.approx(b.trace[0].temperature, rel=1e-6)
        else:
            assert all(t.temperature == 1.0 for t in o.trace)
            assert o.trace[0].top_p == pytest.approx(b.trace[0].top_p, rel=1e-6)


def test_autodeco_without_heads_is_refused(plain_engine, tiny_lm):
    with pytest.raises(ValueError):
        plain_engine.generate(build_requests(tiny_lm.tokenizer, ["hi"], make_strategy("autodeco")), max_new_tokens=2)


@pytest.mark.parametrize("max_new", [1, 5, 23])
def test_max_new_tokens_honoured(engine, tiny_lm, max_new):
    eos = tiny_lm.tokenizer.eos_token_id
    reqs = build_requests(tiny_lm.tokenizer, PROMPTS, make_strategy("static", temperature=1.0, top_p=1.0), n=2)
    for g in engine.generate(reqs, max_new_tokens=max_new):
        assert 1 <= len(g.token_ids) <= max_new
        if eos not in g.token_ids:
            assert len(g.token_ids) == max_new and g.finish_reason == "length"


def test_eos_stops_and_is_not_in_text(tiny_lm, tiny_model_dir):
    """Make the greedy path's 4th token an EOS id: generation stops there with finish 'stop'."""
    lm = load_base_model(str(tiny_model_dir), device="cpu")
    req = build_requests(lm.tokenizer, [PROMPTS[2]], make_strategy("greedy"))
    path = GenerationEngine(lm).generate(req, max_new_tokens=MAX_NEW)[0].token_ids
    fake_eos = path[3]
    first = path.index(fake_eos)
    lm.model.generation_config.eos_token_id = [lm.tokenizer.eos_token_id, fake_eos]
    for strategy in (make_strategy("greedy"), make_strategy("static", temperature=1.0, top_p=1e-6)):
        g = GenerationEngine(lm).generate(build_requests(lm.tokenizer, [PROMPTS[2]], strategy), max_new_tokens=MAX_NEW)[
            0
        ]
        assert g.finish_reason == "stop"
        assert g.token_ids == path[: first + 1]
        assert g.text == lm.tokenizer.decode(path[:first], skip_special_tokens=True)


def _stop_string_for(tok, token_ids: list[int], avoid: list[str] = ()) -> tuple[str, int]:
    """A stop string completed by a token in the middle of `token_ids` (and absent from every text
    in `avoid`); returns it and the index of the token that completes it. An ASCII letters/digits
    token if there is one, else any token whose text is visible and whole (not U+FFFD, a lone
    byte). The tiny model is seeded, so the path is the same on every run; a path without such a
    token fails here rather than skipping the stop tests."""
    candidates = []
    for k in range(2, len(token_ids) - 4):
        piece = tok.decode([token_ids[k]]).strip()
        if piece and "\ufffd" not in piece and not any(piece in text for text in avoid):
            prefix = tok.decode(token_ids[:k])
            if piece not in prefix and piece in tok.decode(token_ids[: k + 1]):
                candidates.append((piece, k))
    assert candidates, f"no token to stop at in the tiny model's greedy path {tok.decode(token_ids)!r}"
    return next(((piece, k) for piece, k in candidates if piece.isascii() and piece.isalnum()), candidates[0])


def test_stop_string_cuts_text_single(engine, tiny_lm):
    tok = tiny_lm.tokenizer
    req = build_requests(tok, [PROMPTS[0]], make_strategy("greedy"))
    full = engine.generate(req, max_new_tokens=24)[0]
    stop, k = _stop_string_for(tok, full.token_ids)
    cut = engine.generate(req, max_new_tokens=24, stop=[stop])[0]
    assert cut.finish_reason == "stop"
    assert stop not in cut.text
    assert cut.text == full.text[: full.text.index(stop)]
    assert cut.token_ids == full.token_ids[: k + 1]


def test_stop_string_in_batch_does_not_keep_padding(engine, tiny_lm):
    """A row that hits a stop string while its batch-mates go on must end at the stop: its
    token_ids / num_tokens / trace must not contain the filler tokens generate() appends to finished
    rows (the pad id, or EOS where pad == eos)."""
    tok = tiny_lm.tokenizer
    reqs = build_requests(tok, PROMPTS, make_strategy("greedy"))
    full = engine.generate(reqs[:1], max_new_tokens=24)[0]
    others = engine.generate(reqs[1:], max_new_tokens=24)
    stop, k = _stop_string_for(tok, full.token_ids, avoid=[g.text for g in others])
    gens = engine.generate(reqs, max_new_tokens=24, stop=[stop], batch_size=len(reqs), trace=True)
    first = gens[0]
    assert first.finish_reason == "stop"
    assert first.text == full.text[: full.text.index(stop)]
    assert tok.pad_token_id not in first.token_ids
    assert first.token_ids == full.token_ids[: k + 1]
    assert len(first.trace) == len(first.token_ids)
    for g, o in zip(gens[1:], others):
        assert g.token_ids == o.token_ids


def test_on_batch_done_and_streamer(engine, tiny_lm):
    from transformers.generation.streamers import BaseStreamer

    class Collect(BaseStreamer):
        def __init__(self):
            self.chunks = []
            self.ended = False

        def put(self, value):
            self.chunks.append(value.tolist())

        def end(self):
            self.ended = True

    seen = []
    reqs = build_requests(tiny_lm.tokenizer, PROMPTS, make_strategy("static", temperature=0.7, top_p=0.9), seed=1)
    gens = engine.generate(
        reqs, max_new_tokens=4, batch_size=3, on_batch_done=lambda b: seen.append([g.key for g in b])
    )
    assert sorted(k for batch in seen for k in batch) == sorted(g.key for g in gens)
    assert [len(b) for b in seen] == [3, 1]
    streamer = Collect()
    engine.generate(reqs[:1], max_new_tokens=4, streamer=streamer)
    assert streamer.ended and len(streamer.chunks) >= 2


def test_chat_messages_and_raw_prompts(engine, tiny_lm):
    tok = tiny_lm.tokenizer
    chat = build_requests(tok, [[{"role": "user", "content": "hello"}]], make_strategy("greedy"))
    same = build_requests(tok, ["hello"], make_strategy("greedy"))
    raw = build_requests(tok, ["hello"], make_strategy("greedy"), chat=False)
    assert chat[0].input_ids == same[0].input_ids
    assert raw[0].input_ids != chat[0].input_ids
    assert len(engine.generate(raw, max_new_tokens=3)[0].token_ids) <= 3
    with pytest.raises(TypeError):
        build_requests(tok, [[{"role": "user", "content": "x"}]], make_strategy("greedy"), chat=False)


# ---- merged AutoDeco folders ------------------------------------------------------------------


def test_merged_folder_loads_and_generates_like_base(tiny_model_dir, tiny_lm, tmp_path):
    from autodeco_cli.core.heads import load_heads
    from autodeco_cli.engine.models import resolve_model_source

    heads = fresh_heads(TINY_HIDDEN, seed=4)
    folder = build_merged_folder(tiny_model_dir, tmp_path / "merged", heads)
    assert resolve_model_source(str(folder))[0] == "merged"
    merged = load_base_model(str(folder), device="cpu")
    x = torch.tensor([build_requests(tiny_lm.tokenizer, [PROMPTS[1]], make_strategy("greedy"))[0].input_ids])
    with torch.inference_mode():
        assert torch.allclose(merged.model(x).logits, tiny_lm.model(x).logits, atol=1e-5)
    reqs = build_requests(merged.tokenizer, PROMPTS, make_strategy("greedy"))
    assert [g.token_ids for g in GenerationEngine(merged).generate(reqs, max_new_tokens=MAX_NEW)] == [
        g.token_ids for g in GenerationEngine(tiny_lm).generate(reqs, max_new_tokens=MAX_NEW)
    ]
    # the same folder also serves as the heads checkpoint
    merged_heads = load_heads(folder, expected_hidden_size=TINY_HIDDEN)
    auto = build_requests(merged.tokenizer, PROMPTS, make_strategy("autodeco"), seed=3)
    a = GenerationEngine(merged, merged_heads).generate(auto, max_new_tokens=MAX_NEW)
    b = GenerationEngine(tiny_lm, heads).generate(auto, max_new_tokens=MAX_NEW)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]


# ---- shared prefill and shared rows ------------------------------------------------------------


class _RowCounter:
    """Wraps the engine's forward to record how many rows each forward pass computed."""

    def __init__(self, engine, monkeypatch):
        self.rows: list[int] = []
        forward = engine._forward

        def counting(input_ids, *args):
            self.rows.append(input_ids.shape[0])
            return forward(input_ids, *args)

        monkeypatch.setattr(engine, "_forward", counting)


def test_identical_histories_share_one_row(engine, tiny_lm, monkeypatch):
    """k greedy samples of one prompt are one token history: one prefill row, one row per step."""
    counter = _RowCounter(engine, monkeypatch)
    reqs = build_requests(tiny_lm.tokenizer, [PROMPTS[1]], make_strategy("greedy"), n=6)
    gens = engine.generate(reqs, max_new_tokens=MAX_NEW, batch_size=6)
    assert len({tuple(g.token_ids) for g in gens}) == 1
    assert set(counter.rows) == {1}
    assert len(counter.rows) == len(gens[0].token_ids) - (gens[0].finish_reason == "stop")


def test_prefill_once_per_unique_prompt(engine, tiny_lm, monkeypatch):
    counter = _RowCounter(engine, monkeypatch)
    reqs = build_requests(tiny_lm.tokenizer, PROMPTS[:2], make_strategy("static", temperature=1.0, top_p=1.0), n=4)
    engine.generate(reqs, max_new_tokens=3, batch_size=len(reqs))
    assert counter.rows[0] == 2  # prefill: two prompts, not eight rows
    assert max(counter.rows) <= len(reqs)


def test_cells_sharing_random_numbers_match_single_runs(engine, tiny_lm, monkeypatch):
    """Grid-style batches: several strategies x samples of one prompt with shared seeds. Rows are
    shared while tokens agree, yet every request equals its own run alone."""
    tok = tiny_lm.tokenizer
    strategies = [
        make_strategy("greedy"),
        make_strategy("static", temperature=0.1, top_p=0.5),
        make_strategy("static", temperature=0.2, top_p=0.5),
        make_strategy("static", temperature=1.0, top_p=0.9),
        make_strategy("static", temperature=1.0, top_p=1.0, top_k=3),
        make_strategy("autodeco"),
    ]
    reqs = []
    for s_index, strategy in enumerate(strategies):
        for r in build_requests(tok, [PROMPTS[3]], strategy, n=2, seed=11):
            reqs.append(Request(key=(s_index, r.key), input_ids=r.input_ids, strategy=strategy, seed=r.seed))
    counter = _RowCounter(engine, monkeypatch)
    together = engine.generate(reqs, max_new_tokens=MAX_NEW, batch_size=len(reqs), trace=True)
    shared_rows = list(counter.rows)
    alone = [engine.generate([r], max_new_tokens=MAX_NEW, trace=True)[0] for r in reqs]
    for t, a in zip(together, alone):
        assert t.token_ids == a.token_ids, t.key
        assert [s.nucleus_size for s in t.trace] == [s.nucleus_size for s in a.trace]
        # the heads see a different batch: equal up to float rounding
        assert [v for s in t.trace for v in (s.temperature, s.top_p)] == pytest.approx(
            [v for s in a.trace for v in (s.temperature, s.top_p)], rel=1e-5
        )
    # low-temperature cells sit on the greedy row: fewer rows than requests at the first steps
    assert shared_rows[0] == 1 and shared_rows[1] < len(reqs)


def test_streamer_needs_one_request(engine, tiny_lm):
    reqs = build_requests(tiny_lm.tokenizer, PROMPTS[:2], make_strategy("greedy"))
    with pytest.raises(ValueError, match="single request"):
        engine.generate(reqs, max_new_tokens=2, streamer=object())


def test_inverse_cdf_draw_follows_the_distribution(engine, tiny_lm):
    """The sampler's draws have the distribution's frequencies (chi-square-style check on the
    first token of many seeds against the decoding distribution computed directly)."""
    from autodeco_cli.core.distribution import decoding_distribution

    tok = tiny_lm.tokenizer
    prompt = build_requests(tok, [PROMPTS[0]], make_strategy("greedy"))[0].input_ids
    strategy = make_strategy("static", temperature=1.0, top_p=0.8)
    reqs = [Request(key=i, input_ids=prompt, strategy=strategy, seed=request_seed(5, i)) for i in range(600)]
    first = [g.token_ids[0] for g in engine.generate(reqs, max_new_tokens=1, batch_size=200)]
    with torch.inference_mode():
        logits = tiny_lm.model(torch.tensor([prompt])).logits[0, -1]
    probs = decoding_distribution(logits, 1.0, 0.8)
    support = set(torch.nonzero(probs).flatten().tolist())
    assert set(first) <= support
    for token in sorted(support, key=lambda t: -float(probs[t]))[:3]:
        expected = float(probs[token]) * len(first)
        observed = first.count(token)
        assert abs(observed - expected) < 4 * (expected * (1 - float(probs[token]))) ** 0.5 + 1, token


# ---- continuous batching -------------------------------------------------------------------


def test_requests_join_a_running_batch_and_match_alone(engine, tiny_lm, monkeypatch):
    """With more requests than rows, waiting prompts are prefilled and join rows mid-flight
    (left-padded to the running width). Joining must not change anyone's tokens."""
    tok = tiny_lm.tokenizer
    prompts = PROMPTS + [p + " and more words here" for p in PROMPTS] + ["x", "a b c d e f g h i j k"]
    eos = tok.eos_token_id
    greedy = build_requests(tok, prompts, make_strategy("greedy"))
    sampled = build_requests(tok, prompts, make_strategy("static", temperature=1.3, top_p=0.95), seed=9)
    counter = _RowCounter(engine, monkeypatch)
    together = engine.generate(greedy + sampled, max_new_tokens=MAX_NEW, batch_size=3)
    widths = list(counter.rows)
    monkeypatch.undo()
    for g, req in zip(together[: len(greedy)], greedy):
        assert g.token_ids == strip_after_eos(manual_argmax(tiny_lm, req.input_ids, MAX_NEW), eos)
    for g, req in zip(together[len(greedy) :], sampled):
        assert g.token_ids == engine.generate([req], max_new_tokens=MAX_NEW)[0].token_ids
    assert max(widths) <= 3


def test_joins_happen_while_rows_are_running(engine, tiny_lm, monkeypatch):
    """Rows ending at different steps (a common stop string) make room that waiting requests
    take mid-flight; their results still equal their runs alone."""
    from autodeco_cli.engine import generation

    tok = tiny_lm.tokenizer
    distinct = PROMPTS + [p + " again" for p in PROMPTS]  # equal prompts would wait to join together
    reqs = build_requests(tok, distinct, make_strategy("static", temperature=1.5, top_p=1.0), seed=4)
    rows_at_prefill = []
    prefill = generation._DecodeState._prefill

    def recording(self, new_rows):
        rows_at_prefill.append(len(self.rows))
        return prefill(self, new_rows)

    monkeypatch.setattr(generation._DecodeState, "_prefill", recording)
    finished_sizes = []
    together = engine.generate(
        reqs, max_new_tokens=20, batch_size=2, stop=["e"], on_batch_done=lambda b: finished_sizes.append(len(b))
    )
    assert any(rows > 0 for rows in rows_at_prefill), "no request joined a running batch"
    assert sum(finished_sizes) == len(reqs)
    for g, req in zip(together, reqs):
        assert g.token_ids == engine.generate([req], max_new_tokens=20, stop=["e"])[0].token_ids


def test_later_requests_of_a_prompt_copy_its_cache_instead_of_prefilling(engine, tiny_lm, monkeypatch):
    from autodeco_cli.engine import generation

    tok = tiny_lm.tokenizer
    reqs = build_requests(tok, [PROMPTS[3]], make_strategy("static", temperature=1.5, top_p=1.0), n=10, seed=6)
    copies, prefills = [], []
    copy, prefill = generation._DecodeState._copy_prompt_row, generation._DecodeState._prefill
    monkeypatch.setattr(
        generation._DecodeState, "_copy_prompt_row", lambda self, m: copies.append(len(m)) or copy(self, m)
    )
    monkeypatch.setattr(
        generation._DecodeState, "_prefill", lambda self, rows: prefills.append(len(rows)) or prefill(self, rows)
    )
    together = engine.generate(reqs, max_new_tokens=20, batch_size=2, stop=["e"])
    assert copies, "no request reused its prompt's cache"
    assert len(prefills) < len(reqs) // 2  # the prompt was not recomputed per request
    monkeypatch.undo()
    for g, req in zip(together, reqs):
        alone = engine.generate([req], max_new_tokens=20, stop=["e"])[0]
        assert g.token_ids == alone.token_ids and g.finish_reason == alone.finish_reason
