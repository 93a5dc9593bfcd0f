"""The logits' block maxima (learned_kernels.widen_logits): bf16 rows widened to float32 with each 16-wide block's
max, which the learned step and the heads' step then read instead of each row for its max and live blocks.
Every output must be the same bits with them as without, and the sampler's draws from bf16 logits the draws
from their float32 copy."""

from __future__ import annotations

import pytest
import torch

from autodeco_cli.core import distribution, learned_kernels
from autodeco_cli.core.heads import fresh_heads
from test_fused_learned_step import _awkward_rows
from test_nucleus_prefilter import CASES, VOCAB

pytestmark = pytest.mark.skipif(
    learned_kernels.learned_step() is None, reason="the learned-step kernel needs AVX-512 or AVX2 and a C compiler"
)


def _expected_maxima(rows: torch.Tensor) -> torch.Tensor:
    wide = rows.float()
    wide = torch.where(wide.isnan(), float("inf"), wide)
    blocks = wide.shape[1] // learned_kernels.BLOCK_WIDTH
    width = learned_kernels.BLOCK_WIDTH
    return wide[:, : blocks * width].reshape(wide.shape[0], blocks, width).amax(-1)


@pytest.mark.parametrize("vocab", [8, 16, 37, 255, 256, 272, 3001, VOCAB])
def test_widen_is_float_and_gives_each_blocks_max(vocab):
    """The float32 rows are `.float()`'s bits; the maxima each block's, NaN as +inf, on vocabularies with and
    without a tail past the last 16-wide block and past the last 256 (the tree of maxes takes 16 blocks at once)."""
    gen = torch.Generator().manual_seed(vocab)
    rows = (torch.randn(5, vocab, generator=gen) * 8).bfloat16()
    rows[1, ::7] = float("-inf")
    rows[2, vocab // 2] = float("nan")
    rows[3, -1] = float("inf")
    rows[4] = float("-inf")
    wide, maxima = learned_kernels.widen_logits(rows)
    assert wide.dtype == torch.float32 and torch.equal(wide.view(torch.int32), rows.float().view(torch.int32))
    assert torch.equal(maxima, _expected_maxima(rows))


def _outputs(rows, temperature, top_p, maxima):
    """Features, probabilities and cut of `rows`, with the block maxima given or not."""
    kernel = learned_kernels.learned_step()
    return (
        learned_kernels.learned_features(kernel, rows, temperature, maxima),
        learned_kernels.learned_probs(kernel, rows, temperature, maxima),
        learned_kernels.learned_cut(kernel, rows, temperature, top_p, distribution.NUCLEUS_CANDIDATES, maxima),
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_the_learned_step_gives_the_same_bits_with_the_maxima(seed):
    """Features, probabilities and cuts at temperatures from the clamp to 2, on rows from peaked to flat with
    -inf, ±0, tiny and huge values, rounded to bf16 as the LM head leaves them; odd and even row counts."""
    gen = torch.Generator().manual_seed(seed)
    rows = _awkward_rows(gen).bfloat16().contiguous()
    temperature = torch.rand(24, generator=gen) * 1.99 + 0.01
    temperature[:6] = torch.tensor([0.01, 0.05, 0.21, 0.3, 0.6, 2.0])
    top_p = torch.rand(24, generator=gen)
    wide, maxima = learned_kernels.widen_logits(rows)
    for count in (24, 7, 1):
        args = (wide[:count].contiguous(), temperature[:count].contiguous(), top_p[:count].contiguous())
        for got, expected in zip(_outputs(*args, maxima[:count].contiguous()), _outputs(*args, None)):
            assert torch.equal(got, expected)


def test_the_same_bits_on_the_prefilter_cases():
    for name, logits, temperature, top_p in CASES:
        rows = logits.float().reshape(-1, VOCAB).bfloat16().contiguous()
        wide, maxima = learned_kernels.widen_logits(rows)
        column = temperature.float().clamp_min(0.01).expand(logits.shape[:-1] + (1,)).reshape(-1).contiguous()
        p = top_p.float().expand(logits.shape[:-1] + (1,)).reshape(-1).contiguous()
        for got, expected in zip(_outputs(wide, column, p, maxima), _outputs(wide, column, p, None)):
            assert torch.equal(got, expected), name


@pytest.mark.parametrize("vocab", [8, 13, 37, 3001])
def test_the_same_bits_where_the_max_is_past_the_last_block(vocab):
    """The tail past the last 16-wide block has no block max: the row's max there must still be found (and a NaN
    there refuse the row)."""
    gen = torch.Generator().manual_seed(vocab)
    rows = (torch.randn(4, vocab, generator=gen) * 3).bfloat16()
    rows[:, -1] = 40.0
    wide, maxima = learned_kernels.widen_logits(rows)
    temperature, top_p = torch.tensor([0.01, 0.3, 1.0, 2.0]), torch.tensor([0.9, 0.5, 0.99, 0.0])
    for got, expected in zip(_outputs(wide, temperature, top_p, maxima), _outputs(wide, temperature, top_p, None)):
        assert torch.equal(got, expected)
    wide[2, -1] = float("nan")
    with pytest.raises(learned_kernels.NotFinite):
        _outputs(wide, temperature, top_p, maxima)


def test_the_kernel_reads_the_maxima():
    """Maxima that hide every block but the max's leave the other tokens out: the outputs change (so the equal
    bits above are the maxima's doing, not a path that ignores them)."""
    rows = (torch.randn(4, 3001, generator=torch.Generator().manual_seed(5)) * 2).bfloat16()
    wide, maxima = learned_kernels.widen_logits(rows)
    hidden = torch.where(maxima == maxima.amax(-1, keepdim=True), maxima, float("-inf"))
    temperature, top_p = torch.full((4,), 1.0), torch.full((4,), 0.9)
    assert not torch.equal(_outputs(wide, temperature, top_p, hidden)[0], _outputs(wide, temperature, top_p, None)[0])


def test_rows_with_nan_or_inf_are_refused_with_the_maxima_too():
    rows = torch.randn(3, 3001).bfloat16()
    rows[1, 50] = float("nan")
    wide, maxima = learned_kernels.widen_logits(rows)
    for given in (None, maxima):
        with pytest.raises(learned_kernels.NotFinite):
            _outputs(wide, torch.ones(3), torch.full((3,), 0.5), given)


def test_the_heads_step_gives_the_same_bits_with_the_maxima():
    torch.manual_seed(0)
    heads = fresh_heads(64, base_model="test").float().eval()
    with torch.no_grad():
        for p in heads.parameters():
            p.mul_(3)  # T̂ spread over the range, not all near 1
    hidden = torch.randn(9, 64).bfloat16()
    wide, maxima = learned_kernels.widen_logits((torch.randn(9, 3001) * 4).bfloat16())
    step = heads.decode_step()
    with torch.inference_mode():
        assert torch.equal(step(hidden, wide, maxima), step(hidden, wide))


def test_the_sampler_draws_the_same_from_bf16_logits(monkeypatch):
    """A decode step's bf16 logits (the lean path's, in the model's dtype) give every request the token, T and p
    their float32 copy gives: heads, static, EDT and top-nσ (whose cut the maxima do not describe)."""
    from autodeco_cli.core.decoding import make_strategy
    from autodeco_cli.engine.requests import Request
    from autodeco_cli.engine.sampler import Sampler

    torch.manual_seed(1)
    heads = fresh_heads(64, base_model="test").float().eval()
    strategies = [
        make_strategy("autodeco"),
        make_strategy("static", 0.7, 0.9),
        make_strategy("edt", 0.8, 0.9, edt_theta=0.5),
        make_strategy("top-n-sigma", 1.0, n_sigma=1.0),
    ]
    requests = [Request(key=i, input_ids=[1], strategy=s, seed=i) for i, s in enumerate(strategies * 3)]
    row_members = [[i] for i in range(len(requests))]
    logits = (torch.randn(len(requests), VOCAB) * 3).bfloat16()
    hidden = torch.randn(len(requests), 64).bfloat16()
    cuts, learned_cut = [], learned_kernels.learned_cut

    def recorded(*args, **kwargs):
        cuts.append(args[5] if len(args) > 5 else kwargs.get("maxima"))
        return learned_cut(*args, **kwargs)

    monkeypatch.setattr(learned_kernels, "learned_cut", recorded)
    with torch.inference_mode():
        from_bf16 = Sampler(requests, heads, record_nucleus=True).step(row_members, logits, hidden)
        taken = [maxima is not None for maxima in cuts]
        from_fp32 = Sampler(requests, heads, record_nucleus=True).step(row_members, logits.float(), hidden)
    assert from_bf16 == from_fp32
    assert taken and all(taken)  # bf16 rows' cuts read the maxima (float32 rows have none to give)
