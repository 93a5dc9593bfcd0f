"""CPU speed: when bf16 pays, and what a bf16 model on CPU needs to actually be fast.

`models.load_base_model` applies these to every CPU model (`keep_freed_memory`) and to bf16 ones
(`use_decode_attention`, `pack_linear_weights`); `pick_dtype("auto")` asks
`cpu_has_native_bf16`. Measured on a 2-core AMD EPYC with avx512_bf16 (reports/engine-speed.md):

* bf16 matmuls run ~2x faster than fp32 there (oneDNN's avx512_bf16 kernels), but only on CPUs
  with native bf16 instructions; elsewhere bf16 is emulated and slower than fp32.
* torch's CPU `scaled_dot_product_attention` in bf16 is 4-20x slower than in fp32 for a decode
  step (one query position, grouped-query heads, a padding mask), and the gap grows with the
  context: at 32 rows x 200 tokens it cost 9 ms per layer, more than the layer's matmuls. So a
  bf16 model on CPU decodes through `decode_attention_forward` instead: the query heads that
  share a KV head become rows of one small matmul against that head's keys (no repeat_kv copy,
  no flash-kernel packing), softmax in fp32. Prompts (several query positions) still go
  through torch's SDPA, where it is fast.
* plain bf16 `F.linear` re-lays out its weight for oneDNN at every call; `PackedLinear` does it
  once (1.3-1.5x on the matmuls at decode batch sizes, same bits).
* glibc returned the decode step's large temporaries to the kernel and page-faulted them back
  (`keep_freed_memory`).
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch

# the attention implementation name bf16 models on CPU run with (registered on first use)
DECODE_ATTENTION = "autodeco_decode_sdpa"
# A KV-cache view may carry this attribute: how many zero columns follow it in its buffer (the
# engine's growing cache sets it), so attention can use the contiguous buffer, tail masked.
ZERO_TAIL = "autodeco_zero_tail"


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when this CPU has bf16 dot-product instructions (x86 AVX512_BF16 or AMX-BF16, Arm BF16).

    torch.backends.cpu.get_cpu_capability() names the vector width only ("AVX512" both with and
    without bf16), and oneDNN reports bf16 as "supported" on any AVX-512 CPU (emulated), so the
    kernel's own CPU flags decide. AUTODECO_CPU_BF16=0/1 overrides the check.
    """
    import os

    forced = os.environ.get("AUTODECO_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    return has_native_bf16(_cpu_flags())


def _cpu_flags() -> set[str]:
    if platform.system() == "Darwin":
        return _darwin_flags()
    try:
        return flags_from_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        return set()


def flags_from_cpuinfo(text: str) -> set[str]:
    """The CPU feature flags listed in a /proc/cpuinfo text (x86 `flags`, aarch64 `Features`)."""
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


def has_native_bf16(flags: set[str]) -> bool:
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def _darwin_flags() -> set[str]:
    import subprocess

    try:
        out = subprocess.run(
            ["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return set()
    return {"bf16"} if out == "1" else set()


def decode_attention_forward(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs
):
    """transformers' attention-interface signature; one query position goes the grouped way.

    query ``[B, H, 1, D]``, key/value ``[B, KVH, L, D]`` (the cache), mask ``[B, 1, 1, L]``
    boolean (True = attend) or None. Returns ``([B, 1, H, D], None)`` like the sdpa path.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    if q_len != 1 or heads % kv_heads or (dropout and module.training) or kwargs.get("output_attentions"):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    if scaling is None:
        scaling = dim**-0.5
    length = key.shape[-2]
    mask = None if attention_mask is None else attention_mask[:, :, :, -length:]
    tail = min(getattr(key, ZERO_TAIL, 0), getattr(value, ZERO_TAIL, 0))
    if (
        tail
        and key.stride() == value.stride()
        and key.stride(-2) == dim
        and key.stride(1) == key.stride(-2) * (length + tail)
    ):
        # the cache view is the start of a contiguous zero-tailed buffer: use all of it (a
        # strided view would be copied by bmm), masking the tail
        key = torch.as_strided(key, (batch, kv_heads, length + tail, dim), key.stride(), key.storage_offset())
        value = torch.as_strided(value, (batch, kv_heads, length + tail, dim), value.stride(), value.storage_offset())
        if mask is None:
            mask = torch.ones((batch, 1, 1, length), dtype=torch.bool, device=query.device)
        elif mask.dtype != torch.bool:
            mask = mask == 0
        mask = torch.nn.functional.pad(mask, (0, tail), value=False)
    grouped = query.reshape(batch, kv_heads, heads // kv_heads, dim)
    scores = torch.matmul(grouped, key.transpose(-1, -2)).float() * scaling  # [B, KVH, G, L]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
    weights = torch.softmax(scores, dim=-1).to(value.dtype)
    output = torch.matmul(weights, value)  # [B, KVH, G, D]
    return output.reshape(batch, 1, heads, dim), None


def use_decode_attention(model: torch.nn.Module) -> bool:
    """Switch a model that runs torch SDPA to `decode_attention_forward` (same masks). Returns
    whether it switched: models with another attention implementation are left alone."""
    config = getattr(model, "config", None)
    if (
        config is None
        or getattr(config, "_attn_implementation", None) != "sdpa"
        or not hasattr(model, "set_attn_implementation")
    ):
        return False
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(DECODE_ATTENTION, decode_attention_forward)
    if DECODE_ATTENTION not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionMaskInterface.register(DECODE_ATTENTION, sdpa_mask)
    try:
        model.set_attn_implementation(DECODE_ATTENTION)
    except (ValueError, KeyError):
        return False
    return config._attn_implementation == DECODE_ATTENTION


def keep_freed_memory() -> bool:
    """Let glibc reuse freed blocks instead of handing them back to the kernel (Linux only).

    A decode step allocates and frees many multi-megabyte tensors (logits and their fp32/fp64
    copies, KV-cache concatenations); by default glibc serves them with fresh mmaps or trims
    them off the heap, and every reuse then page-faults its memory back in. Measured: 750k minor
    faults over a 2.8k-token run, ~10% of the CPU time. Raising the mmap threshold to its
    maximum (32 MiB) and the trim threshold to 512 MiB keeps those blocks in the heap. Returns
    whether it applied; AUTODECO_MALLOPT=0 turns it off.
    """
    import ctypes
    import ctypes.util
    import os

    if os.environ.get("AUTODECO_MALLOPT", "1") == "0" or platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 512 << 20))


class PackedLinear(torch.nn.Linear):
    """An nn.Linear whose bf16 CPU inference runs on a oneDNN-prepacked copy of its weight.

    Plain bf16 `F.linear` on CPU re-lays out the weight for oneDNN on every call; packing it
    once (what torch.compile's freezing pass does) makes the same kernel stream it ~1.5x faster
    at decode-sized batches (measured: 60 bf16 576x1536 weights, one row, 14.0 -> 9.2 ms), with
    bitwise-equal outputs. Training, gradients, other dtypes and devices take the plain path; the
    module keeps its `weight` (state dicts, tied embeddings and PEFT see an ordinary Linear).
    """

    _packed: torch.Tensor | None = None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        packed = self._packed
        if (
            packed is not None
            and input.device.type == "cpu"
            and input.dtype == torch.bfloat16
            and not (torch.is_grad_enabled() and (input.requires_grad or self.weight.requires_grad))
        ):
            return torch.ops.mkldnn._linear_pointwise(input, packed, self.bias, "none", [], "")
        return super().forward(input)


def pack_linear_weights(model: torch.nn.Module) -> int:
    """Turn the bf16 CPU nn.Linear layers of `model` into PackedLinear; returns how many.

    The packed copies add the linear weights' size in memory once more (the originals stay,
    for state dicts and the input embedding the LM head may share its weight with), so nothing
    is packed when that would take more than a quarter of the free memory.
    """
    if not hasattr(torch.ops.mkldnn, "_reorder_linear_weight") or not torch.backends.mkldnn.is_available():
        return 0
    linears = [
        m
        for m in model.modules()
        if type(m) is torch.nn.Linear and m.weight.dtype == torch.bfloat16 and m.weight.device.type == "cpu"
    ]
    extra = sum(m.weight.numel() * m.weight.element_size() for m in linears)
    free = _free_memory_bytes()
    if free is not None and extra > free // 4:
        return 0
    count = 0
    for module in linears:
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(module.weight.detach(), 32)
        except RuntimeError:
            continue
        module.__class__ = PackedLinear
        module._packed = packed
        count += 1
    return count


def _free_memory_bytes() -> int | None:
    import os

    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not on this platform
        return None
