"""The lean decode step's bf16 kernels (cpu_kernels' decode_ops_bf16, engine/lean_kernels.py): each
op gives torch's bits, and a step through them gives the torch ops' step bit for bit, cache too."""

from __future__ import annotations

import pytest
import torch

from autodeco_cli.core import cpu_kernels
from autodeco_cli.core.decoder_ops import rms_norm, rotate
from autodeco_cli.engine.generation import GenerationEngine, HiddenStateCapture
from autodeco_cli.engine.lean_decode import LeanDecoder
from autodeco_cli.engine.models import load_base_model
from conftest import build_tiny_tokenizer, on_one_thread_and_two
from tiny_architectures import save_model

pytestmark = pytest.mark.usefixtures("torch_single_thread")

needs_ops = pytest.mark.skipif(
    cpu_kernels.load("decode_ops_bf16") is None, reason="needs x86 AVX512 (F, BW) and a C compiler"
)
needs_both = pytest.mark.skipif(
    cpu_kernels.load("decode_ops_bf16") is None or cpu_kernels.load("decode_attention_bf16") is None,
    reason="needs x86 AVX512-BF16 and a C compiler",
)


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.view(torch.int16)


@needs_ops
@pytest.mark.parametrize("rows,n", [(1, 576), (32, 576), (3, 64), (7, 100), (2, 896), (5, 2048), (1, 4104)])
def test_add_rms_norm_gives_torchs_bits(rows, n):
    """Sizes that take each branch of torch's cascaded sum (a tail, one level, several levels)."""
    kernel = cpu_kernels.load("decode_ops_bf16")
    generator = torch.Generator().manual_seed(rows * n)
    scale = torch.rand(rows, 1, 1, generator=generator) * 50 + 0.01
    hidden = (torch.randn(rows, 1, n, generator=generator) * scale).to(torch.bfloat16)
    delta = torch.randn(rows, 1, n, generator=generator).to(torch.bfloat16)
    weight = torch.randn(n, generator=generator).to(torch.bfloat16)
    alone = hidden.clone()
    assert torch.equal(
        _bits(cpu_kernels.add_rms_norm(kernel, alone, None, weight, 1e-5)), _bits(rms_norm(weight, 1e-5, hidden))
    )
    assert torch.equal(alone, hidden)  # no delta: the residual stream is left as it was
    summed = hidden.clone()
    normed = cpu_kernels.add_rms_norm(kernel, summed, delta, weight, 1e-6)
    assert torch.equal(_bits(summed), _bits(hidden + delta))
    assert torch.equal(_bits(normed), _bits(rms_norm(weight, 1e-6, hidden + delta)))


@needs_ops
@pytest.mark.parametrize("batch,heads,kv_heads,dim", [(3, 9, 3, 64), (2, 4, 2, 32), (1, 8, 8, 128), (2, 2, 1, 6)])
def test_rope_append_rotates_like_torch_and_writes_only_the_new_column(batch, heads, kv_heads, dim):
    generator = torch.Generator().manual_seed(dim)
    q, k, v = (
        torch.randn(batch, 1, h * dim, generator=generator).to(torch.bfloat16) for h in (heads, kv_heads, kv_heads)
    )
    cos, sin = (torch.randn(batch, 1, dim, generator=generator).to(torch.bfloat16) for _ in range(2))
    buffers = [torch.randn(batch + 3, kv_heads, 12, dim, generator=generator).to(torch.bfloat16) for _ in range(2)]
    before = [b.clone() for b in buffers]
    keys, values = (b[:batch, :, 2:7] for b in buffers)  # a view inside its buffer: column 6 is the new one
    queries = cpu_kernels.rope_append(q, k, v, cos, sin, keys, values, heads)
    joined = rotate(torch.cat((q, k), dim=-1).view(batch, 1, -1, dim), cos.unsqueeze(2), sin.unsqueeze(2))[:, 0]
    assert torch.equal(_bits(queries), _bits(joined[:, :heads]))
    # q, k and v side by side, as one AMX call of the three linears gives them
    again = cpu_kernels.rope_append(torch.cat((q, k, v), dim=-1), None, None, cos, sin, keys, values, heads)
    assert torch.equal(_bits(again), _bits(queries))
    for buffer, old, new in (
        (buffers[0], before[0], joined[:, heads:]),
        (buffers[1], before[1], v.view(batch, kv_heads, dim)),
    ):
        assert torch.equal(_bits(buffer[:batch, :, 6]), _bits(new))
        buffer[:batch, :, 6] = old[:batch, :, 6]
        assert torch.equal(_bits(buffer), _bits(old))  # nothing else written


def _small_ops(kernel):
    """add_rms_norm, rope_append and silu_mul on inputs large enough to be split over threads (64 rows), with
    tiny values and every bf16 gate, so that a worker flushing otherwise than the caller changes bits."""
    generator = torch.Generator().manual_seed(5)
    hidden = torch.randn(64, 1, 576, generator=generator) * torch.logspace(-36, 2, 64)[:, None, None]
    hidden, delta = hidden.to(torch.bfloat16), torch.randn(64, 1, 576, generator=generator).to(torch.bfloat16)
    summed, weight = hidden.clone(), torch.randn(576, generator=generator).to(torch.bfloat16)
    outputs = [cpu_kernels.add_rms_norm(kernel, summed, delta, weight, 1e-5), summed]
    qkv = torch.randn(64, 1, 15 * 64, generator=generator).to(torch.bfloat16)
    cos, sin = (torch.randn(64, 1, 64, generator=generator).to(torch.bfloat16) for _ in range(2))
    keys, values = (torch.zeros(64, 3, 5, 64, dtype=torch.bfloat16) for _ in range(2))
    outputs += [cpu_kernels.rope_append(qkv, None, None, cos, sin, keys, values, 9), keys, values]
    gate = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).reshape(64, 1, 1024)
    up = torch.randn(64, 1, 1024, generator=generator).to(torch.bfloat16)
    return [_bits(x) for x in outputs + [cpu_kernels.silu_mul(gate, up)]]


@needs_ops
@pytest.mark.parametrize("flush", [False, True])
def test_small_ops_give_the_same_bits_on_two_threads_as_on_one(flush):
    # the pool's workers start before the engine turns flushing on, and keep their own mode: the kernels
    # must compute under the caller's
    kernel = cpu_kernels.load("decode_ops_bf16")
    one, two = on_one_thread_and_two(lambda: _small_ops(kernel), flush)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


@needs_ops
def test_silu_mul_gives_torchs_bits_for_every_bf16_gate():
    kernel_ready = cpu_kernels.load("decode_ops_bf16")
    assert kernel_ready is not None
    gate = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).reshape(64, 1, 1024)
    up = torch.randn(64, 1, 1024, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    got, expected = cpu_kernels.silu_mul(gate, up), torch.nn.functional.silu(gate) * up
    finite = torch.isfinite(expected)
    assert torch.equal(_bits(got)[finite], _bits(expected)[finite])
    assert torch.equal(torch.isnan(got), torch.isnan(expected))
    odd = torch.randn(3, 1, 37).to(torch.bfloat16)  # a tail past the last 16
    assert torch.equal(_bits(cpu_kernels.silu_mul(odd, odd)), _bits(torch.nn.functional.silu(odd) * odd))
    side_by_side = torch.cat((gate, up), dim=-1)  # as one AMX call of gate and up gives them
    assert torch.equal(_bits(cpu_kernels.silu_mul(side_by_side, None)), _bits(got))


@needs_ops
@pytest.mark.parametrize("flush", [False, True])
def test_silu_mul_follows_the_flush_mode_in_force_not_the_one_at_load(flush):
    # the engine turns flushing on when it loads a model, which may come after this kernel loaded
    assert cpu_kernels.load("decode_ops_bf16") is not None
    gate = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).reshape(64, 1, 1024)
    up = torch.randn(64, 1, 1024, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    was_flushing = float(torch.tensor([1e-40]) * 1.0) == 0.0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # torch's own workers keep the mode they started with: its reference on this thread
    torch.set_flush_denormal(flush)
    try:
        got, expected = cpu_kernels.silu_mul(gate, up), torch.nn.functional.silu(gate) * up
    finally:
        torch.set_flush_denormal(was_flushing)
        torch.set_num_threads(threads)
    finite = torch.isfinite(expected)
    assert torch.equal(_bits(got)[finite], _bits(expected)[finite])


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    return save_model("llama", tmp_path_factory.mktemp("lean-kernels"), build_tiny_tokenizer())


def _steps(lm, decoder, padded: bool):
    """Logits, last hidden states and caches of a prefill and 20 decode steps through `decoder`."""
    engine, capture = GenerationEngine(lm, lean_decode=False), HiddenStateCapture(lm.model)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 100, (4, 7), generator=generator)
    mask = torch.ones_like(ids)
    if padded:
        mask[0, :3], mask[2, :1] = 0, 0
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    outputs = []
    with torch.inference_mode():
        cache = engine.new_cache()
        engine._forward(ids, mask, positions, cache)
        positions = positions[:, -1:]
        for _ in range(20):  # past the buffer's 16 spare columns: a step grows it
            mask, positions = torch.cat([mask, mask.new_ones((4, 1))], dim=1), positions + 1
            tokens = torch.randint(3, 100, (4, 1), generator=generator)
            outputs.append((decoder(tokens, mask, positions, cache)[:, -1].float(), capture.last.clone()))
    capture.close()
    engine.close()
    return outputs, [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]


@needs_both
@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("one_call", [True, False])
def test_a_step_through_the_kernels_gives_the_torch_ops_bits(llama_folder, monkeypatch, padded, one_call):
    lm = load_base_model(str(llama_folder), device="cpu", dtype="bfloat16")
    fast, plain = LeanDecoder(lm.model), LeanDecoder(lm.model, kernels=False)
    assert fast.kernels_why is None and plain.kernels_why == "turned off"
    if cpu_kernels.load("amx_matmul_bf16") is not None:  # q|k|v and gate|up each one AMX call
        assert None not in fast._kernels.qkv + fast._kernels.gate_up
    if one_call:  # all the layers in one C call where it loads (AMX CPUs), else one call per kernel
        assert (fast._kernels.one_call is not None) == (cpu_kernels.load("decode_layers_bf16") is not None)
    else:
        fast._kernels.one_call = None
    ran = []
    real = fast._kernels.__class__.__call__
    monkeypatch.setattr(fast._kernels.__class__, "__call__", lambda self, *a: ran.append(1) or real(self, *a))
    (got, got_cache), (expected, expected_cache) = _steps(lm, fast, padded), _steps(lm, plain, padded)
    assert len(ran) == 20
    for (logits, hidden), (logits_expected, hidden_expected) in zip(got, expected):
        assert torch.equal(logits, logits_expected) and torch.equal(_bits(hidden), _bits(hidden_expected))
    for (keys, values), (keys_expected, values_expected) in zip(got_cache, expected_cache):
        assert torch.equal(_bits(keys), _bits(keys_expected)) and torch.equal(_bits(values), _bits(values_expected))


def test_float32_and_other_attention_keep_off_the_bf16_kernel_layers(llama_folder):
    lm = load_base_model(str(llama_folder), device="cpu", dtype="float32")
    assert "dtype torch.float32" in LeanDecoder(lm.model).kernels_why
    lm = load_base_model(str(llama_folder), device="cpu", dtype="bfloat16")
    lm.model.set_attn_implementation("sdpa")  # not ours: transformers' path would not run our kernel
    assert "attention implementation 'sdpa'" in LeanDecoder(lm.model).kernels_why
