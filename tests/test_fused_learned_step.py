"""The fused learned-step kernel (learned_kernels' learned_step_f32) against torch's path, on the
nucleus prefilter's hard cases at SmolLM2's vocabulary (ties at the cutoff, rows that fall back
to the full sort, nuclei at the candidate edge, P̂ = 1, tiny P̂, P̂ = 0, batch 1 and 32).

The kernel's exp is its own, so its probabilities may differ from torch.softmax's in the last
bits. Its cut is therefore checked exactly against a brute-force stable full sort of its own
probabilities, and against torch's path for identical kept sets wherever P̂ is not within a
float step of 1 (there the fp32 cumsum saturates, and a last-bit change of the sum moves the
boundary by tokens of ~1e-9 mass each).

Torch's own softmax differs by CPU. On AVX-512 CPUs (the Intel Xeon these tests grew on) its probabilities were the
kernel's to 2e-6 and its cuts the kernel's exactly. On an AVX2-only CPU (a Zen 3 EPYC) torch's exp is ~1.2e-5 from
float64's at exponents near -13 and it sums a row in another order than the kernel, whose fp32 normaliser over 49,152
tokens is ~6e-6 from float64's on a flat row: there the probabilities are compared with float64's, and the cuts with
torch's by the mass of the tokens they disagree on.
"""

from __future__ import annotations

import math

import pytest
import torch

from autodeco_cli.core import cpu_features, cpu_kernels, distribution, kernel_build, learned_kernels
from autodeco_cli.core.distribution import MIN_TEMPERATURE, decoding_logits, distribution_features
from test_nucleus_prefilter import CASES, VOCAB

pytestmark = pytest.mark.skipif(
    learned_kernels.learned_step() is None, reason="the learned-step kernel needs AVX-512 or AVX2 and a C compiler"
)
IDS = [case[0] for case in CASES]
# where the kernel is its AVX-512 build, torch's softmax gives its probabilities to 2e-6 (see the module doc)
AVX512 = kernel_build.level_for("learned_step_f32", cpu_features.cpu_flags()) == ("avx512f",)


def kernel_probs(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    column = temperature.float().clamp_min(MIN_TEMPERATURE).reshape(-1).contiguous()
    return learned_kernels.learned_probs(learned_kernels.learned_step(), logits.float().contiguous(), column)


def full_sort_cut(probs: torch.Tensor, logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor):
    """Stable full sort of `probs`, keep while the mass before is below P̂ (the first always,
    all for P̂ >= 1), scattered back onto logits / T."""
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    keep_sorted = (torch.cumsum(sorted_probs, dim=-1) - sorted_probs) < top_p.float()
    keep_sorted[:, 0] = True
    keep_sorted |= top_p.float() >= 1.0
    keep = torch.empty_like(keep_sorted).scatter(-1, order, keep_sorted)
    return (logits.float() / temperature.float().clamp_min(MIN_TEMPERATURE)).masked_fill(~keep, float("-inf"))


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the kernel's cut and feature calls, so a test knows the dispatch happened."""
    calls = {"cut": 0, "features": 0}
    cut, features = learned_kernels.learned_cut, learned_kernels.learned_features

    def counting_cut(*args):
        calls["cut"] += 1
        return cut(*args)

    def counting_features(*args):
        calls["features"] += 1
        return features(*args)

    monkeypatch.setattr(learned_kernels, "learned_cut", counting_cut)
    monkeypatch.setattr(learned_kernels, "learned_features", counting_features)
    return calls


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cut_equals_a_full_sort_of_its_probabilities(case, kernel_calls):
    _, logits, temperature, top_p = case
    with torch.no_grad():
        got = decoding_logits(logits, temperature, top_p)
    assert kernel_calls["cut"] == 1
    expected = full_sort_cut(kernel_probs(logits, temperature), logits, temperature, top_p)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cut_keeps_the_tokens_torch_keeps(case):
    _, logits, temperature, top_p = case
    torch_path = decoding_logits(logits, temperature, top_p)  # gradients on: torch's path
    with torch.no_grad():
        got = decoding_logits(logits, temperature, top_p)
    exact = (top_p < 1 - 1e-6).squeeze(-1) | (top_p >= 1).squeeze(-1)
    probs = torch.softmax(logits.float() / temperature.clamp_min(MIN_TEMPERATURE), dim=-1)
    differs = torch.isinf(got) != torch.isinf(torch_path)
    if AVX512:
        assert torch.equal(got[exact], torch_path[exact])
    else:  # the two paths' probabilities differ by up to ~2e-5 (module doc): so may their cuts, on that little mass
        assert ((probs * differs).sum(-1) < 5e-5).all()
    # P̂ within a float step of 1: the tokens kept by one path only carry next to no mass
    assert float((probs[~exact] * differs[~exact]).sum()) < 1e-5 * (1 if AVX512 else 5)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_features_match_torch(case, kernel_calls):
    _, logits, temperature, _ = case
    expected = distribution_features(logits, temperature)  # gradients on: torch's path
    with torch.no_grad():
        got = distribution_features(logits, temperature)
    assert kernel_calls["features"] == 1 and got.shape == expected.shape
    max_prob, entropy, variance, top5 = got.unbind(-1)
    e_max, e_entropy, e_variance, e_top5 = expected.unbind(-1)
    assert torch.allclose(max_prob, e_max, rtol=1e-5, atol=1e-7)
    assert torch.allclose(top5, e_top5, rtol=1e-5, atol=1e-7)
    assert torch.allclose(entropy, e_entropy, rtol=1e-5, atol=5e-5)
    # sum p² - 1/V cancels when p is flat: compare on the scale of its two terms
    assert torch.allclose(variance, e_variance, rtol=1e-4, atol=1e-7 / VOCAB)


def test_probabilities_are_torch_softmax_to_float_rounding():
    _, logits, temperature, _ = CASES[1]
    if AVX512:
        expected = torch.softmax(logits / temperature.clamp_min(MIN_TEMPERATURE), dim=-1)
        assert torch.allclose(kernel_probs(logits, temperature), expected, rtol=2e-6, atol=1e-30)
    else:  # torch's softmax is ~1.2e-5 off float64's here (module doc); the kernel's fp32 normaliser ~6e-6
        expected = torch.softmax((logits / temperature.clamp_min(MIN_TEMPERATURE)).double(), dim=-1)
        assert torch.allclose(kernel_probs(logits, temperature).double(), expected, rtol=1e-5, atol=1e-30)


def test_every_row_sorted_in_full_when_candidates_cover_the_vocabulary(monkeypatch):
    """bench_vllm.py's "full sort" row sets NUCLEUS_CANDIDATES to the vocabulary or more."""
    _, logits, temperature, top_p = CASES[7]  # the mixed batch: head rows and fallback rows
    monkeypatch.setattr(distribution, "NUCLEUS_CANDIDATES", 1 << 30)
    with torch.no_grad():
        got = decoding_logits(logits, temperature, top_p)
    assert torch.equal(got, full_sort_cut(kernel_probs(logits, temperature), logits, temperature, top_p))


def test_the_vllm_learned_step_goes_through_the_kernel(kernel_calls):
    from types import SimpleNamespace

    from autodeco_cli.core.heads import fresh_heads
    from autodeco_cli.engine.vllm import model as vllm_model

    gen = torch.Generator().manual_seed(5)
    heads = fresh_heads(48, seed=5)
    hidden, logits = torch.randn(32, 48, generator=gen), torch.randn(32, VOCAB, generator=gen) * 6
    with torch.inference_mode():  # as vLLM's model runner calls compute_logits
        out = vllm_model._learned_logits(SimpleNamespace(autodeco_heads=heads), logits, hidden)
    assert kernel_calls == {"cut": 1, "features": 1}
    step = vllm_model.LAST_STEP
    temperature, top_p = step.temperature.unsqueeze(-1), step.top_p.unsqueeze(-1)
    assert torch.equal(out, full_sort_cut(kernel_probs(logits, temperature), logits, temperature, top_p))


def test_torch_path_where_the_kernel_does_not_apply(monkeypatch, kernel_calls):
    _, logits, temperature, top_p = CASES[1]
    decoding_logits(logits, temperature, top_p)  # gradients wanted
    with torch.no_grad():
        decoding_logits(logits, temperature, top_p, top_k=50)  # top-k: not fused
        decoding_logits(logits, temperature, torch.ones_like(top_p))  # no cut: a division
        assert decoding_logits(logits.double(), temperature, top_p).dtype == torch.float32  # upcast: fused
        monkeypatch.setattr(distribution, "FUSED_KERNEL", False)
        decoding_logits(logits, temperature, top_p)
        distribution_features(logits, temperature)
    assert kernel_calls == {"cut": 1, "features": 0}


def test_rows_with_nan_take_torch_path():
    _, logits, temperature, top_p = CASES[1]
    logits = logits.clone()
    logits[3, 7] = float("nan")
    with torch.no_grad():
        got = decoding_logits(logits, temperature, top_p)
        features = distribution_features(logits, temperature)
    exactly = {"rtol": 0, "atol": 0, "equal_nan": True}
    torch.testing.assert_close(got, decoding_logits(logits, temperature, top_p), **exactly)
    torch.testing.assert_close(features, distribution_features(logits, temperature), **exactly)


def test_cut_on_rows_in_adversarial_orders():
    """Ascending rows make every block of the candidate selection insert; a constant row ties
    every token; a row of -inf but a few has a nucleus of zeros past them when P̂ is near 1."""
    ramp = torch.linspace(-20.0, 20.0, VOCAB)
    sparse = torch.full((VOCAB,), float("-inf"))
    sparse[torch.tensor([5, 900, 40000])] = torch.tensor([1.0, 3.0, 2.0])
    rows = torch.stack([ramp, ramp.flip(0), torch.zeros(VOCAB), sparse, (ramp * 3).round() / 3])
    for top_p in (0.0, 0.3, 0.5, 0.999, 1.0 - 1e-7):
        temperature, column = torch.full((5, 1), 0.9), torch.full((5, 1), top_p)
        with torch.no_grad():
            got = decoding_logits(rows, temperature, column)
        assert torch.equal(got, full_sort_cut(kernel_probs(rows, temperature), rows, temperature, column)), top_p


@pytest.mark.parametrize("vocab", [VOCAB, 3001])
@pytest.mark.parametrize("peak", [0.0, 1e6])
def test_blocks_below_the_flush_are_skipped_exactly(vocab, peak):
    """At a low T most 16-wide blocks of a row have every exponent below -88 and skip the exp (their
    e's flush to +0). A block with one token above that must still be computed: e^-80 is a normal
    float, e^-95 is not. Near a large max the exponents come in steps of 4, so not closer."""
    temperature = torch.tensor([[0.02]])
    logits = torch.full((1, vocab), peak - 40.0)  # exponent -2000: every block dead
    logits[0, 0] = peak
    logits[0, 1000] = peak - 80.0 * 0.02  # alone in a dead block
    logits[0, 2000] = peak - 95.0 * 0.02
    logits[0, vocab - 1] = peak - 0.5  # in the tail when vocab % 16 != 0
    expected = torch.softmax(logits / temperature, dim=-1)
    got = kernel_probs(logits, temperature)
    assert got[0, 1000] > 0 and got[0, 2000] == 0
    assert torch.allclose(got, expected, rtol=2e-6, atol=1e-30)


@pytest.mark.parametrize("side", [-1.0, 1.0])
def test_features_leave_out_only_tokens_below_the_floor_within_its_bound(side):
    """The features count the tokens whose exponent is at least -30 (the kernel's FEATURES_FLOOR). The worst
    case for the bound: every token but the max just below the floor (left out: entropy off by at most
    (V - 1) e^-30 x 18.5 ~ 8.5e-8) or just above it (counted: torch's value to float rounding)."""
    temperature = torch.tensor([[0.5]])
    logits = torch.full((1, VOCAB), (-30.0 + side * 0.01) * 0.5)
    logits[0, 0] = 0.0
    expected = distribution_features(logits, temperature)  # gradients on: torch's path
    with torch.no_grad():
        got = distribution_features(logits, temperature)
    left_out = VOCAB * math.exp(-30.0) * 18.5
    assert abs(got[0, 1] - expected[0, 1]) <= (left_out if side < 0 else 0.0) + 1e-8
    if side < 0:  # each left-out token is worth ~e^-30 x 18.4 of entropy: the gap is the bound's own size
        assert abs(got[0, 1] - expected[0, 1]) > left_out / 4
    assert torch.allclose(got[0, [0, 2, 3]], expected[0, [0, 2, 3]], rtol=1e-6, atol=1e-12)


def reference_build():
    """The kernel built with AUTODECO_KERNEL_REFERENCE: every block of a row walked, a log for every
    token and the top 5 in a pass of their own (the previous build's arithmetic, without its
    shortcuts), for the fast build to be held to bit for bit."""
    import ctypes

    source = "#define AUTODECO_KERNEL_REFERENCE 1\n" + kernel_build.kernel_source("learned_step_f32")
    level = kernel_build.level_for("learned_step_f32", cpu_features.cpu_flags())  # the fast build's
    function = ctypes.CDLL(str(kernel_build.build("learned_step_f32", source, level))).autodeco_learned_step_f32
    function.argtypes, function.restype = cpu_kernels.SIGNATURES["learned_step_f32"], ctypes.c_int
    return function


def _awkward_rows(gen: torch.Generator) -> torch.Tensor:
    """Real-sized rows from peaked to flat, with -inf, ±0, tiny, huge and bf16-rounded logits."""
    rows = torch.randn(24, VOCAB, generator=gen) * torch.tensor([0.5, 2.0, 4.0, 8.0]).repeat(6)[:, None]
    rows += torch.randn(24, 1, generator=gen) * 10
    rows[:, ::97] = float("-inf")
    rows[:, 5::131], rows[:, 7::173], rows[:, 11::199] = 0.0, -0.0, 1e-30
    rows[3, 100:200], rows[4, 300:310], rows[6, 50:60] = 1e20, -1e25, 1e32
    rows[5] = rows[5].bfloat16().float()
    return rows


def _kernel_outputs(kernel, rows, temperature, top_p):
    return (
        learned_kernels.learned_features(kernel, rows, temperature),
        learned_kernels.learned_probs(kernel, rows, temperature),
        learned_kernels.learned_cut(kernel, rows, temperature, top_p, distribution.NUCLEUS_CANDIDATES),
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_shortcuts_give_the_reference_bits(seed):
    """Skipping the dead blocks (listed first), the top 5 kept on the way and the one log(1e-8) of
    blocks under the floor change no bit of the features, probabilities or cuts, at temperatures
    from the clamp (0.01) to the heads' max (2), on odd and even row counts (the prefetch of the
    next row stops at a thread's last row)."""
    gen = torch.Generator().manual_seed(seed)
    fast, reference = learned_kernels.learned_step(), reference_build()
    rows = _awkward_rows(gen)
    temperature = torch.rand(24, generator=gen) * 1.99 + 0.01
    temperature[:6] = torch.tensor([0.01, 0.05, 0.21, 0.3, 0.6, 2.0])
    top_p = torch.rand(24, generator=gen)
    for count in (24, 7, 1):
        args = (rows[:count].contiguous(), temperature[:count].contiguous(), top_p[:count].contiguous())
        for got, expected in zip(_kernel_outputs(fast, *args), _kernel_outputs(reference, *args)):
            assert torch.equal(got, expected)


def test_shortcuts_give_the_reference_bits_on_the_prefilter_cases():
    fast, reference = learned_kernels.learned_step(), reference_build()
    for name, logits, temperature, top_p in CASES:
        rows = logits.float().reshape(-1, VOCAB).contiguous()
        column = temperature.float().clamp_min(MIN_TEMPERATURE).expand(logits.shape[:-1] + (1,)).reshape(-1)
        p = top_p.float().expand(logits.shape[:-1] + (1,)).reshape(-1).contiguous()
        for got, expected in zip(
            _kernel_outputs(fast, rows, column.contiguous(), p),
            _kernel_outputs(reference, rows, column.contiguous(), p),
        ):
            assert torch.equal(got, expected), name


def test_shortcuts_give_the_reference_bits_on_small_and_uneven_rows():
    """Vocabularies with a tail past the last 16-wide block, fewer tokens than 5 live ones, and
    rows where a single token lives (the rest of the top 5 are the starting zeros)."""
    gen = torch.Generator().manual_seed(3)
    fast, reference = learned_kernels.learned_step(), reference_build()
    for vocab in (8, 13, 37, 3001):
        rows = torch.randn(5, vocab, generator=gen) * 4
        rows[0, 1:] = -1e4  # one live token
        rows[1] = rows[1].round()  # ties
        temperature, top_p = torch.tensor([0.01, 0.3, 1.0, 2.0, 0.05]), torch.tensor([0.9, 0.5, 0.99, 0.0, 1.0])
        for got, expected in zip(
            _kernel_outputs(fast, rows, temperature, top_p), _kernel_outputs(reference, rows, temperature, top_p)
        ):
            assert torch.equal(got, expected), vocab


def test_a_decode_steps_rows_go_in_as_they_are(kernel_calls):
    """[rows, V] with a [rows, 1] T̂ (the sampler's shapes) skip the reshapes; 3-D rows, a [rows] T̂
    and a non-contiguous batch take the general path; all give the same bits."""
    _, logits, temperature, _ = CASES[1]
    column = temperature.float().clamp_min(MIN_TEMPERATURE).expand(logits.shape[0], 1).contiguous()
    with torch.no_grad():
        plain = distribution_features(logits, column)
        assert plain.shape == (logits.shape[0], 4)
        assert torch.equal(distribution_features(logits.unsqueeze(0), column.unsqueeze(0))[0], plain)
        assert torch.equal(distribution_features(logits, column.squeeze(-1)), plain)
        strided = torch.cat([logits, logits], dim=-1)[:, : logits.shape[1]]
        assert torch.equal(distribution_features(strided, column), plain)
    assert kernel_calls["features"] == 4
