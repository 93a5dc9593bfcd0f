"""bench/engine_targets.py reads each target's figure from its benchmark's own output (samples
below are lines those scripts printed) and marks the target met or not. No benchmark runs here."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"

PROBE = """machine: Intel(R) Xeon(R) Processor (2 logical CPUs); torch 2.13.0+cpu

rows=1 context=60 bits identical (logits, last hidden): True
  lean           forward    9.17 ms   body    8.10 ms
  floor: 212.3 MB of body weights at 27.0 GB/s = 7.87 ms; body / floor: transformers 2.45x, lean 1.03x; body / its
rows=32 context=60 bits identical (logits, last hidden): True
  floor: 212.3 MB of body weights at 27.0 GB/s = 7.87 ms; body / floor: transformers 3.79x, lean 1.78x; body / its
"""
DECODING = """batch 1: heads' own time within autodeco runs = +1.4% of the rest of the run (in-run, drift-free)
batch 32: heads' own time within autodeco runs = +2.9% of the rest of the run (in-run, drift-free)
"""
START = "target: first token <= 3 s: met (2.77 s)\n"
LMEVAL = "default (bfloat16): ours / lm-eval HF = 6.45x  (median tokens/s; target >= 5x: ok)\n"


@pytest.fixture
def targets(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module("engine_targets")


def test_each_figure_is_read_from_its_benchmarks_output(targets):
    assert targets.body_over_floor(PROBE) == {1: 1.03, 32: 1.78}
    assert targets.heads_share(DECODING) == {1: 1.4, 32: 2.9}
    assert targets.first_token_s(START) == 2.77
    assert targets.first_token_s(START.replace("met (2.77", "NOT met (3.15")) == 3.15  # bench_start's own words
    assert targets.lmeval_ratio(LMEVAL) == 6.45
    assert targets.lmeval_ratio("nothing here") is None


def test_chat_ratios_are_medians_of_the_repeats(targets):
    def runs(*rates):
        return [{"tokens": rate * 10, "wall": 10.0} for rate in rates]

    results = {"runs": {"chat": {"fp32": runs(100, 120, 110), "default": runs(330, 300)},
                        "chat vs vllm": {"vllm-bf16": runs(50, 60), "default": runs(220, 200)}}}  # fmt: skip
    assert targets.chat_ratios(results) == {"default / fp32": 315 / 110, "one process / vLLM": 210 / 55}
    assert "one process / vLLM" not in targets.chat_ratios({"runs": {"chat": results["runs"]["chat"]}})
    assert targets.chat_ratios({"runs": {"chat": {"fp32": [], "default": runs(300)}}}) == {}  # every fp32 run failed


def test_a_target_is_met_only_on_its_side_of_the_bound(targets):
    assert targets.row("body", 1.49, 1.5, True, "{:.2f}×") == ("body", "1.49×", "yes")
    assert targets.row("body", 1.78, 1.5, True, "{:.2f}×")[2] == "no"
    assert targets.row("default / fp32", 2.4, 2.5, False, "{:.2f}×")[2] == "no"
    assert targets.row("eval", None, 5.0, False, "{:.2f}×") == ("eval", "not measured (see the output above)", "?")
    assert "| body | 1.49× | yes |" in targets.table([targets.row("body", 1.49, 1.5, True, "{:.2f}×")])


def test_a_benchmark_that_fails_leaves_its_targets_unmeasured(targets, capsys):
    out = targets.run([targets.sys.executable, "-c", "print('rows=1 half a line'); raise SystemExit(3)"])
    assert targets.body_over_floor(out) == {}
    assert "failed (exit 3)" in capsys.readouterr().out


def test_skip_takes_only_the_optional_parts(targets, capsys):
    with pytest.raises(SystemExit):
        targets.main(["--skip", "chat"])
    assert "--skip takes vllm, lmeval" in capsys.readouterr().err
