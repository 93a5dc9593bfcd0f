"""The heads' MLP kernel (cpu_kernels' heads_mlp_f32), which `AutoDecoHeads.decode_values` takes for bf16
hidden states: close to the heads' `forward`, a row's values the same in any batch, and float32 rows left on
`forward`'s exact path."""

from __future__ import annotations

import pytest
import torch

from autodeco_cli.core import cpu_kernels
from autodeco_cli.core import heads as heads_module
from autodeco_cli.core.heads import AutoDecoHeads, HeadsConfig

KERNEL = cpu_kernels.load("heads_mlp_f32")
pytestmark = pytest.mark.skipif(KERNEL is None, reason="the heads' MLP kernel needs x86-64 AVX-512 and a C compiler")


def _heads(hidden_size: int, width: int, enhanced: bool, seed: int) -> AutoDecoHeads:
    torch.manual_seed(seed)
    heads = AutoDecoHeads(HeadsConfig(hidden_size=hidden_size, head_width=width, use_enhanced_features=enhanced))
    with torch.no_grad():  # spread T̂ and P̂ over (0, 2) and (0, 1), not all near one value
        for p in heads.parameters():
            p.mul_(3.0)
    return heads.eval()


def _rows(count: int, hidden_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(count, hidden_size, generator=gen).to(torch.bfloat16)
    return hidden, torch.randn(count, 3001, generator=gen) * 4


@pytest.mark.parametrize("hidden_size,width", [(576, 256), (48, 32), (37, 40), (20, 7)])
@pytest.mark.parametrize("enhanced", [True, False])
def test_bf16_rows_take_the_kernel_close_to_forward(hidden_size, width, enhanced):
    heads = _heads(hidden_size, width, enhanced, seed=hidden_size + width)
    hidden, logits = _rows(9, hidden_size, seed=3)
    with torch.inference_mode():
        expected = heads(hidden, logits)
        got = heads.decode_values(hidden, logits)
    for a, b in zip(expected, got):
        assert b.shape == (9, 1) and b.dtype == torch.float32
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert got[0].max() - got[0].min() > 0.3  # T̂ spread over its range, not one saturated value


def test_kernel_is_the_path_taken(monkeypatch):
    """decode_values goes through heads_mlp for bf16 rows (two calls: T̂, then P̂), and not for float32 rows."""
    calls = []
    real = cpu_kernels.heads_mlp

    def counted(*args, **kwargs):
        calls.append(args[1].dtype)
        return real(*args, **kwargs)

    monkeypatch.setattr(cpu_kernels, "heads_mlp", counted)
    heads = _heads(48, 32, True, seed=1)
    hidden, logits = _rows(3, 48, seed=4)
    with torch.inference_mode():
        heads.decode_values(hidden, logits)
        assert calls == [torch.bfloat16, torch.bfloat16]
        heads.decode_values(hidden.float(), logits)
    assert len(calls) == 2


def test_a_rows_values_do_not_depend_on_its_batch():
    """The kernel's fixed sum order: each row alone, in batches of 1 to 33 rows, gives the same bits."""
    heads = _heads(576, 256, True, seed=7)
    hidden, logits = _rows(33, 576, seed=5)
    with torch.inference_mode():
        full = torch.cat(heads.decode_values(hidden, logits), dim=-1)
        for start, stop in ((0, 1), (32, 33), (3, 8), (1, 33), (0, 5)):
            part = torch.cat(heads.decode_values(hidden[start:stop], logits[start:stop]), dim=-1)
            assert torch.equal(part, full[start:stop])


def test_float32_rows_and_autograd_keep_forwards_bits():
    heads = _heads(48, 32, True, seed=2)
    hidden, logits = _rows(5, 48, seed=6)
    with torch.inference_mode():
        expected = heads(hidden.float(), logits)
        for a, b in zip(expected, heads.decode_values(hidden.float(), logits)):
            assert torch.equal(a, b)
    assert heads_module._mlp_kernel(hidden, heads.temp_head.mlp[0].weight) is None  # autograd on here
    with torch.inference_mode():
        assert heads_module._mlp_kernel(hidden, heads.temp_head.mlp[0].weight) is KERNEL
        assert heads_module._mlp_kernel(hidden.float(), heads.temp_head.mlp[0].weight) is None


def test_the_kernel_follows_weights_changed_in_place():
    """Training updates the heads in place between rollouts: the kernel reads the live weights, no copy."""
    heads = _heads(48, 32, True, seed=8)
    hidden, logits = _rows(2, 48, seed=9)
    with torch.inference_mode():
        before = heads.decode_values(hidden, logits)
    with torch.no_grad():
        heads.temp_head.mlp[2].bias.add_(5.0)
        heads.top_p_head.mlp[0].weight.mul_(-1.0)
    with torch.inference_mode():
        after, expected = heads.decode_values(hidden, logits), heads(hidden, logits)
    for a, b, c in zip(before, after, expected):
        assert not torch.equal(a, b)
        torch.testing.assert_close(b, c, rtol=1e-5, atol=1e-6)
