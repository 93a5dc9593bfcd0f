"""The bf16 decode-attention kernel (`assets/kernels/decode_attention_bf16.c`, as `cpu_kernels.load`
hands it out) called on torch tensors: one query position per row, grouped-query heads.
`attention_agrees_with_torch` is the check that `load` runs first."""

from __future__ import annotations

from typing import Callable

import torch


def decode_attention(
    kernel: Callable, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, scaling
) -> torch.Tensor | None:
    """query [B, H, 1, D], key/value [B, KVH, L, D] (any strides with a unit last one, the same
    for both), mask [B, 1, 1, L] bool (True = attend) or None; returns [B, 1, H, D], or None for
    inputs the kernel does not take."""
    batch, heads, _, dim = query.shape
    length = key.shape[2]
    if mask is not None and mask.dtype != torch.bool:
        return None
    keep = None if mask is None else mask.reshape(batch, length).to(torch.uint8).contiguous()
    out = _attend(kernel, query.reshape(batch, heads, dim).contiguous(), key, value, keep, scaling)
    return None if out is None else out.view(batch, 1, heads, dim)


def decode_attention_rows(
    kernel: Callable, queries: torch.Tensor, key: torch.Tensor, value: torch.Tensor, keep: torch.Tensor | None, scaling
) -> torch.Tensor:
    """`decode_attention` for contiguous queries [B, H, D] and the rows' padding as contiguous bytes
    [B, L] (nonzero = attend) or None: returns [B, 1, H * D], ready for the output projection."""
    batch, heads, dim = queries.shape
    out = _attend(kernel, queries, key, value, keep, scaling)
    if out is None:
        raise ValueError("the decode attention kernel does not take these shapes (or could not allocate)")
    return out.view(batch, 1, heads * dim)


def _attend(kernel, queries, key, value, keep, scaling) -> torch.Tensor | None:
    """The kernel's output [B, H, D], or None where it does not take the cache's layout or failed."""
    if key.stride() != value.stride() or key.stride(-1) != 1:
        return None
    batch, heads, dim = queries.shape
    out = torch.empty((batch, heads, dim), dtype=torch.bfloat16)
    status = kernel(
        queries.data_ptr(),
        key.data_ptr(),
        value.data_ptr(),
        None if keep is None else keep.data_ptr(),
        out.data_ptr(),
        batch,
        heads,
        key.shape[1],
        key.shape[2],
        dim,
        key.stride(0),
        key.stride(1),
        key.stride(2),
        float(scaling),
    )
    return None if status else out


def attention_agrees_with_torch(kernel: Callable) -> bool:
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
