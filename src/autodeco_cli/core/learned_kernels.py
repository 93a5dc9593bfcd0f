"""The learned decoding step's C kernels from Python: `learned_step_f32.c` (the vocabulary-wide work of a step on
float32 rows: the top-p head's features, the nucleus cut as logits or narrowed to the blocks the sampler draws from,
the widening of bf16 logits with their block maxima) and `heads_step_f32.c` (the heads' forward at a decode step in
one call). A few passes per row instead of torch's dozen over the whole batch; `core/distribution.py` and
`core/heads.py` hold the definitions and dispatch. Importing this module registers both kernels' checks against
torch with `cpu_kernels.load`, which builds and loads them (`learned_step()`, `heads_step()`)."""

from __future__ import annotations

import ctypes
import functools
from typing import Callable

import torch

from . import cpu_kernels


def learned_step() -> Callable | None:
    """The learned-step kernel, checked against torch, or None where it cannot run (`cpu_kernels.load`)."""
    return cpu_kernels.load("learned_step_f32")


def heads_step() -> Callable | None:
    """The heads' step kernel, checked against torch, or None where it cannot run (`cpu_kernels.load`)."""
    return cpu_kernels.load("heads_step_f32")


_FEATURES, _CUT, _PROBS = 0, 1, 2


class NotFinite(ValueError):
    """A row with NaN or +inf logits, or none finite: the caller takes torch's path instead."""


def _learned_step(
    kernel: Callable, mode: int, rows: torch.Tensor, temperature, top_p, width: int, candidates=0, maxima=None
):
    out = torch.empty((rows.shape[0], width), dtype=torch.float32)
    status = kernel(
        mode,
        rows.data_ptr(),
        temperature.data_ptr(),
        0 if top_p is None else top_p.data_ptr(),
        out.data_ptr(),
        rows.shape[0],
        rows.shape[1],
        candidates,
        0 if maxima is None else maxima.data_ptr(),
    )
    _raise_for(status)
    return out


def _raise_for(status: int) -> None:
    """A learned-step or heads' step kernel's status as its exception (0: none)."""
    if status == -1:
        raise MemoryError("a CPU kernel could not allocate its scratch rows")
    if status:
        raise NotFinite("a row of logits holds NaN or +inf, or no finite value")


def learned_features(
    kernel: Callable, rows: torch.Tensor, temperature: torch.Tensor, maxima: torch.Tensor | None = None
) -> torch.Tensor:
    """`distribution_features` of contiguous float32 `rows` [R, V] at `temperature` [R] or [R, 1]
    (contiguous, already clamped): [R, 4]. `maxima`: None, or `widen_logits`'s block maxima of these rows."""
    return _learned_step(kernel, _FEATURES, rows, temperature, None, 4, maxima=maxima)


def learned_cut(
    kernel: Callable,
    rows: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    candidates: int,
    maxima: torch.Tensor | None = None,
) -> torch.Tensor:
    """rows / temperature with the hard nucleus at `top_p` [R] kept and -inf elsewhere: [R, V]."""
    return _learned_step(kernel, _CUT, rows, temperature, top_p, rows.shape[1], candidates, maxima)


# The nucleus is sampled from whole blocks of this many token ids. Torch's CPU softmax takes its
# max and its sum lane by lane (a lane holds the positions equal mod the vector width: 16 floats
# with AVX-512, 8 with AVX2), then combines the lanes. A block keeps each token's position mod 64,
# so each lane adds the same values in the same order, and the blocks left out held only -inf,
# whose e's are +0 and move no sum: each kept token's probability is the full row's, bit for bit
# (tests/test_sampler_nucleus.py checks it on this machine's kernel). learned_step_f32.c's BLOCK.
NUCLEUS_BLOCK = 64


def learned_nucleus(
    rows: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, candidates: int, maxima=None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`learned_cut`'s rows narrowed as engine/sampler.py's `nucleus_blocks` narrows them, without the [R, V] of
    -inf's: (the NUCLEUS_BLOCK-wide blocks holding a kept token, in order, padded with -inf to the longest row,
    [R, W x 64]; each column's token id, the padding's 0-63), or (the whole cut, None) where those blocks would
    cover over half a row or a kept logit / T is +inf. The vocabulary must be a whole number of blocks."""
    count, vocab = rows.shape
    if vocab % NUCLEUS_BLOCK:
        raise ValueError(f"a vocabulary of {vocab} is no whole number of {NUCLEUS_BLOCK}-token blocks")
    out = torch.empty((count, vocab), dtype=torch.float32)
    ids = torch.empty((count, vocab // NUCLEUS_BLOCK), dtype=torch.int32)
    width = cpu_kernels.helper("learned_step_f32", "nucleus_f32")(
        rows.data_ptr(),
        temperature.data_ptr(),
        top_p.data_ptr(),
        0 if maxima is None else maxima.data_ptr(),
        out.data_ptr(),
        ids.data_ptr(),
        count,
        vocab,
        candidates,
    )
    _raise_for(min(width, 0))
    if 2 * width * NUCLEUS_BLOCK > vocab:
        return out, None
    first = ids.view(-1)[: count * width].view(count, width).long() * NUCLEUS_BLOCK
    token_ids = (first.unsqueeze(-1) + torch.arange(NUCLEUS_BLOCK)).view(count, width * NUCLEUS_BLOCK)
    return out.view(-1)[: count * width * NUCLEUS_BLOCK].view(count, width * NUCLEUS_BLOCK), token_ids


def learned_probs(
    kernel: Callable, rows: torch.Tensor, temperature: torch.Tensor, maxima: torch.Tensor | None = None
) -> torch.Tensor:
    """The softmax the kernel cuts from (its exp is not torch's to the last bit): for tests."""
    return _learned_step(kernel, _PROBS, rows, temperature, None, rows.shape[1], maxima=maxima)


BLOCK_WIDTH = 16  # the learned-step kernel's blocks: `widen_logits` gives one max per this many logits


def widen_logits(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Contiguous bf16 `rows` [R, V] as float32 (exactly `rows.float()`), and each block of BLOCK_WIDTH logits'
    max [R, V // BLOCK_WIDTH] (NaN counted as +inf), from one pass over the bf16 rows: the learned-step and heads'
    kernels take those maxima for the rows' max and live blocks instead of reading each float32 row for them.
    Needs the learned-step kernel (`cpu_kernels.load("learned_step_f32")` not None)."""
    count, vocab = rows.shape
    out = torch.empty((count, vocab), dtype=torch.float32)
    maxima = torch.empty((count, vocab // BLOCK_WIDTH), dtype=torch.float32)
    cpu_kernels.helper("learned_step_f32", "widen_bf16")(
        rows.data_ptr(), out.data_ptr(), maxima.data_ptr(), count, vocab
    )
    return out, maxima


def _torch_features(probs: torch.Tensor) -> torch.Tensor:
    """distribution_features' torch definition on softmax rows (the checks' reference; distribution imports us)."""
    vocab = probs.shape[-1]
    entropy = -(probs * torch.log(probs + 1e-8)).sum(-1)
    variance = ((probs * probs).sum(-1) - 1 / vocab).clamp_min(0) / (vocab - 1)
    return torch.stack([probs.amax(-1), entropy, variance, probs.topk(5, dim=-1).values.sum(-1)], dim=-1)


def _learned_step_agrees_with_torch(kernel: Callable) -> bool:
    """Features and probabilities close to torch's, and the cut equal to a stable full sort's over
    the kernel's own probabilities, on rows whose nuclei stay inside 8 candidates or reach past."""
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(6, 3001, generator=generator) * torch.tensor([[0.3], [1.0], [3.0], [8.0], [1.0], [2.0]])
    rows[4, 100:400] = 2.5  # ties at the cutoff
    rows[5, :50] = float("-inf")
    temperature = torch.tensor([0.5, 1.0, 1.3, 0.01, 1.0, 0.7])
    top_p = torch.tensor([0.9, 0.5, 0.99, 0.3, 0.2, 1.0])
    probs = torch.softmax(rows / temperature[:, None], dim=-1)
    got = learned_probs(kernel, rows, temperature)
    if not torch.allclose(got, probs, rtol=1e-5, atol=1e-12):
        return False
    if not torch.allclose(learned_features(kernel, rows, temperature), _torch_features(probs), rtol=1e-4, atol=1e-7):
        return False
    sorted_probs, order = torch.sort(got, dim=-1, descending=True, stable=True)
    keep = (torch.cumsum(sorted_probs, dim=-1) - sorted_probs) < top_p[:, None]
    keep[:, 0] = True
    keep |= top_p[:, None] >= 1.0
    keep = torch.empty_like(keep).scatter(-1, order, keep)
    expected_cut = (rows / temperature[:, None]).masked_fill(~keep, float("-inf"))
    if not torch.equal(learned_cut(kernel, rows, temperature, top_p, 8), expected_cut):
        return False
    narrowed = (
        _narrowed_agrees(kernel, rows[which, :2944].contiguous(), temperature[which], top_p[which])
        for which in ([3, 4], ...)
    )
    if not all(narrowed):  # 46 whole blocks: rows 3-4 narrowed, all six whole (row 5 keeps every token)
        return False
    wide, maxima = widen_logits(rows.bfloat16())  # 3001: whole 256-wide chunks, then single blocks, then a tail
    blocks = wide[:, : 3001 // BLOCK_WIDTH * BLOCK_WIDTH].reshape(6, -1, BLOCK_WIDTH).amax(-1)
    return torch.equal(wide, rows.bfloat16().float()) and torch.equal(maxima, blocks)


def _narrowed_agrees(kernel: Callable, rows: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor) -> bool:
    """`learned_nucleus`'s blocks, each put back at its token ids, give `learned_cut`'s rows."""
    narrowed, token_ids = learned_nucleus(rows, temperature, top_p, 8)
    cut = learned_cut(kernel, rows, temperature, top_p, 8)
    if token_ids is None:
        return torch.equal(narrowed, cut)
    spread = torch.full_like(cut, float("-inf")).scatter_reduce(1, token_ids, narrowed, "amax")  # padding: -inf
    return torch.equal(spread, cut)


# ---- heads' step ---------------------------------------------------------------------------------


def heads_step_on(
    kernel: Callable, layers, scale: float, min_temperature: float, features: bool, reuse_output: bool = False
) -> Callable:
    """A function of (hidden, logits, maxima=None) giving each row's (T̂, P̂), [R, 2] float32: the heads' `forward`
    at a decode step in one call (heads_step_f32.c). `hidden` [R, H] bf16 or float32 and `logits` [R, V] float32,
    contiguous CPU rows; `maxima`: None or `widen_logits`'s block maxima of `logits`; `layers`: the temperature
    head's two Linears, then the top-p head's; T̂ = the first head's value x `scale`; the features at T̂ clamped to
    `min_temperature`, or none (`features` False: the top-p head reads [hidden, T̂] only). The heads' side is read
    here, once: their weights' addresses, so the function serves while those tensors keep their storage (in-place
    updates are read live; the AMX copy of the first layers is remade when they change). It raises NotFinite where
    a row of logits holds NaN or +inf or no finite value. With `reuse_output` each call writes into the output of
    the last call with as many rows (a caller that reads it at once: right after the model's forward or this
    kernel, a fresh torch.empty cost ~10-30 us, its memory cold)."""
    pointers = [p for layer in layers for p in (layer.weight.data_ptr(), layer.bias.data_ptr())]
    first, second = pointers[:4], pointers[4:]
    step, width = (_learned_step_address() if features else None), layers[0].out_features
    on_tiles = _first_layers_on_tiles(layers[0].weight, layers[2].weight)
    outputs: dict[int, torch.Tensor] = {}  # by row count, with reuse_output

    def run(hidden, logits, maxima=None):
        rows, size = hidden.shape
        out = outputs.get(rows)
        if out is None:
            out = torch.empty((rows, 2), dtype=torch.float32)
            if reuse_output:
                outputs[rows] = out
        bf16 = hidden.dtype == torch.bfloat16
        amx = on_tiles() if bf16 and on_tiles else (None, None)
        blocks = None if maxima is None else maxima.data_ptr()
        inputs = (hidden.data_ptr(), bf16, logits.data_ptr(), blocks, logits.shape[-1], step, min_temperature, *amx)
        _raise_for(kernel(*inputs, *first, scale, *second, out.data_ptr(), rows, size, width))
        return out

    return run


def _first_layers_on_tiles(temperature: torch.Tensor, top_p: torch.Tensor) -> Callable | None:
    """Where the AMX matmul runs, a function giving (its float32-output helper, both heads' first layers packed for
    it) for heads_step_f32.c: the temperature head's weights over the top-p head's hidden-state columns, each
    float32 weight as two bf16 (its value rounded, then the rest rounded: 16 of its 24 significant bits, within
    2^-17 of it), side by side. Packed again whenever either tensor was changed in place (its version counter; like
    the step's other pointers, it serves while the tensors keep their storage). None where the AMX matmul is not,
    or for inference tensors (made under `torch.inference_mode`): they keep no version counter, so a change would
    go unseen."""
    if cpu_kernels.load("amx_matmul_bf16") is None or temperature.is_inference() or top_p.is_inference():
        return None
    address = ctypes.cast(cpu_kernels.helper("amx_matmul_bf16", "amx_matmul_f32"), ctypes.c_void_p).value
    size, held = temperature.shape[1], {}

    def current() -> tuple[int, int]:
        key = (temperature._version, top_p._version)
        if held.get("key") != key:
            with torch.no_grad():
                weights = torch.cat((temperature, top_p[:, :size]))
                high = weights.to(torch.bfloat16)
                split = torch.cat((high, (weights - high.float()).to(torch.bfloat16)), dim=1).contiguous()
                held["packed"] = cpu_kernels.amx_pack(
                    split, torch.empty(cpu_kernels.amx_packed_size(*split.shape), dtype=torch.bfloat16)
                )
            held["key"] = key
        return address, held["packed"].data_ptr()

    return current


@functools.lru_cache(maxsize=None)
def _learned_step_address() -> int | None:
    """The learned-step kernel's function, which the heads' step calls for the features (None: not here)."""
    function = cpu_kernels.load("learned_step_f32")
    return None if function is None else ctypes.cast(function, ctypes.c_void_p).value


def _heads_step_agrees_with_torch(kernel: Callable) -> bool:
    """Close to the torch ops of the heads' forward (bf16 and float32 rows, with and without features, widths
    and inputs off the 16-lane grid), and each row's values the same alone as in its batch."""
    if _learned_step_address() is None:
        return False
    generator = torch.Generator().manual_seed(0)
    for size, width, features, dtype in ((64, 256, True, torch.bfloat16), (37, 40, False, torch.float32)):
        extras = 5 if features else 1
        with torch.inference_mode(False):  # weights as heads hold them, whatever mode the first use is in
            layers = [torch.nn.Linear(size, width), torch.nn.Linear(width, 1)]
            layers += [torch.nn.Linear(size + extras, width), torch.nn.Linear(width, 1)]
        with torch.no_grad():
            for p in (p for layer in layers for p in layer.parameters()):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
        hidden = torch.randn(9, size, generator=generator).to(dtype)
        logits = torch.randn(9, 3001, generator=generator) * 4
        with torch.no_grad():
            x = hidden.float()
            temperature = torch.sigmoid(layers[1](torch.relu(layers[0](x)))) * 2.0
            parts = [x, temperature]
            if features:
                parts.append(_torch_features(torch.softmax(logits / temperature.clamp_min(0.05), dim=-1)))
            top_p = torch.sigmoid(layers[3](torch.relu(layers[2](torch.cat(parts, -1)))))
            expected = torch.cat((temperature, top_p), -1)
            step = heads_step_on(kernel, layers, 2.0, 0.05, features)
            got, alone = step(hidden, logits), step(hidden[5:6], logits[5:6])
        if not torch.allclose(got, expected, rtol=1e-5, atol=1e-5) or not torch.equal(alone, got[5:6]):
            return False
    return True


cpu_kernels.CHECKS.update(
    learned_step_f32=_learned_step_agrees_with_torch, heads_step_f32=_heads_step_agrees_with_torch
)
