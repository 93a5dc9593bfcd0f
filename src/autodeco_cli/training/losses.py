"""Head losses, as in the official AutoDeco HF trainer, computed on loss positions only.

Inputs are flat over the training tokens that carry a label: `logits` ``[N, V]`` (the frozen
model's, no grad), `targets` ``[N]``, `temperature`/`top_p` ``[N, 1]`` from the heads.

Why this is faster than the reference code while computing the same numbers:
- only labelled (completion) positions ever get vocabulary-sized tensors;
- temperature scaling preserves the token order, so the frozen logits are sorted once, without
  autograd, and the soft nucleus is evaluated in sorted order: the target's probability is read
  at its sorted rank instead of scattering a full mask back to vocabulary order;
- work is chunked over tokens, a few rows at a time: each row is a vocabulary-sized tensor, and
  ~16 rows keep the loss's dozen temporaries in CPU cache instead of streaming them through
  memory (measured 3.6x faster per token than 256-row chunks on a 49k vocabulary).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.decoding import CUT_LOGIT_EPS
from ..core.distribution import (
    DEFAULT_SOFT_TOP_P_ALPHA,
    MIN_TEMPERATURE,
    soft_top_p_weights_sorted,
    sorted_values_descending,
)

# The official code adds these inside the renormalisation and the log; keeping them makes our
# losses equal theirs to float precision.
RENORM_EPS = 1e-9
LOG_EPS = 1e-9


def target_confidence(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The frozen model's probability of the target: the "dynamic fine-tuning" weight (no grad)."""
    with torch.no_grad():
        return torch.softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def easy_token_keep_mask(
    logits: torch.Tensor, targets: torch.Tensor, uniforms: torch.Tensor, drop_probability: float
) -> torch.Tensor:
    """Positions kept for the temperature loss: drop `drop_probability` of those the model already gets right.

    `uniforms` are U(0,1) draws, one per position, supplied by the caller so that the drop
    pattern depends on the data, not on process count or batch layout.
    """
    easy = logits.argmax(dim=-1) == targets
    return ~(easy & (uniforms < drop_probability))


def temperature_loss_terms(
    logits: torch.Tensor, targets: torch.Tensor, temperature: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Per-token weighted CE(logits / T̂, y), T̂ clamped at 0.01."""
    scaled = logits.float() / temperature.float().clamp_min(MIN_TEMPERATURE)
    return F.cross_entropy(scaled, targets, reduction="none") * weights


def _sorted_rank(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Rank of each target in a stable descending sort of its row (ties: lower token id first)."""
    target_logit = logits.gather(-1, targets.unsqueeze(-1))
    ids = torch.arange(logits.size(-1), device=logits.device)
    ahead = (logits > target_logit) | ((logits == target_logit) & (ids < targets.unsqueeze(-1)))
    return ahead.sum(dim=-1)


def top_p_loss_terms(
    logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    weights: torch.Tensor,
    alpha: float = DEFAULT_SOFT_TOP_P_ALPHA,
) -> torch.Tensor:
    """Per-token weighted NLL of the soft-top-p distribution of softmax(logits / T̂).

    Gradients reach both P̂ and T̂ (T̂ is deliberately not detached: the paper trains the
    temperature head through this loss too).
    """
    with torch.no_grad():
        sorted_logits = sorted_values_descending(logits.float())
        rank = _sorted_rank(logits.float(), targets).unsqueeze(-1)
    sorted_probs = torch.softmax(sorted_logits / temperature.float().clamp_min(1e-8), dim=-1)
    masked = sorted_probs * soft_top_p_weights_sorted(sorted_probs, top_p.float(), alpha)
    target_mass = masked.gather(-1, rank).squeeze(-1)
    renormalised = target_mass / (masked.sum(dim=-1) + RENORM_EPS)
    return -torch.log(renormalised + LOG_EPS) * weights


def head_losses(
    logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    uniforms: torch.Tensor,
    *,
    mode: str = "joint",
    easy_drop_probability: float = 0.6,
    alpha: float = DEFAULT_SOFT_TOP_P_ALPHA,
    chunk_size: int = 16,
    dft_weighting: bool = True,
) -> dict[str, torch.Tensor]:
    """Mean temperature and top-p losses (and their sum as `loss`) for one micro-batch.

    mode: "joint" (both heads), "temperature" (temperature loss only) or "top_p" (top-p loss
    only). Means are over the positions each loss uses, as in the official trainer.
    `dft_weighting=False` drops the frozen model's target probability as a per-token weight
    (an ablation: the weight down-weights exactly the tokens the base finds surprising).
    """
    if mode not in ("joint", "temperature", "top_p"):
        raise ValueError(f"unknown loss mode {mode!r}")
    weights = target_confidence(logits, targets) if dft_weighting else torch.ones_like(targets, dtype=torch.float32)
    keep = easy_token_keep_mask(logits, targets, uniforms, easy_drop_probability)
    zero = temperature.sum() * 0.0  # keeps the graph connected when a loss has no positions
    losses: dict[str, torch.Tensor] = {}
    if mode in ("joint", "temperature"):
        kept = keep.nonzero(as_tuple=True)[0]
        total = zero
        for start in range(0, kept.numel(), chunk_size):
            idx = kept[start : start + chunk_size]
            total = total + temperature_loss_terms(logits[idx], targets[idx], temperature[idx], weights[idx]).sum()
        losses["temperature_loss"] = total / max(kept.numel(), 1)
    if mode in ("joint", "top_p"):
        total = zero
        for start in range(0, targets.numel(), chunk_size):
            sl = slice(start, start + chunk_size)
            total = (
                total + top_p_loss_terms(logits[sl], targets[sl], temperature[sl], top_p[sl], weights[sl], alpha).sum()
            )
        losses["top_p_loss"] = total / max(targets.numel(), 1)
    losses["loss"] = sum(losses.values())
    return losses


def policy_log_probs(
    logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    *,
    mode: str = "joint",
    alpha: float = DEFAULT_SOFT_TOP_P_ALPHA,
    chunk_size: int = 16,
) -> torch.Tensor:
    """log π(y) of each sampled token under the heads' policy, differentiable in T̂ and P̂: ``[N]``.

    The policy is the distribution the head losses train: softmax(logits / T̂) through the soft
    nucleus at P̂ (the hard nucleus that generation samples from has no gradient in P̂). In
    "temperature" mode P̂ is not acting (p = 1, as `--active-heads temperature` samples), so the
    policy is the tempered softmax alone; in "top_p" mode T̂ is not acting (T = 1).
    """
    ones = torch.ones_like(targets, dtype=torch.float32)
    parts = []
    for start in range(0, targets.numel(), chunk_size):
        sl = slice(start, start + chunk_size)
        if mode == "temperature":
            parts.append(-temperature_loss_terms(logits[sl], targets[sl], temperature[sl], ones[sl]))
        else:
            t = torch.ones_like(temperature[sl]) if mode == "top_p" else temperature[sl]
            parts.append(-top_p_loss_terms(logits[sl], targets[sl], t, top_p[sl], ones[sl], alpha))
    return torch.cat(parts) if parts else logits.new_zeros(0)


def policy_gradient_loss(log_probs: torch.Tensor, advantages: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """REINFORCE with a group baseline: −Σ_i A_i Σ_t log π(y_it) / Σ_i |y_i|.

    `log_probs` are flat over the samples' tokens (sample i owns the next `counts[i]`), and
    `advantages` hold one value per sample. Dividing by the total token count, not by each
    sample's length, keeps a long wrong answer from weighing less per token than a short one
    (the length bias Dr. GRPO points out in GRPO's per-sequence mean).
    """
    per_token = torch.repeat_interleave(advantages.to(log_probs.dtype), torch.tensor(counts, device=log_probs.device))
    return -(per_token * log_probs).sum() / max(sum(counts), 1)


def cut_exploration_loss(
    top_p: torch.Tensor, used_top_p: torch.Tensor, sigma: float, advantages: torch.Tensor, counts: list[int]
) -> torch.Tensor:
    """REINFORCE for the cut as a Gaussian action in logit space: −Σ_i A_i Σ_t log N(z_it; ẑ_it, σ) / Σ_i |y_i|.

    `top_p` ``[N, 1]`` is the head's P̂ (with grad), `used_top_p` ``[N]`` the cut each token was
    sampled at (`core.decoding.explored_top_p`), both flat over the samples' tokens like
    `policy_gradient_loss`. The gradient on ẑ = logit(P̂) is A·(z − ẑ)/σ²: a token sampled at a
    tighter cut than P̂ in a sample that beat its group pulls P̂ down there, and the reverse.
    """
    z_hat = torch.logit(top_p.squeeze(-1).float(), eps=CUT_LOGIT_EPS)
    z_used = torch.logit(used_top_p.float(), eps=CUT_LOGIT_EPS)
    log_density = -((z_used - z_hat) ** 2) / (2.0 * sigma * sigma)
    return policy_gradient_loss(log_density, advantages, counts)
