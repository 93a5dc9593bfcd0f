"""Our AMX-BF16 matmul vs what bf16 linears ran before it (#23): the default model's 30 layers x 7
linears as `PackedLinear` modules, packed by `pack_linear_weights` twice in one process: with the
AMX kernel (`assets/kernels/amx_matmul_bf16.c`), and without it (oneDNN's `brg_matmul` on its
prepacked weights, 1-6 rows through the gemv kernel), each with its huge-page placement done.

30 layers' worth of distinct weights (212 MB), so the caches do not hold them. Each repeat times
one pass over all 210 linears per variant, the variants interleaved; medians. Also checks each
shape's outputs against the fp32 product of the same bf16 inputs (worst error over the output's
largest magnitude) and whether the two variants' outputs are bitwise equal.

Usage (under the shared lock):
    flock /work/heavy.lock python bench/probe_amx_matmul.py --threads 1 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from autodeco_cli.core import cpu_kernels
from autodeco_cli.core.cpu_features import cpu_model
from autodeco_cli.engine.cpu_inference import PackedLinear, pack_linear_weights, place_in_huge_pages_later

LAYERS = 30
SHAPES = [(576, 576), (576, 192), (576, 192), (576, 576), (576, 1536), (576, 1536), (1536, 576)]  # (in, out)
AMX = "amx_matmul_bf16"


class Linears(torch.nn.Module):
    """The linears in a container whose forward does nothing, so the engine's huge-page placement
    hook can be triggered down both of its paths."""

    def __init__(self, weights: list[torch.Tensor]):
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(w.shape[1], w.shape[0], bias=False) for w in weights)
        with torch.no_grad():
            for layer, weight in zip(self.layers, weights):
                layer.weight.copy_(weight)

    def forward(self, input_ids: torch.Tensor) -> None:
        return None


def packed(weights: list[torch.Tensor], amx: bool) -> Linears:
    model = Linears(weights).to(torch.bfloat16)
    real = cpu_kernels.load
    cpu_kernels.load = real if amx else (lambda name: None if name == AMX else real(name))
    try:
        pack_linear_weights(model)
    finally:
        cpu_kernels.load = real
    assert all(type(m) is PackedLinear and (m._amx is not None) == amx for m in model.layers)
    place_in_huge_pages_later(model, after_calls=1)
    model(torch.zeros(1))  # the gemv weights move (few rows)
    model(torch.zeros(32))  # the packed copies collapse (more)
    return model


def check(variants: dict, weights: list[torch.Tensor], rows: int) -> str:
    worst = {name: 0.0 for name in variants}
    equal = True
    for index, (inputs, _) in enumerate(SHAPES):
        x = (torch.randn(rows, inputs) * 0.5).to(torch.bfloat16)
        expected = x.float() @ weights[index].float().T
        outputs = {name: model.layers[index](x) for name, model in variants.items()}
        for name, got in outputs.items():
            worst[name] = max(worst[name], ((got.float() - expected).abs().max() / expected.abs().max()).item())
        equal &= torch.equal(*outputs.values())
    return "max error / scale: " + " ".join(f"{n} {e:.1e}" for n, e in worst.items()) + f"  bitwise equal: {equal}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4, 6, 8, 16, 32, 48, 64, 128, 512])
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args()
    print(f"CPU: {cpu_model()}  torch {torch.__version__}")
    if cpu_kernels.load(AMX) is None:
        raise SystemExit("the AMX kernel does not load here (no AMX-BF16, no tile permission or no compiler)")
    torch.manual_seed(0)
    weights = [(torch.randn(o, i) * 0.03).to(torch.bfloat16) for _ in range(LAYERS) for i, o in SHAPES]
    print(f"{len(weights)} linears, {sum(w.numel() for w in weights) * 2 / 1e6:.0f} MB bf16")
    variants = {"before": packed(weights, amx=False), "AMX": packed(weights, amx=True)}
    with torch.inference_mode():
        for threads in args.threads:
            torch.set_num_threads(threads)
            for rows in args.rows:
                report = check(variants, weights, rows)
                inputs = {i: (torch.randn(rows, i) * 0.5).to(torch.bfloat16) for i, _ in SHAPES}
                times = {name: [] for name in variants}
                for _ in range(args.repeats):
                    for name, model in variants.items():
                        start = time.perf_counter()
                        for layer in model.layers:
                            layer(inputs[layer.in_features])
                        times[name].append(time.perf_counter() - start)
                ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
                print(
                    f"threads {threads} rows {rows:3d}: before {ms['before']:7.2f} ms  AMX {ms['AMX']:7.2f} ms"
                    f"  {ms['before'] / ms['AMX']:.2f}x  AMX reads {212 / ms['AMX']:.1f} GB/s | {report}"
                )


if __name__ == "__main__":
    main()
