"""The lean decode step (engine/lean_decode.py) gives transformers' bits: logits, last hidden state
and cache, step by step, and the engine's tokens and T̂/P̂ traces, in fp32 and bf16 (fp32 through the
small ops' kernel, decode_ops_f32, where it loads; bf16 through the CPU fast paths: packed linears, the
grouped decode attention); models it does not cover keep transformers' path and say why."""

from __future__ import annotations

import pytest
import torch

from autodeco_cli.core.decoding import make_strategy
from autodeco_cli.core.heads import fresh_heads
from autodeco_cli.engine.generation import GenerationEngine, HiddenStateCapture
from autodeco_cli.engine.lean_decode import LEAN, TRANSFORMERS, LeanDecoder, lean_decode_blocker
from autodeco_cli.engine.models import LoadedModel, load_base_model
from autodeco_cli.engine.requests import build_requests
from conftest import build_tiny_tokenizer
from tiny_architectures import HIDDEN, build_model, save_model

pytestmark = pytest.mark.usefixtures("torch_single_thread")

# the families the step covers, without sliding windows (tiny_architectures gives qwen2 and mistral one)
COVERED = {
    "llama": {},
    "qwen2": {"use_sliding_window": False, "layer_types": ["full_attention", "full_attention"]},
    "mistral": {"sliding_window": None},
}
PROMPTS = [
    "Once upon a time there was a small model that liked to count: one two",
    "hi",
    "What is 27 + 82? Tell me a joke about a cat and a mouse.",
    "The quick brown fox jumps",
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module", params=list(COVERED))
def covered(request, tmp_path_factory, tokenizer):
    name = request.param
    return name, save_model(name, tmp_path_factory.mktemp(f"lean-{name}"), tokenizer, **COVERED[name])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_each_step_gives_transformers_bits(covered, dtype):
    """Left-padded rows, several steps from one prefill: logits, last hidden state and every layer's
    cache are equal bit for bit to the model's own forward's."""
    name, folder = covered
    lm = load_base_model(str(folder), device="cpu", dtype=dtype)
    assert lean_decode_blocker(lm.model) is None
    engine, capture, lean = GenerationEngine(lm, lean_decode=False), HiddenStateCapture(lm.model), LeanDecoder(lm.model)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 100, (3, 9), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, :4], mask[2, :1] = 0, 0
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.inference_mode():
        ours, theirs = engine.new_cache(), engine.new_cache()
        engine._forward(ids, mask, positions, ours)
        engine._forward(ids, mask, positions, theirs)
        positions = positions[:, -1:]
        for _ in range(5):
            mask, positions = torch.cat([mask, mask.new_ones((3, 1))], dim=1), positions + 1
            tokens = torch.randint(3, 100, (3, 1), generator=generator)
            expected, _ = engine._forward(tokens, mask, positions, theirs)
            expected_hidden = capture.last.clone()
            logits = lean(tokens, mask, positions, ours)[:, -1, :].float()
            assert torch.equal(logits, expected)
            assert torch.equal(capture.last, expected_hidden)
            for a, b in zip(ours.layers, theirs.layers):
                assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    capture.close()
    engine.close()


def _generate(lm, lean: bool, calls: list | None = None):
    engine = GenerationEngine(lm, fresh_heads(HIDDEN, seed=0), lean_decode=lean)
    if calls is not None and engine._lean is not None:
        real = engine._lean
        engine._lean = lambda ids, *rest: calls.append(ids.shape[1]) or real(ids, *rest)
    requests = []
    for strategy, n in (
        (make_strategy("greedy"), 1),
        (make_strategy("static", temperature=1.0, top_p=0.9), 2),
        (make_strategy("autodeco"), 2),
    ):
        requests += build_requests(lm.tokenizer, PROMPTS, strategy, n=n, seed=7)
    # 3 rows for 20 requests: rows leave, split and join, with their padding
    generations = engine.generate(requests, max_new_tokens=12, batch_size=3, trace=True)
    path = engine.decode_path
    engine.close()
    return path, generations


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_engine_decodes_the_same_tokens_and_traces_lean(covered, dtype):
    name, folder = covered
    lm = load_base_model(str(folder), device="cpu", dtype=dtype)
    calls: list[int] = []
    path, lean = _generate(lm, True, calls)
    reference_path, reference = _generate(lm, False)
    assert (path, reference_path) == (LEAN, TRANSFORMERS)
    assert calls and set(calls) == {1}  # decode steps only: prefills keep the model's forward
    assert [g.token_ids for g in lean] == [g.token_ids for g in reference]
    traced = [(s.temperature, s.top_p, s.nucleus_size) for g in lean for s in g.trace]
    assert traced == [(s.temperature, s.top_p, s.nucleus_size) for g in reference for s in g.trace]
    assert len({tuple(g.token_ids) for g in lean}) > len(PROMPTS)  # sampling did diverge


def test_models_it_does_not_cover_keep_transformers_path(tokenizer, tmp_path):
    """A sliding-window qwen2, a gpt2 and a llama under an (unmerged) LoRA adapter say why, and
    still generate (through the model's own forward)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2)).eval()
    models = {"sliding-window layers": build_model("qwen2", tokenizer), "GPT2LMHeadModel": gpt2}
    try:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        models["not a model the lean decode step covers"] = get_peft_model(build_model("llama", tokenizer), lora)
    except ImportError:
        pass
    for why, model in models.items():
        lm = LoadedModel(model.eval(), tokenizer, why, torch.device("cpu"))
        engine = GenerationEngine(lm)
        assert engine.decode_path == TRANSFORMERS and engine._lean is None
        assert why in engine.decode_path_why
        requests = build_requests(tokenizer, PROMPTS[:2], make_strategy("greedy"))
        assert all(g.token_ids for g in engine.generate(requests, max_new_tokens=4))
        engine.close()
    llama = build_model("llama", tokenizer)
    assert lean_decode_blocker(llama) is None
    assert "training mode" in lean_decode_blocker(llama.train())
    llama.eval().model.layers[0].mlp.register_forward_hook(lambda *a: None)
    assert "hooks" in lean_decode_blocker(llama)


def test_transformers_4_keeps_transformers_path(tokenizer, monkeypatch):
    import transformers

    llama = build_model("llama", tokenizer)
    monkeypatch.setattr(transformers, "__version__", "4.57.1")
    assert "transformers 4.57.1" in lean_decode_blocker(llama)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_one_token_prompt_from_an_empty_cache_gives_transformers_bits(covered, dtype):
    """A prefill of one token per row (a one-token prompt, or one token past the shared prefix)
    also takes the lean step: from an empty cache, the same bits (in bf16 through the torch ops:
    the kernels' step appends to a cache that holds tokens)."""
    _, folder = covered
    lm = load_base_model(str(folder), device="cpu", dtype=dtype)
    engine, lean = GenerationEngine(lm, lean_decode=False), LeanDecoder(lm.model)
    tokens, mask, positions = torch.tensor([[5], [9]]), torch.ones((2, 1), dtype=torch.long), torch.zeros((2, 1))
    positions = positions.long()
    with torch.inference_mode():
        expected, _ = engine._forward(tokens, mask, positions, engine.new_cache())
        logits = lean(tokens, mask, positions, engine.new_cache())[:, -1, :].float()
    assert torch.equal(logits, expected)
    engine.close()
