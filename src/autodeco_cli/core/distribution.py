"""The decoding math, written once and shared by training, generation, eval and grid search.

Everything here is a pure function of tensors. Shapes: `logits`/`probs` are ``[..., V]``;
temperature and top-p are either Python floats or tensors broadcastable to ``[..., 1]``
(``[...]`` is accepted too and gets a trailing axis).
"""

from __future__ import annotations

import torch

from .decoding import DEFAULT_EDT_BASE  # a default the options check without torch

DEFAULT_SOFT_TOP_P_ALPHA = 30.0
# Temperatures below this turn logits/T into inf/NaN in fp32; the official trainer clamps at 0.01 too.
MIN_TEMPERATURE = 1e-2


def _as_column(value: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Turn a float or a ``[...]``/``[..., 1]`` tensor into a ``[..., 1]`` tensor on `like`'s device."""
    if not torch.is_tensor(value):
        return torch.tensor(float(value), dtype=like.dtype, device=like.device).reshape(*([1] * like.dim()))
    if value.dtype != like.dtype or value.device != like.device:  # a no-op .to() is still a torch call
        value = value.to(device=like.device, dtype=like.dtype)
    if value.dim() == like.dim() - 1:
        value = value.unsqueeze(-1)
    return value


def sort_descending(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # stable=True so ties are broken by token id: the nucleus is then a deterministic set.
    return torch.sort(probs, dim=-1, descending=True, stable=True)


def soft_top_p_weights_sorted(
    sorted_probs: torch.Tensor, top_p: torch.Tensor, alpha: float, stabilise: bool = False
) -> torch.Tensor:
    """The paper's soft nucleus mask, in sorted order: ``exp(-alpha * relu(cumsum - p))``.

    The inclusive cumsum means the top token is only damped once it alone exceeds p, so the
    mask is smooth in p (that is what lets the top-p head learn through it). `stabilise` divides
    by the top token's weight, which renormalisation cancels, so a steep alpha cannot underflow
    every weight to zero; the training loss leaves it off to stay equal to the official one
    (its epsilons are not scale-free).
    """
    cumulative = torch.cumsum(sorted_probs, dim=-1)
    overage = torch.relu(cumulative - top_p)
    if stabilise:
        overage = overage - overage[..., :1].detach()
    return torch.exp(-alpha * overage)


def soft_top_p(
    probs: torch.Tensor, top_p: float | torch.Tensor, alpha: float = DEFAULT_SOFT_TOP_P_ALPHA
) -> torch.Tensor:
    """Differentiable top-p: sort, soft-mask, unsort, renormalise. Gradients flow into `probs` and `top_p`."""
    top_p = _as_column(top_p, probs)
    sorted_probs, order = sort_descending(probs)
    weights = torch.empty_like(probs).scatter(
        -1, order, soft_top_p_weights_sorted(sorted_probs, top_p, alpha, stabilise=True)
    )
    masked = probs * weights
    return masked / masked.sum(dim=-1, keepdim=True).clamp_min(1e-30)


def sorted_values_descending(values: torch.Tensor) -> torch.Tensor:
    """Row-wise descending sort, values only.

    On CPU a radix sort in C (cpu_kernels, float32 on x86-64) or else numpy's sort: both ~4-15x
    faster than torch.sort (which always builds indices too); the values are identical. Callers
    must not need gradients through it.
    """
    if values.device.type == "cpu":
        import numpy as np

        if values.dtype == torch.float32:
            from . import cpu_kernels

            kernel = cpu_kernels.load("sort_descending_f32")
            if kernel is not None:
                return cpu_kernels.sort_descending(kernel, values)

        as_numpy = values.detach()
        if as_numpy.dtype == torch.bfloat16:  # numpy has no bf16; the upcast is exact
            as_numpy = as_numpy.float()
        # sort the negation ascending, in place, then negate back: no reversed-stride copy
        descending = np.negative(as_numpy.numpy())
        descending.sort(axis=-1)
        np.negative(descending, out=descending)
        return torch.from_numpy(descending).to(values.dtype)
    return torch.sort(values.detach(), dim=-1, descending=True).values


def hard_top_p_keep(probs: torch.Tensor, top_p: float | torch.Tensor) -> torch.Tensor:
    """Boolean nucleus, as vLLM and transformers cut it at inference.

    Keep a token while the probability mass strictly before it (in descending order, ties by
    token id) is below p, and always keep the most likely token, so p -> 0 degrades to greedy
    instead of to nothing. p >= 1 keeps every token.

    The nucleus is a prefix of the sorted order, so it is fully described by its size and the
    smallest kept value (`nucleus_cut`, which sorts only the top candidates), no index scatter.
    """
    top_p = _as_column(top_p, probs)
    size, cutoff, maybe_tied = _nucleus_cut(probs, top_p)
    keep = probs >= cutoff
    if not bool(maybe_tied.any()):
        return keep  # no row has a token past its nucleus at the cutoff value
    # Rows with more tokens tied at the cutoff than the prefix still holds (frequent with bf16
    # logits): keep the lowest ids among the tied, drop the rest. Only those rows are touched.
    vocab = probs.size(-1)
    flat_keep = keep.reshape(-1, vocab)
    flagged = maybe_tied.nonzero().squeeze(-1)
    rows = flagged[flat_keep[flagged].sum(dim=-1) > size.reshape(-1)[flagged]]
    if not rows.numel():
        return keep
    row_probs = probs.detach().reshape(-1, vocab)[rows]
    row_cutoff = cutoff.reshape(-1, 1)[rows]
    tied = row_probs == row_cutoff
    room = size.reshape(-1)[rows] - (row_probs > row_cutoff).sum(dim=-1)
    tied_row, tied_id = tied.nonzero(as_tuple=True)  # row-major: ids ascending within a row
    counts = tied.sum(dim=-1)
    rank = torch.arange(tied_row.numel(), device=probs.device) - (torch.cumsum(counts, dim=0) - counts)[tied_row]
    drop = rank >= room[tied_row]
    flat_keep[rows[tied_row[drop]], tied_id[drop]] = False
    return flat_keep.reshape(probs.shape)


# The nucleus cut first sorts only each row's top this-many probabilities (torch.topk: ~10x
# cheaper than a values sort of a 49k vocabulary); rows whose nucleus may reach past them fall
# back to the full sort. Either way the result is the full sort's, exactly. Read at each call,
# so a benchmark can set it to the vocabulary size in a running engine to time the full sort.
NUCLEUS_CANDIDATES = 64


def nucleus_cut(
    probs: torch.Tensor, top_p: torch.Tensor, candidates: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's nucleus size and smallest kept probability (both ``[..., 1]``); `top_p` ``[..., 1]``.

    With the row sorted descending, the size is the number of positions whose mass before them
    (``cumsum - value``) is below p, at least 1; p >= 1 keeps all (cutoff -inf). The mass before
    is non-decreasing along the sorted row (the cumsum never falls, the values never rise, and
    float rounding is monotone), and the CPU cumsum is a sequential scan, so the cumsum of a
    prefix is the prefix of the cumsum. So once the last of the top `candidates` values already
    has mass >= p before it, no later position counts and the sorted head alone gives the exact
    size and cutoff; only rows that fail that check are sorted in full. (Other devices' scans
    are blocked, so there every row is sorted in full, as before.) `candidates` defaults to
    `NUCLEUS_CANDIDATES`; any count >= the vocabulary sorts every row in full.
    """
    size, cutoff, _ = _nucleus_cut(probs, top_p, candidates)
    return size, cutoff


def _nucleus_cut(
    probs: torch.Tensor, top_p: torch.Tensor, candidates: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`nucleus_cut`, plus per flattened row whether a token past the nucleus may equal the
    cutoff (the sorted value right after the nucleus does, or is unknown): only those rows can
    hold more tokens >= cutoff than the nucleus size, so only they need counting."""
    vocab = probs.size(-1)
    shape = probs.shape[:-1] + (1,)
    flat = probs.detach().reshape(-1, vocab)
    p = top_p.to(probs.dtype).expand(shape).reshape(-1, 1)
    candidates = NUCLEUS_CANDIDATES if candidates is None else candidates
    k = min(candidates, vocab) if probs.device.type == "cpu" else vocab
    head = torch.topk(flat, k, dim=-1).values if k < vocab else sorted_values_descending(flat).to(flat.device)
    mass_before = torch.cumsum(head, dim=-1) - head
    size = (mass_before < p).sum(dim=-1, keepdim=True).clamp_min(1)
    cutoff = head.gather(-1, size - 1)
    # the value after the nucleus; a nucleus filling the whole head leaves it unknown (True)
    tied = (size >= k) | (head.gather(-1, size.clamp_max(k - 1)) == cutoff)
    if k < vocab:
        longer = ((mass_before[:, -1:] < p) & (p < 1.0)).squeeze(-1).nonzero().squeeze(-1)
        if longer.numel():
            full = sorted_values_descending(flat[longer]).to(flat.device)
            full_mass_before = torch.cumsum(full, dim=-1) - full
            full_size = (full_mass_before < p[longer]).sum(dim=-1, keepdim=True).clamp_min(1)
            size[longer], cutoff[longer] = full_size, full.gather(-1, full_size - 1)
            after = full.gather(-1, full_size.clamp_max(vocab - 1))
            tied[longer] = (full_size < vocab) & (after == cutoff[longer])
    # p >= 1 means "no cut" (as in vLLM); without this, fp32 cumsums that reach 1.0 early
    # would silently drop the far tail.
    no_cut = p >= 1.0
    size = torch.where(no_cut, torch.full_like(size, vocab), size)
    cutoff = torch.where(no_cut, torch.full_like(cutoff, float("-inf")), cutoff)
    tied = tied & ~no_cut
    return size.reshape(shape), cutoff.reshape(shape), tied.squeeze(-1)


# The fused C kernel (learned_kernels' learned_step_f32) does the vocabulary-wide work of a decoding
# step, the top-p head's features and the hard nucleus cut, when no gradient is wanted and the
# logits are CPU float32 (any float logits are upcast first). Its exp is its own, so its
# probabilities can differ from torch.softmax's in the last bits (and it flushes those below
# 1.2e-38 to zero), so a token sitting exactly on the nucleus boundary can fall either side; the
# cut is exact for its probabilities. Its features leave out the tokens whose e is under e^-30 of
# the max's: together under float32's resolution of the sum, they move the entropy by at most
# ~1e-7 (the kernel's FEATURES_FLOOR says why), and at the heads' usual T̂ most of a row lies there.
# Read at each call, so a benchmark can time torch's path.
FUSED_KERNEL = True


def _fused_kernel(logits: torch.Tensor, dtype: torch.dtype = torch.float32):
    """The learned-step kernel where it applies to `logits` (CPU rows of `dtype`, no autograd), else None."""
    # (is_cpu, not .device: right after the model's forward a .device costs ~20 us)
    if not FUSED_KERNEL or torch.is_grad_enabled() or not logits.is_cpu or logits.dtype != dtype:
        return None
    if logits.dim() == 0 or logits.size(-1) < 8:
        return None
    from . import learned_kernels

    return learned_kernels.learned_step()


def widened(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A decode step's [rows, V] logits as float32, and where the fused kernel widened them from bf16 (CPU, no
    autograd) their 16-wide blocks' maxima (`learned_kernels.widen_logits`), else None. The float32 values are
    `logits.float()`'s either way; the maxima spare the kernel's learned steps on these rows a read of each row
    for its max and live blocks (`decoding_logits_and_temperature` and the heads' decode step take them)."""
    if logits.dim() != 2 or not logits.is_contiguous() or _fused_kernel(logits, torch.bfloat16) is None:
        return logits.float(), None
    from . import learned_kernels

    return learned_kernels.widen_logits(logits)


def _per_row(value: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """A ``[..., 1]`` column broadcast to one float32 per row of `logits`, contiguous."""
    return value.to(torch.float32).expand(logits.shape[:-1] + (1,)).reshape(-1).contiguous()


def _fused_cut(
    logits: torch.Tensor, temperature: torch.Tensor, top_p: float | torch.Tensor, maxima: torch.Tensor | None = None
) -> torch.Tensor | None:
    """`decoding_logits` without top-k and min-p, through the kernel; None where it does not apply."""
    kernel = _fused_kernel(logits)
    if kernel is None:
        return None
    top_p = _as_column(top_p, logits)
    if bool((top_p >= 1.0).all()):
        return None  # no cut: torch's division alone is as cheap
    from . import learned_kernels

    rows = logits.reshape(-1, logits.size(-1)).contiguous()
    try:
        cut = learned_kernels.learned_cut(
            kernel, rows, _per_row(temperature, logits), _per_row(top_p, logits), NUCLEUS_CANDIDATES, maxima
        )
    except learned_kernels.NotFinite:
        return None
    return cut.reshape(logits.shape)


def narrowed_cut(
    logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, maxima: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """`decoding_logits(logits, temperature, top_p)` for [rows, V] CPU float32 rows, narrowed to the blocks of
    `learned_kernels.NUCLEUS_BLOCK` token ids that hold a kept token (`learned_kernels.learned_nucleus`: the narrowed
    logits and each column's token id, or the whole cut and None), in one kernel call that never writes the
    cut's -inf's. None where the kernel does not take the rows: the caller cuts and narrows them itself."""
    from . import learned_kernels

    kernel = _fused_kernel(logits)
    if kernel is None or logits.dim() != 2 or logits.size(-1) % learned_kernels.NUCLEUS_BLOCK:
        return None
    top_p = _as_column(top_p, logits)
    if bool((top_p >= 1.0).all()):
        return None  # no cut: torch's division alone is as cheap
    temperature = _as_column(temperature, logits).clamp_min(MIN_TEMPERATURE)
    try:
        return learned_kernels.learned_nucleus(
            logits.contiguous(), _per_row(temperature, logits), _per_row(top_p, logits), NUCLEUS_CANDIDATES, maxima
        )
    except learned_kernels.NotFinite:
        return None


def _fused_features(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor | None:
    kernel = _fused_kernel(logits)
    if kernel is None:
        return None
    from . import learned_kernels

    # A decode step's [rows, V] and [rows, 1] go in as they are: each reshape or copy skipped is a
    # torch call less, and right after the model's forward each call costs several microseconds.
    plain = logits.dim() == 2 and temperature.shape == (logits.size(0), 1) and temperature.dtype == torch.float32
    if plain and logits.is_contiguous() and temperature.is_contiguous():
        rows, column = logits, temperature  # [rows, 1] is laid out as [rows]
    else:
        rows, column = logits.reshape(-1, logits.size(-1)).contiguous(), _per_row(temperature, logits)
    try:
        features = learned_kernels.learned_features(kernel, rows, column)
    except learned_kernels.NotFinite:
        return None
    return features if plain else features.reshape(logits.shape[:-1] + (4,))


def top_k_keep(logits: torch.Tensor, top_k: int | None) -> torch.Tensor | None:
    if not top_k or top_k <= 0 or top_k >= logits.size(-1):
        return None
    threshold = torch.topk(logits, top_k, dim=-1).values[..., -1:]
    return logits >= threshold


def scale_logits(logits: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    temperature = _as_column(temperature, logits).clamp_min(MIN_TEMPERATURE)
    return logits / temperature


def min_p_keep(probs: torch.Tensor, min_p: float | torch.Tensor) -> torch.Tensor:
    """Min-p (Nguyen et al. 2024): keep tokens with probability >= min_p x the top probability.

    `probs` are the already temperature-scaled probabilities (transformers' MinPLogitsWarper and
    vLLM cut after temperature). min_p = 0 keeps every token; the top token is always kept.
    """
    min_p = _as_column(min_p, probs)
    return probs >= min_p * probs.amax(dim=-1, keepdim=True)


def top_n_sigma_keep(logits: torch.Tensor, n_sigma: float | torch.Tensor) -> torch.Tensor:
    """Top-nσ (Tang et al. 2024): keep tokens whose logit is >= max logit - n·σ.

    σ is the standard deviation of the row's logits over the vocabulary (Bessel-corrected, as
    torch.std and the reference implementations; over a real vocabulary the correction is
    ~1e-5). Max and σ both scale by 1/T, so the kept set is the same whether computed on the raw
    logits or on logits/T with the same n: it does not depend on temperature. Masked (-inf)
    logits are left out of σ.
    """
    n_sigma = _as_column(n_sigma, logits)
    finite = torch.isfinite(logits)
    if bool(finite.all()):
        sigma = logits.std(dim=-1, keepdim=True)
    else:
        count = finite.sum(dim=-1, keepdim=True)
        values = logits.masked_fill(~finite, 0.0)
        mean = values.sum(dim=-1, keepdim=True) / count
        squares = ((values - mean) * finite).square().sum(dim=-1, keepdim=True)
        sigma = (squares / (count - 1).clamp_min(1)).sqrt()
    return logits >= logits.amax(dim=-1, keepdim=True) - n_sigma * sigma


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of softmax(logits), as ``[..., 1]``; -inf logits contribute 0."""
    probs = torch.softmax(logits.float(), dim=-1)
    return -torch.special.xlogy(probs, probs).sum(dim=-1, keepdim=True)


# EDT divides by the entropy: a one-hot row (H = 0) must give the floor temperature, not NaN.
MIN_EDT_ENTROPY = 1e-12


def edt_temperature(
    logits: torch.Tensor, t0: float | torch.Tensor, base: float | torch.Tensor, theta: float | torch.Tensor
) -> torch.Tensor:
    """EDT (Zhang et al. 2024): T = T0 · N^(θ/H), H the entropy of the untempered softmax(logits).

    With N in (0, 1), T rises towards T0 as the model gets less sure and falls towards 0 on
    confident steps. H -> 0 gives N^inf = 0, clamped to MIN_TEMPERATURE. Returns ``[..., 1]``.
    """
    t0, base, theta = (_as_column(v, logits.float()) for v in (t0, base, theta))
    exponent = theta / token_entropy(logits).clamp_min(MIN_EDT_ENTROPY)
    return (t0 * torch.pow(base, exponent)).clamp_min(MIN_TEMPERATURE)


def decoding_logits_and_temperature(
    logits: torch.Tensor,
    temperature: float | torch.Tensor,
    top_p: float | torch.Tensor,
    top_k: int | None = None,
    *,
    min_p: float | torch.Tensor | None = None,
    n_sigma: float | torch.Tensor | None = None,
    edt_base: float | torch.Tensor | None = None,
    edt_theta: float | torch.Tensor | None = None,
    maxima: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The inference distribution's logits and the temperature each row actually used (``[..., 1]``).
    `maxima`: None, or `widened`'s block maxima of these [rows, V] float32 logits (a shortcut the fused
    kernel takes; the result is the same).

    Order: top-nσ on the raw logits (temperature-invariant); temperature (with EDT, `temperature`
    is T0 and T comes from the raw logits' entropy); top-k; hard top-p; min-p. This is
    transformers' warper order (temperature, top-k, top-p, min-p) and vLLM's. Min-p is relative
    to the top token, which every earlier cut keeps, so it cuts the same tokens before or after
    top-p's renormalisation. Removed tokens get -inf.
    """
    logits = logits.float()
    if edt_theta is not None:
        temperature = edt_temperature(
            logits, temperature, DEFAULT_EDT_BASE if edt_base is None else edt_base, edt_theta
        )
    if n_sigma is not None:
        logits = logits.masked_fill(~top_n_sigma_keep(logits, n_sigma), float("-inf"))
    temperature = _as_column(temperature, logits).clamp_min(MIN_TEMPERATURE)
    if n_sigma is not None:
        maxima = None  # they describe the logits before top-nσ's cut
    fused = _fused_cut(logits, temperature, top_p, maxima) if top_k is None and min_p is None else None
    if fused is not None:
        return fused, temperature
    scaled = logits / temperature
    keep_k = top_k_keep(scaled, top_k)
    if keep_k is not None:
        scaled = scaled.masked_fill(~keep_k, float("-inf"))
    cut_p = not bool((_as_column(top_p, scaled) >= 1.0).all())
    if not cut_p and min_p is None:
        return scaled, temperature  # no cut anywhere: skip the softmax and the vocabulary sort
    probs = torch.softmax(scaled, dim=-1)
    keep = hard_top_p_keep(probs, top_p) if cut_p else None
    if min_p is not None:
        keep_min = min_p_keep(probs, min_p)
        keep = keep_min if keep is None else keep & keep_min
    return torch.where(keep, scaled, float("-inf")), temperature  # one pass (masked_fill clones first)


def decoding_logits(
    logits: torch.Tensor,
    temperature: float | torch.Tensor,
    top_p: float | torch.Tensor,
    top_k: int | None = None,
    **adaptive: float | torch.Tensor | None,
) -> torch.Tensor:
    """Logits of the inference distribution: temperature, then optional top-k, then hard top-p.

    Removed tokens get -inf, so ``softmax`` of the result is the distribution we sample from.
    The order (temperature before top-p) matches transformers' warper order and vLLM. The
    training-free adaptive decoders (`min_p`, `n_sigma`, `edt_base`/`edt_theta`) slot in as
    `decoding_logits_and_temperature` describes.
    """
    return decoding_logits_and_temperature(logits, temperature, top_p, top_k, **adaptive)[0]


def decoding_distribution(
    logits: torch.Tensor,
    temperature: float | torch.Tensor,
    top_p: float | torch.Tensor,
    mode: str = "hard",
    top_k: int | None = None,
    alpha: float = DEFAULT_SOFT_TOP_P_ALPHA,
    **adaptive: float | torch.Tensor | None,
) -> torch.Tensor:
    """(logits, T, p, mode) -> the final probability distribution.

    mode="hard" is what generation samples from; mode="soft" is the differentiable version the
    heads are trained through (top-k and the adaptive cuts are not differentiable and are refused there).
    """
    if mode == "hard":
        return torch.softmax(decoding_logits(logits, temperature, top_p, top_k, **adaptive), dim=-1)
    if mode == "soft":
        if top_k or any(v is not None for v in adaptive.values()):
            raise ValueError("top_k, min_p, n_sigma and EDT have no soft (differentiable) form; use mode='hard'")
        return soft_top_p(torch.softmax(scale_logits(logits, temperature), dim=-1), top_p, alpha)
    raise ValueError(f"unknown mode {mode!r}: expected 'hard' or 'soft'")


def distribution_features(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """The top-p head's four "enhanced" inputs from softmax(logits / T):
    max prob, entropy, variance (unbiased, as torch.var) and top-5 mass, as ``[..., 4]``.
    Without gradients, CPU float32 rows go through the fused kernel (see `FUSED_KERNEL`).
    """
    if logits.dtype != torch.float32:  # at a decode step every torch call counts (`_fused_features`)
        logits = logits.float()
    temperature = _as_column(temperature, logits).clamp_min(MIN_TEMPERATURE)
    fused = _fused_features(logits, temperature)
    if fused is not None:
        return fused
    probs = torch.softmax(logits / temperature, dim=-1)
    top5_values = torch.topk(probs, min(5, probs.size(-1)), dim=-1).values
    max_prob = top5_values[..., :1]
    # +1e-8 inside the log matches the official head, so official checkpoints see the same inputs.
    # (Fused dot products: this runs at every decoding step, on [rows, V].)
    entropy = -torch.linalg.vecdot(probs, torch.log(probs + 1e-8)).unsqueeze(-1)
    # probs sum to 1, so the mean is 1/V and sum((p - 1/V)^2) = sum(p^2) - 1/V: one pass
    vocab = probs.size(-1)
    variance = (torch.linalg.vecdot(probs, probs) - 1.0 / vocab).clamp_min(0).unsqueeze(-1) / (vocab - 1)
    top5 = top5_values.sum(dim=-1, keepdim=True)
    return torch.cat([max_prob, entropy, variance, top5], dim=-1)


def nucleus_size(decoded_logits: torch.Tensor) -> torch.Tensor:
    """How many tokens survived the cut (logits above -inf), per row."""
    # a comparison and a count: half the time of isfinite(...).sum() on a [rows, 49k] batch
    return torch.count_nonzero(decoded_logits > float("-inf"), dim=-1)
