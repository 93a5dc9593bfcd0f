"""lanes16.h, the sixteen lanes the learned-step and heads' kernels are written on, against the documented meaning of
the AVX-512 intrinsic each name stands for: built for AVX2 with FMA (a pair of AVX2 registers) wherever this CPU has
them, and for AVX-512 (the intrinsics themselves) where it has that, so on an AVX-512 CPU both builds are held to the
same expectations. Inputs hold NaN, ±0, ±inf and values whose sums round, so a lane moved or summed out of order
shows."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from importlib import resources

import pytest
import torch

from autodeco_cli.core import cpu_features, kernel_build

HARNESS = r"""
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include "lanes16.h"
#include "reduce16.h"

REDUCE16(max16_tree, v16_max)

float lanes_reduce_add(const float *x) { return v16_reduce_add(v16_load(x)); }

/* shuffle_f32x4 and shuffle_ps of (a, b) at the four immediates reduce16.h uses: out [8][16] */
void lanes_shuffles(const float *a, const float *b, float *out) {
  f32x16 x = v16_load(a), y = v16_load(b);
  v16_store(out + 0, v16_shuffle_f32x4(x, y, 0x44));
  v16_store(out + 16, v16_shuffle_f32x4(x, y, 0xEE));
  v16_store(out + 32, v16_shuffle_f32x4(x, y, 0x88));
  v16_store(out + 48, v16_shuffle_f32x4(x, y, 0xDD));
  v16_store(out + 64, v16_shuffle_ps(x, y, 0x44));
  v16_store(out + 80, v16_shuffle_ps(x, y, 0xEE));
  v16_store(out + 96, v16_shuffle_ps(x, y, 0x88));
  v16_store(out + 112, v16_shuffle_ps(x, y, 0xDD));
}

void lanes_permute(const int32_t *index, const float *v, float *out) {
  i32x16 i = i16_setr(index[0], index[1], index[2], index[3], index[4], index[5], index[6], index[7], index[8],
                      index[9], index[10], index[11], index[12], index[13], index[14], index[15]);
  v16_store(out, v16_permute(i, v16_load(v)));
}

/* out: maskz_load(m, a) [16], mask_mov(a, m, b) [16], a's lanes of m compressed [16, the rest left as given];
 * ints: the compressed int lanes i * 3 + 1 [16], then the GT, GE, UNORD masks of (a, b) */
void lanes_masked(const float *a, const float *b, unsigned m, float *out, int32_t *ints) {
  mask16 k = (mask16)m;
  v16_store(out, v16_maskz_load(k, a));
  v16_store(out + 16, v16_mask_mov(v16_load(a), k, v16_load(b)));
  v16_compress_store(out + 32, k, v16_load(a));
  i32x16 i = i16_add(i16_mullo(i16_setr(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), i16_set1(3)),
                     i16_set1(1));
  i16_compress_store(ints, k, i);
  ints[16] = v16_cmp(v16_load(a), v16_load(b), _CMP_GT_OQ);
  ints[17] = v16_cmp(v16_load(a), v16_load(b), _CMP_GE_OQ);
  ints[18] = v16_cmp(v16_load(a), v16_load(b), _CMP_UNORD_Q);
}

/* fmadd, mul, add, max of (a, b, c) lane-wise; then 16 bf16 widened: out [5][16] */
void lanes_arithmetic(const float *a, const float *b, const float *c, const uint16_t *bf16, float *out) {
  f32x16 x = v16_load(a), y = v16_load(b), z = v16_load(c);
  v16_store(out, v16_fmadd(x, y, z));
  v16_store(out + 16, v16_mul(x, y));
  v16_store(out + 32, v16_add(v16_add(x, v16_zero()), y));
  v16_store(out + 48, v16_max(x, v16_set1(0.5f)));
  v16_store(out + 64, v16_from_bf16(bf16));
}

/* the max of each of 16 vectors (v: [16][16]), by reduce16.h's tree */
void lanes_max16(const float *v, float *out) {
  f32x16 rows[16];
  for (int j = 0; j < 16; j++) rows[j] = v16_load(v + 16 * j);
  v16_store(out, max16_tree(rows));
}
"""
LEVELS = {"avx2": (("avx2", "fma"), ("-mavx2", "-mfma")), "avx512": (("avx512f",), ("-mavx512f", "-mavx512bw"))}
F = ctypes.c_void_p


@pytest.fixture(params=list(LEVELS), scope="module")
def lanes(request, tmp_path_factory):
    needs, flags = LEVELS[request.param]
    compiler = os.environ.get("CC", "cc")
    if not set(needs) <= cpu_features.cpu_flags() or not shutil.which(compiler):
        pytest.skip(f"no {request.param} or no C compiler here")
    folder = tmp_path_factory.mktemp(request.param)
    source = folder / "harness.c"
    source.write_text(HARNESS)
    kernels = resources.files("autodeco_cli") / "assets" / "kernels"
    for header in ("lanes16.h", "reduce16.h"):
        (folder / header).write_text((kernels / header).read_text())
    built = folder / "harness.so"
    subprocess.run([compiler, "-O2", "-shared", "-fPIC", *flags, str(source), "-o", str(built)], check=True)
    library = ctypes.CDLL(str(built))
    library.lanes_reduce_add.restype = ctypes.c_float
    library.lanes_masked.argtypes = [F, F, ctypes.c_uint, F, F]
    return library


def _vector(gen: torch.Generator) -> torch.Tensor:
    v = (torch.randn(16, generator=gen) * torch.logspace(-4, 4, 16)).float()
    v[3], v[7], v[11], v[12] = float("nan"), -0.0, float("inf"), float("-inf")
    return v


def _p(tensor: torch.Tensor):
    return ctypes.c_void_p(tensor.data_ptr())


def _tree_sum(x: torch.Tensor) -> float:
    """gcc's _mm512_reduce_add_ps in float32: the halves, the quarters, lanes 2-3 onto 0-1, lane 1 onto 0."""
    half = x[8:] + x[:8]
    quarter = half[4:] + half[:4]
    pairs = quarter + quarter[[2, 3, 0, 1]]
    return (pairs[0] + pairs[1]).item()


def test_the_horizontal_sum_is_gccs_tree(lanes):
    gen = torch.Generator().manual_seed(0)
    vectors = [
        (torch.randn(16, generator=gen) * torch.logspace(-3, 5, 16)[torch.randperm(16, generator=gen)]).float()
        for _ in range(20)
    ]
    # each 1 added to 2^25 alone rounds away, so this sum tells the tree from a left-to-right order
    vectors.append(torch.tensor([2.0**25] + [1.0] * 15))
    left_to_right = torch.tensor(0.0)
    for value in vectors[-1]:
        left_to_right = left_to_right + value
    assert _tree_sum(vectors[-1]) != left_to_right.item()
    for x in vectors:
        assert lanes.lanes_reduce_add(_p(x)) == _tree_sum(x)  # bit for bit


def test_shuffles_and_permute_move_the_lanes_as_documented(lanes):
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(16, generator=gen), torch.randn(16, generator=gen)
    out = torch.empty(8, 16)
    lanes.lanes_shuffles(_p(a), _p(b), _p(out))
    for row, imm in enumerate((0x44, 0xEE, 0x88, 0xDD)):
        picks = (imm & 3, imm >> 2 & 3, imm >> 4 & 3, imm >> 6 & 3)
        sources = (a.view(4, 4), a.view(4, 4), b.view(4, 4), b.view(4, 4))  # 128-bit quarters, 4 lanes each
        quarters = [source[pick] for source, pick in zip(sources, picks)]
        assert torch.equal(out[row], torch.cat(quarters)), f"shuffle_f32x4 {imm:#x}"
        within = [torch.stack([source[q, pick] for source, pick in zip(sources, picks)]) for q in range(4)]
        assert torch.equal(out[4 + row], torch.cat(within)), f"shuffle_ps {imm:#x}"
    index = torch.randperm(16, generator=gen).int()
    index[5] = index[9]  # a lane read twice
    got = torch.empty(16)
    lanes.lanes_permute(_p(index), _p(a), _p(got))
    assert torch.equal(got, a[index.long()])


@pytest.mark.parametrize("mask", [0x0000, 0xFFFF, 0x00FF, 0xFF00, 0x8001, 0x5A3C, 0x0100])
def test_masked_loads_moves_compresses_and_compares(lanes, mask):
    gen = torch.Generator().manual_seed(mask)
    a, b = _vector(gen), _vector(gen)
    b[0], b[1] = a[0], float("nan")  # equal lanes, and NaN on one side only
    out = torch.full((48,), 7.0)
    ints = torch.full((19,), -1, dtype=torch.int32)
    lanes.lanes_masked(_p(a), _p(b), mask, _p(out), _p(ints))
    bits = torch.tensor([mask >> j & 1 for j in range(16)], dtype=torch.bool)
    same = lambda x, y: torch.equal(x.nan_to_num(nan=123.0), y.nan_to_num(nan=123.0))  # noqa: E731
    assert same(out[:16], torch.where(bits, a, torch.zeros(16)))
    assert same(out[16:32], torch.where(bits, b, a))
    kept = int(bits.sum())
    assert same(out[32 : 32 + kept], a[bits])
    assert torch.equal(out[32 + kept :], torch.full((16 - kept,), 7.0))  # nothing past the kept lanes written
    assert torch.equal(ints[:kept], (torch.arange(16, dtype=torch.int32) * 3 + 1)[bits])
    as_mask = lambda flags: sum(1 << j for j, flag in enumerate(flags.tolist()) if flag)  # noqa: E731
    assert ints[16].item() == as_mask(a > b)  # ordered: false where either is NaN
    assert ints[17].item() == as_mask(a >= b)
    assert ints[18].item() == as_mask(a.isnan() | b.isnan())


def test_arithmetic_is_lane_wise_ieee_and_bf16_widens_exactly(lanes):
    gen = torch.Generator().manual_seed(2)
    a, b, c = (torch.randn(16, generator=gen) * 1e3 for _ in range(3))
    bf16 = torch.randn(16, generator=gen).bfloat16()
    out = torch.empty(5, 16)
    lanes.lanes_arithmetic(_p(a), _p(b), _p(c), _p(bf16), _p(out))
    fused = (a.double() * b.double() + c.double()).float()  # one rounding: exact for float32 inputs
    assert torch.equal(out[0], fused)
    assert torch.equal(out[1], a * b)
    assert torch.equal(out[2], a + b)
    assert torch.equal(out[3], torch.maximum(a, torch.tensor(0.5)))
    assert torch.equal(out[4], bf16.float())


def test_reduce16s_tree_gives_each_vectors_max(lanes):
    gen = torch.Generator().manual_seed(3)
    v = torch.randn(16, 16, generator=gen)
    out = torch.empty(16)
    lanes.lanes_max16(_p(v), _p(out))
    # the tree leaves vector k + 4m's max in lane 4k + m (reduce16.h)
    expected = torch.empty(16)
    for k in range(4):
        for m in range(4):
            expected[4 * k + m] = v[k + 4 * m].max()
    assert torch.equal(out, expected)


def test_the_kernels_written_on_it_build_for_either_level():
    for name in ("learned_step_f32", "heads_step_f32"):
        assert kernel_build.NEEDS[name] == (("avx512f",), kernel_build.AVX2)
        assert '#include "' not in kernel_build.kernel_source(name)
        assert "typedef struct {\n  __m256 lo, hi;\n} f32x16;" in kernel_build.kernel_source(name)
