"""The decoding math against plain-Python reference implementations."""

from __future__ import annotations

import math
import random

import pytest
import torch

from autodeco_cli.core.distribution import (
    MIN_TEMPERATURE,
    NUCLEUS_CANDIDATES,
    decoding_distribution,
    decoding_logits,
    distribution_features,
    hard_top_p_keep,
    nucleus_cut,
    nucleus_size,
    scale_logits,
    soft_top_p,
    top_k_keep,
)

# ---- reference implementations (python loops, no tensor tricks) ---------------------------


def ref_order(probs: list[float]) -> list[int]:
    """Descending by probability, ties broken by the lower token id."""
    return sorted(range(len(probs)), key=lambda i: (-probs[i], i))


def ref_hard_keep(probs: list[float], p: float) -> list[bool]:
    if p >= 1.0:
        return [True] * len(probs)  # p = 1 means no cut (as vLLM), even where fp cumsums hit 1 early
    keep = [False] * len(probs)
    mass_before = 0.0
    for rank, i in enumerate(ref_order(probs)):
        if rank == 0 or mass_before < p:
            keep[i] = True
        mass_before += probs[i]
    return keep


def ref_soft(probs: list[float], p: float, alpha: float) -> list[float]:
    weights = [0.0] * len(probs)
    cumulative = 0.0
    for i in ref_order(probs):
        cumulative += probs[i]
        weights[i] = math.exp(-alpha * max(0.0, cumulative - p))
    masked = [pr * w for pr, w in zip(probs, weights)]
    total = sum(masked)
    return [m / total for m in masked]


def ref_decoding(logits: list[float], T: float, p: float, top_k: int | None, return_kept: bool = False):
    T = max(T, MIN_TEMPERATURE)
    scaled = [x / T for x in logits]
    alive = [True] * len(scaled)
    if top_k and 0 < top_k < len(scaled):
        kth = sorted(scaled, reverse=True)[top_k - 1]
        alive = [x >= kth for x in scaled]
    m = max(x for x, a in zip(scaled, alive) if a)
    exps = [math.exp(x - m) if a else 0.0 for x, a in zip(scaled, alive)]
    z = sum(exps)
    probs = [e / z for e in exps]
    keep = ref_hard_keep(probs, p)
    keep = [k and a for k, a in zip(keep, alive)]
    final = [pr if k else 0.0 for pr, k in zip(probs, keep)]
    z = sum(final)
    dist = [f / z for f in final]
    return (dist, sum(keep)) if return_kept else dist


def random_probs(
    generator: torch.Generator, rows: int, vocab: int, ties: bool = False, dtype=torch.float64
) -> torch.Tensor:
    logits = torch.randn(rows, vocab, generator=generator, dtype=dtype) * 2.0
    if ties:
        # quantise so several tokens share exactly the same logit (and probability)
        logits = torch.round(logits)
    return torch.softmax(logits, dim=-1)


P_VALUES = [1e-6, 0.05, 0.3, 0.5, 0.9, 0.95, 0.999, 1.0]


# ---- hard top-p ----------------------------------------------------------------------------


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("p", P_VALUES)
def test_hard_top_p_matches_reference(p, ties):
    gen = torch.Generator().manual_seed(1234)
    probs = random_probs(gen, rows=16, vocab=23, ties=ties)
    keep = hard_top_p_keep(probs, p)
    assert keep.dtype == torch.bool and keep.shape == probs.shape
    for row in range(probs.size(0)):
        expected = ref_hard_keep(probs[row].tolist(), p)
        assert keep[row].tolist() == expected, f"row {row}, p={p}"


def test_hard_top_p_ties_break_by_token_id():
    probs = torch.tensor([[0.1, 0.3, 0.3, 0.3]], dtype=torch.float64)
    # mass before: token1 -> 0, token2 -> 0.3, token3 -> 0.6
    assert hard_top_p_keep(probs, 0.2).tolist() == [[False, True, False, False]]
    assert hard_top_p_keep(probs, 0.5).tolist() == [[False, True, True, False]]
    # all four equal: p tiny keeps exactly token 0
    flat = torch.full((1, 4), 0.25)
    assert hard_top_p_keep(flat, 1e-6).tolist() == [[True, False, False, False]]


def test_hard_top_p_extremes():
    gen = torch.Generator().manual_seed(7)
    probs = random_probs(gen, rows=32, vocab=50, dtype=torch.float32)
    tiny = hard_top_p_keep(probs, 1e-6)
    assert tiny.sum(-1).tolist() == [1] * 32
    assert torch.equal(tiny.float().argmax(-1), probs.argmax(-1))
    assert hard_top_p_keep(probs, 0.0).sum(-1).tolist() == [1] * 32  # p = 0 degrades to greedy
    full = hard_top_p_keep(probs, 1.0)
    assert full.all(), "p = 1 must keep the whole vocabulary"


def test_hard_top_p_per_row_tensor_p_and_batch_shapes():
    gen = torch.Generator().manual_seed(3)
    probs = random_probs(gen, rows=2 * 3, vocab=17).reshape(2, 3, 17)
    p = torch.rand(2, 3, generator=gen, dtype=torch.float64)
    for p_arg in (p, p.unsqueeze(-1)):  # [...] and [..., 1] are both accepted
        keep = hard_top_p_keep(probs, p_arg)
        assert keep.shape == (2, 3, 17)
        for a in range(2):
            for b in range(3):
                assert keep[a, b].tolist() == ref_hard_keep(probs[a, b].tolist(), float(p[a, b]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_hard_top_p_low_precision_dtypes(dtype):
    """hard_top_p_keep is a public pure function on ``[..., V]`` tensors; bf16/fp16 probabilities
    (a bf16 model's softmax) must work like float32 on the same (rounded) values."""
    gen = torch.Generator().manual_seed(17)
    probs = random_probs(gen, rows=4, vocab=33, dtype=torch.float32).to(dtype)
    keep = hard_top_p_keep(probs, 0.7)
    assert keep.tolist() == hard_top_p_keep(probs.float(), 0.7).tolist()


def test_hard_top_p_accepts_tensors_that_require_grad():
    probs = torch.softmax(torch.randn(3, 12), -1).requires_grad_()
    assert hard_top_p_keep(probs, 0.5).tolist() == hard_top_p_keep(probs.detach(), 0.5).tolist()


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8, 0.95])
def test_hard_top_p_matches_transformers_warper(p):
    from transformers import TopPLogitsWarper

    gen = torch.Generator().manual_seed(99)
    logits = torch.randn(64, 101, generator=gen, dtype=torch.float64) * 3
    probs = torch.softmax(logits, dim=-1)
    ours = hard_top_p_keep(probs, p)
    theirs = torch.isfinite(TopPLogitsWarper(top_p=p)(None, logits.clone()))
    # skip rows where p sits within float noise of a cumulative-mass boundary
    sorted_probs = torch.sort(probs, dim=-1, descending=True).values
    mass_before = torch.cumsum(sorted_probs, -1) - sorted_probs
    clean = ((mass_before - p).abs() > 1e-9).all(-1)
    assert clean.sum() > 50
    assert torch.equal(ours[clean], theirs[clean])


# ---- partial-sort nucleus == full-sort nucleus, exactly -------------------------------------


def full_sort_keep(probs: torch.Tensor, top_p) -> torch.Tensor:
    """The nucleus as it was cut before the partial sort: every row sorted in full."""
    top_p = top_p.to(probs.dtype)  # a [..., 1] column
    sorted_probs = torch.sort(probs, dim=-1, descending=True).values
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    size = (mass_before < top_p).sum(dim=-1, keepdim=True).clamp_min(1)
    size = torch.where(top_p >= 1.0, torch.full_like(size, probs.size(-1)), size)
    cutoff = sorted_probs.gather(-1, size - 1)
    above = probs > cutoff
    tied = probs == cutoff
    room = size - above.sum(dim=-1, keepdim=True)
    return above | (tied & (torch.cumsum(tied.int(), dim=-1) <= room))


def _nucleus_cases():
    """(name, probs, top_p column) rows that stress the candidate shortcut and its fallback."""
    gen = torch.Generator().manual_seed(2024)
    vocab = 3000
    cases = []
    for scale in (0.3, 1.0, 3.0, 8.0, 20.0):  # flat (nucleus of thousands) .. peaked (one token)
        logits = torch.randn(24, vocab, generator=gen) * scale
        p = torch.rand(24, 1, generator=gen)
        cases.append((f"randn*{scale}", torch.softmax(logits, -1), p))
    # bf16-rounded logits: many exact ties, often right at the cutoff
    logits = (torch.randn(24, vocab, generator=gen) * 4).bfloat16().float()
    cases.append(("bf16 logits", torch.softmax(logits / 0.6, -1), torch.full((24, 1), 0.95)))
    # integer logits: huge tie classes
    logits = torch.randint(0, 4, (24, vocab), generator=gen).float() * 2
    cases.append(("integer logits", torch.softmax(logits, -1), torch.rand(24, 1, generator=gen)))
    # nuclei of exactly candidates-1, candidates, candidates+1 tokens: equal top tokens, tiny tail
    k = NUCLEUS_CANDIDATES
    rows = []
    for size in (k - 1, k, k + 1, 2 * k):
        row = torch.full((vocab,), 1e-9)
        row[torch.randperm(vocab, generator=gen)[:size]] = 1.0
        rows.append(row / row.sum())
    cases.append(("nucleus at the candidate edge", torch.stack(rows), torch.full((len(rows), 1), 0.999)))
    # p exactly at a cumulative-mass boundary of the head
    probs = torch.softmax(torch.randn(8, vocab, generator=gen) * 6, -1)
    head = torch.sort(probs, -1, descending=True).values
    boundary = torch.cumsum(head, -1)[:, [0, 3, 10, k - 1, k, k + 5, 10, 2]].diagonal().unsqueeze(-1)
    cases.append(("p on a boundary", probs, boundary))
    # p = 0, p = 1 and p > 1 mixed in one batch; -inf-masked logits (top-k before top-p)
    logits = torch.randn(6, vocab, generator=gen) * 2
    logits[:3, 100:] = float("-inf")
    cases.append(
        ("mixed p, masked logits", torch.softmax(logits, -1), torch.tensor([[0.0], [1.0], [1.5], [0.5], [1.0], [1e-7]]))
    )
    return cases


@pytest.mark.parametrize("candidates", [1, 4, NUCLEUS_CANDIDATES])
def test_partial_sort_nucleus_equals_full_sort(candidates):
    for name, probs, p in _nucleus_cases():
        size, cutoff = nucleus_cut(probs, p, candidates=candidates)
        full_size, full_cutoff = nucleus_cut(probs, p, candidates=probs.size(-1))
        assert torch.equal(size, full_size) and torch.equal(cutoff, full_cutoff), name
        expected = full_sort_keep(probs, p)
        assert torch.equal(hard_top_p_keep(probs, p), expected), name
        assert torch.equal(expected.sum(-1, keepdim=True), torch.where(p >= 1.0, probs.size(-1), size)), name


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_partial_sort_nucleus_low_and_high_precision(dtype):
    gen = torch.Generator().manual_seed(5)
    for scale in (0.5, 4.0, 15.0):
        probs = torch.softmax(torch.randn(2, 3, 700, generator=gen) * scale, -1).to(dtype)  # [..., V] batch shape too
        p = torch.rand(2, 3, generator=gen)
        assert torch.equal(hard_top_p_keep(probs, p), full_sort_keep(probs, p.unsqueeze(-1).to(dtype))), (dtype, scale)


def test_decoding_logits_unchanged_by_the_partial_sort():
    """The sampled distribution is bit-for-bit what the full-vocabulary sort gave."""
    gen = torch.Generator().manual_seed(11)
    logits = torch.randn(16, 5000, generator=gen) * 5
    logits[3] = logits[3].bfloat16().float()  # ties
    T = torch.rand(16, 1, generator=gen) + 0.3
    p = torch.rand(16, 1, generator=gen)
    scaled = logits / T
    expected = scaled.masked_fill(~full_sort_keep(torch.softmax(scaled, -1), p), float("-inf"))
    assert torch.equal(decoding_logits(logits, T, p), expected)


# ---- top-k, temperature, decoding_logits / decoding_distribution ---------------------------


def test_top_k_keep():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0, 2.5]])
    assert top_k_keep(logits, 2).tolist() == [[False, True, False, False, True]]
    assert top_k_keep(logits, None) is None
    assert top_k_keep(logits, 0) is None
    assert top_k_keep(logits, 5) is None


def test_scale_logits_clamps_temperature():
    logits = torch.tensor([[1.0, 2.0]])
    assert torch.allclose(scale_logits(logits, 0.5), logits * 2)
    assert torch.allclose(scale_logits(logits, 0.0), logits / MIN_TEMPERATURE)
    assert torch.isfinite(scale_logits(logits * 1e3, 1e-9)).all()


@pytest.mark.parametrize("T", [0.01, 0.3, 1.0, 1.7, 1.99])
@pytest.mark.parametrize("p", [1e-6, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("top_k", [None, 5])
def test_decoding_distribution_matches_reference(T, p, top_k):
    gen = torch.Generator().manual_seed(int(T * 100) + int(p * 1000))
    logits = torch.randn(8, 29, generator=gen) * 2.5
    dist = decoding_distribution(logits, T, p, mode="hard", top_k=top_k)
    assert dist.shape == logits.shape
    assert torch.allclose(dist.sum(-1), torch.ones(8), atol=1e-5)
    decoded = decoding_logits(logits, T, p, top_k)
    for row in range(8):
        ref, kept = ref_decoding(logits[row].double().tolist(), T, p, top_k, return_kept=True)
        assert torch.allclose(dist[row], torch.tensor(ref, dtype=torch.float32), atol=1e-5), (row, T, p, top_k)
        assert int(nucleus_size(decoded[row])) == kept, (row, T, p, top_k)
    if p == 1e-6:
        assert nucleus_size(decoded).tolist() == [1] * 8


def test_decoding_distribution_per_row_parameters():
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 3, 31, generator=gen)
    T = torch.rand(4, 3, generator=gen) * 1.9 + 0.05
    p = torch.rand(4, 3, generator=gen)
    dist = decoding_distribution(logits, T, p)
    assert dist.shape == (4, 3, 31)
    assert torch.allclose(dist.sum(-1), torch.ones(4, 3), atol=1e-5)
    for a in range(4):
        for b in range(3):
            expected = torch.tensor(
                ref_decoding(logits[a, b].double().tolist(), float(T[a, b]), float(p[a, b]), None), dtype=torch.float32
            )
            assert torch.allclose(dist[a, b], expected, atol=1e-5)


def test_decoding_distribution_soft_mode_sums_to_one_and_rejects_top_k():
    gen = torch.Generator().manual_seed(11)
    logits = torch.randn(5, 40, generator=gen)
    for T in (0.01, 0.7, 1.99):
        for p in (1e-6, 0.4, 1.0):
            dist = decoding_distribution(logits, T, p, mode="soft")
            assert torch.isfinite(dist).all()
            assert torch.allclose(dist.sum(-1), torch.ones(5), atol=1e-5)
    with pytest.raises(ValueError):
        decoding_distribution(logits, 1.0, 0.9, mode="soft", top_k=5)
    with pytest.raises(ValueError):
        decoding_distribution(logits, 1.0, 0.9, mode="nucleus")


# ---- soft top-p --------------------------------------------------------------------------


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("alpha", [1.0, 30.0])
def test_soft_top_p_matches_reference(p, alpha, ties):
    gen = torch.Generator().manual_seed(42)
    probs = random_probs(gen, rows=6, vocab=19, ties=ties)
    out = soft_top_p(probs, p, alpha=alpha)
    assert torch.allclose(out.sum(-1), torch.ones(6, dtype=torch.float64))
    for row in range(6):
        expected = torch.tensor(ref_soft(probs[row].tolist(), p, alpha), dtype=torch.float64)
        assert torch.allclose(out[row], expected, atol=1e-10), row


def test_soft_top_p_p_one_is_identity():
    gen = torch.Generator().manual_seed(8)
    probs = random_probs(gen, rows=4, vocab=30)
    assert torch.allclose(soft_top_p(probs, 1.0), probs, atol=1e-9)


def test_soft_top_p_gradcheck_in_p_and_T():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 12, generator=gen, dtype=torch.float64)
    T = torch.tensor([[0.6], [1.1], [1.7]], dtype=torch.float64, requires_grad=True)
    p = torch.tensor([[0.35], [0.6], [0.85]], dtype=torch.float64, requires_grad=True)

    def f(T, p):
        return decoding_distribution(logits, T, p, mode="soft", alpha=5.0)

    assert torch.autograd.gradcheck(f, (T, p), eps=1e-6, atol=1e-5)
    out = f(T, p)
    (out * torch.arange(12, dtype=torch.float64)).sum().backward()
    assert T.grad.abs().sum() > 0 and p.grad.abs().sum() > 0


def test_soft_top_p_finite_difference_in_p():
    gen = torch.Generator().manual_seed(4)
    probs = torch.softmax(torch.randn(1, 15, generator=gen, dtype=torch.float64) * 0.5, -1)
    cumulative = torch.cumsum(torch.sort(probs, -1, descending=True).values, -1)
    # p between ranks 2 and 4: the mask is then a non-trivial function of p (when the top token
    # alone exceeds p every weight shares the factor exp(alpha p) and the gradient is exactly 0)
    p0 = float(cumulative[0, 2] + cumulative[0, 3]) / 2
    p = torch.tensor([[p0]], dtype=torch.float64, requires_grad=True)
    weights = torch.arange(15, dtype=torch.float64)
    loss = (soft_top_p(probs, p, alpha=30.0) * weights).sum()
    loss.backward()
    h = 1e-6
    plus = (soft_top_p(probs, p0 + h, alpha=30.0) * weights).sum()
    minus = (soft_top_p(probs, p0 - h, alpha=30.0) * weights).sum()
    numeric = (plus - minus) / (2 * h)
    assert p.grad.item() == pytest.approx(numeric.item(), rel=1e-4, abs=1e-8)
    assert abs(p.grad.item()) > 1e-3


def test_soft_top_p_converges_to_hard_cut_as_alpha_grows():
    """As alpha -> inf the soft mask keeps {top token} U {tokens whose *inclusive* cumsum <= p}.

    That set equals the hard nucleus (exclusive cumsum < p) except for the token that crosses p,
    which hard top-p keeps and the soft mask drops; when p lies just below a cumulative boundary
    the two coincide and soft(alpha large) ~= hard renormalised.
    """
    gen = torch.Generator().manual_seed(21)
    probs = random_probs(gen, rows=8, vocab=25)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    cumulative = torch.cumsum(sorted_probs, -1)
    for row in range(8):
        for k in (0, 2, 5):
            p = float(cumulative[row, k]) - 1e-7  # just below the boundary after rank k
            hard = decoding_distribution(torch.log(probs[row : row + 1]), 1.0, p, mode="hard").double()
            errors = [
                (soft_top_p(probs[row : row + 1], p, alpha=alpha) - hard).abs().max().item()
                for alpha in (10.0, 100.0, 1000.0, 10000.0)
            ]
            assert errors[-1] < 1e-2, (row, k, errors)
            assert errors[0] > errors[-1]
        # p inside the crossing token's mass: the limit is the inclusive-cumsum set
        p = float(cumulative[row, 1] + 0.5 * sorted_probs[row, 2])
        limit_keep = torch.zeros(25, dtype=torch.bool)
        limit_keep[order[row][cumulative[row] <= p]] = True
        limit_keep[order[row, 0]] = True
        limit = torch.where(limit_keep, probs[row], 0.0)
        limit = limit / limit.sum()
        assert torch.allclose(soft_top_p(probs[row : row + 1], p, alpha=1e4)[0], limit, atol=1e-6)


@pytest.mark.parametrize("alpha", [30.0, 300.0, 3000.0])
def test_soft_top_p_large_alpha_is_still_a_distribution(alpha):
    """When the top token alone exceeds p, every weight exp(-alpha * (cumsum - p)) is < 1; with a
    steep alpha they all underflow (float32: below ~exp(-103)) and the result is all zeros instead
    of a distribution concentrated on the top token. The mask is invariant to a common factor, so
    it can be computed relative to the top token's weight without changing any finite result."""
    probs = torch.tensor([[0.9, 0.05, 0.03, 0.02]], dtype=torch.float32)
    out = soft_top_p(probs, 0.1, alpha=alpha)
    assert torch.isfinite(out).all()
    assert out.sum().item() == pytest.approx(1.0, abs=1e-5), out
    assert out.argmax().item() == 0


def test_soft_top_p_gradient_reaches_probs():
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(2, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    out = soft_top_p(torch.softmax(logits, -1), 0.7)
    out[:, 0].sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


# ---- features ---------------------------------------------------------------------------


def test_distribution_features_reference():
    rng = random.Random(0)
    logits = torch.tensor([[rng.gauss(0, 2) for _ in range(12)] for _ in range(3)])
    T = torch.tensor([[0.5], [1.0], [1.8]])
    feats = distribution_features(logits, T)
    assert feats.shape == (3, 4)
    for row in range(3):
        probs = torch.softmax(logits[row].double() / T[row].double(), -1).tolist()
        mean = sum(probs) / len(probs)
        expected = [
            max(probs),
            -sum(q * math.log(q + 1e-8) for q in probs),
            sum((q - mean) ** 2 for q in probs) / (len(probs) - 1),
            sum(sorted(probs, reverse=True)[:5]),
        ]
        assert feats[row].tolist() == pytest.approx(expected, rel=1e-4, abs=1e-6)
