"""Our C kernels for bf16 decode steps on x86 CPUs with AVX512-BF16, built on first use.

* `amx_matmul`: any number of rows times a linear weight packed into AMX tiles, on CPUs with
  AMX-BF16. On a 2-vCPU Xeon, all the default model's linears at 2 threads: 1.2x `gemv` at one
  row, 1.9x at 6, 1.5x oneDNN's AMX brg_matmul at 8-32 rows, 1.16x at 512; at 1 thread oneDNN
  wins from ~256 rows (prompts only; reports/engine-speed.md, "Our own AMX matmul").
* `gemv`: 1-6 rows times a linear weight (where AMX is not). At one row a decode step only streams the weights,
  and oneDNN's bf16 kernels read them at about half this CPU's sequential read rate (one core
  of a 2-core AVX512-BF16 EPYC: all of the default model's linear weights at one row, 21-24 ms
  through oneDNN's prepacked layout, 11-12 ms here with the weights in huge pages).
* `decode_attention`: one query position per row, grouped-query heads (torch: two batched
  matmuls, a softmax and copies per layer, ~0.33 ms at 32 rows x 100 tokens).
* `sort_descending`: rows of float32 sorted descending, values only (a radix sort), for the
  soft top-p training loss; numpy's sort took ~1 ms per 49k-token row here.
* `learned_step`: the vocabulary-wide work of a learned decoding step on float32 rows (the top-p
  head's features, then the nucleus cut as logits), a few passes per row instead of torch's
  dozen over the whole batch (`core/distribution.py` holds the definitions and dispatches).

The C sources ship in `assets/kernels/`; each is compiled once with the system C compiler into
the autodeco cache and loaded with ctypes. Without a compiler, without the CPU features a kernel
needs (`NEEDS`; AMX also needs Linux's permission for its tile state), or with
AUTODECO_CPU_KERNEL=0, `load(...)` is None and the callers keep torch's path: the kernels are a
speed-up, never a requirement, and each is checked against torch before it is used.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import tempfile
from importlib import resources
from pathlib import Path
from typing import Callable

import torch

GEMV_MAX_ROWS = 6  # the kernel takes up to 8, but from 7-8 rows on oneDNN was as fast (1 thread: 24 vs 31 ms at 8)
FLAGS = ("-O3", "-mavx512f", "-mavx512bw", "-mavx512bf16", "-fopenmp", "-shared", "-fPIC")
EXTRA_FLAGS = {"amx_matmul_bf16": ("-mavx512vl", "-mamx-tile", "-mamx-bf16")}
_P, _L, _F = ctypes.c_void_p, ctypes.c_long, ctypes.c_float
SIGNATURES = {
    "amx_matmul_bf16": [_P, _P, _P, _P, _L, _L, _L],
    "gemv_bf16": [_P, _P, _P, _L, _L, _L],
    "decode_attention_bf16": [_P, _P, _P, _P, _P, _L, _L, _L, _L, _L, _L, _L, _L, _F],
    "sort_descending_f32": [_P, _P, _L, _L],
    "learned_step_f32": [_L, _P, _P, _P, _P, _L, _L, _L],
}
# the further functions a kernel's library exports (each returns a C long), by their argument types
HELPERS = {
    "amx_matmul_bf16": {"amx_bf16_init": [], "amx_packed_elems": [_L, _L], "amx_pack_bf16": [_P, _P, _L, _L]},
}
# the helper that must return 0 before a kernel runs: AMX tiles need the process's permission
PREPARE = {"amx_matmul_bf16": "amx_bf16_init"}
# what each kernel needs of the CPU beyond x86-64
NEEDS = {
    "amx_matmul_bf16": ("amx_bf16", "avx512_bf16"),
    "gemv_bf16": ("avx512_bf16",),
    "decode_attention_bf16": ("avx512_bf16",),
    "sort_descending_f32": (),
    "learned_step_f32": ("avx512f",),  # its loops are vectorised for the -mavx512f it is built with
}


def kernel_source(name: str) -> str:
    return (resources.files("autodeco_cli") / "assets" / "kernels" / f"{name}.c").read_text()


@functools.lru_cache(maxsize=None)
def load(name: str) -> Callable | None:
    """Kernel `name` (a key of SIGNATURES), or None where it cannot or should not run (see the
    module doc)."""
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
    if not set(NEEDS[name]) <= cpu_flags():
        return None
    try:
        library = ctypes.CDLL(str(_build(name, kernel_source(name))))
        getattr(library, f"autodeco_{name}")
        for helper, argtypes in HELPERS.get(name, {}).items():
            function = getattr(library, f"autodeco_{helper}")
            function.argtypes, function.restype = argtypes, ctypes.c_long
    except (OSError, subprocess.SubprocessError, AttributeError):
        return None
    if name in PREPARE and getattr(library, f"autodeco_{PREPARE[name]}")() != 0:
        return None
    return library


def _helper(name: str, helper: str) -> Callable:
    """A further function of kernel `name`'s library (which `load(name)` has returned)."""
    return getattr(_LIBRARIES[name], f"autodeco_{helper}")


def _build(name: str, source: str) -> Path:
    """Compile `source` into the cache, once per source and compiler (the file name hashes both)."""
    from .user_cache import cache_root

    compiler = os.environ.get("CC", "cc")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
    flags = FLAGS + EXTRA_FLAGS.get(name, ())
    digest = hashlib.sha256(f"{source}\0{compiler}\0{version}\0{flags}".encode()).hexdigest()[:16]
    target = cache_root() / "kernels" / f"{name}-{digest}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as folder:
        c_file, built = Path(folder) / f"{name}.c", Path(folder) / f"{name}.so"
        c_file.write_text(source)
        subprocess.run([compiler, *flags, str(c_file), "-o", str(built)], capture_output=True, timeout=120, check=True)
        os.replace(built, target)  # atomic: processes building at once all load a complete file
    return target


# ---- AMX matmul ------------------------------------------------------------------------------


def amx_packed_size(out_features: int, in_features: int) -> int:
    """How many bf16 values a [out_features, in_features] weight takes in the AMX tile layout
    (padded to whole tiles of 16 outputs x 32 inputs)."""
    return _helper("amx_matmul_bf16", "amx_packed_elems")(in_features, out_features)


def amx_pack(weight: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Write contiguous bf16 `weight` [O, I] into `out` (contiguous bf16, `amx_packed_size`
    values) in the AMX tile layout; returns `out`."""
    if out.numel() != amx_packed_size(*weight.shape) or not (weight.is_contiguous() and out.is_contiguous()):
        raise ValueError("amx_pack takes a contiguous weight and an output of amx_packed_size values")
    _helper("amx_matmul_bf16", "amx_pack_bf16")(weight.data_ptr(), out.data_ptr(), weight.shape[1], weight.shape[0])
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


# ---- decode attention ------------------------------------------------------------------------


def decode_attention(
    kernel: Callable, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, scaling
) -> torch.Tensor | None:
    """query [B, H, 1, D], key/value [B, KVH, L, D] (any strides with a unit last one, the same
    for both), mask [B, 1, 1, L] bool (True = attend) or None; returns [B, 1, H, D], or None for
    inputs the kernel does not take."""
    batch, heads, _, dim = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    if key.stride() != value.stride() or key.stride(-1) != 1 or (mask is not None and mask.dtype != torch.bool):
        return None
    q = query.reshape(batch, heads, dim).contiguous()
    keep = None if mask is None else mask.reshape(batch, length).to(torch.uint8).contiguous()
    out = torch.empty((batch, 1, heads, dim), dtype=torch.bfloat16)
    status = kernel(
        q.data_ptr(),
        key.data_ptr(),
        value.data_ptr(),
        None if keep is None else keep.data_ptr(),
        out.data_ptr(),
        batch,
        heads,
        kv_heads,
        length,
        dim,
        key.stride(0),
        key.stride(1),
        key.stride(2),
        float(scaling),
    )
    return None if status else out


def _attention_agrees_with_torch(kernel: Callable) -> bool:
    """A masked, grouped, strided case against fp32 torch with the same bf16 roundings."""
    generator = torch.Generator().manual_seed(0)
    batch, heads, kv_heads, length, dim = 3, 6, 2, 11, 64
    query = torch.randn(batch, heads, 1, dim, generator=generator).to(torch.bfloat16)
    buffer = torch.randn(batch, kv_heads, length + 5, dim, generator=generator).to(torch.bfloat16)
    key, value = buffer[:, :, :length], (buffer * 0.5)[:, :, :length]  # views with room after them
    mask = torch.ones(batch, 1, 1, length, dtype=torch.bool)
    mask[1, ..., :4] = False
    got = decode_attention(kernel, query, key, value, mask, dim**-0.5)
    if got is None:
        return False
    grouped = query.reshape(batch, kv_heads, heads // kv_heads, dim).float()
    scores = (grouped @ key.float().transpose(-1, -2)).to(torch.bfloat16).float() * dim**-0.5
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1).to(torch.bfloat16).float()
    expected = (weights @ value.float()).reshape(batch, 1, heads, dim)
    return torch.allclose(got.float(), expected, rtol=2e-2, atol=2e-2)


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


# ---- learned step ---------------------------------------------------------------------------

_FEATURES, _CUT, _PROBS = 0, 1, 2


class NotFinite(ValueError):
    """A row with NaN or +inf logits, or none finite: the caller takes torch's path instead."""


def _learned_step(kernel: Callable, mode: int, rows: torch.Tensor, temperature, top_p, width: int, candidates=0):
    out = torch.empty((rows.shape[0], width), dtype=torch.float32)
    status = kernel(
        mode,
        rows.data_ptr(),
        temperature.data_ptr(),
        0 if top_p is None else top_p.data_ptr(),
        out.data_ptr(),
        rows.shape[0],
        rows.shape[1],
        candidates,
    )
    if status == -1:
        raise MemoryError("the learned-step kernel could not allocate its scratch rows")
    if status:
        raise NotFinite("a row of logits holds NaN or +inf, or no finite value")
    return out


def learned_features(kernel: Callable, rows: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """`distribution_features` of contiguous float32 `rows` [R, V] at `temperature` [R] or [R, 1]
    (contiguous, already clamped): [R, 4]."""
    return _learned_step(kernel, _FEATURES, rows, temperature, None, 4)


def learned_cut(
    kernel: Callable, rows: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, candidates: int
) -> torch.Tensor:
    """rows / temperature with the hard nucleus at `top_p` [R] kept and -inf elsewhere: [R, V]."""
    return _learned_step(kernel, _CUT, rows, temperature, top_p, rows.shape[1], candidates)


def learned_probs(kernel: Callable, rows: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """The softmax the kernel cuts from (its exp is not torch's to the last bit): for tests."""
    return _learned_step(kernel, _PROBS, rows, temperature, None, rows.shape[1])


def _learned_step_agrees_with_torch(kernel: Callable) -> bool:
    """Features and probabilities close to torch's, and the cut equal to a stable full sort's over
    the kernel's own probabilities, on rows whose nuclei stay inside 8 candidates or reach past."""
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(6, 3001, generator=generator) * torch.tensor([[0.3], [1.0], [3.0], [8.0], [1.0], [2.0]])
    rows[4, 100:400] = 2.5  # ties at the cutoff
    rows[5, :50] = float("-inf")
    temperature = torch.tensor([0.5, 1.0, 1.3, 0.01, 1.0, 0.7])
    top_p = torch.tensor([0.9, 0.5, 0.99, 0.3, 0.2, 1.0])
    probs = torch.softmax(rows / temperature[:, None], dim=-1)
    got = learned_probs(kernel, rows, temperature)
    if not torch.allclose(got, probs, rtol=1e-5, atol=1e-12):
        return False
    expected = torch.stack(
        [
            probs.amax(-1),
            -(probs * torch.log(probs + 1e-8)).sum(-1),
            ((probs * probs).sum(-1) - 1 / 3001).clamp_min(0) / 3000,
            probs.topk(5, dim=-1).values.sum(-1),
        ],
        dim=-1,
    )
    if not torch.allclose(learned_features(kernel, rows, temperature), expected, rtol=1e-4, atol=1e-7):
        return False
    sorted_probs, order = torch.sort(got, dim=-1, descending=True, stable=True)
    keep = (torch.cumsum(sorted_probs, dim=-1) - sorted_probs) < top_p[:, None]
    keep[:, 0] = True
    keep |= top_p[:, None] >= 1.0
    keep = torch.empty_like(keep).scatter(-1, order, keep)
    expected_cut = (rows / temperature[:, None]).masked_fill(~keep, float("-inf"))
    return torch.equal(learned_cut(kernel, rows, temperature, top_p, 8), expected_cut)


CHECKS = {
    "amx_matmul_bf16": _amx_agrees_with_torch,
    "gemv_bf16": _gemv_agrees_with_torch,
    "decode_attention_bf16": _attention_agrees_with_torch,
    "sort_descending_f32": _sort_agrees_with_torch,
    "learned_step_f32": _learned_step_agrees_with_torch,
}
