"""Our C kernels (bf16 gemv, bf16 decode attention) against torch, and their fallbacks."""

from __future__ import annotations

import pytest
import torch

from autodeco_cli.core import attention_kernel, cpu_features, cpu_kernels, kernel_build, learned_kernels
from autodeco_cli.engine import cpu_inference
from autodeco_cli.engine.cpu_inference import (
    PackedLinear,
    decode_attention_forward,
    pack_linear_weights,
    place_in_huge_pages_later,
)
from autodeco_cli.engine.cpu_memory import huge_pages_allowed

pytestmark = pytest.mark.usefixtures("torch_single_thread")

needs_gemv = pytest.mark.skipif(cpu_kernels.load("gemv_bf16") is None, reason="needs x86 AVX512-BF16 and a C compiler")
needs_sort = pytest.mark.skipif(cpu_kernels.load("sort_descending_f32") is None, reason="needs x86-64 and a C compiler")
needs_attention = pytest.mark.skipif(
    cpu_kernels.load("decode_attention_bf16") is None, reason="needs x86 AVX512-BF16 and a C compiler"
)


def bf16_close(got: torch.Tensor, expected: torch.Tensor, ulps: int = 2) -> bool:
    """Equal up to `ulps` bf16 steps of the larger magnitude (fp32 sums in another order)."""
    got, expected = got.float(), expected.float()
    step = expected.abs().clamp_min(1e-3) * 2.0**-7
    return bool(((got - expected).abs() <= ulps * step).all())


@needs_gemv
@pytest.mark.parametrize("inputs,outputs", [(7, 5), (32, 1), (70, 37), (576, 300), (1536, 64)])
def test_gemv_matches_torch_for_every_row_count(inputs, outputs):
    kernel = cpu_kernels.load("gemv_bf16")
    generator = torch.Generator().manual_seed(inputs * outputs)
    weight = torch.randn(outputs, inputs, generator=generator).to(torch.bfloat16)
    for rows in range(1, 9):
        x = torch.randn(2, rows, inputs, generator=generator).to(torch.bfloat16)[1]  # an offset view
        expected = (x.float() @ weight.float().T).to(torch.bfloat16)
        got = cpu_kernels.gemv(kernel, x, weight)
        assert got.shape == (rows, outputs) and got.dtype == torch.bfloat16
        assert bf16_close(got, expected), (rows, (got.float() - expected.float()).abs().max())


@needs_gemv
def test_gemv_refuses_more_than_eight_rows():
    kernel = cpu_kernels.load("gemv_bf16")
    with pytest.raises(ValueError, match="1 to 8 rows"):
        cpu_kernels.gemv(kernel, torch.ones(9, 32, dtype=torch.bfloat16), torch.ones(4, 32, dtype=torch.bfloat16))


@needs_gemv
@pytest.mark.usefixtures("without_amx_kernel")
def test_packed_linear_sends_few_rows_to_the_kernel_and_many_to_onednn(monkeypatch):
    model = torch.nn.Sequential(torch.nn.Linear(96, 80, bias=False)).to(torch.bfloat16)
    reference = model[0].weight.detach().clone()
    if not pack_linear_weights(model):
        pytest.skip("oneDNN weight packing unavailable")
    layer = model[0]
    assert type(layer) is PackedLinear and layer._gemv is not None
    assert torch.equal(layer.weight, reference)
    calls = []
    monkeypatch.setattr(cpu_inference, "gemv", lambda k, x, w: calls.append(x.shape) or cpu_kernels.gemv(k, x, w))
    with torch.inference_mode():
        for rows in (1, cpu_kernels.GEMV_MAX_ROWS, cpu_kernels.GEMV_MAX_ROWS + 1, 32):
            x = torch.randn(rows, 1, 96).to(torch.bfloat16)
            assert bf16_close(layer(x), (x.float() @ reference.float().T).to(torch.bfloat16))
    assert [shape[0] for shape in calls] == [1, cpu_kernels.GEMV_MAX_ROWS]


class _TiedLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(80, 64)
        self.body = torch.nn.Linear(64, 64, bias=False)
        self.head = torch.nn.Linear(64, 80, bias=False)
        self.head.weight = self.embed.weight  # tied, as the default model's LM head

    def forward(self, input_ids):
        return self.head(self.body(self.embed(input_ids)))


@needs_gemv
@pytest.mark.usefixtures("without_amx_kernel")
def test_weights_move_into_huge_pages_between_calls_with_the_same_outputs(monkeypatch):
    monkeypatch.delenv("AUTODECO_HUGEPAGES", raising=False)
    model = _TiedLM().to(torch.bfloat16)
    if not pack_linear_weights(model):
        pytest.skip("oneDNN weight packing unavailable")
    pointers = [model.body.weight.data_ptr(), model.head.weight.data_ptr()]
    place_in_huge_pages_later(model, after_calls=2)
    token = torch.tensor([[7]])
    with torch.inference_mode():
        first = model(token)
        assert [model.body.weight.data_ptr(), model.head.weight.data_ptr()] == pointers  # not yet
        second = model(token)
    assert torch.equal(first, second)
    assert model.head.weight is model.embed.weight and not model.body.weight.is_inference()
    if huge_pages_allowed():
        assert model.body.weight.data_ptr() != pointers[0] and model.head.weight.data_ptr() != pointers[1]


def _attention_inputs(batch, heads, kv_heads, length, dim, seed=0):
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, heads, 1, dim, generator=generator).to(torch.bfloat16)
    # cache views with spare columns after them, as the growing KV cache hands them over
    keys = torch.randn(batch, kv_heads, length + 9, dim, generator=generator).to(torch.bfloat16)
    values = torch.randn(batch, kv_heads, length + 9, dim, generator=generator).to(torch.bfloat16)
    mask = torch.ones(batch, 1, 1, length, dtype=torch.bool)
    mask[0, ..., : length // 3] = False  # left padding
    if batch > 1:
        mask[1, ..., 3:7] = False  # padding after a shared prompt prefix
    return query, keys[:, :, :length], values[:, :, :length], mask


@needs_attention
@pytest.mark.parametrize(
    "batch,heads,kv_heads,length,dim",
    # one key; a tail past 16 keys; more queries per KV head than one pass takes; D not a multiple of 64
    [
        (1, 9, 3, 1, 64),
        (3, 8, 2, 37, 64),
        (2, 4, 4, 70, 128),
        (2, 10, 1, 33, 96),
        (1, 16, 2, 16, 256),
        (4, 9, 3, 200, 64),
    ],
)
def test_decode_attention_matches_the_torch_bf16_path(batch, heads, kv_heads, length, dim):
    kernel = cpu_kernels.load("decode_attention_bf16")
    query, key, value, mask = _attention_inputs(batch, heads, kv_heads, length, dim)
    got = attention_kernel.decode_attention(kernel, query, key, value, mask, dim**-0.5)
    expected = cpu_inference._small_decode_attention(query, key, value, mask, dim**-0.5)
    assert got.shape == (batch, 1, heads, dim)
    assert bf16_close(got, expected, ulps=4), (got.float() - expected.float()).abs().max()


@needs_attention
def test_decode_attention_forward_uses_the_kernel_and_falls_back_where_it_cannot(monkeypatch):
    class Module:
        training = False

    query, key, value, mask = _attention_inputs(3, 8, 2, 20, 64)
    used = []
    real = attention_kernel.decode_attention
    monkeypatch.setattr(attention_kernel, "decode_attention", lambda *a: used.append(1) or real(*a))
    with_kernel, _ = decode_attention_forward(Module(), query, key, value, mask)
    assert used
    monkeypatch.setattr(attention_kernel, "decode_attention", lambda *a: None)  # a shape it refuses
    without, _ = decode_attention_forward(Module(), query, key, value, mask)
    assert bf16_close(with_kernel, without, ulps=4)
    # head sizes that are not a multiple of 32 never reach C
    small = _attention_inputs(2, 4, 2, 10, 8)
    assert attention_kernel.decode_attention(cpu_kernels.load("decode_attention_bf16"), *small, 8**-0.5) is None


@needs_sort
def test_sort_gives_torch_sorts_values_and_the_training_loss_uses_it(monkeypatch):
    from autodeco_cli.core import distribution

    kernel = cpu_kernels.load("sort_descending_f32")
    generator = torch.Generator().manual_seed(3)
    values = torch.randn(4, 3, 4099, generator=generator) * 40
    values[0, 0, :6] = torch.tensor([float("inf"), float("-inf"), 0.0, -0.0, -1.5, -1.5])
    values[1, 2, ::2] = 7.25  # half the row tied
    expected = torch.sort(values, dim=-1, descending=True).values
    assert torch.equal(cpu_kernels.sort_descending(kernel, values), expected)
    used = []
    monkeypatch.setattr(cpu_kernels, "sort_descending", lambda k, v: used.append(v.shape) or expected)
    distribution.sorted_values_descending(values)
    assert used == [values.shape]
    distribution.sorted_values_descending(values.double())  # other dtypes keep numpy's sort
    assert len(used) == 1


@pytest.fixture
def fresh_kernels(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTODECO_CACHE_DIR", str(tmp_path / "cache"))
    cpu_kernels.load.cache_clear()
    yield tmp_path / "cache" / "kernels"
    cpu_kernels.load.cache_clear()


def test_kernels_off_by_environment(monkeypatch, fresh_kernels):
    monkeypatch.setenv("AUTODECO_CPU_KERNEL", "0")
    assert cpu_kernels.load("gemv_bf16") is None
    assert cpu_kernels.load("amx_matmul_bf16") is None
    assert not fresh_kernels.exists()


def test_a_failing_compiler_means_torch_paths_not_an_error(monkeypatch, fresh_kernels):
    monkeypatch.setenv("CC", "false")
    assert cpu_kernels.load("gemv_bf16") is None
    monkeypatch.setenv("CC", "/no/such/compiler")
    cpu_kernels.load.cache_clear()
    assert cpu_kernels.load("decode_attention_bf16") is None


@needs_gemv
def test_a_kernel_is_compiled_once_per_source(fresh_kernels):
    assert cpu_kernels.load("gemv_bf16") is not None
    built = list(fresh_kernels.glob("gemv_bf16-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    cpu_kernels.load.cache_clear()
    assert cpu_kernels.load("gemv_bf16") is not None
    assert [p.stat().st_mtime_ns for p in fresh_kernels.glob("gemv_bf16-*.so")] == [stamp]


def test_a_kernel_source_carries_the_headers_it_includes():
    """The compiler gets one file: the kernels' own headers are written into it, so a kernel's cache key (the hash
    of that file) changes with them too."""
    for name in kernel_build.NEEDS:
        assert '#include "' not in kernel_build.kernel_source(name), name
    shared = "#define REDUCE16(NAME, OP)"  # reduce16.h, included by both
    assert shared in kernel_build.kernel_source("learned_step_f32")
    assert shared in kernel_build.kernel_source("decode_attention_bf16")


def test_kernels_load_wherever_they_can_run():
    """With a C compiler, every kernel this CPU's flags allow must build and pass its check against torch
    (otherwise the tests above would silently skip a broken kernel): the learned step and the heads' step on
    AVX-512 or AVX2 with FMA, the bf16 kernels on AVX512-BF16, the AMX ones on AMX, the sort and the float32 small ops
    everywhere."""
    import os
    import shutil

    if not shutil.which(os.environ.get("CC", "cc")):
        pytest.skip("no C compiler here: the torch paths are used")
    flags = cpu_features.cpu_flags()
    assert cpu_kernels.load("sort_descending_f32") is not None
    assert cpu_kernels.load("decode_ops_f32") is not None  # its bitwise check against torch's float32 ops passed
    if {"avx512f"} <= flags or {"avx2", "fma"} <= flags:
        assert learned_kernels.learned_step() is not None  # features within tolerance of torch's, cut exact
        assert learned_kernels.heads_step() is not None  # close to the heads' forward and batch-invariant
    if "avx512_bf16" in flags:
        assert cpu_kernels.load("gemv_bf16") is not None
        assert cpu_kernels.load("decode_attention_bf16") is not None
        assert cpu_kernels.load("decode_ops_bf16") is not None  # its bitwise check against torch's ops passed
    if "amx_bf16" in flags:  # the AMX matmul and the layers in one call it makes possible
        assert cpu_kernels.load("amx_matmul_bf16") is not None
        assert cpu_kernels.load("decode_layers_bf16") is not None


def test_a_kernel_that_needs_nothing_of_the_cpu_is_built_without_avx512():
    """Built with AVX-512 flags, the sort's compiled loops used zmm registers, and its load check would have
    stopped the process on an AVX2-only CPU; a kernel is built with AVX-512 flags only for a level that needs
    AVX-512, and the lanes16.h kernels for AVX2 and FMA on a CPU with no more."""
    for name, levels in kernel_build.NEEDS.items():
        for level in levels:
            flags = kernel_build.build_flags(name, level)
            avx512 = [f for f in flags if f.startswith("-mavx512")]
            assert bool(avx512) == any(f.startswith(("avx512", "amx")) for f in level), (name, level)
            assert ("-mavx2" in flags) == (level == kernel_build.AVX2), (name, level)
    assert kernel_build.NEEDS["sort_descending_f32"] == ((),)
    avx2_only = {"avx", "avx2", "fma", "sse4_2"}
    assert kernel_build.level_for("learned_step_f32", avx2_only) == kernel_build.AVX2
    assert kernel_build.level_for("learned_step_f32", avx2_only | {"avx512f"}) == ("avx512f",)
    assert kernel_build.level_for("heads_step_f32", {"avx2"}) is None  # AVX2 without FMA: not built
    assert kernel_build.level_for("gemv_bf16", avx2_only) is None
