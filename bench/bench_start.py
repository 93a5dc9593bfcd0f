"""Start-up: wall time from launching `autodeco generate "hi" --max-new-tokens 1` to its first
token on stdout, this tree side by side with --baseline-ref, and where the time goes.

Each run is a fresh process with a warm cache (one untimed run of each variant first converts
the GGUF if needed and fills the page cache). Variants alternate so drift in machine load hits
both alike. Two kinds of run:

  clean      the command as a user runs it; first token = first byte on its stdout, exit = the
             process has ended (the shell prompt is back); and `autodeco --help`, to its end
  breakdown  the same command under a probe that times its phases: interpreter start, the CLI's
             imports, option parsing up to the model load, the load itself (transformers'
             from_pretrained, the tokenizer, the rest), the heads, the chat prompt, the first
             token and the interpreter's exit; inside each, how much was imports and how much
             the garbage collector (the probe costs a few ms)

With --train-repeats N (default 3; 0 skips it) it also times the start of head training: a
one-step `autodeco train-heads` on four tiny examples (default model, fp32), launch to the end
of the process, clean; and in a probed run of each, the collector's total time and the exit.

The baseline runs from a `git archive` of --baseline-ref's src/ and evals/ (the checkout is only
read). Target: first token within 3 s with a warm cache (issue #23). Run it under the shared lock:

    flock /work/heavy.lock python bench/bench_start.py [--repeats 5] [--baseline-ref 7eb0833]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autodeco_cli.core.cpu_features import cpu_model
from baseline_tree import baseline_tree

REPO = Path(__file__).resolve().parents[1]
COMMAND = ["generate", "hi", "--max-new-tokens", "1"]
TARGET_S = 3.0

# Runs in the child before the CLI: times the phases by wrapping the functions that start each,
# as their modules are imported (patching earlier would import them early and move the time).
PROBE = r"""
import gc, json, sys, time
launched = float(sys.argv[1])
start = time.time()
import _frozen_importlib as bootstrap

state = {"depth": 0, "imports": 0.0, "gc": 0.0, "gc_in_imports": 0.0, "gc_started": 0.0}
marks = [("launch", launched, 0.0, 0.0, 0.0), ("interpreter start", start, 0.0, 0.0, 0.0)]


def mark(label):
    marks.append((label, time.time(), state["imports"], state["gc"], state["gc_in_imports"]))


def on_gc(phase, info):
    if phase == "start":
        state["gc_started"] = time.perf_counter()
        return
    spent = time.perf_counter() - state["gc_started"]
    state["gc"] += spent
    if state["depth"]:
        state["gc_in_imports"] += spent


gc.callbacks.append(on_gc)


def wrap(owner, name, label):
    original = getattr(owner, name)

    def timed(*args, **kwargs):
        mark("before " + label)
        try:
            return original(*args, **kwargs)
        finally:
            mark(label)

    setattr(owner, name, timed)


def after_import(name, module):
    if name == "autodeco_cli.engine.runtime":
        wrap(module, "load_base_model", "load_base_model")
        wrap(module, "resolve_heads", "resolve_heads")
    elif name == "autodeco_cli.engine.generation":
        wrap(module.GenerationEngine, "generate", "generate")
    elif name == "transformers.models.auto.modeling_auto":
        wrap(module.AutoModelForCausalLM, "from_pretrained", "from_pretrained")
    elif name == "transformers.models.auto.tokenization_auto":
        wrap(module.AutoTokenizer, "from_pretrained", "tokenizer")


original_find_and_load = bootstrap._find_and_load


def find_and_load(name, import_):
    outer = state["depth"] == 0
    state["depth"] += 1
    began = time.perf_counter()
    try:
        module = original_find_and_load(name, import_)
    finally:
        state["depth"] -= 1
        if outer:
            state["imports"] += time.perf_counter() - began
    after_import(name, module)
    return module


bootstrap._find_and_load = find_and_load
from autodeco_cli import cli  # noqa: E402

mark("cli imported")
sys.argv = ["autodeco", *sys.argv[2:]]
try:
    cli.main()
except SystemExit:
    pass
mark("main returned")
sys.stdout.flush()
sys.stderr.write("PROBE " + json.dumps(marks) + "\n")
"""

# the phase each probe mark ends (phases with one name add up)
PHASES = {
    "interpreter start": "interpreter start (python, site)",
    "cli imported": "CLI imports (typer, rich, the commands)",
    "before load_base_model": "options, prompt; engine imports (torch, transformers)",
    "before from_pretrained": "model load: GGUF cache lookup, config check",
    "from_pretrained": "model load: from_pretrained (weights)",
    "before tokenizer": "model load: the rest (.eval(), bf16 packing, VML warm-up)",
    "tokenizer": "model load: tokenizer",
    "load_base_model": "model load: the rest (.eval(), bf16 packing, VML warm-up)",
    "before resolve_heads": "model load: the rest (.eval(), bf16 packing, VML warm-up)",
    "resolve_heads": "heads",
    "before generate": "requests (chat template)",
    "generate": "first token (prefill, sample, print)",
    "main returned": "the command returns",
}


def _env(src: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(src)}


def clean_run(src: Path) -> tuple[float, float]:
    """(seconds to the first byte on stdout, seconds to the process' end)."""
    began = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "autodeco_cli.cli", *COMMAND],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=_env(src),
    )
    first = child.stdout.read(1)
    first_token = time.perf_counter() - began
    child.stdout.read()
    if child.wait() != 0 or not first:
        raise RuntimeError(f"{src}: the command failed (exit {child.returncode})")
    return first_token, time.perf_counter() - began


def help_run(src: Path) -> float:
    """Seconds for `autodeco --help` to end (no model, so no torch should load)."""
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "autodeco_cli.cli", "--help"], capture_output=True, env=_env(src), check=True)
    return time.perf_counter() - began


def train_command(folder: Path, name: str) -> list[str]:
    """One optimizer step of head training on four tiny examples, into a fresh output folder."""
    data = folder / "train.jsonl"
    if not data.exists():
        rows = [{"prompt": f"What is {i} + {i}?", "completion": f"{i} + {i} = {2 * i}."} for i in range(4)]
        data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = folder / f"heads-{name}"
    fields = ["max_steps=1", "micro_batch_size=4", "gradient_accumulation=1", "cache_hidden=off"]
    return ["train-heads", "--data", str(data), "--output-dir", str(out), *fields]


def train_run(src: Path, command: list[str]) -> float:
    """Seconds from launch to the end of a one-step train-heads."""
    began = time.perf_counter()
    child = subprocess.run([sys.executable, "-m", "autodeco_cli.cli", *command], capture_output=True, env=_env(src))
    if child.returncode != 0:
        raise RuntimeError(f"{src}: train-heads failed (exit {child.returncode}):\n{child.stderr[-3000:]!r}")
    return time.perf_counter() - began


def breakdown_run(src: Path, command: list[str] = COMMAND) -> list[tuple[str, float, float, float]]:
    """[(phase, wall s, imports s, gc s)] in order, the interpreter's exit last."""
    child = subprocess.run(
        [sys.executable, "-c", PROBE, repr(time.time()), *command], capture_output=True, text=True, env=_env(src)
    )
    ended = time.time()
    lines = [line for line in child.stderr.splitlines() if line.startswith("PROBE ")]
    if child.returncode != 0 or not lines:
        raise RuntimeError(f"{src}: the probe failed:\n{child.stderr[-3000:]}")
    marks = json.loads(lines[-1][len("PROBE ") :])
    phases: dict[str, list[float]] = {}
    for (_, t0, imp0, gc0, gci0), (label, t1, imp1, gc1, gci1) in zip(marks, marks[1:]):
        imports = (imp1 - imp0) - (gci1 - gci0)  # collections during an import count as gc
        row = phases.setdefault(PHASES.get(label, label), [0.0, 0.0, 0.0])
        for i, value in enumerate((t1 - t0, imports, gc1 - gc0)):
            row[i] += value
    phases["interpreter exit"] = [ended - marks[-1][1], 0.0, 0.0]
    return [(name, *row) for name, row in phases.items()]


def median_phases(runs: list[list[tuple[str, float, float, float]]]) -> dict[str, tuple[float, float, float]]:
    names = [name for name, *_ in runs[0]]
    table = {}
    for name in names:
        rows = [next(p for p in run if p[0] == name) for run in runs if any(p[0] == name for p in run)]
        table[name] = tuple(statistics.median(r[i] for r in rows) for i in (1, 2, 3))
    return table


def print_breakdown(variants: list[str], tables: dict[str, dict]) -> None:
    names = list(dict.fromkeys(name for v in variants for name in tables[v]))
    header = "".join(f" | {v:>26s}" for v in variants)
    print(f"\n{'phase (median; wall = imports + gc + the rest)':58s}{header}")
    print(f"{'':58s}" + " | wall s  imports s   gc s" * len(variants))
    for name in names:
        cells = ""
        for v in variants:
            wall, imports, gc_s = tables[v].get(name, (0.0, 0.0, 0.0))
            cells += f" | {wall:6.3f}  {imports:9.3f}  {gc_s:5.3f}"
        print(f"{name[:58]:58s}{cells}")
    totals = ""
    for v in variants:
        wall, imports, gc_s = (sum(row[i] for row in tables[v].values()) for i in range(3))
        totals += f" | {wall:6.3f}  {imports:9.3f}  {gc_s:5.3f}"
    print(f"{'total (to the end of the process)':58s}{totals}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="clean runs per variant (median)")
    parser.add_argument("--breakdown-repeats", type=int, default=3, help="probed runs per variant (median)")
    parser.add_argument("--baseline-ref", default="7eb0833", help="the commit to compare with ('' for none)")
    parser.add_argument("--train-repeats", type=int, default=3, help="one-step train-heads runs per variant (0: none)")
    args = parser.parse_args(argv)

    print(f"cpu: {cpu_model()} ({os.cpu_count()} logical CPUs); python {sys.version.split()[0]}")
    print(f"command: autodeco {' '.join(COMMAND)}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    with tempfile.TemporaryDirectory() as folder:
        trees = {"now": REPO / "src"}
        if args.baseline_ref:
            trees = {f"baseline {args.baseline_ref}": baseline_tree(args.baseline_ref, Path(folder)), **trees}
        time_generate(trees, args)
        if args.train_repeats:
            time_training(trees, args.train_repeats, Path(folder))
    return 0


def time_generate(trees: dict[str, Path], args: argparse.Namespace) -> None:
    """The generate part: clean runs and probed runs, alternating, then their tables."""
    variants = list(trees)
    for variant in variants:  # warm: the GGUF cache and the page cache
        clean_run(trees[variant])
    clean = {v: [] for v in variants}
    helps = {v: [] for v in variants}
    probed = {v: [] for v in variants}
    for repeat in range(max(args.repeats, args.breakdown_repeats)):
        order = variants if repeat % 2 == 0 else variants[::-1]
        for variant in order:
            if repeat < args.repeats:
                clean[variant].append(clean_run(trees[variant]))
                first, ended = clean[variant][-1]
                print(f"  {variant:18s} rep {repeat}: first token {first:.3f} s, exit {ended:.3f} s", flush=True)
                helps[variant].append(help_run(trees[variant]))
            if repeat < args.breakdown_repeats:
                probed[variant].append(breakdown_run(trees[variant]))
    print(f"\n{'variant':18s} {'first token (median)':>21s} {'exit (median)':>14s} {'ratio':>6s} {'--help':>7s}")
    reference = statistics.median(f for f, _ in clean[variants[0]]) if clean[variants[0]] else None
    for variant in variants:
        if not clean[variant]:
            continue
        first = statistics.median(f for f, _ in clean[variant])
        ended = statistics.median(e for _, e in clean[variant])
        ratio = f"{first / reference:.2f}x" if reference else ""
        print(f"{variant:18s} {first:20.3f}s {ended:13.3f}s {ratio:>6s} {statistics.median(helps[variant]):6.3f}s")
    now = statistics.median(f for f, _ in clean["now"]) if clean["now"] else None
    if now is not None:
        print(f"target: first token <= {TARGET_S:.0f} s: {'met' if now <= TARGET_S else 'NOT met'} ({now:.2f} s)")
    if all(probed[v] for v in variants):
        print_breakdown(variants, {v: median_phases(probed[v]) for v in variants})


def time_training(trees: dict[str, Path], repeats: int, folder: Path) -> None:
    """The train-heads part: clean runs alternating, then one probed run of each (gc total, exit)."""
    variants = list(trees)
    print(f"\ntraining start: autodeco {' '.join(train_command(folder, '<variant>-<rep>'))}")
    ended = {v: [] for v in variants}
    for repeat in range(repeats + 1):  # the first round warms the caches, untimed
        for i, variant in enumerate(variants if repeat % 2 == 0 else variants[::-1]):
            seconds = train_run(trees[variant], train_command(folder, f"{repeat}-{i}-{variant.split()[0]}"))
            if repeat:
                ended[variant].append(seconds)
                print(f"  {variant:18s} rep {repeat - 1}: process end {seconds:.3f} s", flush=True)
    probes = {v: breakdown_run(trees[v], train_command(folder, f"probe-{v.split()[0]}")) for v in variants}
    reference = statistics.median(ended[variants[0]])
    print(f"\n{'variant':18s} {'process end (median)':>21s} {'ratio':>6s} {'gc total (probe)':>17s} {'exit':>7s}")
    for variant in variants:
        median = statistics.median(ended[variant])
        gc_total = sum(row[3] for row in probes[variant])
        exit_s = next(row[1] for row in probes[variant] if row[0] == "interpreter exit")
        print(f"{variant:18s} {median:20.3f}s {median / reference:5.2f}x {gc_total:16.3f}s {exit_s:6.3f}s")


if __name__ == "__main__":
    sys.exit(main())
