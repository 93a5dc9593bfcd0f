"""Head losses: equal to the official AutoDeco trainer's, in value and in gradient.

The reference below re-states, in plain full-sequence form, what the official HF trainer
(Zacks917/AutoDeco, model/templlm_auto.py: `_compute_temp_loss`, `_compute_top_p_loss`) does:

- temperature loss: on ``[B, L, V]`` logits shifted by one, positions whose label is -100 are
  ignored; positions where the frozen model's argmax equals the label are dropped when a U(0,1)
  draw is < 0.6; the rest get CE(logits / T.clamp_min(0.01), y), weighted by the frozen
  softmax(logits)[y] (no grad), and averaged over the kept positions;
- top-p loss: probs = softmax(logits / T.clamp_min(1e-8)) over the whole vocabulary, sorted
  descending, inclusive cumsum, soft mask exp(-30 * relu(cumsum - P)) scattered back to vocabulary
  order, renormalised as masked / (sum + 1e-9), NLL of log(renorm + 1e-9), same weight, averaged
  over all labelled positions. T is *not* detached there.

The official code sorts with torch.sort's default (unstable) tie order; the target's mask value
then depends on how ties happen to be ordered. We pin the reference to a stable sort (ties by
token id), which is what the engine documents, so tied inputs have one well-defined answer.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from autodeco_cli.core.heads import AutoDecoHeads, HeadsConfig
from autodeco_cli.training.losses import (
    easy_token_keep_mask,
    head_losses,
    target_confidence,
    temperature_loss_terms,
    top_p_loss_terms,
)

IGNORE = -100
MODES = ("joint", "temperature", "top_p")


# ---- the reference, full-sequence, as the official trainer computes it ---------------------------


def reference_temperature_loss(logits, temperature, labels, rand_vals, drop_probability=0.6):
    """logits [B, L, V], temperature [B, L, 1], labels [B, L], rand_vals [B, L-1]."""
    unscaled = logits[:, :-1, :]
    temp = temperature[:, :-1, :].clamp_min(1e-2)
    shift_labels = labels[:, 1:]
    valid = shift_labels != IGNORE
    with torch.no_grad():
        base_probs = torch.softmax(unscaled, dim=-1)
        correct = base_probs.argmax(dim=-1) == shift_labels.clamp_min(0)
        drop = (rand_vals < drop_probability) & valid & correct
        keep = valid & ~drop
    scaled = (unscaled / temp)[keep]
    y = shift_labels[keep]
    if y.numel() == 0:
        return torch.tensor(0.0)
    ce = F.cross_entropy(scaled, y, reduction="none")
    weight = torch.softmax(unscaled[keep], dim=-1).gather(1, y.unsqueeze(-1)).squeeze(-1).detach()
    return (ce * weight).mean()


def reference_top_p_loss(logits, temperature, top_p, labels, steepness=30.0):
    unscaled = logits[:, :-1, :]
    temp = temperature[:, :-1, :]
    p = top_p[:, :-1, :]
    shift_labels = labels[:, 1:]
    probs = torch.softmax(unscaled / temp.clamp_min(1e-8), dim=-1)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    cumulative = torch.cumsum(sorted_probs, dim=-1)
    decay = torch.exp(-steepness * torch.relu(cumulative - p))
    mask = torch.zeros_like(probs).scatter(-1, order, decay)
    masked = probs * mask
    renorm = masked / (masked.sum(dim=-1, keepdim=True) + 1e-9)
    log_probs = torch.log(renorm + 1e-9)
    valid = shift_labels != IGNORE
    y = shift_labels[valid]
    nll = F.nll_loss(log_probs[valid], y, reduction="none")
    weight = torch.softmax(unscaled[valid], dim=-1).gather(1, y.unsqueeze(-1)).squeeze(-1).detach()
    return (nll * weight).mean()


def reference_losses(logits, temperature, top_p, labels, rand_vals, mode, drop_probability=0.6):
    out = {}
    if mode in ("joint", "temperature"):
        out["temperature_loss"] = reference_temperature_loss(logits, temperature, labels, rand_vals, drop_probability)
    if mode in ("joint", "top_p"):
        out["top_p_loss"] = reference_top_p_loss(logits, temperature, top_p, labels)
    out["loss"] = sum(out.values())
    return out


def engine_losses(logits, temperature, top_p, labels, rand_vals, mode, drop_probability=0.6, chunk_size=1024):
    """The engine's flat API on the same data: only the labelled (shifted) positions."""
    shift_labels = labels[:, 1:]
    valid = shift_labels != IGNORE
    return head_losses(
        logits[:, :-1][valid],
        shift_labels[valid],
        temperature[:, :-1][valid],
        top_p[:, :-1][valid],
        rand_vals[valid],
        mode=mode,
        easy_drop_probability=drop_probability,
        chunk_size=chunk_size,
    )


# ---- test data -------------------------------------------------------------------------------------


def make_case(kind: str, seed: int = 0, B: int = 3, L: int = 9, V: int = 37):
    """Random batch with prompt (-100) and padding positions, some easy (label == argmax) targets,
    plus the edge cases named by `kind`."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, L, V, generator=g) * 3.0
    labels = torch.randint(0, V, (B, L), generator=g)
    labels[:, :2] = IGNORE  # prompt
    labels[1, -2:] = IGNORE  # right padding
    # make about half of the labelled targets "easy" (the model's argmax)
    easy = torch.rand(B, L, generator=g) < 0.5
    shifted_easy = torch.zeros_like(labels)
    shifted_easy[:, 1:] = logits.argmax(-1)[:, :-1]  # logits at t-1 predict the label at t
    labels = torch.where(easy & (labels != IGNORE), shifted_easy, labels)
    temperature = 0.1 + 1.8 * torch.rand(B, L, 1, generator=g)
    top_p = 0.05 + 0.9 * torch.rand(B, L, 1, generator=g)
    if kind == "ties":
        # exact ties in the logits, including the target tied with the top and with other tokens
        logits = torch.randint(-3, 4, (B, L, V), generator=g).float()
        for b in range(B):
            for t in range(1, L):
                if labels[b, t] != IGNORE and (b + t) % 3 == 0:
                    top = logits[b, t - 1].max()
                    logits[b, t - 1, labels[b, t]] = top  # tied argmax: argmax picks the lowest id
    elif kind == "extreme":
        edge_t = torch.tensor([0.005, 0.0099, 0.01, 0.0101, 0.02, 1.98, 1.999, 2.0])
        edge_p = torch.tensor([1e-4, 0.001, 0.01, 0.5, 0.99, 0.999, 0.9999, 1.0])
        temperature = edge_t[torch.randint(0, len(edge_t), (B, L, 1), generator=g)]
        top_p = edge_p[torch.randint(0, len(edge_p), (B, L, 1), generator=g)]
    elif kind == "peaked":
        logits = logits * 8.0  # near one-hot distributions; many probabilities underflow
    rand_vals = torch.rand(B, L - 1, generator=g)
    return logits, temperature, top_p, labels, rand_vals


def _grads(loss, tensors):
    grads = torch.autograd.grad(loss, tensors, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, grads)]


# ---- equality with the reference ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["random", "ties", "extreme", "peaked"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", [0, 1])
def test_losses_and_gradients_equal_official(kind, mode, seed):
    logits, temperature, top_p, labels, rand_vals = make_case(kind, seed)
    t_ref = temperature.clone().requires_grad_(True)
    p_ref = top_p.clone().requires_grad_(True)
    t_eng = temperature.clone().requires_grad_(True)
    p_eng = top_p.clone().requires_grad_(True)

    ref = reference_losses(logits, t_ref, p_ref, labels, rand_vals, mode)
    eng = engine_losses(logits, t_eng, p_eng, labels, rand_vals, mode)

    assert set(eng) == set(ref)
    for key in ref:
        torch.testing.assert_close(
            eng[key].detach(), ref[key].detach(), rtol=2e-5, atol=2e-6, msg=f"{kind}/{mode}: {key}"
        )

    g_ref = _grads(ref["loss"], [t_ref, p_ref])
    g_eng = _grads(eng["loss"], [t_eng, p_eng])
    for name, a, b in zip(("dT", "dP"), g_eng, g_ref):
        scale = b.abs().max().clamp_min(1.0)
        torch.testing.assert_close(a / scale, b / scale, rtol=1e-4, atol=1e-5, msg=f"{kind}/{mode}: {name}")
    if mode != "temperature":
        assert g_ref[1].abs().sum() > 0  # the case really exercises the top-p gradient
    else:
        assert torch.count_nonzero(g_eng[1]) == 0  # temperature loss alone does not depend on P


@pytest.mark.parametrize("drop", [0.0, 0.3, 0.6, 0.9])
def test_temperature_loss_equals_official_for_any_drop_probability(drop):
    logits, temperature, top_p, labels, rand_vals = make_case("random", seed=3)
    ref = reference_temperature_loss(logits, temperature, labels, rand_vals, drop)
    eng = engine_losses(logits, temperature, top_p, labels, rand_vals, "temperature", drop)["temperature_loss"]
    torch.testing.assert_close(eng, ref, rtol=2e-5, atol=2e-6)


def test_chunking_does_not_change_values_or_gradients():
    logits, temperature, top_p, labels, rand_vals = make_case("random", seed=5, B=4, L=12)
    results = []
    for chunk in (1, 3, 1024):
        t = temperature.clone().requires_grad_(True)
        p = top_p.clone().requires_grad_(True)
        out = engine_losses(logits, t, p, labels, rand_vals, "joint", chunk_size=chunk)
        results.append((out["loss"].detach(), *_grads(out["loss"], [t, p])))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_term_functions_match_reference_per_token():
    logits, temperature, top_p, labels, _ = make_case("random", seed=7)
    shift = labels[:, 1:]
    valid = shift != IGNORE
    flat_logits, y = logits[:, :-1][valid], shift[valid]
    flat_t, flat_p = temperature[:, :-1][valid], top_p[:, :-1][valid]
    w = target_confidence(flat_logits, y)
    torch.testing.assert_close(w, torch.softmax(flat_logits, -1).gather(1, y[:, None]).squeeze(1))
    ce = temperature_loss_terms(flat_logits, y, flat_t, w)
    torch.testing.assert_close(ce, F.cross_entropy(flat_logits / flat_t.clamp_min(0.01), y, reduction="none") * w)
    nll = top_p_loss_terms(flat_logits, y, flat_t, flat_p, w)
    # the per-token reference: mean over one position is that position's term
    for i in range(0, y.numel(), 5):
        one = reference_top_p_loss(
            torch.stack([flat_logits[i], flat_logits[i]])[None],
            torch.stack([flat_t[i], flat_t[i]])[None],
            torch.stack([flat_p[i], flat_p[i]])[None],
            torch.tensor([[IGNORE, int(y[i])]]),
        )
        torch.testing.assert_close(nll[i], one, rtol=2e-5, atol=2e-6)


def test_no_kept_position_gives_zero_loss_with_a_connected_graph():
    V = 11
    logits = torch.randn(4, V)
    targets = logits.argmax(-1)  # all easy
    t = torch.full((4, 1), 0.7, requires_grad=True)
    p = torch.full((4, 1), 0.9, requires_grad=True)
    out = head_losses(logits, targets, t, p, torch.zeros(4), mode="temperature", easy_drop_probability=0.6)
    assert float(out["temperature_loss"].detach()) == 0.0
    out["loss"].backward()  # must not raise
    assert t.grad is not None and torch.count_nonzero(t.grad) == 0


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError):
        head_losses(
            torch.randn(2, 5), torch.tensor([0, 1]), torch.ones(2, 1), torch.ones(2, 1), torch.zeros(2), mode="both"
        )


# ---- gradient paths -----------------------------------------------------------------------------


def test_top_p_loss_gradient_reaches_temperature():
    logits, temperature, top_p, labels, rand_vals = make_case("random", seed=11)
    t = temperature.clone().requires_grad_(True)
    p = top_p.clone().requires_grad_(True)
    out = engine_losses(logits, t, p, labels, rand_vals, "top_p")
    gt, gp = _grads(out["loss"], [t, p])
    assert gt.abs().sum() > 1e-6, "the top-p loss must train T̂ through the soft distribution"
    assert gp.abs().sum() > 1e-6


def _heads_and_inputs(seed=0, H=16, N=40, V=29):
    torch.manual_seed(seed)
    heads = AutoDecoHeads(HeadsConfig(hidden_size=H, head_width=8))
    g = torch.Generator().manual_seed(seed + 100)
    hidden = torch.randn(N, H, generator=g)
    logits = torch.randn(N, V, generator=g) * 2
    targets = torch.randint(0, V, (N,), generator=g)
    uniforms = torch.rand(N, generator=g)
    return heads, hidden, logits, targets, uniforms


def _temp_head_grads(heads, loss):
    params = list(heads.temp_head.parameters())
    return [
        g if g is not None else torch.zeros_like(p)
        for p, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True))
    ]


def test_top_p_head_input_temperature_is_detached():
    heads, hidden, logits, targets, uniforms = _heads_and_inputs()
    temperature, top_p = heads(hidden, logits)
    engine_grads = _temp_head_grads(
        heads, head_losses(logits, targets, temperature, top_p, uniforms, mode="top_p")["loss"]
    )

    # expected: temperature head trained only through the soft distribution (head input detached)
    t = heads.temp_head(hidden)
    p_detached = heads.top_p_head(hidden, t.detach(), logits)
    expected = _temp_head_grads(heads, head_losses(logits, targets, t, p_detached, uniforms, mode="top_p")["loss"])
    # the alternative the paper rules out: T̂ not detached at the top-p head's input
    p_attached = heads.top_p_head(hidden, t, logits)
    attached = _temp_head_grads(heads, head_losses(logits, targets, t, p_attached, uniforms, mode="top_p")["loss"])

    for a, b in zip(engine_grads, expected):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    assert any(not torch.allclose(a, b, rtol=1e-3, atol=1e-7) for a, b in zip(expected, attached)), (
        "the test cannot tell detached from attached"
    )

    # zeroing the soft-distribution path leaves no gradient at all in the temperature head
    temperature, top_p = heads(hidden, logits)
    zeroed = _temp_head_grads(
        heads, head_losses(logits, targets, temperature.detach(), top_p, uniforms, mode="top_p")["loss"]
    )
    assert all(torch.count_nonzero(g) == 0 for g in zeroed)
    assert any(torch.count_nonzero(g) > 0 for g in engine_grads)


def test_temperature_loss_leaves_top_p_head_without_gradient():
    heads, hidden, logits, targets, uniforms = _heads_and_inputs(seed=1)
    temperature, top_p = heads(hidden, logits)
    loss = head_losses(logits, targets, temperature, top_p, uniforms, mode="temperature")["loss"]
    params = list(heads.top_p_head.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads)


def test_top_p_head_features_match_official_formula():
    """Official TopPHead input: [h, T, stats(softmax(logits / (T + 1e-8)))] (T̂ in the normal range)."""
    heads, hidden, logits, _, _ = _heads_and_inputs(seed=2)
    temperature = 0.05 + 1.9 * torch.rand(hidden.size(0), 1)
    probs = torch.softmax(logits / (temperature + 1e-8), dim=-1)
    stats = torch.cat(
        [
            probs.max(-1, keepdim=True)[0],
            -(probs * torch.log(probs + 1e-8)).sum(-1, keepdim=True),
            probs.var(-1, keepdim=True),
            torch.topk(probs, 5, dim=-1).values.sum(-1, keepdim=True),
        ],
        dim=-1,
    )
    expected = heads.top_p_head.mlp(torch.cat([hidden, temperature, stats], dim=-1))
    torch.testing.assert_close(heads.top_p_head(hidden, temperature, logits), expected, rtol=1e-5, atol=1e-6)


# ---- easy-token drop mask -----------------------------------------------------------------------


def test_easy_token_mask_drops_sixty_percent_of_easy_and_no_hard():
    g = torch.Generator().manual_seed(0)
    N, V = 40_000, 23
    logits = torch.randn(N, V, generator=g)
    argmax = logits.argmax(-1)
    easy = torch.rand(N, generator=g) < 0.5
    other = (argmax + torch.randint(1, V, (N,), generator=g)) % V
    targets = torch.where(easy, argmax, other)
    keep = easy_token_keep_mask(logits, targets, torch.rand(N, generator=g), 0.6)
    assert keep[~easy].all(), "hard positions must never be dropped"
    dropped = 1.0 - keep[easy].float().mean().item()
    # binomial sd at n~20k is ~0.0035
    assert abs(dropped - 0.6) < 0.02, dropped
    # drop probability 0 keeps everything
    assert easy_token_keep_mask(logits, targets, torch.rand(N, generator=g), 0.0).all()


def test_easy_token_mask_uses_the_given_uniforms():
    logits = torch.tensor([[3.0, 1.0, 0.0]] * 4)
    targets = torch.tensor([0, 0, 1, 0])
    uniforms = torch.tensor([0.1, 0.7, 0.1, 0.59])
    keep = easy_token_keep_mask(logits, targets, uniforms, 0.6)
    assert keep.tolist() == [False, True, True, False]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_p_loss_matches_the_direct_formula_with_ties_and_extremes(seed):
    """Values and dL/dT̂, dL/dP̂ of the sorted-rank implementation equal autograd through the
    direct formula in float64 (sort with indices, tied logits, a tiny temperature, P̂ on both
    sides of the cumsum)."""
    from autodeco_cli.core.distribution import soft_top_p_weights_sorted
    from autodeco_cli.training.losses import LOG_EPS, RENORM_EPS, top_p_loss_terms

    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(6, 40, generator=gen) * 2).double()
    logits[0, 5] = logits[0, 9]  # a tie
    targets = torch.randint(0, 40, (6,), generator=gen)
    targets[0] = 9
    temperature = torch.tensor([[0.7], [1.3], [0.05], [1.0], [1.9], [0.4]], dtype=torch.float64, requires_grad=True)
    top_p = torch.tensor([[0.5], [0.95], [0.2], [0.99], [0.7], [0.05]], dtype=torch.float64, requires_grad=True)
    weights = torch.rand(6, generator=gen).double()

    def direct(t, p):
        order = torch.sort(logits, dim=-1, descending=True, stable=True)
        probs = torch.softmax(order.values / t.clamp_min(1e-8), dim=-1)
        masked = probs * soft_top_p_weights_sorted(probs, p, 30.0)
        rank = (order.indices == targets.unsqueeze(-1)).nonzero()[:, 1:]
        renorm = masked.gather(-1, rank).squeeze(-1) / (masked.sum(-1) + RENORM_EPS)
        return -torch.log(renorm + LOG_EPS) * weights

    expected = direct(temperature, top_p)
    grad_t, grad_p = torch.autograd.grad(expected.sum(), [temperature, top_p])
    got = top_p_loss_terms(logits, targets, temperature, top_p, weights)
    # the engine computes in float32; compare values and gradients at float32 precision
    assert got.detach().double().tolist() == pytest.approx(expected.detach().tolist(), rel=1e-5, abs=1e-6)
    got_t, got_p = torch.autograd.grad(got.sum(), [temperature, top_p])
    assert got_t.flatten().tolist() == pytest.approx(grad_t.flatten().tolist(), rel=1e-3, abs=1e-5)
    assert got_p.flatten().tolist() == pytest.approx(grad_p.flatten().tolist(), rel=1e-3, abs=1e-5)
