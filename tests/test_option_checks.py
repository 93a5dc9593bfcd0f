"""Option values, paths and recipe fields are checked before any model loads (issue #23): the
engine options (`engine/option_checks.py`, which the loaders run too), a -t/-p the decoding would
ignore (`core/decoding.py`), and recipe fields out of range (`training/recipes.in_range`).
That none of these imports torch is `test_lazy_imports.py`'s to show."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from autodeco_cli.core.decoding import make_strategy
from autodeco_cli.core.errors import UserError
from autodeco_cli.engine import option_checks
from autodeco_cli.engine.option_checks import check_device, check_dtype, check_model_spec, check_parallel
from autodeco_cli.training.recipes import build_config, in_range

# ---- the model: only what no loader could open -------------------------------------------------


def test_model_names_that_may_exist_pass(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    for spec in ("smollm2-135m-instruct", "Qwen/Qwen3-8B", str(tmp_path / "model")):
        check_model_spec(spec, "--model")  # an alias, a hub id (not looked up), a model folder


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("/nonexistent/model", "--model /nonexistent/model: no such file or folder"),
        ("./not-here", "no such file or folder"),
        ("~/not-here-either", "no such file or folder"),
        ("a/b/c", "no such file or folder"),
        ("org/weights.safetensors", "no such file or folder"),
        ("absent.gguf", "GGUF file not found"),
        ("gpt2", "neither an existing path, a hub id nor an alias"),
    ],
)
def test_model_paths_that_cannot_exist_are_refused(spec, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="--model") as caught:
        check_model_spec(spec, "--model")
    assert needle in str(caught.value) and ("hub id" in str(caught.value) or spec.endswith(".gguf"))


def test_a_folder_without_config_and_a_plain_file_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(UserError, match="no config.json"):
        check_model_spec(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="is a file, not a model folder"):
        check_model_spec(str(tmp_path / "weights.bin"))


def test_the_loader_refuses_with_the_same_check(tmp_path):
    from autodeco_cli.engine.models import resolve_model_source

    with pytest.raises(UserError, match="model /nonexistent/model: no such file or folder"):
        resolve_model_source("/nonexistent/model")
    assert resolve_model_source("Qwen/Qwen3-8B") == ("hub", "Qwen/Qwen3-8B")


# ---- device, dtype, engine, --tp/--dp: one list each, which the engine reads ------------------------


def test_devices():
    for device in (None, "auto", "cpu", "cuda", "cuda:1", "mps", "xpu:0"):
        check_device(device)
    for device in ("tpu", "cuda:x", "CUDA", "gpu"):
        with pytest.raises(UserError, match=f"--device '{device}' is not a device"):
            check_device(device)


def test_the_engine_uses_the_same_lists():
    from autodeco_cli.engine.models import DTYPES, pick_device, pick_dtype

    assert set(DTYPES) == set(option_checks.DTYPE_NAMES)
    with pytest.raises(UserError, match="--device 'tpu' is not a device"):
        pick_device("tpu")
    with pytest.raises(UserError, match="--dtype 'half' is not supported"):
        pick_dtype("half", pick_device("cpu"))


def test_dtypes():
    for dtype in (None, "auto", *option_checks.DTYPE_NAMES):
        check_dtype(dtype)
    with pytest.raises(UserError, match="field dtype 'half' is not supported.*bfloat16"):
        check_dtype("half", "field dtype")


def test_parallel_sizes():
    check_parallel("vllm", 2, 2)
    check_parallel("hf", 1, 2)
    with pytest.raises(UserError, match="--data-parallel-size 0: must be at least 1"):
        check_parallel("hf", 1, 0)
    with pytest.raises(UserError, match="--tensor-parallel-size -1: must be at least 1"):
        check_parallel("vllm", -1, 1)
    with pytest.raises(UserError, match="--tensor-parallel-size is a vLLM option"):
        check_parallel("hf", 2, 1)


def test_eval_with_missing_heads_leaves_no_output_folder(cli, tmp_path):
    out = tmp_path / "out"
    code, _, err = cli("eval", "-b", "arith-add", "--limit", "1", "-o", out, "--heads", tmp_path / "no-heads")
    assert code == 2 and "--heads" in err and "heads checkpoint not found" in err, err
    assert not out.exists()  # refused before the lock would have made the strategy's folder


# ---- -t/-p: an error where the decoding would ignore them ------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs", "needle", "fix"),
    [
        (
            "autodeco",
            {"temperature": 0.0},
            "-t/--temperature is not a setting of --decoding autodeco",
            "--temperature-scale",
        ),
        ("autodeco", {"top_p": 2.0}, "-p/--top-p is not a setting of --decoding autodeco", "--top-p-scale"),
        ("greedy", {"temperature": 0.7}, "-t/--temperature is not a setting of --decoding greedy", "--decoding static"),
        ("greedy", {"top_p": 0.9}, "-p/--top-p is not a setting of --decoding greedy", "--decoding static"),
        ("greedy", {"top_k": 20}, "--top-k is not a setting of --decoding greedy", "--decoding static"),
        ("static", {"temperature_scale": 2.0}, "--temperature-scale is a setting of --decoding autodeco", "Drop"),
        ("min-p", {"top_p_scale": 0.5}, "--top-p-scale is a setting of --decoding autodeco, not min-p", "Drop"),
        ("static", {"active_heads": "temperature"}, "--active-heads is a setting of --decoding autodeco", "Drop"),
        ("static", {"top_p": 2.0}, "--top-p 2 is out of range", "(0, 1]"),
        ("edt", {"top_p": 0.0}, "--top-p 0 is out of range", "(0, 1]"),
        ("static", {"temperature": -1.0}, "--temperature -1 is out of range", "(0, 5]"),
        ("top-n-sigma", {"temperature": -0.5}, "--temperature -0.5 is out of range", "(0, 5]"),
    ],
)
def test_decoding_flags_the_decoding_would_ignore_or_cannot_take(name, kwargs, needle, fix):
    with pytest.raises(UserError) as caught:
        make_strategy(name, **kwargs)
    assert needle in str(caught.value) and fix in str(caught.value), str(caught.value)


def test_the_flags_each_decoding_uses_still_pass():
    assert make_strategy("autodeco", temperature_scale=1.2, top_p_scale=0.9, top_k=20).top_k == 20
    assert make_strategy("greedy", None, None, 0).is_greedy  # --top-k 0 is "off"
    assert make_strategy("static", 0.6, 0.95).label == "static(T=0.6, p=0.95)"
    assert make_strategy("mean-shift", 0.8, 0.9).top_p == 0.9
    assert make_strategy("min-p", 1.2, 0.9, min_p=0.1).top_p == 0.9


# ---- recipe fields: in range, or a one-line error naming the field ----------------------------------


@dataclass
class _Recipe:
    k: int = in_range(1, default=4)
    limit: int | None = in_range(1, default=None)
    temperatures: list = in_range(0, 5, above=True, default_factory=lambda: [1.0])
    name: str = "x"


def test_recipe_fields_in_range_pass():
    recipe = build_config(_Recipe, None, ["k=2", "limit=null", "temperatures=0.5,5"])
    assert (recipe.k, recipe.limit, recipe.temperatures) == (2, None, [0.5, 5])


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("k=0", "command line: field k=0 is out of range. Use a value >= 1"),
        ("k=-3", "field k=-3 is out of range"),
        ("limit=0", "field limit=0 is out of range"),
        ("temperatures=[0.5, 0]", "field temperatures holds 0, which is out of range. Use values > 0 and <= 5"),
        ("temperatures=[1, 6]", "field temperatures holds 6, which is out of range"),
        ("temperatures=[1, abc]", "field temperatures holds 'abc'"),
    ],
)
def test_recipe_fields_out_of_range_are_one_line_errors(override, needle):
    with pytest.raises(UserError) as caught:
        build_config(_Recipe, None, [override])
    assert needle in str(caught.value), str(caught.value)


def test_a_recipe_file_names_the_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: y\nk: 0\n")
    with pytest.raises(UserError, match=f"{recipe}:2: field k=0 is out of range"):
        build_config(_Recipe, recipe, [])


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("k=0", "field k=0 is out of range"),
        ("data_k=0", "field data_k=0 is out of range"),
        ("data_top_p=1.5", "field data_top_p=1.5 is out of range"),
        ("top_ps=[0.5, 2]", "field top_ps holds 2"),
        ("seeds=[]", "field seeds=[]: need at least one seed"),
        ("seeds=[0, 0]", "without repeats"),
        ("grid_mode=fast", "field grid_mode='fast' is not a grid mode"),
        ("train={epochs: 0}", "field train: config field epochs=0 is invalid"),
        ("model=/nonexistent/model", "field model /nonexistent/model: no such file or folder"),
        ("dtype=half", "field dtype 'half' is not supported"),
        ("benchmarks=[arith-ad]", "Unknown task 'arith-ad'"),
    ],
)
def test_reproduce_checks_its_recipe_before_anything_loads(override, needle):
    from autodeco_cli.studies.reproduce import config_from

    for quick in (False, True):
        with pytest.raises(UserError) as caught:
            config_from(None, [override], quick)
        assert needle in str(caught.value), str(caught.value)
    assert config_from(None, [], quick=True).k >= 1  # the shipped defaults pass


def test_where_it_wins_checks_each_entrys_k_and_limit(tmp_path):
    from autodeco_cli.studies.where_it_wins import WhereItWinsConfig, run_where_it_wins

    config = WhereItWinsConfig(workdir=str(tmp_path / "work"))
    config.benchmarks[0]["k"] = 0
    with pytest.raises(UserError, match="field benchmarks: entry 'rand-times' has k=0"):
        run_where_it_wins(config)
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize(
    "field", ["log_every=0", "max_length=0", "head_width=0", "limit=0", "max_steps=0", "threads=-1", "save_every=-1"]
)
def test_train_fields_that_used_to_pass_unchecked(field):
    from autodeco_cli.training.config import TrainConfig

    name = field.split("=")[0]
    with pytest.raises(UserError, match=f"config field {name}=-?\\d+ is invalid"):
        build_config(TrainConfig, None, [field], data="train.jsonl").validate()
    build_config(TrainConfig, None, ["threads=0", "save_every=0", "keep_checkpoints=0"], data="x.jsonl").validate()
