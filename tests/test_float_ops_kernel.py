"""The float32 lean step's small ops in C (cpu_kernels' decode_ops_f32): each gives torch's bits, on one thread and
split over two, flushing or not; the lean step takes them in float32 (its bits against transformers' are
tests/test_lean_decode.py's)."""

from __future__ import annotations

import pytest
import torch

from autodeco_cli.core import cpu_kernels
from autodeco_cli.core.decoder_ops import rms_norm, rotate
from autodeco_cli.engine.lean_decode import LeanDecoder
from autodeco_cli.engine.models import load_base_model
from conftest import build_tiny_tokenizer, on_one_thread_and_two
from tiny_architectures import save_model

pytestmark = pytest.mark.usefixtures("torch_single_thread")

needs_ops = pytest.mark.skipif(cpu_kernels.load("decode_ops_f32") is None, reason="needs x86-64 and a C compiler")


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.view(torch.int32)


@needs_ops
@pytest.mark.parametrize("rows,n", [(1, 576), (32, 576), (3, 64), (7, 100), (2, 896), (5, 2048), (1, 4104)])
def test_add_rms_norm_gives_torchs_bits(rows, n):
    """Sizes that take each branch of torch's cascaded sum (a tail, one level, several levels), rows from tiny
    (squares in the subnormals) to large."""
    kernel = cpu_kernels.load("decode_ops_f32")
    generator = torch.Generator().manual_seed(rows * n)
    scale = torch.logspace(-22, 2, rows)[:, None, None] if rows > 1 else torch.tensor(7.0)
    hidden = torch.randn(rows, 1, n, generator=generator) * scale
    delta = torch.randn(rows, 1, n, generator=generator)
    weight = torch.randn(n, generator=generator)
    alone = hidden.clone()
    assert torch.equal(
        _bits(cpu_kernels.add_rms_norm(kernel, alone, None, weight, 1e-5)), _bits(rms_norm(weight, 1e-5, hidden))
    )
    assert torch.equal(_bits(alone), _bits(hidden))  # no delta: the residual stream is left as it was
    summed = hidden.clone()
    normed = cpu_kernels.add_rms_norm(kernel, summed, delta, weight, 1e-6)
    assert torch.equal(_bits(summed), _bits(hidden + delta))
    assert torch.equal(_bits(normed), _bits(rms_norm(weight, 1e-6, hidden + delta)))


@needs_ops
@pytest.mark.parametrize("batch,heads,kv_heads,dim", [(3, 9, 3, 64), (2, 4, 2, 32), (1, 8, 8, 128), (2, 2, 1, 6)])
def test_rope_rotates_like_torch(batch, heads, kv_heads, dim):
    generator = torch.Generator().manual_seed(dim)
    q, k = (torch.randn(batch, 1, h * dim, generator=generator) for h in (heads, kv_heads))
    cos, sin = (torch.randn(batch, 1, dim, generator=generator) for _ in range(2))
    queries, keys = cpu_kernels.rope_f32(q, k, cos, sin, heads)
    joined = rotate(torch.cat((q, k), dim=-1).view(batch, 1, -1, dim), cos.unsqueeze(2), sin.unsqueeze(2))
    assert queries.shape == (batch, heads, 1, dim) and keys.shape == (batch, kv_heads, 1, dim)
    assert torch.equal(_bits(queries), _bits(joined.transpose(1, 2)[:, :heads]))
    assert torch.equal(_bits(keys), _bits(joined.transpose(1, 2)[:, heads:]))


@needs_ops
def test_rope_into_a_cache_writes_only_its_new_column():
    generator = torch.Generator().manual_seed(2)
    batch, heads, kv_heads, dim = 3, 9, 3, 64
    q, k, v = (torch.randn(batch, 1, h * dim, generator=generator) for h in (heads, kv_heads, kv_heads))
    cos, sin = (torch.randn(batch, 1, dim, generator=generator) for _ in range(2))
    buffers = [torch.randn(batch + 3, kv_heads, 12, dim, generator=generator) for _ in range(2)]
    before = [b.clone() for b in buffers]
    keys, values = (b[:batch, :, 2:7] for b in buffers)  # a view inside its buffer: column 6 is the new one
    queries, returned = cpu_kernels.rope_f32(q, k, cos, sin, heads, (v, keys, values))
    expected_queries, expected_keys = cpu_kernels.rope_f32(q, k, cos, sin, heads)
    assert returned is keys and torch.equal(_bits(queries), _bits(expected_queries))
    for buffer, old, new in (
        (buffers[0], before[0], expected_keys[:, :, 0]),
        (buffers[1], before[1], v.view(batch, kv_heads, dim)),
    ):
        assert torch.equal(_bits(buffer[:batch, :, 6]), _bits(new))
        buffer[:batch, :, 6] = old[:batch, :, 6]
        assert torch.equal(_bits(buffer), _bits(old))  # nothing else written


def _small_ops(kernel):
    """Both ops on inputs large enough to be split over threads (64 rows), values down in the subnormals, so that
    a worker flushing otherwise than the caller changes bits."""
    generator = torch.Generator().manual_seed(5)
    hidden = torch.randn(64, 1, 576, generator=generator) * torch.logspace(-40, 2, 64)[:, None, None]
    summed, weight = hidden.clone(), torch.randn(576, generator=generator)
    delta = torch.randn(64, 1, 576, generator=generator) * 1e-39
    outputs = [cpu_kernels.add_rms_norm(kernel, summed, delta, weight, 1e-5), summed]
    q = torch.randn(64, 1, 9 * 64, generator=generator) * 1e-20
    k = torch.randn(64, 1, 3 * 64, generator=generator) * 1e-20
    cos, sin = (torch.randn(64, 1, 64, generator=generator) * 1e-19 for _ in range(2))
    outputs += list(cpu_kernels.rope_f32(q, k, cos, sin, 9))
    return [_bits(x) for x in outputs]


@needs_ops
@pytest.mark.parametrize("flush", [False, True])
def test_small_ops_give_the_same_bits_on_two_threads_as_on_one(flush):
    # the pool's workers start before the engine turns flushing on, and keep their own mode: the kernel must
    # compute under the caller's
    kernel = cpu_kernels.load("decode_ops_f32")
    one, two = on_one_thread_and_two(lambda: _small_ops(kernel), flush)
    assert all(torch.equal(a, b) for a, b in zip(one, two))
    assert any((a == 0).any() for a in one) == flush  # the flushed run did flush


@needs_ops
def test_the_float32_lean_step_takes_the_kernel_and_bf16_does_not(tmp_path):
    folder = save_model("llama", tmp_path / "llama", build_tiny_tokenizer())
    assert LeanDecoder(load_base_model(str(folder), device="cpu", dtype="float32").model)._float_ops is not None
    lm = load_base_model(str(folder), device="cpu", dtype="float32")
    assert LeanDecoder(lm.model, kernels=False)._float_ops is None
    assert LeanDecoder(load_base_model(str(folder), device="cpu", dtype="bfloat16").model)._float_ops is None


@needs_ops
def test_a_float32_step_into_transformers_own_cache_gives_the_same_bits(tmp_path):
    """A cache that does not open columns (transformers' DynamicCache) takes the keys and values through its
    `update`; steps into it and into the engine's own cache (written in place) give the model's logits, bit for
    bit, and the same cache."""
    from transformers import DynamicCache

    from autodeco_cli.engine.generation import GenerationEngine

    folder = save_model("llama", tmp_path / "llama", build_tiny_tokenizer())
    lm = load_base_model(str(folder), device="cpu", dtype="float32")
    engine, lean = GenerationEngine(lm, lean_decode=False), LeanDecoder(lm.model)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 100, (2, 6), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.inference_mode():
        caches = [engine.new_cache(), DynamicCache(config=lm.model.config), engine.new_cache()]
        for cache in caches:
            engine._forward(ids, mask, positions, cache)
        positions = positions[:, -1:]
        for _ in range(3):
            mask, positions = torch.cat([mask, mask.new_ones((2, 1))], dim=1), positions + 1
            tokens = torch.randint(3, 100, (2, 1), generator=generator)
            expected, _ = engine._forward(tokens, mask, positions, caches[0])
            for cache in caches[1:]:
                assert torch.equal(lean(tokens, mask, positions, cache)[:, -1, :].float(), expected)
        for ours, theirs in zip(caches[2].layers, caches[1].layers):
            assert torch.equal(ours.keys, theirs.keys) and torch.equal(ours.values, theirs.values)
    engine.close()


def test_a_failed_lane_search_leaves_the_count_another_kernels_check_found(monkeypatch):
    """Both decode-ops kernels' checks search torch's sum lanes into one shared count: one that fails must not leave
    the other with a count it did not find."""
    monkeypatch.setattr(cpu_kernels, "_sum_lanes", [8])
    monkeypatch.setattr(cpu_kernels, "_norm_agrees", lambda *args: False)
    assert not cpu_kernels._find_sum_lanes(None, [()])
    assert cpu_kernels._sum_lanes == [8]
    monkeypatch.setattr(cpu_kernels, "_norm_agrees", lambda *args: cpu_kernels._sum_lanes[0] == 16)
    assert cpu_kernels._find_sum_lanes(None, [()]) and cpu_kernels._sum_lanes == [16]
