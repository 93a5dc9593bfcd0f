"""CPU speed paths: --dtype auto, the bf16 decode attention, packed linears, the growing KV cache."""

from __future__ import annotations

import pytest
import torch
from transformers.cache_utils import DynamicLayer

from autodeco_cli.core import cpu_features
from autodeco_cli.core.cpu_features import flags_from_cpuinfo, has_native_bf16
from autodeco_cli.core.decoding import make_strategy
from autodeco_cli.core.heads import fresh_heads
from autodeco_cli.engine import cpu_inference, models
from autodeco_cli.engine.cpu_inference import (
    DECODE_ATTENTION,
    ZERO_TAIL,
    PackedLinear,
    decode_attention_forward,
    onednn_packs_bf16,
    pack_linear_weights,
    place_in_huge_pages_later,
)
from autodeco_cli.engine.generation import GenerationEngine
from autodeco_cli.engine.models import load_base_model, pick_dtype
from autodeco_cli.engine.requests import build_requests
from conftest import TINY_HIDDEN

pytestmark = pytest.mark.usefixtures("torch_single_thread")

PROMPTS = [
    "hello",
    "What is 27 + 82? Tell me a joke about a cat and a mouse, please.",
    "The quick brown fox",
    "Once upon a time",
]


# ---- --dtype auto ------------------------------------------------------------------------------


def test_cpuinfo_flags_decide_native_bf16():
    x86 = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n"
    assert has_native_bf16(flags_from_cpuinfo(x86))
    assert has_native_bf16(flags_from_cpuinfo("flags : avx512f amx_tile amx_bf16\n"))
    assert has_native_bf16(flags_from_cpuinfo("Features\t: fp asimd bf16 i8mm\n"))  # aarch64
    # AVX-512 without the bf16 extension only emulates bf16: not native
    assert not has_native_bf16(flags_from_cpuinfo("flags : fpu avx2 avx512f avx512bw avx512_vnni\n"))
    assert not has_native_bf16(flags_from_cpuinfo(""))


@pytest.mark.parametrize("native", [True, False])
def test_dtype_auto_is_bf16_on_cpu_only_with_native_bf16(monkeypatch, native):
    monkeypatch.setattr(cpu_features, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert pick_dtype("auto", cpu) == (torch.bfloat16 if native else torch.float32)
    assert pick_dtype(None, cpu) == pick_dtype("auto", cpu)  # no --dtype is auto
    assert pick_dtype("float32", cpu) == torch.float32 and pick_dtype("bf16", cpu) == torch.bfloat16
    assert pick_dtype("auto", torch.device("cuda")) == torch.bfloat16


@pytest.mark.parametrize("forced", ["0", "1"])
def test_native_bf16_override(monkeypatch, forced):
    cpu_features.cpu_has_native_bf16.cache_clear()
    monkeypatch.setenv("AUTODECO_CPU_BF16", forced)
    try:
        assert cpu_features.cpu_has_native_bf16() is (forced == "1")
    finally:
        cpu_features.cpu_has_native_bf16.cache_clear()


# ---- decode attention ----------------------------------------------------------------------


class _Module(torch.nn.Module):
    is_causal = True

    def __init__(self, groups: int = 1):
        super().__init__()
        self.num_key_value_groups = groups


def _sdpa(query, key, value, mask):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = _Module(query.shape[1] // key.shape[1]).eval()
    return sdpa_attention_forward(module, query, key, value, mask, scaling=0.125)[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_attention_matches_sdpa(dtype):
    gen = torch.Generator().manual_seed(0)
    batch, heads, kv_heads, length, dim = 5, 6, 2, 11, 16
    query = torch.randn(batch, heads, 1, dim, generator=gen).to(dtype)
    key = torch.randn(batch, kv_heads, length, dim, generator=gen).to(dtype)
    value = torch.randn(batch, kv_heads, length, dim, generator=gen).to(dtype)
    mask = torch.ones(batch, 1, 1, length, dtype=torch.bool)
    mask[1, ..., :4] = False  # a left-padded row
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    for m in (mask, None):
        ours, _ = decode_attention_forward(_Module().eval(), query, key, value, m, scaling=0.125)
        assert ours.shape == (batch, 1, heads, dim)
        torch.testing.assert_close(ours.float(), _sdpa(query, key, value, m).float(), atol=tolerance, rtol=tolerance)


def test_decode_attention_uses_a_zero_tail_without_changing_the_result():
    gen = torch.Generator().manual_seed(1)
    batch, heads, kv_heads, length, tail, dim = 3, 4, 2, 7, 5, 8
    buffer_k = torch.zeros(batch, kv_heads, length + tail, dim)
    buffer_v = torch.zeros(batch, kv_heads, length + tail, dim)
    buffer_k[:, :, :length] = torch.randn(batch, kv_heads, length, dim, generator=gen)
    buffer_v[:, :, :length] = torch.randn(batch, kv_heads, length, dim, generator=gen)
    key, value = buffer_k[:, :, :length], buffer_v[:, :, :length]
    setattr(key, ZERO_TAIL, tail)
    setattr(value, ZERO_TAIL, tail)
    query = torch.randn(batch, heads, 1, dim, generator=gen)
    mask = torch.ones(batch, 1, 1, length, dtype=torch.bool)
    mask[0, ..., :2] = False
    for m in (mask, None):
        ours, _ = decode_attention_forward(_Module().eval(), query, key, value, m, scaling=0.125)
        torch.testing.assert_close(ours, _sdpa(query, key.contiguous(), value.contiguous(), m), atol=1e-5, rtol=1e-5)


def test_prompt_attention_goes_through_sdpa():
    gen = torch.Generator().manual_seed(2)
    query = torch.randn(2, 4, 3, 8, generator=gen)
    key = torch.randn(2, 2, 3, 8, generator=gen)
    value = torch.randn(2, 2, 3, 8, generator=gen)
    ours, _ = decode_attention_forward(_Module(2).eval(), query, key, value, None, scaling=0.125)
    assert torch.equal(ours, _sdpa(query, key, value, None))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_steps_that_change_the_scores_go_through_sdpa(dtype):
    """The grouped path computes plain softmax attention; a position bias or soft-capping would be
    silently dropped there, so those steps get SDPA's own answer: the bias applied, capping refused."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    gen = torch.Generator().manual_seed(4)
    query = torch.randn(2, 4, 1, 32, generator=gen).to(dtype)
    key = torch.randn(2, 4, 9, 32, generator=gen).to(dtype)
    value = torch.randn(2, 4, 9, 32, generator=gen).to(dtype)
    bias = torch.randn(2, 4, 1, 9, generator=gen).to(dtype) * 4
    module = _Module().eval()
    ours, _ = decode_attention_forward(module, query, key, value, None, scaling=0.125, position_bias=bias)
    expected, _ = sdpa_attention_forward(module, query, key, value, None, scaling=0.125, position_bias=bias)
    assert torch.equal(ours, expected)
    plain, _ = decode_attention_forward(module, query, key, value, None, scaling=0.125)
    assert not torch.allclose(ours.float(), plain.float(), atol=1e-2)
    with pytest.raises(ValueError, match="softcap"):
        decode_attention_forward(module, query, key, value, None, scaling=0.125, softcap=30.0)


# ---- packed linear layers ------------------------------------------------------------------


@pytest.mark.skipif(not onednn_packs_bf16(), reason="no oneDNN bf16 weight packing here (torch build or CPU)")
@pytest.mark.usefixtures("without_amx_kernel")  # the AMX kernel rounds otherwise (tests/test_cpu_amx.py)
def test_packed_linear_is_bitwise_plain_linear_and_steps_aside_for_gradients():
    gen = torch.Generator().manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.Linear(40, 8, bias=False)).bfloat16()
    plain = [layer.weight.detach().clone() for layer in model]
    assert pack_linear_weights(model) == 2
    assert all(type(layer) is PackedLinear for layer in model)
    assert set(model.state_dict()) == {"0.weight", "0.bias", "1.weight"}  # the packed copies are not state
    x = torch.randn(5, 1, 24, generator=gen).bfloat16()
    with torch.inference_mode():
        expected = torch.nn.functional.linear(torch.nn.functional.linear(x, plain[0], model[0].bias), plain[1])
        assert torch.equal(model(x), expected)
    trainable = torch.randn(5, 24, generator=gen).bfloat16().requires_grad_()
    model(trainable).float().sum().backward()  # the plain path, with autograd
    assert trainable.grad is not None
    assert pack_linear_weights(torch.nn.Linear(4, 4)) == 0  # fp32 layers are left alone


class _TinyLM(torch.nn.Module):
    """An embedding and a packed LM head, with or without the gemv kernel (never called here)."""

    def __init__(self, gemv: bool):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.head = torch.nn.Linear(4, 10, bias=False)
        self.head.__class__ = PackedLinear  # no packed copy: its forward is the plain one
        self.head._gemv = object() if gemv else None

    def forward(self, input_ids):
        return self.head(self.embed(input_ids))


def _record_placements(monkeypatch) -> list:
    placed = []
    for name, label in (("move_to_huge_pages", "move"), ("collapse_to_huge_pages", "collapse")):
        monkeypatch.setattr(
            cpu_inference, name, lambda _, label=label: placed.append((label, torch.is_inference_mode_enabled()))
        )
    return placed


def test_each_huge_page_placement_waits_for_calls_down_its_own_path(monkeypatch):
    placed = _record_placements(monkeypatch)
    model = _TinyLM(gemv=True)
    place_in_huge_pages_later(model, after_calls=2)
    one, many = torch.ones(1, 1, dtype=torch.long), torch.ones(1, 7, dtype=torch.long)
    with torch.inference_mode():
        model(many)
        model(input_ids=one)
        assert placed == []  # not at load, nor before a path's second call
        model(one)  # a second call the gemv kernel serves
        assert placed == [("move", False)]  # before the call, outside inference mode
        model(input_ids=many)
        assert placed == [("move", False), ("collapse", False)]
        model(one)
        model(many)
    assert len(placed) == 2 and not model._forward_pre_hooks


def test_without_the_gemv_kernel_every_call_counts_towards_the_collapse(monkeypatch):
    placed = _record_placements(monkeypatch)
    model = _TinyLM(gemv=False)
    place_in_huge_pages_later(model, after_calls=2)
    with torch.inference_mode():
        for _ in range(3):
            model(torch.ones(1, 1, dtype=torch.long))
    assert placed == [("collapse", False)] and not model._forward_pre_hooks


# ---- the engine's growing KV cache and the bf16 CPU model ------------------------------------


def _with_plain_cache(engine):
    grow = engine.new_cache

    def plain():
        cache = grow()
        for layer in cache.layers:
            layer.__class__ = DynamicLayer
        return cache

    return plain


def test_growing_cache_generates_exactly_what_concatenation_did(tiny_lm, monkeypatch):
    engine = GenerationEngine(tiny_lm, fresh_heads(TINY_HIDDEN, seed=0))
    requests = []
    for strategy, n in (
        (make_strategy("static", 1.0, 0.9), 3),
        (make_strategy("greedy"), 1),
        (make_strategy("autodeco"), 2),
    ):
        requests += build_requests(tiny_lm.tokenizer, PROMPTS, strategy, n=n, seed=7)
    # batch 3 < requests: rows finish, split and join while others run, padding gets trimmed
    grown = engine.generate(requests, max_new_tokens=24, batch_size=3)
    monkeypatch.setattr(engine, "new_cache", _with_plain_cache(engine))
    concatenated = engine.generate(requests, max_new_tokens=24, batch_size=3)
    assert [g.token_ids for g in grown] == [g.token_ids for g in concatenated]
    engine.close()


def test_growing_cache_appends_in_place_and_views_carry_their_zero_tail(tiny_lm):
    engine = GenerationEngine(tiny_lm)
    cache = engine.new_cache()
    layer = cache.layers[0]
    states = [torch.randn(2, 2, n, 4) for n in (5, 1, 1)]
    keys = layer.update(states[0], states[0])[0]
    first = keys.untyped_storage().data_ptr()
    for state in states[1:]:
        keys = layer.update(state, state)[0]
    assert keys.untyped_storage().data_ptr() == first  # no copy: written into the spare columns
    assert torch.equal(keys, torch.cat(states, dim=-2))
    tail = getattr(keys, ZERO_TAIL)
    assert tail > 0
    spare = torch.as_strided(keys, (2, 2, 7 + tail, 4), keys.stride(), keys.storage_offset())[:, :, 7:]
    assert not spare.any()
    layer.batch_select_indices(torch.tensor([1, 1, 0]))  # rows split and reorder
    expected = torch.cat(states, dim=-2)[[1, 1, 0]]
    assert torch.equal(layer.keys, expected)
    step = torch.randn(3, 2, 1, 4)
    keys = layer.update(step, step)[0]
    expected = torch.cat([expected, step], dim=-2)
    assert torch.equal(keys, expected) and getattr(keys, ZERO_TAIL) >= 0
    layer.crop(-2)  # the cut columns hold data: the next append must not claim a zero tail over them
    keys = layer.update(step, step)[0]
    assert torch.equal(keys, torch.cat([expected[:, :, :-2], step], dim=-2))
    spare = torch.as_strided(
        keys, (3, 2, keys.shape[2] + getattr(keys, ZERO_TAIL), 4), keys.stride(), keys.storage_offset()
    )[:, :, keys.shape[2] :]
    assert not spare.any()


def test_opening_a_column_is_an_append_whose_column_the_caller_writes(tiny_lm):
    """`open_column` then a write gives `update`'s keys and values, in place while the buffer has
    room, across rows that move and a crop."""
    engine = GenerationEngine(tiny_lm)
    plain, opened = engine.new_cache().layers[0], engine.new_cache().layers[0]
    start = torch.randn(3, 2, 5, 4)
    for layer in (plain, opened):
        layer.update(start, start * 2)
    generator = torch.Generator().manual_seed(0)
    for step in range(30):  # past the 16 spare columns: the buffer grows
        new = torch.randn(opened.keys.shape[0], 2, 1, 4, generator=generator)
        plain.update(new, new * 2)
        storage = opened.keys.untyped_storage().data_ptr()
        opened.open_column()
        assert not opened.keys[:, :, -1].any() and not opened.values[:, :, -1].any()
        opened.keys[:, :, -1], opened.values[:, :, -1] = new[:, :, 0], new[:, :, 0] * 2
        assert torch.equal(opened.keys, plain.keys) and torch.equal(opened.values, plain.values)
        if step < 5:  # 5 + 16 spare columns: the first steps write into the same buffer
            assert opened.keys.untyped_storage().data_ptr() == storage
        if step == 5:
            for layer in (plain, opened):
                layer.batch_select_indices(torch.tensor([2, 0, 0, 1]))
        if step == 12:
            for layer in (plain, opened):
                layer.crop(-3)


def test_a_cpu_load_runs_the_vector_math_once_before_the_model_does(tiny_model_dir, monkeypatch):
    threads = torch.get_num_threads()
    models.settle_vector_math()  # the real one: runs, and leaves the thread count alone
    assert torch.get_num_threads() == threads
    calls = []
    monkeypatch.setattr(models, "settle_vector_math", lambda: calls.append("settled"))
    load_base_model(str(tiny_model_dir), device="cpu")
    assert calls == ["settled"]


def test_bf16_cpu_model_decodes_with_the_fast_paths(tiny_model_dir):
    fp32 = load_base_model(str(tiny_model_dir), device="cpu")
    bf16 = load_base_model(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    assert fp32.model.config._attn_implementation == "sdpa"
    assert bf16.model.config._attn_implementation == DECODE_ATTENTION
    if onednn_packs_bf16():
        assert any(type(m) is PackedLinear for m in bf16.model.modules())
    requests = build_requests(fp32.tokenizer, PROMPTS, make_strategy("autodeco"), n=2, seed=1)
    outputs = {}
    for name, lm in (("fp32", fp32), ("bf16", bf16)):
        engine = GenerationEngine(lm, fresh_heads(TINY_HIDDEN, seed=0))
        outputs[name] = engine.generate(requests, max_new_tokens=12, batch_size=3, trace=True)
        engine.close()
    for a, b in zip(outputs["fp32"], outputs["bf16"]):
        # the heads run in fp32 on the bf16 hidden state: their first step (same prompt) agrees closely
        assert abs(a.trace[0].temperature - b.trace[0].temperature) < 0.05
        assert abs(a.trace[0].top_p - b.trace[0].top_p) < 0.05


def test_inverse_cdf_over_the_nucleus_draws_what_the_full_vocabulary_cumsum_drew():
    """The sampler sums the CDF over the tokens with mass only; every draw must equal the draw
    from the full-vocabulary double cumsum it replaced (same uniforms, same ids)."""
    from autodeco_cli.core.distribution import decoding_logits
    from autodeco_cli.engine.requests import Request
    from autodeco_cli.engine.sampler import Sampler

    gen = torch.Generator().manual_seed(9)
    rows, vocab = 12, 4000
    logits = torch.randn(rows, vocab, generator=gen) * 3
    logits[2] = logits[2].bfloat16().float()  # ties
    logits[5, 100:] = float("-inf")  # a masked row
    strategies = [
        make_strategy("static", 0.7, 0.9),
        make_strategy("static", 1.3, 1.0),
        make_strategy("min-p", 1.0, min_p=0.05),
    ]
    requests = [Request(key=i, input_ids=[1], strategy=strategies[i % 3], seed=1000 + i) for i in range(rows * 2)]
    row_members = [[2 * r, 2 * r + 1] for r in range(rows)]
    chosen = Sampler(requests, None, record_nucleus=False).step(row_members, logits, None)
    for row, members in enumerate(row_members):
        for member in members:
            strategy = requests[member].strategy
            decoded = decoding_logits(
                logits[row : row + 1], strategy.temperature, strategy.top_p or 1.0, min_p=strategy.min_p
            )
            cumulative = torch.cumsum(torch.softmax(decoded, -1).double(), -1)[0]
            u = torch.rand(1, generator=torch.Generator().manual_seed(requests[member].seed), dtype=torch.float64)
            token = int(torch.searchsorted(cumulative, u * cumulative[-1], right=True))
            assert chosen[member].token == token, (row, member)


def test_eval_records_the_resolved_dtype_and_resumes_folders_that_said_auto(tiny_model_dir, tmp_path, fake_registry):
    import json

    from typer.testing import CliRunner

    from autodeco_cli.cli import app

    runner = CliRunner()
    common = [
        "eval",
        "-b",
        "fake",
        "--model",
        str(tiny_model_dir),
        "-k",
        "1",
        "--seeds",
        "1",
        "--batch-size",
        "4",
        "--output-dir",
        str(tmp_path),
        "--decoding",
        "greedy",
    ]
    assert runner.invoke(app, common).exit_code == 0
    config_path = tmp_path / "greedy" / "run_config.json"
    config = json.loads(config_path.read_text())
    assert config["dtype"] == "float32"  # no --dtype is auto: fp32 here (conftest: no native bf16), recorded as such
    config["dtype"] = "auto"  # what folders recorded before the dtype was resolved (then: fp32 on CPU)
    config_path.write_text(json.dumps(config))
    resumed = runner.invoke(app, common)
    assert resumed.exit_code == 0, resumed.output
    refused = runner.invoke(app, [*common, "--dtype", "bfloat16"])
    assert (
        refused.exit_code != 0 and "(dtype float32 -> bfloat16" in f"{refused.output} {refused.exception}"
    )  # bf16 samples never join fp32 ones
