"""No --dtype is "auto": bf16 on CPUs with native bf16, fp32 elsewhere; what is recorded is the
resolved dtype, and what claims exactness (training, studies, merge) pins fp32."""

from __future__ import annotations

import json

import pytest
import torch

from autodeco_cli.core import cpu_features
from autodeco_cli.engine.models import load_base_model, pick_dtype, training_dtype

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture
def native_bf16(monkeypatch):
    """This CPU claims native bf16 (set True/False through the returned function)."""

    def set_native(value: bool) -> None:
        monkeypatch.setattr(cpu_features, "cpu_has_native_bf16", lambda: value)

    return set_native


@pytest.mark.parametrize("native", [True, False])
def test_no_dtype_resolves_to_bf16_only_with_native_bf16(native_bf16, native):
    native_bf16(native)
    assert pick_dtype(None, torch.device("cpu")) == (torch.bfloat16 if native else torch.float32)
    assert pick_dtype(None, torch.device("cuda")) == torch.bfloat16
    assert pick_dtype("float32", torch.device("cpu")) == torch.float32  # an explicit dtype always wins


def test_training_keeps_fp32_on_cpu_without_a_dtype(native_bf16):
    native_bf16(True)
    assert training_dtype(None, "cpu") == "float32"
    assert training_dtype(None, "cuda") == "bfloat16"
    assert training_dtype("auto", "cpu") == "auto"  # a recipe's dtype=auto opts in


def test_loaded_model_follows_the_default(native_bf16, tiny_model_dir):
    native_bf16(True)
    assert load_base_model(str(tiny_model_dir), device="cpu").model.dtype == torch.bfloat16
    native_bf16(False)
    assert load_base_model(str(tiny_model_dir), device="cpu").model.dtype == torch.float32


def _eval(cli, model_dir, out, *extra):
    return cli(
        "eval", "-b", "fake", "--model", model_dir, "-k", "1", "--seeds", "1", "--batch-size", "4",
        "--output-dir", out, "--decoding", "greedy", *extra,
    )  # fmt: skip


def test_results_record_the_resolved_default_dtype(native_bf16, tiny_model_dir, tmp_path, fake_registry, cli):
    native_bf16(True)
    code, _, err = _eval(cli, tiny_model_dir, tmp_path / "default")
    assert code == 0, err
    results = json.loads((tmp_path / "default" / "greedy" / "results.json").read_text())
    config = json.loads((tmp_path / "default" / "greedy" / "run_config.json").read_text())
    assert results["config"]["dtype"] == config["dtype"] == "bfloat16"  # not "auto", not None

    code, _, err = _eval(cli, tiny_model_dir, tmp_path / "fp32", "--dtype", "float32")
    assert code == 0, err
    assert json.loads((tmp_path / "fp32" / "greedy" / "results.json").read_text())["config"]["dtype"] == "float32"

    # a folder begun in fp32 meets the bf16 default: refused, saying how to resume it
    code, _, err = _eval(cli, tiny_model_dir, tmp_path / "fp32")
    assert code == 2 and "dtype float32 -> bfloat16, resume with --dtype float32" in err


def test_study_folders_without_a_recorded_dtype_resume_in_fp32(tiny_lm, tmp_path, fake_registry):
    """Studies did not record the dtype (None), which then meant fp32 on CPU."""
    from autodeco_cli.core.decoding import make_strategy
    from autodeco_cli.engine.generation import GenerationEngine
    from autodeco_cli.evaluation.runner import run_eval
    from autodeco_cli.evaluation.settings import EvalSettings

    engine = GenerationEngine(tiny_lm)
    settings = EvalSettings(k=1, seeds=(1,), limit=2, batch_size=4)
    run_eval(engine, ["fake"], [make_strategy("greedy")], settings, out_dir=tmp_path)
    path = tmp_path / "greedy" / "run_config.json"
    assert json.loads(path.read_text())["dtype"] == "float32"  # recorded without run_info too
    path.write_text(json.dumps({**json.loads(path.read_text()), "dtype": None}))
    run_eval(engine, ["fake"], [make_strategy("greedy")], settings, out_dir=tmp_path)


def test_merge_writes_fp32_whatever_the_default(native_bf16, tiny_model_dir, tiny_heads_dir, tmp_path):
    from safetensors import safe_open

    from autodeco_cli.engine.export import merge

    native_bf16(True)
    merged = merge(str(tiny_model_dir), str(tiny_heads_dir), tmp_path / "merged")
    with safe_open(str(merged / "model.safetensors"), "pt") as handle:
        assert {handle.get_tensor(k).dtype for k in handle.keys()} == {torch.float32}


@pytest.mark.parametrize("recipe", ["reproduce-cpu.yaml", "where-it-wins-cpu.yaml", "ablation-cpu.yaml"])
def test_study_recipes_pin_fp32(recipe):
    """Their recorded numbers are fp32 ones: no machine's default may change them."""
    from pathlib import Path

    from autodeco_cli.training.recipes import read_recipe_with_lines

    data, _ = read_recipe_with_lines(Path(__file__).resolve().parents[1] / "recipes" / recipe)
    assert data["dtype"] == "float32"


def test_flags_named_off_are_taken_as_absent(monkeypatch):
    """AUTODECO_CPU_FLAGS_OFF: the paths of a CPU without those flags, run on this one (benchmarks)."""
    monkeypatch.setattr(cpu_features, "flags_from_cpuinfo", lambda text: {"avx2", "avx512f", "avx512_bf16", "amx_bf16"})
    monkeypatch.setattr(cpu_features.platform, "system", lambda: "Linux")
    monkeypatch.delenv("AUTODECO_CPU_FLAGS_OFF", raising=False)
    assert cpu_features.has_native_bf16(cpu_features.cpu_flags())
    monkeypatch.setenv("AUTODECO_CPU_FLAGS_OFF", "amx_bf16")
    assert cpu_features.cpu_flags() == {"avx2", "avx512f", "avx512_bf16"}
    monkeypatch.setenv("AUTODECO_CPU_FLAGS_OFF", "avx512f,avx512_bf16,amx_bf16")
    assert cpu_features.cpu_flags() == {"avx2"} and not cpu_features.has_native_bf16(cpu_features.cpu_flags())
