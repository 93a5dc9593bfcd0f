"""Our C kernels for decode steps on x86 CPUs, built on first use: each loaded and checked against torch (`load`),
and the model body's kernels wrapped. The bf16 body's kernels need AVX512-BF16; the learned step and the heads' step
build for AVX-512 or for AVX2 with FMA, the float32 small ops for any x86-64 (`kernel_build.NEEDS`).

* `amx_matmul`: any number of rows times a linear weight packed into AMX tiles, on CPUs with
  AMX-BF16. On a 2-vCPU Xeon, all the default model's linears at 2 threads: 1.2x `gemv` at one
  row, 1.9x at 6, 1.5x oneDNN's AMX brg_matmul at 8-32 rows, 1.16x at 512; at 1 thread oneDNN
  wins from ~256 rows (prompts only; reports/engine-speed.md, "Our own AMX matmul").
* `gemv`: 1-6 rows times a linear weight (where AMX is not). At one row a decode step only streams the weights,
  and oneDNN's bf16 kernels read them at about half this CPU's sequential read rate (one core
  of a 2-core AVX512-BF16 EPYC: all of the default model's linear weights at one row, 21-24 ms
  through oneDNN's prepacked layout, 11-12 ms here with the weights in huge pages).
* `decode_attention_bf16`: one query position per row, grouped-query heads (torch: two batched
  matmuls, a softmax and copies per layer, ~0.33 ms at 32 rows x 100 tokens; called through
  `attention_kernel`).
* `decode_ops_bf16`: a bf16 decode layer's small ops, one call each where torch ran 5-15 ops
  (`add_rms_norm`, `rope_append`, `silu_mul`), giving torch's bits (engine/lean_kernels.py).
* `decode_ops_f32`: the float32 lean step's RMSNorm with the residual add before it (`add_rms_norm`) and the rotation
  of queries and keys (`rope_f32`), one call each where torch ran 8 and ~8 ops, giving torch's bits; torch keeps the
  float32 linears and attention (engine/lean_decode.py).
* `decode_layers`: a bf16 decode step's layers as one call of the kernels above (AMX linears), in
  the order and with the arguments engine/lean_kernels.py would call them from Python.
* `sort_descending`: rows of float32 sorted descending, values only (a radix sort), for the
  soft top-p training loss; numpy's sort took ~1 ms per 49k-token row here.
* `learned_step_f32` and `heads_step_f32`: a learned decoding step's vocabulary-wide work and the heads' step;
  their wrappers and checks are `learned_kernels`' (which registers those checks here in CHECKS).

Each is compiled once (`kernel_build`) and loaded with ctypes. Without a compiler, without the CPU
features a kernel needs (`kernel_build.NEEDS`; AMX also needs Linux's permission for its tile state), or with
AUTODECO_CPU_KERNEL=0, `load(...)` is None and the callers keep torch's path: the kernels are a
speed-up, never a requirement, and each is checked against torch before it is used.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import subprocess
from typing import Callable

import torch

from .attention_kernel import attention_agrees_with_torch
from .kernel_build import build, kernel_source, level_for

GEMV_MAX_ROWS = 6  # the kernel takes up to 8, but from 7-8 rows on oneDNN was as fast (1 thread: 24 vs 31 ms at 8)
_P, _L, _F = ctypes.c_void_p, ctypes.c_long, ctypes.c_float
SIGNATURES = {
    "amx_matmul_bf16": [_P, _P, _P, _P, _L, _L, _L],
    "gemv_bf16": [_P, _P, _P, _L, _L, _L],
    "decode_attention_bf16": [_P, _P, _P, _P, _P, _L, _L, _L, _L, _L, _L, _L, _L, _F],
    "decode_ops_bf16": [_P, _P, _P, _P, _L, _L, _F, _L],
    "decode_ops_f32": [_P, _P, _P, _P, _L, _L, _F, _L],
    "sort_descending_f32": [_P, _P, _L, _L],
    "learned_step_f32": [_L, _P, _P, _P, _P, _L, _L, _L, _P],
    "heads_step_f32": [_P, _L, _P, _P, _L, _P, _F, _P, _P, _P, _P, _P, _P, _F, _P, _P, _P, _P, _P, _L, _L, _L],
    "decode_layers_bf16": [_P, _P, _P, _P, _P, _L, _P, _P, _P, _P, _P, _P, _P, _F, _P],
}
# the further functions a kernel's library exports (each returns a C long), by their argument types
HELPERS = {
    "amx_matmul_bf16": {
        "amx_bf16_init": [],
        "amx_packed_elems": [_L, _L],
        "amx_pack_bf16": [_P, _P, _L, _L],
        "amx_matmul_f32": [_P, _P, _P, _L, _L, _L],
    },
    "decode_ops_bf16": {
        "rope_append": [_P, _P, _P, _L, _L, _P, _P, _L, _P, _P, _P, _L, _L, _L, _L, _L, _L],
        "silu_mul": [_P, _P, _L, _P, _P, _L, _L],
    },
    "decode_ops_f32": {"rope_f32": [_P, _P, _P, _L, _L, _P, _P, _L, _P, _P, _P, _L, _L, _L, _L, _L, _L]},
    "decode_layers_bf16": {"decode_layers_scratch": [_P]},
    "learned_step_f32": {"widen_bf16": [_P, _P, _P, _L, _L], "nucleus_f32": [_P, _P, _P, _P, _P, _P, _L, _L, _L]},
}
# the helper that must return 0 before a kernel runs: AMX tiles need the process's permission
PREPARE = {"amx_matmul_bf16": "amx_bf16_init"}


@functools.lru_cache(maxsize=None)
def load(name: str) -> Callable | None:
    """Kernel `name` (a key of SIGNATURES), or None where it cannot or should not run (see the
    module doc)."""
    if name not in CHECKS:  # a wrapper module registers its kernels' checks when imported
        raise LookupError(f"no check against torch for kernel {name}: load it through its module (ARCHITECTURE.md)")
    library = _library(name)
    if library is None:
        return None
    _LIBRARIES[name] = library
    function = getattr(library, f"autodeco_{name}")
    function.argtypes, function.restype = SIGNATURES[name], ctypes.c_int
    return function if CHECKS[name](function) else None


# the libraries `load` opened, for their helpers
_LIBRARIES: dict[str, ctypes.CDLL] = {}


def _library(name: str) -> ctypes.CDLL | None:
    """Kernel `name`'s built library with its helpers' types set and its preparation done."""
    from .cpu_features import cpu_flags

    if os.environ.get("AUTODECO_CPU_KERNEL", "1") == "0":
        return None
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    level = level_for(name, cpu_flags())
    if level is None:
        return None
    try:
        library = ctypes.CDLL(str(build(name, kernel_source(name), level)))
        getattr(library, f"autodeco_{name}")
        for further, argtypes in HELPERS.get(name, {}).items():
            function = getattr(library, f"autodeco_{further}")
            function.argtypes, function.restype = argtypes, ctypes.c_long
    except (OSError, subprocess.SubprocessError, AttributeError):
        return None
    if name in PREPARE and getattr(library, f"autodeco_{PREPARE[name]}")() != 0:
        return None
    return library


def helper(name: str, function: str) -> Callable:
    """A further function of kernel `name`'s library (which `load(name)` has returned)."""
    return getattr(_LIBRARIES[name], f"autodeco_{function}")


# ---- AMX matmul ------------------------------------------------------------------------------


def amx_packed_size(out_features: int, in_features: int) -> int:
    """How many bf16 values a [out_features, in_features] weight takes in the AMX tile layout
    (padded to whole tiles of 16 outputs x 32 inputs)."""
    return helper("amx_matmul_bf16", "amx_packed_elems")(in_features, out_features)


def amx_pack(weight: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Write contiguous bf16 `weight` [O, I] into `out` (contiguous bf16, `amx_packed_size`
    values) in the AMX tile layout; returns `out`."""
    if out.numel() != amx_packed_size(*weight.shape) or not (weight.is_contiguous() and out.is_contiguous()):
        raise ValueError("amx_pack takes a contiguous weight and an output of amx_packed_size values")
    helper("amx_matmul_bf16", "amx_pack_bf16")(weight.data_ptr(), out.data_ptr(), weight.shape[1], weight.shape[0])
    return out


def amx_matmul(
    kernel: Callable, x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, out_features: int
) -> torch.Tensor:
    """`x @ weight.T + bias` for bf16 `x` [..., I], the weight as `amx_pack` laid it out, `bias`
    None or contiguous bf16 [out_features]. (No reshapes: a decode step makes ~200 of these calls,
    and each microsecond of Python here is ~1% of a step's linears.)"""
    if not x.is_contiguous():
        x = x.contiguous()
    shape = x.shape
    out = x.new_empty((*shape[:-1], out_features))
    bias_pointer = None if bias is None else bias.data_ptr()
    rows = x.numel() // shape[-1]
    if kernel(x.data_ptr(), packed.data_ptr(), bias_pointer, out.data_ptr(), rows, shape[-1], out_features):
        raise MemoryError("the AMX matmul kernel could not allocate its padded input")
    return out


def _amx_agrees_with_torch(kernel: Callable) -> bool:
    """Odd sizes (a tail past the last whole tile each way), with and without a bias, at row
    counts that fill one, two and several tiles, against fp32 torch."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(37, 70, generator=generator).to(torch.bfloat16)
    bias = torch.randn(37, generator=generator).to(torch.bfloat16)
    packed = amx_pack(weight, torch.empty(amx_packed_size(37, 70), dtype=torch.bfloat16))
    for rows, with_bias in ((1, False), (7, True), (32, False), (45, True), (200, False)):
        x = torch.randn(rows, 70, generator=generator).to(torch.bfloat16)
        expected = x.float() @ weight.float().T + (bias.float() if with_bias else 0)
        got = amx_matmul(kernel, x, packed, bias if with_bias else None, 37)
        if not torch.allclose(got.float(), expected.to(torch.bfloat16).float(), rtol=1e-2, atol=1e-2):
            return False
    return True


# ---- gemv ------------------------------------------------------------------------------------


def gemv(kernel: Callable, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`x @ weight.T` for `x` [..., I] with at most 8 rows, `weight` [O, I] contiguous bf16."""
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    out = torch.empty((rows.shape[0], weight.shape[0]), dtype=torch.bfloat16)
    if kernel(rows.data_ptr(), weight.data_ptr(), out.data_ptr(), rows.shape[0], rows.shape[1], weight.shape[0]):
        raise ValueError(f"the bf16 gemv kernel takes 1 to 8 rows, got {rows.shape[0]}")
    return out.reshape(*x.shape[:-1], weight.shape[0])


def _gemv_agrees_with_torch(kernel: Callable) -> bool:
    """One product per row count (odd sizes, a tail past the last 32 columns) against fp32 torch."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(37, 70, generator=generator).to(torch.bfloat16)
    for rows in range(1, 9):
        x = torch.randn(rows, 70, generator=generator).to(torch.bfloat16)
        expected = (x.float() @ weight.float().T).to(torch.bfloat16).float()
        if not torch.allclose(gemv(kernel, x, weight).float(), expected, rtol=1e-2, atol=1e-2):
            return False
    return True


# ---- a decode layer's small ops ---------------------------------------------------------------

# how many fp32 lanes torch's float sum accumulates in (8: its AVX2 kernel; found by the load check)
_sum_lanes = [0]
# torch's SiLU of every bf16 value, as fp32, indexed by the bf16 bit pattern, [2, 65536]: computed with
# subnormals kept, then flushed, since the engine turns flushing on at model load, possibly after this
# kernel loaded, and the kernel reads the row of the mode in force (built by the load check)
_silu_table: list[torch.Tensor] = []


def add_rms_norm(
    kernel: Callable, hidden: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> torch.Tensor:
    """`decoder_ops.rms_norm(weight, eps, hidden + delta)`, bit for bit, with `hidden` overwritten by
    the sum (the residual stream): contiguous [..., n], bf16 for `decode_ops_bf16`, float32 for `decode_ops_f32`;
    `delta` None for no add."""
    normed = torch.empty_like(hidden)
    delta_pointer = None if delta is None else delta.data_ptr()
    n = hidden.shape[-1]
    if kernel(
        hidden.data_ptr(),
        delta_pointer,
        weight.data_ptr(),
        normed.data_ptr(),
        hidden.numel() // n,
        n,
        eps,
        _sum_lanes[0],
    ):
        raise ValueError(f"the RMSNorm kernel takes rows of at most 16384 values, got {n}")
    return normed


def rope_append(
    q: torch.Tensor,
    k: torch.Tensor | None,
    v: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    heads: int,
) -> torch.Tensor:
    """Queries and keys rotated as `decoder_ops.rotate` rotates them, bit for bit: returns the
    queries [B, heads, D]; writes the keys and `v` into the last column of the cache views `keys`
    and `values` [B, KVH, L, D] (the same strides, unit last two). `q` [B, 1, heads * D], `k` and
    `v` [B, 1, KVH * D], contiguous bf16; or `q` [B, 1, (heads + 2 KVH) * D] holding all three
    side by side (rows contiguous), with `k` and `v` None. `cos`, `sin` [B, 1, D] (rows contiguous)."""
    batch, kv_heads, length, dim = keys.shape
    base = q.data_ptr()
    if k is None:
        pointers, strides = (base, base + 2 * heads * dim, base + 2 * (heads + kv_heads) * dim), (q.stride(0),) * 2
    else:
        pointers, strides = (base, k.data_ptr(), v.data_ptr()), (q.stride(0), k.stride(0))
    out = q.new_empty((batch, heads, dim))
    column = (length - 1) * keys.stride(2) * 2
    helper("decode_ops_bf16", "rope_append")(
        *pointers, *strides, cos.data_ptr(), sin.data_ptr(), cos.stride(0), out.data_ptr(), keys.data_ptr() + column,
        values.data_ptr() + column, batch, heads, kv_heads, dim, keys.stride(0), keys.stride(1),
    )  # fmt: skip
    return out


def silu_mul(gate: torch.Tensor, up: torch.Tensor | None) -> torch.Tensor:
    """`F.silu(gate) * up` bit for bit, for contiguous bf16 tensors [..., n] of one shape; or
    `gate` [..., 2n] holding gate and up side by side (rows contiguous), with `up` None."""
    if up is None:
        n = gate.shape[-1] // 2
        rows, up_pointer = gate.numel() // (2 * n), gate.data_ptr() + 2 * n
    else:
        n = gate.shape[-1]
        rows, up_pointer = gate.numel() // n, up.data_ptr()
    out = torch.empty((*gate.shape[:-1], n), dtype=gate.dtype)
    helper("decode_ops_bf16", "silu_mul")(
        gate.data_ptr(), up_pointer, n if up is not None else 2 * n, _silu_table[0].data_ptr(), out.data_ptr(), rows, n
    )
    return out


def _decode_ops_agree_with_torch(kernel: Callable) -> bool:
    """Bit for bit against decoder_ops' torch ops, on rows whose sums take every branch of the
    cascade (short, tailed, long), at 1 and several rows. Finds the lane count torch sums in."""
    from .decoder_ops import rotate

    generator = torch.Generator().manual_seed(0)
    _silu_table[:] = [_silu_tables()]
    gate, up = (torch.randn(3, 1, 200, generator=generator).to(torch.bfloat16) * 4 for _ in range(2))
    if not torch.equal(silu_mul(gate, up), torch.nn.functional.silu(gate) * up):
        return False
    cases = []
    for rows, n in ((1, 576), (5, 64), (3, 100), (40, 576), (2, 4100)):
        hidden = torch.randn(rows, 1, n, generator=generator) * torch.rand(rows, 1, 1, generator=generator) * 20
        delta = torch.randn(rows, 1, n, generator=generator).to(torch.bfloat16)
        weight = torch.randn(n, generator=generator).to(torch.bfloat16)
        cases.append((hidden.to(torch.bfloat16), delta, weight))
    if not _find_sum_lanes(kernel, cases):
        return False
    batch, heads, kv_heads, dim = 3, 6, 2, 64
    q, k, v = (
        torch.randn(batch, 1, h * dim, generator=generator).to(torch.bfloat16) for h in (heads, kv_heads, kv_heads)
    )
    cos, sin = (torch.randn(batch, 1, dim, generator=generator).to(torch.bfloat16) for _ in range(2))
    keys, values = (torch.zeros(batch + 2, kv_heads, 9, dim, dtype=torch.bfloat16)[:batch, :, :5] for _ in range(2))
    queries = rope_append(q, k, v, cos, sin, keys, values, heads)
    joined = rotate(torch.cat((q, k), dim=-1).view(batch, 1, -1, dim), cos.unsqueeze(2), sin.unsqueeze(2))
    return (
        torch.equal(queries, joined[:, 0, :heads])
        and torch.equal(keys[:, :, -1], joined[:, 0, heads:])
        and torch.equal(values[:, :, -1], v.view(batch, kv_heads, dim))
        and not keys[:, :, :-1].any()
    )


def _silu_tables() -> torch.Tensor:
    """torch's SiLU of every bf16 value with subnormals kept and flushed, restoring the caller's mode and
    threads. On this thread alone: the mode is per thread, and torch's workers keep the one they started with
    (at 2 threads half the flushed table came out unflushed)."""
    every_bf16 = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    flushing = float(torch.tensor([1e-40]) * 1.0) == 0.0  # torch has no getter for the mode
    threads, tables = torch.get_num_threads(), []
    try:
        torch.set_num_threads(1)
        for flush in (False, True):
            torch.set_flush_denormal(flush)
            tables.append(torch.nn.functional.silu(every_bf16).float())
    finally:
        torch.set_flush_denormal(flushing)
        torch.set_num_threads(threads)
    return torch.stack(tables)


def _find_sum_lanes(kernel: Callable, cases) -> bool:
    """Set the lane count torch sums in to the one under which `kernel`'s RMSNorm gives torch's bits on every (hidden,
    delta, weight) case; False, the count left as it was (another kernel's check may have found it), where none does."""
    from .decoder_ops import rms_norm

    found = _sum_lanes[0]
    for lanes in (8, 16):
        _sum_lanes[0] = lanes
        if all(_norm_agrees(kernel, rms_norm, *case) for case in cases):
            return True
    _sum_lanes[0] = found
    return False


def _norm_agrees(kernel, rms_norm, hidden, delta, weight) -> bool:
    alone, summed = hidden.clone(), hidden.clone()
    if not torch.equal(add_rms_norm(kernel, alone, None, weight, 1e-5), rms_norm(weight, 1e-5, hidden)):
        return False
    expected_sum = hidden + delta
    return torch.equal(add_rms_norm(kernel, summed, delta, weight, 1e-6), rms_norm(weight, 1e-6, expected_sum)) and (
        torch.equal(summed, expected_sum)
    )


def rope_f32(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    heads: int,
    cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
):
    """Queries and keys rotated as `decoder_ops.rotate` rotates them, bit for bit: (queries [B, heads, 1, D], keys
    [B, KVH, 1, D]), contiguous. `q` [B, 1, heads * D], `k` [B, 1, KVH * D] and `cos`, `sin` [B, 1, D]: float32, rows
    contiguous. With `cache` = (v, keys, values), the cache views [B, KVH, L, D] (of the same strides, D contiguous),
    the keys and `v` (laid out as `k`) go into their last column instead, and the keys returned are the cache's."""
    batch, dim = q.shape[0], cos.shape[-1]
    kv_heads = k.shape[-1] // dim
    queries = q.new_empty((batch, heads, 1, dim))
    if cache is None:
        keys = k.new_empty((batch, kv_heads, 1, dim))
        v_pointer, k_out, v_out = None, keys.data_ptr(), None
    else:
        v, keys, values = cache
        column = (keys.shape[2] - 1) * keys.stride(2) * keys.element_size()
        v_pointer, k_out, v_out = v.data_ptr(), keys.data_ptr() + column, values.data_ptr() + column
    helper("decode_ops_f32", "rope_f32")(
        q.data_ptr(), k.data_ptr(), v_pointer, q.stride(0), k.stride(0), cos.data_ptr(), sin.data_ptr(),
        cos.stride(0), queries.data_ptr(), k_out, v_out, batch, heads, kv_heads, dim, keys.stride(0), keys.stride(1),
    )  # fmt: skip
    return queries, keys


def _float_ops_agree_with_torch(kernel: Callable) -> bool:
    """Bit for bit against decoder_ops' torch ops in float32, on rows whose sums take every branch of the cascade
    (short, tailed, long) at 1 and several rows, with values down in the subnormals. Finds the lane count torch sums
    in."""
    from .decoder_ops import rotate

    generator = torch.Generator().manual_seed(0)
    cases = []
    for rows, n in ((1, 576), (5, 64), (3, 100), (40, 576), (2, 4100)):
        scale = torch.rand(rows, 1, 1, generator=generator) * 20
        scale[0] = 1e-20  # squares below the normal range
        hidden = torch.randn(rows, 1, n, generator=generator) * scale
        cases.append((hidden, torch.randn(rows, 1, n, generator=generator), torch.randn(n, generator=generator)))
    if not _find_sum_lanes(kernel, cases):
        return False
    batch, heads, kv_heads, dim = 3, 6, 2, 64
    q, k = (torch.randn(batch, 1, h * dim, generator=generator) for h in (heads, kv_heads))
    cos, sin = (torch.randn(batch, 1, dim, generator=generator) for _ in range(2))
    queries, keys = rope_f32(q, k, cos, sin, heads)
    joined = rotate(torch.cat((q, k), dim=-1).view(batch, 1, -1, dim), cos.unsqueeze(2), sin.unsqueeze(2))
    joined = joined.transpose(1, 2)
    v = torch.randn(batch, 1, kv_heads * dim, generator=generator)
    cache_keys, cache_values = (torch.zeros(batch + 2, kv_heads, 9, dim)[:batch, :, :5] for _ in range(2))
    in_cache, _ = rope_f32(q, k, cos, sin, heads, (v, cache_keys, cache_values))
    return (
        torch.equal(queries, joined[:, :heads])
        and torch.equal(keys, joined[:, heads:])
        and torch.equal(in_cache, queries)
        and torch.equal(cache_keys[:, :, -1:], keys)
        and torch.equal(cache_values[:, :, -1], v.view(batch, kv_heads, dim))
        and not cache_keys[:, :, :-1].any()
        and not cache_values[:, :, :-1].any()
    )


# ---- sort -------------------------------------------------------------------------------------


def sort_descending(kernel: Callable, values: torch.Tensor) -> torch.Tensor:
    """Each row of a float32 CPU tensor sorted descending (a new tensor; no gradient)."""
    rows = values.detach().reshape(-1, values.shape[-1]).contiguous()
    out = torch.empty_like(rows)
    if kernel(rows.data_ptr(), out.data_ptr(), rows.shape[0], rows.shape[1]):
        raise MemoryError("the sort kernel could not allocate its scratch rows")
    return out.reshape(values.shape)


def _sort_agrees_with_torch(kernel: Callable) -> bool:
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(5, 3001, generator=generator) * 30
    values[0, :7] = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), 1e-40, -1e-40, 3.0])
    values[1, :100] = 2.5  # ties
    expected = torch.sort(values, dim=-1, descending=True).values
    return torch.equal(sort_descending(kernel, values), expected)


# ---- a decode step's layers ----------------------------------------------------------------------


def decode_layers(kernel: Callable, weights, scalars, caches: list[int], shape, hidden, cos, sin, keep, final_norm):
    """The final norm's output [rows, 1, n] of a bf16 decode step's layers, all in one call
    (decode_layers_bf16.c); `hidden` (the embeddings, [rows, 1, n] contiguous) becomes the residual stream.
    `weights` [layers, 10] int64: each layer's input and post-attention norm weights, then its q|k|v, o,
    gate|up and down weights as `amx_pack` lays them out, each followed by its bias (0: none); `scalars`
    [layers, 3] float32: the two norms' eps and the attention's scaling; `caches`: each layer's 6 numbers
    for this step (its keys' and values' data pointers after `open_column`, their length, their first three
    strides); `shape`: (n, heads, KV heads, head dim, intermediate size); `cos`, `sin` [rows, 1, D]
    contiguous; `keep` the rows' padding as bytes or None; `final_norm` (weight, eps)."""
    sizes = torch.tensor((hidden.shape[0], *shape, _sum_lanes[0], cos.stride(0)), dtype=torch.int64)
    scratch = torch.empty(helper("decode_layers_bf16", "decode_layers_scratch")(sizes.data_ptr()), dtype=torch.bfloat16)
    caches = torch.tensor(caches, dtype=torch.int64)
    normed = torch.empty_like(hidden)
    status = kernel(
        _decode_layer_functions().data_ptr(), weights.data_ptr(), caches.data_ptr(), scalars.data_ptr(),
        sizes.data_ptr(), weights.shape[0], hidden.data_ptr(), normed.data_ptr(), cos.data_ptr(), sin.data_ptr(),
        None if keep is None else keep.data_ptr(), _silu_table[0].data_ptr(), final_norm[0].data_ptr(),
        final_norm[1], scratch.data_ptr(),
    )  # fmt: skip
    if status:
        layer, op = divmod(status - 1, 8)
        if op < 4:
            raise MemoryError(f"the AMX matmul kernel could not allocate its padded input (decoder layer {layer})")
        part = ("an RMSNorm", "the rotation", "the attention")[op - 4]
        raise ValueError(f"{part} kernel refused its inputs at decoder layer {layer}")
    return normed


@functools.lru_cache(maxsize=None)
def _decode_layer_functions() -> torch.Tensor:
    """The functions decode_layers_bf16.c calls, as addresses in its order (the AMX matmul, the RMSNorm,
    the rotation, the attention, SiLU * up)."""
    functions = (load("amx_matmul_bf16"), load("decode_ops_bf16"), helper("decode_ops_bf16", "rope_append"))
    functions += (load("decode_attention_bf16"), helper("decode_ops_bf16", "silu_mul"))
    return torch.tensor([ctypes.cast(f, ctypes.c_void_p).value for f in functions], dtype=torch.int64)


def _decode_layers_have_their_kernels(kernel: Callable) -> bool:
    """The kernels it calls loaded (each checked against torch on its own load); that it calls them as the
    per-call path does is tested bit for bit (tests/test_lean_kernels.py)."""
    return all(load(name) is not None for name in ("amx_matmul_bf16", "decode_ops_bf16", "decode_attention_bf16"))


CHECKS = {
    "amx_matmul_bf16": _amx_agrees_with_torch,
    "gemv_bf16": _gemv_agrees_with_torch,
    "decode_attention_bf16": attention_agrees_with_torch,
    "decode_ops_bf16": _decode_ops_agree_with_torch,
    "decode_ops_f32": _float_ops_agree_with_torch,
    "sort_descending_f32": _sort_agrees_with_torch,
    "decode_layers_bf16": _decode_layers_have_their_kernels,
}
