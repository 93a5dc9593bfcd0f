"""The sampler's batched inverse-CDF draw against the per-row draw it replaced, bit for bit."""

from __future__ import annotations

import torch

from autodeco_cli.engine.sampler import inverse_cdf_tokens


def one_row_at_a_time(probs: torch.Tensor, draws: list[int], uniforms: list[float]) -> list[int]:
    """The sampler's draw before it was batched: per row, a float64 cumsum over the tokens with
    mass, a searchsorted per uniform, and the last token with mass when u * total rounds to it."""
    with_mass, ids_with_mass = probs.nonzero(as_tuple=True)
    per_row = torch.split(ids_with_mass, torch.bincount(with_mass, minlength=probs.shape[0]).tolist())
    tokens, used = [], 0
    for row, count in enumerate(draws):
        u = torch.tensor(uniforms[used : used + count], dtype=torch.float64)
        used += count
        ids = per_row[row]
        cumulative = torch.cumsum(probs[row, ids].double(), dim=0)
        for pick in torch.searchsorted(cumulative, u * cumulative[-1], right=True).tolist():
            if pick >= len(ids):
                pick = int(torch.nonzero(torch.diff(cumulative, prepend=cumulative.new_zeros(1))).max())
            tokens.append(int(ids[pick]))
    return tokens


def cut_rows(generator: torch.Generator, rows: int, vocab: int) -> torch.Tensor:
    """Softmaxed rows with nuclei of very different sizes (one token up to the whole row), ties and
    masses too small to move a float64 total."""
    logits = torch.randn(rows, vocab, generator=generator) * torch.linspace(0.1, 12.0, rows)[:, None]
    keep = torch.rand(rows, vocab, generator=generator) < torch.linspace(0.0, 1.0, rows)[:, None]
    keep[:, 0] = True
    logits[1, 3:40] = 2.0  # ties
    logits[2, 5] = -200.0  # a mass of ~1e-87 in float64 terms: it does not move the cumsum
    return torch.softmax(logits.masked_fill(~keep, float("-inf")), dim=-1)


def test_batched_draw_equals_the_per_row_draw():
    generator = torch.Generator().manual_seed(3)
    for vocab in (7, 300, 4099):
        probs = cut_rows(generator, 9, vocab)
        draws = [1, 4, 2, 1, 3, 1, 1, 5, 2]
        uniforms = torch.rand(sum(draws), generator=generator, dtype=torch.float64).tolist()
        uniforms[0], uniforms[5] = 0.0, 1.0 - 2.0**-53  # the ends of [0, 1)
        assert inverse_cdf_tokens(probs, draws, uniforms) == one_row_at_a_time(probs, draws, uniforms)


def test_uniforms_at_the_ends_pick_the_first_and_last_token_with_mass():
    probs = torch.tensor([[0.0, 0.25, 0.0, 0.75, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0]])
    top = 1.0 - 2.0**-53
    assert inverse_cdf_tokens(probs, [2, 1], [top, 0.0, top]) == [3, 1, 0]


def test_a_total_reached_exactly_falls_back_to_the_last_token_that_moved_it():
    """u = 1 (outside [0, 1), so only rounding could get there) lands on the total: the pick is
    the last token whose mass changed the float64 cumsum, not a trailing one too small to."""
    probs = torch.tensor([[0.0, 0.5, 0.5, 1e-30], [0.0, 0.25, 0.0, 0.75]])
    draws, uniforms = [1, 1], [1.0, 1.0]
    assert inverse_cdf_tokens(probs, draws, uniforms) == one_row_at_a_time(probs, draws, uniforms) == [2, 3]
