"""AutoDeco heads: shapes, parameter count, persistence and every checkpoint layout we read."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from autodeco_cli.core.errors import UserError
from autodeco_cli.core.heads import MAX_TEMPERATURE, AutoDecoHeads, HeadsConfig, fresh_heads, load_heads
from conftest import build_merged_folder

HEAD_KEYS = {
    "temp_head.mlp.0.weight",
    "temp_head.mlp.0.bias",
    "temp_head.mlp.2.weight",
    "temp_head.mlp.2.bias",
    "top_p_head.mlp.0.weight",
    "top_p_head.mlp.0.bias",
    "top_p_head.mlp.2.weight",
    "top_p_head.mlp.2.bias",
}


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def heads_state(hidden: int, seed: int = 0) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in fresh_heads(hidden, seed=seed).state_dict().items()}


def assert_same_heads(a: AutoDecoHeads, b: AutoDecoHeads):
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb) == HEAD_KEYS
    for key in sa:
        assert torch.equal(sa[key].float(), sb[key].float()), key


def test_parameter_count_qwen_7b_hidden():
    H = 3584
    assert AutoDecoHeads.parameter_count_formula(H) == 1_837_314
    assert n_params(AutoDecoHeads(HeadsConfig(hidden_size=H))) == 1_837_314


@pytest.mark.parametrize("H,width,enhanced", [(32, 256, True), (576, 256, True), (64, 16, False), (896, 128, True)])
def test_parameter_count_formula_matches_module(H, width, enhanced):
    module = AutoDecoHeads(HeadsConfig(hidden_size=H, head_width=width, use_enhanced_features=enhanced))
    assert n_params(module) == AutoDecoHeads.parameter_count_formula(H, width, enhanced)


def test_state_dict_keys_are_official():
    assert set(fresh_heads(32).state_dict()) == HEAD_KEYS


def test_forward_ranges_and_shapes():
    heads = fresh_heads(32, seed=3)
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 5, 32, generator=gen) * 10
    logits = torch.randn(2, 5, 100, generator=gen) * 5
    T, p = heads(hidden, logits)
    assert T.shape == (2, 5, 1) and p.shape == (2, 5, 1)
    assert ((T > 0) & (T < MAX_TEMPERATURE)).all()
    assert ((p > 0) & (p < 1)).all()


def test_top_p_head_sees_detached_temperature():
    heads = AutoDecoHeads(HeadsConfig(hidden_size=16, head_width=8))
    hidden = torch.randn(3, 16)
    logits = torch.randn(3, 20)
    _T, p = heads(hidden, logits)
    p.sum().backward()
    assert all(param.grad is None or param.grad.abs().sum() == 0 for param in heads.temp_head.parameters())
    assert any(param.grad is not None and param.grad.abs().sum() > 0 for param in heads.top_p_head.parameters())


def test_fresh_heads_deterministic_and_rng_untouched():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = fresh_heads(32, seed=5)
    assert torch.equal(torch.rand(3), expected_next), "fresh_heads must not consume the global RNG"
    assert_same_heads(a, fresh_heads(32, seed=5))
    assert not torch.equal(a.temp_head.mlp[0].weight, fresh_heads(32, seed=6).temp_head.mlp[0].weight)


def test_save_load_round_trip(tmp_path):
    heads = fresh_heads(32, base_model="tiny", seed=1)
    heads.config.provenance = {"steps": 10}
    heads.save(tmp_path / "h")
    cfg = json.loads((tmp_path / "h" / "config.json").read_text())
    assert cfg["model_type"] == "autodeco" and cfg["base_model_name_or_path"] == "tiny"
    loaded = load_heads(tmp_path / "h", expected_hidden_size=32)
    assert_same_heads(heads, loaded)
    assert loaded.config.base_model == "tiny"
    assert loaded.config.provenance == {"steps": 10}
    assert not loaded.training
    x, logits = torch.randn(4, 32), torch.randn(4, 50)
    for a, b in zip(heads(x, logits), loaded(x, logits)):
        assert torch.equal(a, b)


def test_load_from_weights_file_path(tmp_path):
    heads = fresh_heads(32, seed=2)
    heads.save(tmp_path)
    assert_same_heads(heads, load_heads(tmp_path / "autodeco_heads.safetensors"))


@pytest.mark.parametrize("filename", ["autodeco_heads.safetensors", "model.safetensors"])
def test_official_split_layouts(tmp_path, filename):
    state = heads_state(48, seed=4)
    save_file(state, str(tmp_path / filename))
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "autodeco",
                "base_model_name_or_path": "Qwen/Qwen2.5-7B-Instruct",
                "use_enhanced_features": True,
            }
        )
    )
    loaded = load_heads(tmp_path, expected_hidden_size=48)
    assert loaded.config.hidden_size == 48 and loaded.config.use_enhanced_features
    assert loaded.config.base_model == "Qwen/Qwen2.5-7B-Instruct"
    for key, value in state.items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_official_split_layout_without_enhanced_features(tmp_path):
    state = AutoDecoHeads(HeadsConfig(hidden_size=24, head_width=16, use_enhanced_features=False)).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    loaded = load_heads(tmp_path)
    assert loaded.config.use_enhanced_features is False and loaded.config.head_width == 16
    T, p = loaded(torch.randn(2, 24), torch.randn(2, 30))
    assert T.shape == p.shape == (2, 1)


@pytest.mark.parametrize("sharded", [False, True])
def test_merged_layout_heads(tiny_model_dir, tmp_path, sharded):
    heads = fresh_heads(32, seed=9)
    folder = build_merged_folder(tiny_model_dir, tmp_path / "merged", heads, sharded=sharded)
    loaded = load_heads(folder, expected_hidden_size=32)
    assert_same_heads(heads, loaded)
    assert loaded.config.base_model == str(tiny_model_dir)


def test_hidden_size_mismatch_is_user_error(tmp_path):
    fresh_heads(48).save(tmp_path)
    with pytest.raises(UserError) as info:
        load_heads(tmp_path, expected_hidden_size=32)
    message = info.value.one_line()
    assert "48" in message and "32" in message and "\n" not in message


@pytest.mark.parametrize("suffix", [".bin", ".pt"])
def test_pickled_only_folder_is_user_error(tmp_path, suffix):
    torch.save(heads_state(32), tmp_path / f"pytorch_model{suffix}")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "autodeco"}))
    with pytest.raises(UserError) as info:
        load_heads(tmp_path)
    assert f"pytorch_model{suffix}" in info.value.one_line()


def test_pickled_file_path_is_user_error(tmp_path):
    path = tmp_path / "heads.pt"
    torch.save(heads_state(32), path)
    with pytest.raises(UserError):
        load_heads(path)


def test_corrupt_safetensors_is_user_error(tmp_path):
    (tmp_path / "autodeco_heads.safetensors").write_bytes(
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + b"\x00" * 64
    )
    with pytest.raises(UserError) as info:
        load_heads(tmp_path)
    assert "safetensors" in info.value.one_line()


def test_truncated_safetensors_is_user_error(tmp_path):
    fresh_heads(32).save(tmp_path)
    path = tmp_path / "autodeco_heads.safetensors"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(UserError):
        load_heads(tmp_path)


def test_missing_path_and_no_heads_inside(tmp_path):
    with pytest.raises(UserError):
        load_heads(tmp_path / "nope")
    save_file({"something.else": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(UserError):
        load_heads(tmp_path)


def test_incomplete_heads_file_is_user_error(tmp_path):
    """A heads file that lacks one tensor (e.g. a hand-edited or partial export) should be a
    one-line UserError like every other bad checkpoint, not a raw torch RuntimeError."""
    state = heads_state(32)
    del state["top_p_head.mlp.2.bias"]
    save_file(state, str(tmp_path / "autodeco_heads.safetensors"))
    with pytest.raises(UserError):
        load_heads(tmp_path)


def test_invalid_config_json_is_user_error(tmp_path):
    fresh_heads(32).save(tmp_path)
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(UserError):
        load_heads(tmp_path)


@pytest.mark.parametrize("rows", [1, 5, 32])
@pytest.mark.parametrize("enhanced", [True, False])
@pytest.mark.parametrize("fused", [True, False])
def test_decode_values_are_forward_bit_for_bit(rows, enhanced, fused, monkeypatch):
    """The sampler's path for float32 rows (no module calls, in-place activations) gives forward's T̂ and P̂ exactly,
    with the fused kernel's features and with torch's."""
    from autodeco_cli.core import distribution

    monkeypatch.setattr(distribution, "FUSED_KERNEL", fused)
    torch.manual_seed(rows)
    heads = AutoDecoHeads(HeadsConfig(hidden_size=48, head_width=32, use_enhanced_features=enhanced)).eval()
    gen = torch.Generator().manual_seed(7)
    hidden = torch.randn(rows, 48, generator=gen)
    logits = torch.randn(rows, 3001, generator=gen) * 4
    with torch.inference_mode():
        expected = torch.cat(heads(hidden, logits), dim=-1)
        got = heads.decode_values(hidden, logits)
    assert got.shape == (rows, 2)
    assert torch.equal(got, expected)


def test_decode_values_follow_weights_changed_in_place():
    heads = fresh_heads(32, seed=1)
    hidden, logits = torch.randn(2, 32), torch.randn(2, 100)
    with torch.inference_mode():
        heads.decode_values(hidden, logits)  # caches the layers
    with torch.no_grad():
        heads.temp_head.mlp[2].bias.fill_(-50.0)  # T̂ -> 2·sigmoid(-50) ~ 0
        heads.load_state_dict(fresh_heads(32, seed=2).state_dict() | {"temp_head.mlp.2.bias": torch.tensor([3.0])})
    with torch.inference_mode():
        assert torch.equal(torch.cat(heads(hidden, logits), dim=-1), heads.decode_values(hidden, logits))


def test_sampler_draws_the_tokens_forward_would():
    """Autodeco requests through the sampler: the same tokens, T̂ and P̂ as with the heads' forward."""
    from autodeco_cli.core.decoding import make_strategy
    from autodeco_cli.engine.requests import Request
    from autodeco_cli.engine.sampler import Sampler

    heads = fresh_heads(48, seed=4)
    gen = torch.Generator().manual_seed(11)
    hidden, logits = torch.randn(6, 48, generator=gen), torch.randn(6, 5000, generator=gen) * 3
    requests = [Request(key=i, input_ids=[1], strategy=make_strategy("autodeco"), seed=50 + i) for i in range(12)]
    row_members = [[2 * r, 2 * r + 1] for r in range(6)]

    class ForwardHeads:  # the plain module call where the sampler would take decode_step's function
        def decode_step(self, reuse_output=False):
            return lambda hidden, logits, maxima=None: torch.cat(heads(hidden, logits), dim=-1)

    with torch.inference_mode():
        fast = Sampler(requests, heads, record_nucleus=True).step(row_members, logits, hidden)
        plain = Sampler(requests, ForwardHeads(), record_nucleus=True).step(row_members, logits, hidden)
    assert fast == plain
    assert len({step.token for step in fast.values()}) > 1
