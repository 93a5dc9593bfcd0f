"""Heads with a tap layer: they read [a middle decoder layer's output, the last hidden state].

The same state in every place that feeds the heads: the engine's capture (prefill and each decode step with its
cache), head training's features (with and without the hidden-state cache), and their save / load; the places
that cannot pass a middle layer (the vLLM plugin, the official merged layout) refuse such heads by name.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from autodeco_cli.core.decoding import make_strategy
from autodeco_cli.core.errors import UserError
from autodeco_cli.core.heads import AutoDecoHeads, HeadsConfig, last_state, load_heads
from autodeco_cli.engine.generation import GenerationEngine, HiddenStateCapture
from autodeco_cli.engine.requests import build_requests
from autodeco_cli.training.data import load_examples
from autodeco_cli.training.hidden_features import base_features
from autodeco_cli.training.trainer import HeadTrainer
from conftest import TINY_HIDDEN, write_jsonl
from test_training import ROWS, heads_state, make_config

pytestmark = pytest.mark.usefixtures("torch_single_thread")

PROMPTS = ["Once upon a time", "What is 27 + 82?"]


def tap_heads(tap_layer: int = 1, tap_top_p: bool = True) -> AutoDecoHeads:
    torch.manual_seed(3)
    config = HeadsConfig(hidden_size=TINY_HIDDEN, head_width=16, tap_layer=tap_layer, tap_top_p=tap_top_p)
    return AutoDecoHeads(config).eval()


def heads_inputs(lm, ids: list[int], tap_layer: int) -> torch.Tensor:
    """[tap, last] at every position of one full forward: what the heads should read there."""
    with torch.inference_mode():
        out = lm.model(torch.tensor([ids]), output_hidden_states=True)
    return torch.cat((out.hidden_states[tap_layer][0], out.hidden_states[-1][0]), dim=-1), out.logits[0]


@pytest.mark.parametrize("tap_top_p", [True, False])
def test_tap_heads_save_and_load(tmp_path, tap_top_p):
    heads = tap_heads(tap_top_p=tap_top_p)
    assert heads.input_size == 2 * TINY_HIDDEN
    assert heads.temp_head.mlp[0].in_features == 2 * TINY_HIDDEN
    assert heads.top_p_head.mlp[0].in_features == (2 if tap_top_p else 1) * TINY_HIDDEN + 5
    loaded = load_heads(heads.save(tmp_path / "heads"), expected_hidden_size=TINY_HIDDEN)
    assert loaded.config.tap_layer == 1 and loaded.config.hidden_size == TINY_HIDDEN
    assert loaded.config.tap_top_p == tap_top_p
    for key, value in heads.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_capture_holds_the_tap_layer_beside_the_last_state(tiny_lm):
    ids = tiny_lm.tokenizer(PROMPTS[0])["input_ids"]
    layer = tiny_lm.model.get_decoder().layers[0]
    heads_inputs(tiny_lm, ids, 1)  # transformers adds hooks of its own on the first output_hidden_states
    before = dict(layer._forward_hooks)
    capture = HiddenStateCapture(tiny_lm.model, tap_layer=1)
    try:
        expected, _ = heads_inputs(tiny_lm, ids, 1)
        assert torch.equal(capture.heads_input()[0], expected[-1])
    finally:
        capture.close()
    assert dict(layer._forward_hooks) == before  # closed: no hook of ours left behind


@pytest.mark.parametrize("tap_top_p", [True, False])
def test_engine_feeds_tap_heads_the_same_state_at_every_step(tiny_lm, tap_top_p):
    """Each traced (T̂, P̂) is the heads on [layer 1, last] of a full forward over the prompt and the tokens drawn so
    far: the capture is right at prefill and at each cached decode step, row by row in a batch."""
    heads = tap_heads(tap_top_p=tap_top_p)
    engine = GenerationEngine(tiny_lm, heads)
    assert engine.decode_path == "transformers" and "decoder layer 1" in engine.decode_path_why
    requests = build_requests(tiny_lm.tokenizer, PROMPTS, make_strategy("autodeco"), seed=0)
    generations = engine.generate(requests, max_new_tokens=5, batch_size=2, trace=True)
    for request, generation in zip(requests, generations):
        tokens = list(request.input_ids) + list(generation.token_ids)
        inputs, logits = heads_inputs(tiny_lm, tokens, 1)
        start = len(request.input_ids) - 1
        with torch.inference_mode():
            temperature, top_p = heads(inputs[start:], logits[start:])
        assert len(generation.trace) >= 2
        for step, traced in enumerate(generation.trace):
            assert traced.temperature == pytest.approx(float(temperature[step]), abs=1e-5), step
            assert traced.top_p == pytest.approx(float(top_p[step]), abs=1e-5), step


def test_base_features_put_the_tap_before_the_last_state(tiny_lm, tmp_path):
    examples, _ = load_examples(write_jsonl(tmp_path / "d.jsonl", ROWS[:3]), tiny_lm.tokenizer, max_length=64)
    pad = tiny_lm.tokenizer.pad_token_id
    plain = base_features(tiny_lm.model, examples, pad, "cpu", trainable_base=False)
    tapped = base_features(tiny_lm.model, examples, pad, "cpu", trainable_base=False, tap_layer=1)
    assert tapped.hidden.shape[-1] == 2 * TINY_HIDDEN and tapped.counts == plain.counts
    torch.testing.assert_close(last_state(tapped.hidden, TINY_HIDDEN), plain.hidden, rtol=0, atol=1e-6)
    first = examples[0]
    inputs, _ = heads_inputs(tiny_lm, first.input_ids, 1)
    labelled = [i for i in range(len(first.labels) - 1) if first.labels[i + 1] != -100]
    torch.testing.assert_close(tapped.hidden[: len(labelled)], inputs[labelled], rtol=0, atol=1e-5)


def test_tap_heads_train_the_same_with_and_without_the_hidden_state_cache(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", ROWS)
    states = {}
    for cache in ("on", "off"):
        config = make_config(tiny_model_dir, data, tmp_path / cache, epochs=2, cache_hidden=cache, tap_layer=2)
        trainer = HeadTrainer(config).setup()
        trainer.train()
        states[cache] = heads_state(trainer)
        assert load_heads(tmp_path / cache).config.tap_layer == 2
    for key in states["on"]:
        torch.testing.assert_close(states["on"][key], states["off"][key], rtol=0, atol=1e-5, msg=key)
    # the cache of [tap, last] states is its own file, never one of last states only
    plain = HeadTrainer(make_config(tiny_model_dir, data, tmp_path / "plain", epochs=2, cache_hidden="on")).setup()
    plain.train()
    assert {p.name for p in (tmp_path / "on" / "hidden_cache").iterdir()}.isdisjoint(
        p.name for p in (tmp_path / "plain" / "hidden_cache").iterdir()
    )


def test_a_tap_layer_the_model_lacks_is_refused(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", ROWS)
    with pytest.raises(UserError, match=r"tap_layer=3: the base model has decoder layers 1-2"):
        HeadTrainer(make_config(tiny_model_dir, data, tmp_path / "out", tap_layer=3)).setup()


def test_merge_refuses_tap_heads(tiny_model_dir, tmp_path):
    from autodeco_cli.engine.export import merge

    heads = tap_heads().save(tmp_path / "heads")
    with pytest.raises(UserError, match="decoder layer 1's output"):
        merge(str(tiny_model_dir), str(heads), tmp_path / "merged")
    assert not (tmp_path / "merged").exists() or not any((tmp_path / "merged").iterdir())


def test_vllm_plugin_refuses_tap_heads(tmp_path):
    from autodeco_cli.engine.vllm.model import HEADS_FIELD, _attach_heads

    heads = tap_heads().save(tmp_path / "heads")
    hf_config = SimpleNamespace(hidden_size=TINY_HIDDEN, **{HEADS_FIELD: str(heads)})
    vllm_config = SimpleNamespace(model_config=SimpleNamespace(hf_config=hf_config, model=str(tmp_path)))
    with pytest.raises(ValueError, match="decoder layer 1's output"):
        _attach_heads(torch.nn.Linear(1, 1), vllm_config)


def test_a_top_p_head_without_the_tap_reads_the_last_state_only():
    heads = tap_heads(tap_top_p=False)
    hidden, logits = torch.randn(3, 2 * TINY_HIDDEN), torch.randn(3, 40)
    changed = hidden.clone()
    changed[:, :TINY_HIDDEN] += 1.0  # the tap's half
    with torch.inference_mode():
        t, p = heads(hidden, logits)
        values = heads.decode_values(hidden, logits)
        t_changed, p_changed = heads(changed, logits)
        top_p_alone = heads.top_p_head(hidden[:, TINY_HIDDEN:], t, logits)
    torch.testing.assert_close(values, torch.cat((t, p), dim=-1), rtol=0, atol=1e-6)
    assert not torch.equal(t, t_changed)  # the temperature head reads the tap
    torch.testing.assert_close(p, top_p_alone, rtol=0, atol=0)  # the top-p head reads [last, T̂, features]


def test_init_heads_bring_their_own_tap(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", ROWS)
    heads = tap_heads(tap_layer=1).save(tmp_path / "heads")
    trainer = HeadTrainer(make_config(tiny_model_dir, data, tmp_path / "same", init_heads=str(heads))).setup()
    assert trainer.heads.config.tap_layer == 1
    with pytest.raises(UserError, match=r"tap_layer=2, but the init_heads .* read decoder layer 1's output"):
        HeadTrainer(make_config(tiny_model_dir, data, tmp_path / "moved", init_heads=str(heads), tap_layer=2)).setup()
