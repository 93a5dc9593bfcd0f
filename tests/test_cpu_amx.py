"""Our AMX-BF16 matmul kernel against torch, the linears and the engine that use it, and the
fallbacks where it cannot run (the kernel tests skip on CPUs without AMX, such as AMD EPYCs)."""

from __future__ import annotations

import pytest
import torch

from autodeco_cli.core import cpu_features, cpu_kernels
from autodeco_cli.core.decoding import make_strategy
from autodeco_cli.engine import cpu_inference
from autodeco_cli.engine.cpu_inference import PackedLinear, pack_linear_weights
from autodeco_cli.engine.cpu_memory import HUGE_PAGE
from autodeco_cli.engine.generation import GenerationEngine
from autodeco_cli.engine.models import load_base_model
from autodeco_cli.engine.requests import build_requests

pytestmark = pytest.mark.usefixtures("torch_single_thread")

AMX = "amx_matmul_bf16"
needs_amx = pytest.mark.skipif(
    cpu_kernels.load(AMX) is None, reason="needs x86 AMX-BF16, Linux's tile permission and a C compiler"
)
# 32 different prompts: the engine decodes identical greedy requests once
PROMPTS = [f"{a} {b}" for a in ("hello", "What is", "The quick", "Once upon") for b in "abcdefgh"]


def close_to_fp32(got: torch.Tensor, expected: torch.Tensor) -> bool:
    """Within 2 bf16 steps of each value, plus fp32 summation-order noise on the output's scale."""
    got, expected = got.float(), expected.float()
    return bool(((got - expected).abs() <= expected.abs() * 2.0**-7 + 1e-4 * expected.abs().max()).all())


def _packed(weight: torch.Tensor) -> torch.Tensor:
    return cpu_kernels.amx_pack(weight, torch.empty(cpu_kernels.amx_packed_size(*weight.shape), dtype=torch.bfloat16))


def _tile_layout(weight: torch.Tensor) -> torch.Tensor:
    """The kernel's packed layout in torch: [O/16][I/32][16 input pairs][16 outputs][2], zero-padded."""
    outputs, inputs = weight.shape
    padded = torch.zeros(-(-outputs // 16) * 16, -(-inputs // 32) * 32, dtype=weight.dtype)
    padded[:outputs, :inputs] = weight
    tiles = padded.view(padded.shape[0] // 16, 16, padded.shape[1] // 32, 16, 2)  # [nb, n, kb, pair, j]
    return tiles.permute(0, 2, 3, 1, 4).reshape(-1)


@needs_amx
@pytest.mark.parametrize("outputs,inputs", [(16, 32), (192, 576), (576, 1536), (37, 70), (17, 33), (15, 31), (1, 1)])
def test_amx_pack_lays_out_whole_and_partial_tiles(outputs, inputs):
    # whole tiles go through a gather of 32-bit input pairs, the edges element by element
    weight = torch.randn(outputs, inputs, generator=torch.Generator().manual_seed(outputs * inputs)).to(torch.bfloat16)
    weight[0, 0] = -0.0  # bits, not values, are compared
    assert torch.equal(_packed(weight).view(torch.int16), _tile_layout(weight).view(torch.int16))


@needs_amx
@pytest.mark.parametrize(
    "inputs,outputs,with_bias", [(70, 37, True), (576, 192, False), (33, 300, False), (1536, 16, True)]
)
def test_amx_matmul_matches_an_fp32_product(inputs, outputs, with_bias):
    kernel = cpu_kernels.load(AMX)
    generator = torch.Generator().manual_seed(inputs + outputs)
    weight = torch.randn(outputs, inputs, generator=generator).to(torch.bfloat16)
    bias = torch.randn(outputs, generator=generator).to(torch.bfloat16) if with_bias else None
    packed = _packed(weight)
    for rows in (1, 7, 16, 17, 31, 33, 48, 63, 64, 130):
        x = torch.randn(2, rows, inputs, generator=generator).to(torch.bfloat16)[1]  # an offset view
        expected = x.float() @ weight.float().T + (0 if bias is None else bias.float())
        got = cpu_kernels.amx_matmul(kernel, x, packed, bias, outputs)
        assert got.shape == (rows, outputs) and got.dtype == torch.bfloat16
        assert close_to_fp32(got, expected), (rows, (got.float() - expected).abs().max())


@needs_amx
@pytest.mark.parametrize("inputs,outputs", [(576, 192), (1536, 48), (70, 37)])
def test_amx_matmul_gives_a_row_the_same_bits_whatever_rows_share_its_call(inputs, outputs):
    # 17-32 rows run the two-row-group kernel with early reloads and prefetches; each row's sums
    # must stay those of the one-group kernel (the same dot products in the same order)
    kernel = cpu_kernels.load(AMX)
    generator = torch.Generator().manual_seed(inputs * outputs)
    weight = torch.randn(outputs, inputs, generator=generator).to(torch.bfloat16)
    packed = _packed(weight)
    for rows in (17, 24, 32):
        x = torch.randn(rows, inputs, generator=generator).to(torch.bfloat16)
        together = cpu_kernels.amx_matmul(kernel, x, packed, None, outputs)
        apart = torch.cat([cpu_kernels.amx_matmul(kernel, x[i : i + 16], packed, None, outputs) for i in (0, 16)])
        assert torch.equal(together.view(torch.int16), apart.view(torch.int16)), rows


@needs_amx
@pytest.mark.parametrize("inputs,outputs", [(1152, 512), (74, 80), (33, 17)])
def test_amx_matmul_f32_keeps_the_float32_sums_and_a_rows_bits_in_any_batch(inputs, outputs):
    """The float32-output helper (the heads' first layers): bf16 products are exact in float32, so each output is
    the float64 sum up to float32 rounding along the way; and a row's bits do not depend on its batch-mates."""
    matmul = cpu_kernels.helper(AMX, "amx_matmul_f32")
    generator = torch.Generator().manual_seed(inputs + 3 * outputs)
    weight = torch.randn(outputs, inputs, generator=generator).to(torch.bfloat16)
    packed = _packed(weight)
    x = torch.randn(45, inputs, generator=generator).to(torch.bfloat16)

    def product(rows: torch.Tensor) -> torch.Tensor:
        out = torch.empty(rows.shape[0], outputs)
        assert matmul(rows.data_ptr(), packed.data_ptr(), out.data_ptr(), rows.shape[0], inputs, outputs) == 0
        return out

    full = product(x)
    exact = x.double() @ weight.double().T
    bound = inputs * 2.0**-24 * (x.double().abs() @ weight.double().abs().T)
    assert ((full.double() - exact).abs() <= bound).all()
    assert not torch.equal(full, (x.float() @ weight.float().T).to(torch.bfloat16).float())  # not rounded to bf16
    for start, stop in ((0, 1), (44, 45), (3, 20), (0, 32), (13, 45)):
        assert torch.equal(product(x[start:stop].contiguous()), full[start:stop]), (start, stop)


@needs_amx
def test_amx_pack_refuses_an_output_of_the_wrong_size():
    with pytest.raises(ValueError, match="amx_packed_size"):
        cpu_kernels.amx_pack(torch.ones(4, 32, dtype=torch.bfloat16), torch.empty(10, dtype=torch.bfloat16))


@needs_amx
def test_packed_linear_sends_every_row_count_to_the_amx_kernel_and_gradients_to_torch(monkeypatch):
    generator = torch.Generator().manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Linear(96, 80), torch.nn.Linear(80, 40, bias=False)).to(torch.bfloat16)
    weights = [layer.weight.detach().clone() for layer in model]
    assert pack_linear_weights(model) == 2
    for layer in model:
        assert type(layer) is PackedLinear and layer._amx is not None
        assert layer._packed is None and layer._gemv is None  # no oneDNN copy beside ours
    assert model[0]._amx_weight.data_ptr() % HUGE_PAGE == 0  # the block huge pages can back later
    assert set(model.state_dict()) == {"0.weight", "0.bias", "1.weight"}
    calls = []
    real = cpu_kernels.amx_matmul
    monkeypatch.setattr(cpu_inference, "amx_matmul", lambda *a: calls.append(a[1].shape) or real(*a))
    with torch.inference_mode():
        for rows in (1, cpu_kernels.GEMV_MAX_ROWS, cpu_kernels.GEMV_MAX_ROWS + 1, 32, 300):
            x = torch.randn(rows, 1, 96, generator=generator).to(torch.bfloat16)
            hidden = model[0](x)
            assert close_to_fp32(hidden, x.float() @ weights[0].float().T + model[0].bias.float())
            assert close_to_fp32(model[1](hidden), hidden.float() @ weights[1].float().T)
    assert [shape[0] for shape in calls] == [1, 1, 6, 6, 7, 7, 32, 32, 300, 300]
    trainable = torch.randn(5, 96, generator=generator).to(torch.bfloat16).requires_grad_()
    model(trainable).float().sum().backward()  # torch's path, with autograd
    assert trainable.grad is not None and len(calls) == 10


@pytest.fixture
def cpu_without_amx(monkeypatch):
    flags = cpu_features.cpu_flags() - {"amx_bf16"}
    monkeypatch.setattr(cpu_features, "cpu_flags", lambda: flags)
    cpu_kernels.load.cache_clear()
    yield
    cpu_kernels.load.cache_clear()


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")
@pytest.mark.usefixtures("cpu_without_amx")
def test_without_amx_the_linears_keep_onednn_and_the_gemv_kernel():
    assert cpu_kernels.load(AMX) is None
    model = torch.nn.Sequential(torch.nn.Linear(96, 80, bias=False)).to(torch.bfloat16)
    if not pack_linear_weights(model):
        pytest.skip("oneDNN weight packing unavailable")
    layer = model[0]
    assert layer._amx is None and layer._amx_weight is None and layer._packed is not None
    assert layer._gemv is cpu_kernels.load("gemv_bf16")  # None where AVX512-BF16 is missing too


def _greedy_through_the_engine(model_dir, monkeypatch, amx: bool):
    """Token ids and every output-embedding call's logits of a 32-row greedy generation in bf16."""
    with monkeypatch.context() as patch:
        if not amx:
            real = cpu_kernels.load
            patch.setattr(cpu_kernels, "load", lambda name: None if name == AMX else real(name))
        lm = load_base_model(str(model_dir), device="cpu", dtype="bfloat16")
    served = [m for m in lm.model.modules() if type(m) is PackedLinear and m._amx is not None]
    assert bool(served) == amx
    logits = []
    lm.model.get_output_embeddings().register_forward_hook(lambda _m, _a, out: logits.append(out.detach().float()))
    requests = build_requests(lm.tokenizer, PROMPTS, make_strategy("greedy"), n=1, seed=0)
    engine = GenerationEngine(lm)
    outputs = engine.generate(requests, max_new_tokens=10, batch_size=32)
    engine.close()
    return [o.token_ids for o in outputs], logits


@needs_amx
def test_bf16_greedy_generation_at_32_rows_runs_the_amx_kernel_close_to_onednn(tiny_model_dir, monkeypatch):
    rows = []
    real = cpu_kernels.amx_matmul
    monkeypatch.setattr(
        cpu_inference, "amx_matmul", lambda k, x, *a: rows.append(x.numel() // x.shape[-1]) or real(k, x, *a)
    )
    tokens, logits = _greedy_through_the_engine(tiny_model_dir, monkeypatch, amx=True)
    assert 32 in rows  # the decode steps of all 32 rows went through the kernel
    assert all(len(t) > 0 for t in tokens)
    calls = len(rows)
    onednn_tokens, onednn_logits = _greedy_through_the_engine(tiny_model_dir, monkeypatch, amx=False)
    assert len(rows) == calls  # the oneDNN run never reached the kernel
    compared = 0
    for ours, theirs in zip(logits, onednn_logits):
        if ours.shape != theirs.shape:
            break
        scale = theirs.abs().max()
        assert (ours - theirs).abs().max() <= 0.03 * scale, (compared, (ours - theirs).abs().max(), scale)
        compared += 1
        if not torch.equal(ours.argmax(-1), theirs.argmax(-1)):
            break  # from here on the two runs feed different tokens
    assert compared >= 2  # the prompts' step and at least one decode step at 32 rows
