"""The kernel's narrowed cut (`distribution.narrowed_cut`) against the cut it narrows: `learned_kernels.learned_cut`'s
rows through engine/sampler.py's `nucleus_blocks`, bit for bit, token ids and padding included."""

from __future__ import annotations

import pytest
import torch

from autodeco_cli.core import distribution, learned_kernels
from autodeco_cli.core.learned_kernels import NUCLEUS_BLOCK
from autodeco_cli.engine.sampler import nucleus_blocks

pytestmark = pytest.mark.skipif(learned_kernels.learned_step() is None, reason="no learned-step kernel here")

VOCAB = 49_152
INF = float("inf")


def awkward_rows(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """bf16-valued logits with per-row T and p: nuclei of one token to past the 64 candidates (the full sort), ties
    at the cutoff inside and across blocks, masked tails, T at the clamp, p = 0 and p = 1, a row kept whole."""
    rows = 12
    scale = torch.tensor([3.0, 5.0, 5.0, 4.0, 6.0, 1.0, 0.3, 3.0, 6.0, 4.0, 2.0, 3.0])
    logits = torch.randn(rows, VOCAB, generator=generator) * scale[:, None]
    logits[2, 1000:1060] = logits[2].max() + 0.5  # 60 tokens tied at the top, over two blocks
    logits[3, 5000:] = -INF  # a masked tail
    logits[4, torch.arange(7, VOCAB, 997)] = logits[4].max() + 1.0  # ties spread over many blocks
    logits[9, : VOCAB - 64] = -INF  # only the last block can be kept
    logits = logits.bfloat16().float()
    temperature = torch.tensor([0.7, 1.0, 0.6, 0.9, 1.5, 0.05, 1.3, 0.8, 1.0, 0.6, 0.01, 0.3])
    top_p = torch.tensor([0.95, 0.9, 0.5, 0.99, 0.3, 0.95, 0.97, 0.0, 1.0, 0.9, 0.9, 0.62])
    return logits, temperature, top_p


def reference(logits, temperature, top_p, maxima):
    kernel = learned_kernels.learned_step()
    temperature = temperature.clamp_min(distribution.MIN_TEMPERATURE)  # as the sampler's cut clamps it
    cut = learned_kernels.learned_cut(kernel, logits, temperature, top_p, distribution.NUCLEUS_CANDIDATES, maxima)
    return nucleus_blocks(cut)


def assert_narrowed_as_the_cut(logits, temperature, top_p, maxima) -> bool:
    """Returns whether the rows were narrowed (not whole)."""
    with torch.inference_mode():
        got = distribution.narrowed_cut(logits, temperature[:, None], top_p[:, None], maxima)
    if bool((top_p >= 1).all()):
        assert got is None  # no cut: the caller's division
        return False
    expected = reference(logits, temperature, top_p, maxima)
    assert got is not None
    assert torch.equal(got[0], expected.logits)
    assert (got[1] is None) == (expected.token_ids is None)
    if got[1] is not None:
        assert torch.equal(got[1], expected.token_ids)
    return got[1] is not None


@pytest.mark.parametrize("with_maxima", [False, True], ids=["rows", "block-maxima"])
def test_the_narrowed_cut_is_the_cut_narrowed(with_maxima):
    logits, temperature, top_p = awkward_rows(torch.Generator().manual_seed(3))
    maxima = distribution.widened(logits.bfloat16())[1] if with_maxima else None
    narrowed = []
    # every row alone (most narrow), then the batch (whole: row 8 keeps every token), then the rows without it
    for which in [[r] for r in range(len(logits))] + [list(range(len(logits))), [0, 1, 2, 3, 5, 7, 9, 10, 11]]:
        rows = logits[which].contiguous()
        narrowed.append(
            assert_narrowed_as_the_cut(
                rows, temperature[which], top_p[which], None if maxima is None else maxima[which]
            )
        )
    assert narrowed[-1] and not narrowed[-2] and not narrowed[8] and 8 < sum(narrowed) < len(narrowed)


def test_overflow_padding_and_one_token_rows():
    """A row whose max / T overflows (inf - inf: nothing kept) leaves the rows whole, as `nucleus_blocks` does; rows
    keeping one token each narrow to one block; the padding of shorter rows is -inf over token ids 0-63."""
    generator = torch.Generator().manual_seed(8)
    logits = torch.randn(3, VOCAB, generator=generator) * 4
    logits[1, 123] = 3e38  # / 0.01 (the clamp) is +inf
    assert not assert_narrowed_as_the_cut(logits, torch.tensor([0.7, 1e-4, 0.7]), torch.tensor([0.9, 0.5, 0.9]), None)
    assert assert_narrowed_as_the_cut(logits[[0, 2]].contiguous(), torch.tensor([0.7, 0.7]), torch.zeros(2), None)
    short = logits[[0, 2]].contiguous()
    short[1, 64:] = -INF  # row 1: a nucleus in block 0 only; row 0 wider
    with torch.inference_mode():
        narrowed, token_ids = distribution.narrowed_cut(short, torch.tensor([[0.5], [0.7]]), torch.tensor([[0.9]] * 2))
    count = (narrowed[1].view(-1, NUCLEUS_BLOCK).amax(-1) > -INF).sum()
    assert narrowed.shape[1] > NUCLEUS_BLOCK and count == 1
    assert torch.equal(token_ids[1, NUCLEUS_BLOCK:], torch.arange(NUCLEUS_BLOCK).repeat(narrowed.shape[1] // 64 - 1))
    assert bool((narrowed[1, NUCLEUS_BLOCK:] == -INF).all())


def test_where_the_kernel_does_not_take_the_rows():
    """None (the caller cuts and narrows): NaN or +inf in a row, every p at 1, a vocabulary of no whole number of
    blocks, under autograd."""
    logits = torch.randn(2, VOCAB, generator=torch.Generator().manual_seed(1))
    t, p = torch.full((2, 1), 0.7), torch.full((2, 1), 0.9)
    with_nan = logits.clone()
    with_nan[1, 5] = float("nan")
    with torch.inference_mode():
        assert distribution.narrowed_cut(with_nan, t, p) is None
        assert distribution.narrowed_cut(logits, t, torch.ones(2, 1)) is None
        assert distribution.narrowed_cut(logits[:, :-8].contiguous(), t, p) is None
        assert distribution.narrowed_cut(logits, t, p) is not None
    assert distribution.narrowed_cut(logits, t, p) is None  # autograd on: torch's path


def test_a_cut_finds_its_nucleus_in_the_tail_past_the_last_block():
    """The candidates include the tokens past the last 16-wide block (a vocabulary of no whole number of blocks)."""
    logits = torch.randn(3, 3001, generator=torch.Generator().manual_seed(2)) * 2
    logits[:, 3000] = logits.amax(dim=-1) + 1.0  # the max, alone in the tail, holding most of the mass at T 0.5
    logits[1, 2995] = logits[1, 3000]  # and a tie for it in the tail
    kernel = learned_kernels.learned_step()
    cut = learned_kernels.learned_cut(kernel, logits, torch.full((3,), 0.5), torch.tensor([0.5, 0.5, 0.0]), 8)
    kept = [row.isfinite().nonzero().flatten().tolist() for row in cut]
    assert kept == [[3000], [2995, 3000], [3000]]
