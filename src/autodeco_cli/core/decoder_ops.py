"""A llama-family decoder layer's small ops in torch, op for op as transformers computes them.

The lean decode step (engine/lean_decode.py) runs these, so its outputs are transformers' bits;
the C kernels that replace them in bf16 (cpu_kernels' `decode_ops_bf16`) are checked against
them bit for bit before they are used.
"""

from __future__ import annotations

import torch


def rms_norm(weight: torch.Tensor, eps: float, hidden: torch.Tensor) -> torch.Tensor:
    """LlamaRMSNorm.forward (Qwen2's and Mistral's are the same), op for op."""
    input_dtype = hidden.dtype
    hidden = hidden.to(torch.float32)
    variance = hidden.pow(2).mean(-1, keepdim=True)
    hidden = hidden * torch.rsqrt(variance + eps)
    return weight * hidden.to(input_dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """apply_rotary_pos_emb's rotation of one tensor (queries or keys, or both joined: it is
    elementwise, so each value gets the same roundings either way)."""
    return (x * cos) + (rotate_half(x) * sin)
