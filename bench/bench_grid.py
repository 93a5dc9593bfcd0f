"""grid-search cost: one sweep over all cells vs running the cells one at a time.

Same grid, task, limit, k, seeds, batch size and max_new_tokens for every path; each repeat of
each path starts from an empty output folder. The default grid, T in {0.1, 0.5, 1.0, 1.5} x p in
{0.1, 0.5, 0.9, 1.0}, is `grid-search`'s own default range (T 0.1-1.5, p 0.1-1.0) at a coarser
step. `--temperatures 0.3,0.7,1.0 --top-ps 0.9,1.0` is the hard case: few cells, all of them
high-entropy, so cells share little (fewer start-ups saved, rows split at once).

  sweep (in-process)     `grid.run_grid` on an already loaded engine: ONE run_eval call with all
                         cells sharing batches, plus grid.json, the paired tie tests and heatmap.png.
  run_eval loop          one `run_eval` call per cell on the same loaded engine (the fair baseline:
                         same model object, no start-up costs).
  eval CLI loop          `autodeco eval --decoding static -t T -p P` once per cell, as subprocesses:
                         what users do by hand; each call starts Python and reloads the model.
  grid-search CLI        `autodeco grid-search` as one subprocess (start-up and load counted once):
                         the user-level counterpart of the eval CLI loop.

Ratios printed (median seconds): sweep / eval CLI loop (target <= 0.5), sweep / run_eval loop,
grid-search CLI / eval CLI loop. Repeats are interleaved with a rotating path order after a
warm-up, so drift in machine load hits every path alike. The same torch thread count is used
in-process and in the subprocesses (OMP_NUM_THREADS). The script also checks that every path
produced the same samples (a cell == a single eval run), allowing up to 2% of samples to diverge
part-way through float rounding that differs with batch shape.

Usage:
    python bench/bench_grid.py [--task arith-add] [--limit 16] [-k 2] [--batch-size 8]
        [--temperatures 0.1,0.5,1.0,1.5] [--top-ps 0.1,0.5,0.9,1.0] [--threads 1] [--repeats 2]
        [--paths sweep,loop,cli,grid-cli]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engine_limits import machine_line

PATHS = {"sweep": "sweep (in-process)", "loop": "run_eval loop", "cli": "eval CLI loop", "grid-cli": "grid-search CLI"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--task", default="arith-add")
    parser.add_argument("--limit", type=int, default=16)
    parser.add_argument("-k", type=int, default=2, help="samples per question (one seed)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's own")
    parser.add_argument("--temperatures", default="0.1,0.5,1.0,1.5")
    parser.add_argument("--top-ps", default="0.1,0.5,0.9,1.0")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads, in-process and in subprocesses (default 1)"
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--paths", default=",".join(PATHS), help=f"subset of {','.join(PATHS)}")
    return parser.parse_args(argv)


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "autodeco"
    return [str(script)] if script.is_file() else [sys.executable, "-c", "from autodeco_cli.cli import main; main()"]


def _common(args) -> list[str]:
    extra = ["--max-new-tokens", str(args.max_new_tokens)] if args.max_new_tokens else []
    return [
        "--model",
        args.model,
        "-b",
        args.task,
        "--limit",
        str(args.limit),
        "-k",
        str(args.k),
        "--seeds",
        "1",
        "--batch-size",
        str(args.batch_size),
        "--device",
        "cpu",
        *extra,
    ]


def _subprocess(command: list[str], env: dict) -> None:
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")


def _texts(folder: Path, cells, task: str) -> dict:
    out = {}
    for cell in cells:
        for line in (folder / cell.slug / f"samples_{task}.jsonl").read_text().splitlines():
            r = json.loads(line)
            out[cell.slug, r["doc_id"], r["seed"], r["sample"]] = r["text"]
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    print(machine_line(), flush=True)  # gains differ between CPUs: every run names its machine
    wanted = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = set(wanted) - set(PATHS)
    if unknown:
        raise SystemExit(f"unknown paths: {', '.join(sorted(unknown))}")
    import torch

    torch.set_num_threads(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "COLUMNS": "200"}
    from autodeco_cli.engine.runtime import EngineSettings, open_engine
    from autodeco_cli.evaluation.runner import run_eval
    from autodeco_cli.evaluation.settings import EvalSettings
    from autodeco_cli.grid.cells import full_cells, parse_values
    from autodeco_cli.grid.search import GridSpec, run_grid
    from autodeco_cli.tasks.registry import get_task

    temps, ps = parse_values(args.temperatures), parse_values(args.top_ps, "--top-ps")
    cells = full_cells(temps, ps)
    task = get_task(args.task)
    start = time.perf_counter()
    engine = open_engine(EngineSettings(args.model, device="cpu"), [cells[0].strategy])
    print(
        f"model {args.model} loaded in {time.perf_counter() - start:.1f} s; threads={torch.get_num_threads()}",
        file=sys.stderr,
    )
    settings = EvalSettings(
        k=args.k, seeds=[0], limit=args.limit, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens
    )
    scratch = Path(tempfile.mkdtemp(prefix="bench-grid-"))
    last: dict[str, Path] = {}

    def fresh(name: str) -> Path:
        folder = scratch / name
        shutil.rmtree(folder, ignore_errors=True)
        last[name] = folder
        return folder

    def sweep():
        run_grid(engine, task, GridSpec(mode="full", temperatures=temps, top_ps=ps), settings, out_dir=fresh("sweep"))

    def loop():
        out = fresh("loop")
        for cell in cells:
            run_eval(engine, [task], [cell.strategy], settings, out_dir=out)

    def cli():
        out = fresh("cli")
        for cell in cells:
            _subprocess(
                [
                    *_cli(),
                    "eval",
                    *_common(args),
                    "--decoding",
                    "static",
                    "-t",
                    f"{cell.temperature:g}",
                    "-p",
                    f"{cell.top_p:g}",
                    "-o",
                    str(out),
                ],
                env,
            )

    def grid_cli():
        _subprocess(
            [
                *_cli(),
                "grid-search",
                *_common(args),
                "--temperatures",
                args.temperatures,
                "--top-ps",
                args.top_ps,
                "-o",
                str(fresh("grid-cli")),
            ],
            env,
        )

    runs = {"sweep": sweep, "loop": loop, "cli": cli, "grid-cli": grid_cli}
    # warm-up: one-time kernel/allocator costs (and the GGUF conversion cache for the subprocesses)
    warmup = EvalSettings(k=1, seeds=[0], limit=2, max_new_tokens=4, batch_size=args.batch_size)
    run_eval(engine, [task], [cells[0].strategy], warmup, out_dir=scratch / "warmup")
    if "cli" in wanted or "grid-cli" in wanted:
        _subprocess(
            [
                *_cli(),
                "eval",
                "--model",
                args.model,
                "-b",
                args.task,
                "--limit",
                "1",
                "-k",
                "1",
                "--seeds",
                "1",
                "--max-new-tokens",
                "2",
                "--decoding",
                "static",
                "-o",
                str(scratch / "warmup-cli"),
            ],
            env,
        )

    n_samples = args.limit * args.k * len(cells)
    print(
        f"\n{args.task}: {len(cells)} cells (T {temps} x p {ps}), {args.limit} questions x {args.k} samples = "
        f"{n_samples} samples, batch {args.batch_size}, threads {args.threads}"
    )
    header = f"{'repeat':>6}  {'path':<20} {'seconds':>8}"
    print(header)
    print("-" * len(header))
    seconds: dict[str, list[float]] = {name: [] for name in wanted}
    for repeat in range(args.repeats):
        order = wanted[repeat % len(wanted) :] + wanted[: repeat % len(wanted)]
        for name in order:
            t0 = time.perf_counter()
            runs[name]()
            seconds[name].append(time.perf_counter() - t0)
            print(f"{repeat:>6}  {PATHS[name]:<20} {seconds[name][-1]:>8.1f}", flush=True)
    engine.close()

    # A cell's samples equal a single eval run's up to float rounding: batch shapes (padding,
    # row counts) change logits by ~1e-5, which flips a draw only when its uniform number lands
    # that close to a token boundary, so a few long samples may diverge part-way.
    reference = _texts(last[wanted[0]], cells, task.name)
    print()
    same = True
    for name in wanted[1:]:
        texts = _texts(last[name], cells, task.name)
        differ = [key for key in reference if texts.get(key) != reference[key]]
        same = same and len(texts) == len(reference) and len(differ) <= max(1, len(reference) // 50)
        print(
            f"samples of {PATHS[name]!r} equal to {PATHS[wanted[0]]!r}: {len(reference) - len(differ)}/{len(reference)}"
        )
    median = {name: statistics.median(values) for name, values in seconds.items()}
    for name, value in median.items():
        print(f"median {PATHS[name]:<20} {value:8.1f} s   ({', '.join(f'{v:.1f}' for v in seconds[name])})")

    def ratio(a: str, b: str, target: float | None = None) -> None:
        if a in median and b in median:
            verdict = (
                ""
                if target is None
                else f"   target <= {target:g}: {'ok' if median[a] / median[b] <= target else 'MISSED'}"
            )
            print(f"{PATHS[a]} / {PATHS[b]} = {median[a] / median[b]:.2f}{verdict}")

    if "cli" in median and "loop" in median:
        print(
            f"=> start-up + model load per `autodeco eval` call ~ {(median['cli'] - median['loop']) / len(cells):.1f} "
            "s (eval CLI loop - run_eval loop, per cell)"
        )
    print()
    ratio("sweep", "cli", 0.5)
    ratio("sweep", "loop")
    ratio("grid-cli", "cli")
    shutil.rmtree(scratch, ignore_errors=True)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
