"""CPU speed: when bf16 pays, and what a bf16 model on CPU needs to actually be fast.

`models.load_base_model` applies these to bf16 CPU models (`use_decode_attention`,
`pack_linear_weights`, `place_in_huge_pages_later`; `cpu_memory` has what it does for every CPU
model); `pick_dtype("auto")` asks `cpu_has_native_bf16`. Measured on a 2-core AMD EPYC with
avx512_bf16 (reports/engine-speed.md):

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
  once (1.3-1.5x on the matmuls at decode batch sizes, same bits), and sends 1-6 rows to our own
  bf16 kernel (`cpu_kernels`), whose weights sit in huge pages (`cpu_memory`): ~2x at one row.
  On CPUs with AMX-BF16 it packs the weights for our AMX kernel instead, which takes every row
  count (the 2-vCPU Xeon's linears at 2 threads: 1.2x at one row, 1.5x at 32 over the best before).
  The packed copies' memory is collapsed into huge pages where it lies (1.1x on the linears).
  Neither placement happens at load: each waits for 64 forward calls down the path it speeds up
  (`PLACE_AFTER_CALLS`), so a short generation neither pays for them nor waits for them.
"""

from __future__ import annotations

import functools

import torch

from ..core import attention_kernel, cpu_kernels
from ..core.cpu_kernels import GEMV_MAX_ROWS, amx_matmul, gemv
from .cpu_memory import HUGE_PAGE, collapse_to_huge_pages, free_memory_bytes, move_to_huge_pages

# the attention implementation name bf16 models on CPU run with (registered on first use)
DECODE_ATTENTION = "autodeco_decode_sdpa"
# Only models that run SDPA are switched (gpt-oss's attention sinks need eager, so it keeps
# eager). What an SDPA model may still pass that changes the scores and the grouped path does not
# compute goes to SDPA's own path, which applies a position bias and raises on soft-capping.
SCORE_CHANGING_KWARGS = ("softcap", "position_bias")
# A KV-cache view may carry this attribute: how many zero columns follow it in its buffer (the
# engine's growing cache sets it), so attention can use the contiguous buffer, tail masked.
ZERO_TAIL = "autodeco_zero_tail"


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
    if (
        q_len != 1
        or heads % kv_heads
        or (dropout and module.training)
        or kwargs.get("output_attentions")
        or any(kwargs.get(name) is not None for name in SCORE_CHANGING_KWARGS)
    ):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    if scaling is None:
        scaling = dim**-0.5
    length = key.shape[-2]
    mask = None if attention_mask is None else attention_mask[:, :, :, -length:]
    kernel = cpu_kernels.load("decode_attention_bf16") if query.dtype == torch.bfloat16 else None
    if kernel is not None and query.device.type == "cpu":
        output = attention_kernel.decode_attention(kernel, query, key, value, mask, scaling)
        if output is not None:
            return output, None
    if batch * length <= SMALL_DECODE_ATTENTION:
        return _small_decode_attention(query, key, value, mask, scaling), None
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


# Each huge-page placement waits for this many forward calls down the path that reads what it
# places, instead of running at load. Placing takes fresh 2 MiB pages: 1.1 s of a 3.9 s start to
# the first token on the 2-vCPU Xeon VM (its host backs freed guest memory lazily), ~0.1 s where
# the kernel has them at hand. It pays back per decode step: on that VM the gemv weights in huge
# pages took a one-row step from ~29 to ~25 ms; the collapsed packed copies help only calls of
# 7+ tokens (1.05x on the body at ~30 rows) and do nothing at one row. So a chat reply or
# `--max-new-tokens 1` never waits for either, a long one-row decode moves the gemv weights 63
# steps in and never collapses, and a batched eval pays each once.
PLACE_AFTER_CALLS = 64

# Up to this many cached tokens over the batch (rows x length), the fp32 route beats oneDNN's bf16
# batched matmul, which costs ~40 us a call at any size: per layer 97 -> 48 us at 1 row x 60
# tokens, 109 -> 77 at 4 x 60; about even at 2 x 300. Used where the C kernel is not.
SMALL_DECODE_ATTENTION = 512


def _small_decode_attention(query, key, value, mask, scaling):
    """`decode_attention_forward` for a small batch and context, in fp32 with its bf16 roundings
    (scores, weights) kept, so it gives the values the bf16 matmuls give."""
    batch, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    grouped = query.reshape(batch, kv_heads, heads // kv_heads, dim).float()
    scores = torch.matmul(grouped, key.float().transpose(-1, -2)).to(query.dtype).float() * scaling
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
    weights = torch.softmax(scores, dim=-1).to(value.dtype).float()
    output = torch.matmul(weights, value.float()).to(value.dtype)
    return output.reshape(batch, 1, heads, dim)


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


class PackedLinear(torch.nn.Linear):
    """An nn.Linear whose bf16 CPU inference runs on a prepacked copy of its weight.

    On CPUs with AMX-BF16 the copy is in our AMX kernel's tile layout (`cpu_kernels.amx_matmul`,
    every row count: it reads the weights faster than the gemv kernel and oneDNN; 1.2-1.9x on
    the default model's linears at 1-64 rows, 2 threads). Keeping no oneDNN copy beside it costs
    prompts at 1 thread, where oneDNN is faster from ~256 rows (0.86x at 512).
    Elsewhere it is oneDNN's: plain bf16 `F.linear` on CPU re-lays out the weight on every call,
    and packing it once (what torch.compile's freezing pass does) makes the same kernel stream it
    ~1.5x faster at decode-sized batches (measured: 60 bf16 576x1536 weights, one row, 14.0 -> 9.2
    ms), with bitwise-equal outputs; 1-6 rows then go to the gemv kernel. Training, gradients,
    other dtypes and devices take the plain path; the module keeps its `weight` (state dicts,
    tied embeddings and PEFT see an ordinary Linear).
    """

    _packed: torch.Tensor | None = None  # oneDNN's copy
    _amx_weight: torch.Tensor | None = None  # the AMX kernel's copy (then there is no oneDNN copy)
    # the kernels (cpu_kernels.load), or None: set by pack_linear_weights
    _gemv: object = None
    _amx: object = None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if (
            (self._amx is not None or self._packed is not None)
            and input.is_cpu
            and input.dtype == torch.bfloat16
            and not (torch.is_grad_enabled() and (input.requires_grad or self.weight.requires_grad))
        ):
            if self._amx is not None:
                return amx_matmul(self._amx, input, self._amx_weight, self.bias, self.out_features)
            if self._gemv is not None and input.numel() <= GEMV_MAX_ROWS * self.in_features:
                return gemv(self._gemv, input, self.weight)
            return torch.ops.mkldnn._linear_pointwise(input, self._packed, self.bias, "none", [], "")
        return super().forward(input)


def pack_linear_weights(model: torch.nn.Module) -> int:
    """Turn the bf16 CPU nn.Linear layers of `model` into PackedLinear; returns how many.

    The packed copies add the linear weights' size in memory once more (the originals stay,
    for state dicts and the input embedding the LM head may share its weight with), so nothing
    is packed when that would take more than a quarter of the free memory. A layer the AMX
    kernel serves gets no oneDNN copy.
    """
    if not onednn_packs_bf16():
        return 0
    linears = [
        m
        for m in model.modules()
        if type(m) is torch.nn.Linear and m.weight.dtype == torch.bfloat16 and m.weight.device.type == "cpu"
    ]
    extra = sum(m.weight.numel() * m.weight.element_size() for m in linears)
    free = free_memory_bytes()
    if free is not None and extra > free // 4:
        return 0
    amx = cpu_kernels.load("amx_matmul_bf16")
    _pack_for_amx([m for m in linears if amx is not None and _amx_can_serve(m)], amx)
    kernel = cpu_kernels.load("gemv_bf16")
    count = 0
    for module in linears:
        if type(module) is not PackedLinear:
            try:
                packed = torch.ops.mkldnn._reorder_linear_weight(module.weight.detach(), 32)
            except RuntimeError:
                continue
            module.__class__ = PackedLinear
            module._packed = packed
            if module.bias is None and module.weight.is_contiguous():
                module._gemv = kernel
        count += 1
    return count


@functools.lru_cache(maxsize=1)
def onednn_packs_bf16() -> bool:
    """Whether this torch build's oneDNN packs bf16 linear weights on this CPU: its bf16 path needs AVX-512 (BW, VL,
    DQ) or AVX-NE-CONVERT, and on an AVX2-only CPU the reorder raises (then no layer is packed)."""
    if not hasattr(torch.ops.mkldnn, "_reorder_linear_weight") or not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(16, 16, dtype=torch.bfloat16), 32)
    except RuntimeError:
        return False
    return True


def _amx_can_serve(module: torch.nn.Linear) -> bool:
    bias = module.bias
    return module.weight.is_contiguous() and (bias is None or (bias.dtype == torch.bfloat16 and bias.is_contiguous()))


def _pack_for_amx(layers: list[torch.nn.Linear], kernel) -> None:
    """Pack these layers' weights for the AMX kernel, back to back in one block that starts on a
    2 MiB page (so `_collapse_packed_copies` can back all of it with huge pages later), and make
    them PackedLinear."""
    if not layers:
        return
    # each copy starts on a 64-byte line: the kernel's tile loads stay aligned
    sizes = [-(-cpu_kernels.amx_packed_size(*m.weight.shape) // 32) * 32 for m in layers]
    raw = torch.empty(sum(sizes) + HUGE_PAGE // 2, dtype=torch.bfloat16)
    offset = (-raw.data_ptr() % HUGE_PAGE) // 2
    for module, size in zip(layers, sizes):
        packed = raw[offset : offset + cpu_kernels.amx_packed_size(*module.weight.shape)]
        cpu_kernels.amx_pack(module.weight.detach(), packed)
        module.__class__ = PackedLinear
        module._amx_weight, module._amx = packed, kernel
        offset += size


def place_in_huge_pages_later(model: torch.nn.Module, after_calls: int = PLACE_AFTER_CALLS) -> None:
    """Place the packed layers' memory in 2 MiB pages (`cpu_memory`) once that pays: the weights
    the gemv kernel reads move into one block before the `after_calls`-th forward call of at most
    GEMV_MAX_ROWS tokens (the calls that use the kernel), and the memory under the packed copies
    (oneDNN's, the AMX kernel's) is collapsed where it lies before the `after_calls`-th call
    that uses them (more tokens, or any call where the gemv kernel is not loaded: the AMX
    kernel takes every row count).

    From a forward pre-hook of the whole model, so no layer is reading a weight while it moves.
    Values never change, only where they lie.
    """
    layers = [m for m in model.modules() if type(m) is PackedLinear]
    gemv = any(m._gemv is not None for m in layers)
    pending = {False: lambda: _collapse_packed_copies(layers)}
    if gemv:
        pending[True] = lambda: _move_gemv_weights(layers)
    calls = {True: 0, False: 0}

    def before_forward(_module: torch.nn.Module, args, kwargs) -> None:
        tokens = kwargs.get("input_ids", args[0] if args else None)
        few = gemv and torch.is_tensor(tokens) and tokens.numel() <= GEMV_MAX_ROWS
        if few not in pending:
            return
        calls[few] += 1
        if calls[few] < after_calls:
            return
        with torch.inference_mode(False):  # the block is an ordinary tensor, usable for training too
            pending.pop(few)()
        if not pending:
            handle.remove()

    handle = model.register_forward_pre_hook(before_forward, with_kwargs=True)


def _move_gemv_weights(layers: list[PackedLinear]) -> None:
    move_to_huge_pages(m.weight for m in layers if m._gemv is not None)


def _collapse_packed_copies(layers: list[PackedLinear]) -> None:
    spans = [(m._amx_weight.data_ptr(), m._amx_weight.nbytes) for m in layers if m._amx_weight is not None]
    if hasattr(torch.ops.mkldnn, "data_ptr") and hasattr(torch.ops.mkldnn, "_nbytes"):
        packed = [m._packed for m in layers if m._packed is not None]
        spans += [(torch.ops.mkldnn.data_ptr(p), torch.ops.mkldnn._nbytes(p)) for p in packed]
    collapse_to_huge_pages(spans)
