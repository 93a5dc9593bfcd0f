"""Load time of a GGUF model once converted: the first load dequantises the GGUF into an fp32
folder in the user cache (~25 s for the default model); every later load reads that folder.
This reports both. Target for a reload of the default model: under 2 s on 2 cores (it was a
test's assertion before; wall-clock time is a benchmark's measure, not a test's).

Usage:
    python bench/bench_load.py [--model smollm2-135m-instruct] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from engine_limits import machine_line


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default="smollm2-135m-instruct", help="model spec (default: the alias smollm2-135m-instruct)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="reloads to time after the first load")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    print(machine_line(), flush=True)  # gains differ between CPUs: every run names its machine
    torch.set_num_threads(args.threads)

    from autodeco_cli.engine.models import load_base_model

    start = time.perf_counter()
    lm = load_base_model(args.model, device="cpu")
    first = time.perf_counter() - start
    reloads = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        load_base_model(args.model, device="cpu")
        reloads.append(time.perf_counter() - start)
    print(f"model {args.model} (hidden size {lm.hidden_size}), {args.threads} thread(s)")
    print(f"first load (converts a GGUF unless already cached): {first:.2f} s")
    if reloads:
        print(f"reload: median {statistics.median(reloads):.2f} s, min {min(reloads):.2f} s over {len(reloads)}")


if __name__ == "__main__":
    main()
