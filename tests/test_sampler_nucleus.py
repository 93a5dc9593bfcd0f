"""The sampler's softmax over the nucleus's blocks against the softmax over the whole vocabulary:
each kept token's probability bit for bit, the same tokens with mass, the same draws and sizes."""

from __future__ import annotations

import pytest
import torch

from autodeco_cli.core import learned_kernels
from autodeco_cli.core.decoding import make_strategy
from autodeco_cli.core.distribution import decoding_logits, narrowed_cut, nucleus_size
from autodeco_cli.core.heads import fresh_heads
from autodeco_cli.core.learned_kernels import NUCLEUS_BLOCK
from autodeco_cli.engine import sampler as sampler_module
from autodeco_cli.engine.requests import Request
from autodeco_cli.engine.sampler import NucleusBlocks, Sampler, inverse_cdf_tokens, nucleus_blocks

VOCAB = 49_152  # the default model's: 768 blocks
INF = float("inf")


def cut_rows(generator: torch.Generator) -> torch.Tensor:
    """Cut logits as a decode step has them, rows of every kind side by side: nuclei of 1 to ~350
    tokens, ties, raw -inf logits, kept tokens at block edges, kept tokens whose e's are subnormal
    or flush to +0 (mass 0), and a row keeping every 4th block (just under half the vocabulary)."""
    rows = 12
    scale = torch.tensor([3.0, 5.0, 5.0, 4.0, 6.0, 1.0, 5.0, 3.0, 6.0, 4.0, 1.0, 1.0])
    logits = torch.randn(rows, VOCAB, generator=generator) * scale[:, None]
    logits[1] = logits[1].bfloat16().float()  # bf16 logits: many exact ties
    logits[2, 1000:1060] = logits[2].max() - 0.25  # 60 tokens tied inside the nucleus
    logits[3, 5000:] = -INF  # a masked tail
    temperature = torch.tensor([0.7, 1.0, 0.6, 0.9, 1.5, 0.05, 1.3, 0.8, 1.0, 0.6, 1.0, 1.0])[:, None]
    top_p = torch.tensor([0.95, 0.9, 0.95, 0.99, 0.9, 0.95, 0.5, 0.0, 0.97, 0.9, 1.0, 1.0])[:, None]
    decoded = decoding_logits(logits, temperature, top_p)  # row 7: p = 0 keeps one token
    # hand-made rows (p = 1 above left them whole): block edges, masses down to none
    decoded[10] = -INF
    decoded[10, [0, 63, 64, 127, 128, VOCAB - 65, VOCAB - 64, VOCAB - 1]] = torch.tensor(
        [3.0, 3.0, 2.5, -80.0, -100.0, -104.0, -120.0, 3.0]  # e^-83 normal, e^-103 subnormal, e^-107 flushed
    )
    decoded[11] = -INF
    every_fourth = torch.arange(0, VOCAB, 4 * NUCLEUS_BLOCK) + torch.randint(0, NUCLEUS_BLOCK, (VOCAB // 256,))
    decoded[11, every_fourth] = torch.randn(every_fourth.numel(), generator=generator) * 4
    return decoded


def assert_same_probabilities(decoded: torch.Tensor, nucleus: NucleusBlocks) -> None:
    full = torch.softmax(decoded, dim=-1)
    narrow = torch.softmax(nucleus.logits, dim=-1)
    for row in range(decoded.shape[0]):
        with_mass = narrow[row] > 0
        ids = nucleus.token_ids[row, with_mass]
        assert torch.equal(ids, full[row].nonzero().squeeze(-1)), row  # the same tokens, in the same order
        assert torch.equal(narrow[row, with_mass], full[row, ids]), row  # bit for bit


def uniforms_for(draws: list[int], generator: torch.Generator) -> list[float]:
    uniforms = torch.rand(sum(draws), generator=generator, dtype=torch.float64).tolist()
    uniforms[0], uniforms[-1] = 0.0, 1.0 - 2.0**-53  # the ends of [0, 1)
    return uniforms


def test_kept_probabilities_sizes_and_draws_equal_the_full_softmax():
    generator = torch.Generator().manual_seed(23)
    decoded = cut_rows(generator)
    nucleus = nucleus_blocks(decoded)
    assert nucleus.token_ids is not None and nucleus.logits.shape[1] < VOCAB // 2  # it did narrow
    sizes = nucleus_size(decoded)
    assert sizes[7] == 1 and sizes[10] == 8 and sizes.max() > 300 and len(set(sizes.tolist())) > 8
    assert torch.equal(nucleus_size(nucleus.logits), sizes)
    assert_same_probabilities(decoded, nucleus)
    draws = [64] * decoded.shape[0]
    uniforms = uniforms_for(draws, generator)
    full = inverse_cdf_tokens(torch.softmax(decoded, dim=-1), draws, uniforms)
    narrow = inverse_cdf_tokens(torch.softmax(nucleus.logits, dim=-1), draws, uniforms, nucleus.token_ids)
    assert narrow == full
    assert {full[64 * 10 + d] for d in range(64)} <= {0, 63, 64, 127, 128, VOCAB - 65, VOCAB - 1}


@pytest.mark.parametrize("rows", [1, 2, 33])
def test_one_token_nuclei_and_batch_sizes(rows):
    generator = torch.Generator().manual_seed(rows)
    logits = torch.randn(rows, VOCAB, generator=generator) * 4
    decoded = decoding_logits(logits, 0.6, 0.0)  # greedy-like: one token per row
    nucleus = nucleus_blocks(decoded)
    assert nucleus.logits.shape == (rows, NUCLEUS_BLOCK)
    assert_same_probabilities(decoded, nucleus)
    assert inverse_cdf_tokens(
        torch.softmax(nucleus.logits, -1), [2] * rows, [0.0, 0.999] * rows, nucleus.token_ids
    ) == [t for t in logits.argmax(dim=-1).tolist() for _ in range(2)]


def test_rows_left_whole():
    """Where narrowing cannot be shown to give the same bits, or would not save reading the rows:
    the whole vocabulary kept, over half the blocks live, NaN and +inf, a vocabulary of no whole
    number of blocks, non-contiguous rows."""
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(3, VOCAB, generator=generator)
    kept_all = decoding_logits(logits, 0.7, torch.tensor([[0.9], [1.0], [0.9]]))
    half = torch.full((1, VOCAB), -INF)
    half[0, : VOCAB // 2 + NUCLEUS_BLOCK : NUCLEUS_BLOCK] = 1.0
    with_nan, with_inf = logits[:2].clone(), logits[:2].clone()
    with_nan[1, 7], with_inf[0, 9] = float("nan"), INF
    odd = decoding_logits(torch.randn(2, VOCAB + 8, generator=generator), 0.7, 0.9)
    strided = decoding_logits(logits, 0.7, 0.9).t().contiguous().t()
    for decoded in (kept_all, half, with_nan, with_inf, odd, strided):
        nucleus = nucleus_blocks(decoded)
        assert nucleus.token_ids is None and nucleus.logits is decoded


def requests_and_rows(strategies, rows: int) -> tuple[list[Request], list[list[int]]]:
    requests = [
        Request(key=i, input_ids=[1], strategy=strategies[i % len(strategies)], seed=700 + i) for i in range(2 * rows)
    ]
    return requests, [[2 * r, 2 * r + 1] for r in range(rows)]


def whole_rows(decoded: torch.Tensor) -> NucleusBlocks:
    return NucleusBlocks(decoded, None)


def spy_on_narrowing(monkeypatch) -> list[tuple[str, bool]]:
    """Each decoding group's narrowing as it happens: (by the kernel's cut or by `nucleus_blocks`, narrowed?)."""
    narrowed = []

    def by_kernel(*args):
        result = narrowed_cut(*args)
        if result is not None:
            narrowed.append(("kernel", result[1] is not None))
        return result

    def by_blocks(decoded):
        result = nucleus_blocks(decoded)
        narrowed.append(("blocks", result.token_ids is not None))
        return result

    monkeypatch.setattr(sampler_module, "narrowed_cut", by_kernel)
    monkeypatch.setattr(sampler_module, "nucleus_blocks", by_blocks)
    return narrowed


def sample_whole_rows(monkeypatch) -> None:
    monkeypatch.setattr(sampler_module, "narrowed_cut", lambda *args: None)
    monkeypatch.setattr(sampler_module, "nucleus_blocks", whole_rows)


@pytest.mark.parametrize("inference", [False, True], ids=["autograd", "inference-mode"])
@pytest.mark.parametrize(
    ("strategies", "narrows", "plain"),
    [
        (
            [make_strategy("static", 0.6, 0.95), make_strategy("static", 1.0, 0.5), make_strategy("static", 0.8, 0.9)],
            1,
            1,
        ),
        ([make_strategy("static", 0.6, 0.95), make_strategy("static", 0.8, 1.0)], 0, 1),  # p = 1 keeps every token
        ([make_strategy("static", 0.7, 0.9, top_k=50), make_strategy("min-p", 1.0, min_p=0.05)], 2, 0),
        ([make_strategy("top-n-sigma", 1.0, n_sigma=1.0), make_strategy("edt", 0.8, 0.9, edt_theta=0.5)], 2, 0),
    ],
    ids=["static", "static-p-1", "top-k-min-p", "n-sigma-edt"],
)
def test_sampler_steps_equal_the_full_softmax_steps(monkeypatch, strategies, narrows, plain, inference):
    """Tokens, temperatures, p's and nucleus sizes of whole sampler steps: narrowed vs whole rows.
    `narrows`: how many of the step's decoding groups (one per top-k and adaptive kind) narrow; `plain`: how many
    groups have neither, which under inference mode (the engine's) the kernel's cut narrows."""
    generator = torch.Generator().manual_seed(31)
    rows = 10
    logits = torch.randn(rows, VOCAB, generator=generator) * torch.linspace(3.0, 8.0, rows)[:, None]
    logits[3] = logits[3].bfloat16().float()
    requests, row_members = requests_and_rows(strategies, rows)
    narrowed = spy_on_narrowing(monkeypatch)
    with torch.inference_mode(inference):
        step = Sampler(requests, None, record_nucleus=True).step(row_members, logits, None)
        sample_whole_rows(monkeypatch)
        assert step == Sampler(requests, None, record_nucleus=True).step(row_members, logits, None)
    assert sum(narrow for _, narrow in narrowed) == narrows
    kernel = inference and learned_kernels.learned_step() is not None
    assert sum(by == "kernel" for by, _ in narrowed) == (plain if kernel else 0)
    assert len({s.nucleus for s in step.values()}) > 3


def test_learned_steps_equal_the_full_softmax_steps(monkeypatch):
    """The heads' T̂/P̂ per row (so nuclei of different sizes), several steps of one sampler."""
    heads = fresh_heads(48, seed=4)
    generator = torch.Generator().manual_seed(12)
    rows = 8
    requests, row_members = requests_and_rows([make_strategy("autodeco")], rows)
    batches = [
        (torch.randn(rows, 48, generator=generator), torch.randn(rows, VOCAB, generator=generator) * (4 + 2 * step))
        for step in range(4)
    ]

    def run() -> list[dict]:
        sampler = Sampler(requests, heads, record_nucleus=True)
        with torch.inference_mode():
            return [sampler.step(row_members, logits, hidden) for hidden, logits in batches]

    narrowed = spy_on_narrowing(monkeypatch)
    steps = run()
    sample_whole_rows(monkeypatch)
    assert steps == run()
    assert len(narrowed) == len(batches) and all(narrow for _, narrow in narrowed)
    kernel = learned_kernels.learned_step() is not None
    assert {by for by, _ in narrowed} == {"kernel" if kernel else "blocks"}
    assert len({s.nucleus for step in steps for s in step.values()}) > 3
