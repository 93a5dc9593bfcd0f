"""The heads' step kernel (learned_kernels' heads_step_f32), which `AutoDecoHeads.decode_values` takes for bf16
hidden states: close to the heads' `forward`, a row's values the same in any batch, float32 rows left on
`forward`'s exact path, and torch's path where a row of logits is not finite."""

from __future__ import annotations

import pytest
import torch

from autodeco_cli.core import cpu_kernels, learned_kernels
from autodeco_cli.core import heads as heads_module
from autodeco_cli.core.heads import AutoDecoHeads, HeadsConfig

KERNEL = learned_kernels.heads_step()
pytestmark = pytest.mark.skipif(KERNEL is None, reason="the heads' step kernel needs AVX-512 or AVX2 and a C compiler")
needs_amx = pytest.mark.skipif(
    cpu_kernels.load("amx_matmul_bf16") is None, reason="the first layers on tiles need x86 AMX-BF16"
)


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


def _forward(heads, hidden, logits) -> torch.Tensor:
    return torch.cat(heads(hidden, logits), dim=-1)


@pytest.mark.parametrize("hidden_size,width", [(576, 256), (48, 32), (37, 40), (20, 7)])
@pytest.mark.parametrize("enhanced", [True, False])
def test_bf16_rows_take_the_kernel_close_to_forward(hidden_size, width, enhanced):
    heads = _heads(hidden_size, width, enhanced, seed=hidden_size + width)
    hidden, logits = _rows(9, hidden_size, seed=3)
    with torch.inference_mode():
        expected = _forward(heads, hidden, logits)
        got = heads.decode_values(hidden, logits)
    assert got.shape == (9, 2) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert got[:, 0].max() - got[:, 0].min() > 0.3  # T̂ spread over its range, not one saturated value


def test_low_temperatures_are_clamped_for_the_features_only():
    """T̂ under MIN_TEMPERATURE: the features see the clamped T̂, the top-p head's input the T̂ itself (forward)."""
    heads = _heads(48, 32, True, seed=11)
    with torch.no_grad():
        heads.temp_head.mlp[2].bias.fill_(-9.0)  # T̂ ~ 2 sigmoid(-9) ~ 2.5e-4
    hidden, logits = _rows(4, 48, seed=12)
    with torch.inference_mode():
        expected, got = _forward(heads, hidden, logits), heads.decode_values(hidden, logits)
    assert got[:, 0].max() < 0.01
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_kernel_is_the_path_taken(monkeypatch):
    """decode_values makes one kernel call for bf16 rows, none for float32 rows."""
    calls = []
    real = learned_kernels.heads_step_on

    def counted(*args):
        run = real(*args)
        return lambda hidden, logits, maxima=None: calls.append(hidden.dtype) or run(hidden, logits, maxima)

    monkeypatch.setattr(learned_kernels, "heads_step_on", counted)
    heads = _heads(48, 32, True, seed=1)
    hidden, logits = _rows(3, 48, seed=4)
    with torch.inference_mode():
        heads.decode_values(hidden, logits)
        assert calls == [torch.bfloat16]
        heads.decode_values(hidden.float(), logits)
    assert len(calls) == 1


def test_a_rows_values_do_not_depend_on_its_batch():
    """The kernel's fixed sum order: each row alone, in batches of 1 to 33 rows, gives the same bits."""
    heads = _heads(576, 256, True, seed=7)
    hidden, logits = _rows(33, 576, seed=5)
    with torch.inference_mode():
        full = heads.decode_values(hidden, logits)
        for start, stop in ((0, 1), (32, 33), (3, 8), (1, 33), (0, 5)):
            assert torch.equal(heads.decode_values(hidden[start:stop], logits[start:stop]), full[start:stop])


def test_float32_rows_and_autograd_keep_forwards_bits():
    heads = _heads(48, 32, True, seed=2)
    hidden, logits = _rows(5, 48, seed=6)
    layers = heads._decode_layers()
    with torch.inference_mode():
        assert torch.equal(heads.decode_values(hidden.float(), logits), _forward(heads, hidden.float(), logits))
        assert heads_module._weights_kernel(layers) and heads_module._rows_take_kernel(hidden, logits)
        assert not heads_module._rows_take_kernel(hidden.float(), logits)
    assert not heads_module._rows_take_kernel(hidden, logits)  # autograd on here
    assert not heads_module._weights_kernel(heads.double()._decode_layers())


def test_rows_that_are_not_finite_take_torchs_path():
    heads = _heads(48, 32, True, seed=3)
    hidden, logits = _rows(3, 48, seed=7)
    logits[1, 5] = float("nan")
    with torch.inference_mode():
        got = heads.decode_values(hidden, logits)
        expected = _forward(heads, hidden, logits)  # forward's own ops: the NaN row's P̂ is NaN, the others exact
    assert got[1, 1].isnan() and torch.equal(got[[0, 2]], expected[[0, 2]]) and torch.equal(got[:, 0], expected[:, 0])


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
        after, expected = heads.decode_values(hidden, logits), _forward(heads, hidden, logits)
    assert not torch.equal(before[:, 0], after[:, 0]) and not torch.equal(before[:, 1], after[:, 1])
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-5)


def test_a_prepared_step_gives_decode_values_and_reads_the_weights_live(monkeypatch):
    """The sampler's `decode_step` (the heads' side looked up once per generation run): decode_values' values,
    bf16 and float32 rows, and in-place weight updates between its calls are seen."""
    calls = []
    real = learned_kernels.heads_step_on
    monkeypatch.setattr(learned_kernels, "heads_step_on", lambda *a: calls.append(1) or real(*a))
    heads = _heads(48, 32, True, seed=10)
    hidden, logits = _rows(4, 48, seed=11)
    with torch.inference_mode():
        step = heads.decode_step()
        for rows in (hidden, hidden.float(), hidden[1:3]):
            assert torch.equal(step(rows, logits[: len(rows)]), heads.decode_values(rows, logits[: len(rows)]))
        with torch.no_grad():
            heads.temp_head.mlp[2].bias.add_(1.0)
        assert torch.equal(step(hidden, logits), heads.decode_values(hidden, logits))
    assert len(calls) == 1 + 4  # the step's one preparation, then each decode_values call's own


def test_a_step_that_reuses_its_output_gives_each_call_its_own_values():
    """With `reuse_output` (the sampler's step) each call with as many rows writes into the last one's tensor, and
    still gives decode_values' values; other row counts get their own tensor; without it every call a new one."""
    heads = _heads(48, 32, True, seed=12)
    hidden, logits = _rows(4, 48, seed=13)
    later_hidden, later_logits = _rows(4, 48, seed=14)
    with torch.inference_mode():
        step = heads.decode_step(reuse_output=True)
        first = step(hidden, logits)
        values = first.tolist()
        assert values == heads.decode_values(hidden, logits).tolist()
        later = step(later_hidden, later_logits)
        assert later is first and later.tolist() == heads.decode_values(later_hidden, later_logits).tolist()
        assert later.tolist() != values  # overwritten: a caller reads each result before the next call
        assert step(hidden[:2], logits[:2]) is not first
        fresh = heads.decode_step()
        assert fresh(hidden, logits) is not fresh(hidden, logits)


@needs_amx
def test_bf16_rows_take_the_first_layers_on_amx_tiles_and_float32_rows_do_not(monkeypatch):
    packs = []
    real = learned_kernels._first_layers_on_tiles

    def spied(*weights):
        current = real(*weights)
        return lambda: packs.append(1) or current()

    monkeypatch.setattr(learned_kernels, "_first_layers_on_tiles", spied)
    heads = _heads(576, 256, True, seed=21)
    hidden, logits = _rows(6, 576, seed=22)
    with torch.inference_mode():
        step = heads.decode_step()
        got = step(hidden, logits)
        step(hidden.float(), logits)
        expected = _forward(heads, hidden, logits)
    assert len(packs) == 1
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@needs_amx
def test_the_tiles_follow_either_first_layer_changed_in_place():
    """The tiles hold a packed copy of the first layers: an in-place change of either one repacks it."""
    heads = _heads(576, 256, True, seed=23)
    hidden, logits = _rows(4, 576, seed=24)
    with torch.inference_mode():
        step = heads.decode_step()
        before = step(hidden, logits)
    for layer in (heads.temp_head.mlp[0], heads.top_p_head.mlp[0]):
        with torch.no_grad():
            layer.weight.mul_(0.5)
        with torch.inference_mode():
            after, expected = step(hidden, logits), _forward(heads, hidden, logits)
        assert not torch.equal(before, after)
        torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-5)
        before = after


def test_heads_made_under_inference_mode_keep_the_float32_first_layers():
    """Inference tensors keep no version counter, so an in-place change could not be seen: no packed copy."""
    with torch.inference_mode():
        heads = _heads(48, 32, True, seed=25)
        hidden, logits = _rows(3, 48, seed=26)
        layers = heads._decode_layers()
        assert learned_kernels._first_layers_on_tiles(layers[0].weight, layers[2].weight) is None
        torch.testing.assert_close(heads.decode_values(hidden, logits), _forward(heads, hidden, logits))
