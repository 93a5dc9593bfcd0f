"""The nucleus prefilter (sort only each row's top candidates) against a brute-force full sort,
at a real vocabulary size, through the function both engines sample from and through the vLLM
AutoDeco model's `compute_logits` body (which needs no vLLM: it is plain torch).

The reference sorts every row over the whole vocabulary (stable, so ties go by token id), keeps
the positions whose mass before them is below P̂ (at least the top one; P̂ >= 1 keeps all) and
scatters that back: no cutoff, no tie counting, no candidates. Equality is exact.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from autodeco_cli.core import distribution
from autodeco_cli.core.distribution import MIN_TEMPERATURE, NUCLEUS_CANDIDATES, decoding_logits
from autodeco_cli.core.heads import fresh_heads
from autodeco_cli.engine.vllm import model as vllm_model

VOCAB = 49152  # SmolLM2's: the size the prefilter was made for
HIDDEN = 48


def full_sort_decoding(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    scaled = logits.float() / temperature.float().clamp_min(MIN_TEMPERATURE)
    probs = torch.softmax(scaled, dim=-1)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    keep_sorted = (torch.cumsum(sorted_probs, dim=-1) - sorted_probs) < top_p.float()
    keep_sorted[:, 0] = True
    keep_sorted |= top_p.float() >= 1.0
    keep = torch.empty_like(keep_sorted).scatter(-1, order, keep_sorted)
    return scaled.masked_fill(~keep, float("-inf"))


def _tied_rows(gen: torch.Generator, rows: int) -> torch.Tensor:
    """Rows whose nucleus ends inside a class of equal logits spread over random ids."""
    logits = torch.randn(rows, VOCAB, generator=gen) - 8.0
    for row in range(rows):
        ids = torch.randperm(VOCAB, generator=gen)[: 10 + 20 * row]
        logits[row, ids] = 4.0
    return logits


def _edge_rows(gen: torch.Generator) -> torch.Tensor:
    """Nuclei of exactly candidates-1, candidates, candidates+1 and 3x candidates tokens."""
    logits = torch.full((4, VOCAB), -30.0)
    for row, size in enumerate(
        (NUCLEUS_CANDIDATES - 1, NUCLEUS_CANDIDATES, NUCLEUS_CANDIDATES + 1, 3 * NUCLEUS_CANDIDATES)
    ):
        logits[row, torch.randperm(VOCAB, generator=gen)[:size]] = 0.0
    return logits


def _cases():
    """(name, logits, T̂, P̂): random and adversarial rows, batch 1 and 32, fp32 and bf16 logits."""
    gen = torch.Generator().manual_seed(23)
    cases = []
    for scale in (0.5, 3.0, 12.0):  # flat (nuclei of thousands: the fallback) .. peaked
        logits = torch.randn(32, VOCAB, generator=gen) * scale
        temperature = 0.02 + 1.5 * torch.rand(32, 1, generator=gen)
        cases.append((f"randn*{scale}", logits, temperature, torch.rand(32, 1, generator=gen)))
    bf16 = (torch.randn(32, VOCAB, generator=gen) * 4).bfloat16()  # exact ties, often at the cutoff
    cases.append(("bf16 logits", bf16, torch.full((32, 1), 0.7), 0.5 + 0.5 * torch.rand(32, 1, generator=gen)))
    tied = _tied_rows(gen, 6)
    cases.append(
        ("ties at the boundary", tied, torch.ones(6, 1), torch.tensor([[0.05], [0.31], [0.5], [0.77], [0.9], [0.999]]))
    )
    edge = _edge_rows(gen)
    cases.append(("nucleus at the candidate edge", edge, torch.ones(4, 1), torch.full((4, 1), 0.9999)))
    extremes = torch.randn(6, VOCAB, generator=gen) * 3
    extreme_p = torch.tensor([[1.0], [1e-7], [0.0], [1.0 - 1e-7], [1.0], [1e-30]])
    cases.append(("P̂ = 1, tiny P̂", extremes, torch.tensor([[0.5], [0.5], [1.0], [2.0], [1e-4], [0.9]]), extreme_p))
    # all of the above in one batch of 32: head-only rows next to fallback rows
    mixed = torch.cat([tied, edge, extremes, cases[0][1][:16]]).bfloat16().float()
    cases.append(
        (
            "mixed batch of 32",
            mixed,
            torch.cat([torch.ones(10, 1), extremes.new_ones(6, 1) * 0.8, cases[0][2][:16]]),
            torch.cat([cases[4][3], cases[5][3], extreme_p, cases[0][3][:16]]),
        )
    )
    for name, logits, temperature, top_p in list(cases):
        cases.append((name + ", batch 1", logits[-1:], temperature[-1:], top_p[-1:]))
    return cases


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_decoding_logits_equal_the_full_sort(case):
    _, logits, temperature, top_p = case
    assert torch.equal(decoding_logits(logits, temperature, top_p), full_sort_decoding(logits, temperature, top_p))


def test_cases_reach_both_paths():
    """The cases are only adversarial if some rows stay in the head and others fall back."""
    sizes = torch.cat(
        [distribution.nucleus_size(full_sort_decoding(*case[1:])) for case in CASES if "batch 1" not in case[0]]
    )
    assert (sizes == 1).any() and ((sizes > 1) & (sizes <= NUCLEUS_CANDIDATES)).any()
    assert (sizes > NUCLEUS_CANDIDATES).sum() > 10 and (sizes == VOCAB).any()


def test_candidate_count_is_read_at_each_call(monkeypatch):
    """A benchmark can turn the prefilter off in a running engine through this module constant."""
    _, logits, temperature, top_p = CASES[2]  # peaked rows: with the prefilter none is sorted in full
    sorted_rows = []
    full_sort = distribution.sorted_values_descending

    def counting_sort(values):
        sorted_rows.append(values.shape[0])
        return full_sort(values)

    monkeypatch.setattr(distribution, "sorted_values_descending", counting_sort)
    expected = full_sort_decoding(logits, temperature, top_p)
    with_prefilter = decoding_logits(logits, temperature, top_p)
    rows_with_prefilter = sum(sorted_rows)
    monkeypatch.setattr(distribution, "NUCLEUS_CANDIDATES", VOCAB)
    assert torch.equal(decoding_logits(logits, temperature, top_p), expected)
    assert torch.equal(with_prefilter, expected)
    assert rows_with_prefilter < logits.shape[0] and sum(sorted_rows) - rows_with_prefilter == logits.shape[0]


@pytest.mark.parametrize("rows", [1, 32])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_vllm_compute_logits_equal_the_full_sort(rows, dtype, monkeypatch):
    """The AutoDeco model's `compute_logits` body: heads on the base logits, then the shared cut."""
    monkeypatch.setattr(vllm_model, "LAST_STEP", None)
    gen = torch.Generator().manual_seed(rows)
    heads = fresh_heads(HIDDEN, seed=rows)
    model = SimpleNamespace(autodeco_heads=heads)
    hidden = torch.randn(rows, HIDDEN, generator=gen)
    logits = (torch.randn(rows, VOCAB, generator=gen) * 6).to(dtype)
    out = vllm_model._learned_logits(model, logits, hidden)
    with torch.no_grad():
        temperature, top_p = heads(hidden, logits.float())
    assert out.dtype == dtype
    assert torch.equal(out, full_sort_decoding(logits, temperature, top_p).to(dtype))
    step = vllm_model.LAST_STEP
    assert torch.equal(step.raw, logits.float())
    assert torch.equal(step.temperature, temperature.squeeze(-1)) and torch.equal(step.top_p, top_p.squeeze(-1))
