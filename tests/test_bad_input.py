"""Bad input and crash safety: each case is a one-line error naming the file/line/field and the fix,
exit code 2, no traceback, and nothing already written lost.

Commands run in-process through the console entry point `autodeco_cli.cli:main` on the tiny random
model of conftest.py. Where a check must come before the model loads, the model path does not exist:
the error must then be about the bad input, not about the model.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import torch

from autodeco_cli.core.errors import UserError
from conftest import interrupt_every_engine_after_first_batch, write_jsonl

pytestmark = pytest.mark.usefixtures("torch_single_thread")

NO_MODEL = "/nonexistent/model-that-never-loads"
TRAIN_ROWS = [{"prompt": f"What is {i} + {i}?", "completion": f"The answer is {2 * i}."} for i in range(1, 7)]


def assert_user_error(result, *needles: str) -> str:
    code, _, err = result
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip() and "━" not in line]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, f"expected one error line, got:\n{err}"
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def _can_create_in(folder: Path) -> bool:
    try:
        handle, probe = tempfile.mkstemp(dir=folder)
    except OSError:
        return False
    os.close(handle)
    os.unlink(probe)
    return True


@pytest.fixture
def unwritable_dir(tmp_path):
    """A folder no file can be created in: mode 555, or /sys where root ignores modes."""
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if not _can_create_in(folder):
            yield folder
        elif Path("/sys").is_dir() and not _can_create_in(Path("/sys")):
            yield Path("/sys")
        else:
            pytest.skip("no unwritable folder on this machine (root without a read-only mount)")
    finally:
        folder.chmod(0o755)


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("hello\nthe quick brown fox\nWhat is 27 + 82?\nTell me a joke\n", encoding="utf-8")
    return path


@pytest.fixture
def train_data(tmp_path) -> Path:
    return write_jsonl(tmp_path / "train.jsonl", TRAIN_ROWS)


# ---- 1. outputs that cannot be written; binary inputs ------------------------------------------


def test_generate_output_parent_is_a_file_fails_before_the_model_loads(cli, prompts_file, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("keep me")
    result = cli("generate", "-f", prompts_file, "-m", NO_MODEL, "-o", blocker / "out.jsonl")
    assert_user_error(result, "--output", str(blocker), "is a file, not a folder")
    assert blocker.read_text() == "keep me"


def test_generate_output_is_a_folder(cli, prompts_file, tmp_path):
    result = cli("generate", "-f", prompts_file, "-m", NO_MODEL, "-o", tmp_path)
    assert_user_error(result, "--output", "is a folder, not a file", "out.jsonl")


@pytest.mark.parametrize("option", ["-o", "--trace-out", "--trace-plot"])
def test_generate_unwritable_outputs(cli, prompts_file, unwritable_dir, option):
    result = cli("generate", "-f", prompts_file, "-m", NO_MODEL, option, unwritable_dir / "out.file")
    assert_user_error(result, option if option != "-o" else "--output", "cannot write in", str(unwritable_dir))


def test_eval_unwritable_and_file_output_dir(cli, unwritable_dir, tmp_path):
    common = ["eval", "-b", "arith-add", "--limit", "2", "-k", "1", "--seeds", "1", "-d", "greedy", "-m", NO_MODEL]
    assert_user_error(cli(*common, "-o", unwritable_dir / "run"), "--output-dir", "cannot write in")
    blocker = tmp_path / "results-file"
    blocker.write_text("{}")
    assert_user_error(cli(*common, "-o", blocker), "--output-dir", str(blocker), "is a file, not a folder")


@pytest.mark.parametrize("objective", ["mle", "reward"])
def test_train_heads_unwritable_and_file_output_dir(cli, train_data, unwritable_dir, tmp_path, objective):
    args = ["train-heads", "-m", NO_MODEL] + (
        ["--data", train_data, "max_steps=1"]
        if objective == "mle"
        else ["--objective", "reward", "tasks=arith-add", "steps=1"]
    )
    assert_user_error(cli(*args, "-o", unwritable_dir / "heads"), "output_dir", "cannot write in")
    blocker = tmp_path / "heads-file"
    blocker.write_text("x")
    assert_user_error(cli(*args, "-o", blocker), "output_dir", "is a file, not a folder")


def test_binary_prompt_file(cli, tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_bytes(b"first prompt\nsecond \xff\xfe prompt\n")
    assert_user_error(cli("generate", "-f", path, "-m", NO_MODEL), f"{path}:2", "not UTF-8", "binary")


def test_binary_training_file(cli, tiny_model_dir, tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(json.dumps(TRAIN_ROWS[0]).encode() + b"\n\x00\x01\xff\xfe\n")
    result = cli("train-heads", "-m", tiny_model_dir, "--data", path, "-o", tmp_path / "out", "max_steps=1")
    assert_user_error(result, f"{path}:2", "training data", "not UTF-8")


def test_generate_writes_each_sample_as_it_finishes(cli, tiny_model_dir, prompts_file, tmp_path, monkeypatch):
    """A run killed after the first sample keeps it in -o (it used to write only at the very end)."""
    interrupt_every_engine_after_first_batch(monkeypatch)
    out = tmp_path / "out.jsonl"
    code, _, err = cli(
        "generate",
        "-f",
        prompts_file,
        "-m",
        tiny_model_dir,
        "-d",
        "greedy",
        "--max-new-tokens",
        3,
        "--batch-size",
        1,
        "-o",
        out,
    )
    assert code == 130, err
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(records) >= 1 and {"prompt_index", "text", "prompt"} <= set(records[0])


# ---- 2. heads with NaN/inf weights; 5. config hidden_size that disagrees -----------------------


def _copy_heads(source: Path, target: Path, edit=None, config_edit=None) -> Path:
    from safetensors.torch import load_file, save_file

    target.mkdir(parents=True)
    state = load_file(str(source / "autodeco_heads.safetensors"))
    if edit:
        edit(state)
    save_file(state, str(target / "autodeco_heads.safetensors"))
    config = json.loads((source / "config.json").read_text())
    if config_edit:
        config_edit(config)
    (target / "config.json").write_text(json.dumps(config))
    return target


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_heads_with_non_finite_weights_are_refused(cli, tiny_model_dir, tiny_heads_dir, tmp_path, bad):
    def poison(state):
        state["top_p_head.mlp.2.weight"][0, 3] = bad

    heads = _copy_heads(tiny_heads_dir, tmp_path / "bad-heads", edit=poison)
    with pytest.raises(UserError, match="top_p_head.mlp.2.weight holds 1 NaN/inf value"):
        from autodeco_cli.core.heads import load_heads

        load_heads(heads)
    result = cli("generate", "hi", "-m", tiny_model_dir, "--heads", heads, "--max-new-tokens", 2)
    assert_user_error(result, str(heads), "NaN/inf", "Retrain")


@pytest.mark.parametrize("key", ["hidden_size", "autodeco_cli.hidden_size"])
def test_heads_config_hidden_size_must_match_weights(cli, tiny_model_dir, tiny_heads_dir, tmp_path, key):
    def wrong(config):
        if key == "hidden_size":
            config["hidden_size"] = 64
        else:
            config["autodeco_cli"]["hidden_size"] = 64

    heads = _copy_heads(tiny_heads_dir, tmp_path / "heads", config_edit=wrong)
    result = cli("generate", "hi", "-m", tiny_model_dir, "--heads", heads, "--max-new-tokens", 2)
    assert_user_error(result, str(heads / "config.json"), f"field {key} is 64", "hidden size 32")


def test_unchanged_heads_still_load(tiny_heads_dir):
    from autodeco_cli.core.heads import load_heads

    assert load_heads(tiny_heads_dir).config.hidden_size == 32


# ---- 3. --max-new-tokens beyond the model's context --------------------------------------------


def test_generate_max_new_tokens_capped_by_context(cli, tiny_model_dir):
    line = assert_user_error(
        cli("generate", "hi", "-m", tiny_model_dir, "--max-new-tokens", 10**9),
        "--max-new-tokens 1000000000",
        "context of 512",
    )
    assert "or less" in line


def test_eval_and_make_data_max_new_tokens_capped_by_context(cli, tiny_model_dir, tmp_path):
    common = ["--limit", "1", "-k", "1", "-m", tiny_model_dir, "--max-new-tokens", 100000]
    assert_user_error(
        cli("eval", "-b", "arith-add", "--seeds", "1", "-d", "greedy", "-o", tmp_path / "ev", *common),
        "context is 512",
        "--max-new-tokens 512 or less",
    )
    assert not (tmp_path / "ev").exists()
    assert_user_error(cli("make-data", "--tasks", "arith-add", "-o", tmp_path / "d.jsonl", *common), "context is 512")


@pytest.fixture
def long_budget_task(monkeypatch):
    """A task whose own max_new_tokens (600) cannot fit the tiny model's context of 512."""
    from autodeco_cli.tasks import registry
    from autodeco_cli.training import on_policy_data
    from conftest import FakeTask

    task = FakeTask(name="long", max_new_tokens=600)
    for module in (registry, on_policy_data):
        monkeypatch.setattr(module, "get_task", lambda name: task)
        monkeypatch.setattr(module, "expand", lambda names: [str(names)])
    return task


@pytest.mark.parametrize("command", ["eval", "make-data", "grid-search"])
def test_task_default_budget_capped_by_context(cli, tiny_model_dir, tmp_path, long_budget_task, command):
    """The task's own budget used to run unchecked: prompt + 600 tokens past a 512-token context."""
    out = tmp_path / "out"
    args = {
        "eval": ["eval", "-b", "long", "-d", "greedy", "-k", 1, "--seeds", 1, "-o", out],
        "make-data": ["make-data", "--tasks", "long", "-k", 1, "-o", out / "data.jsonl"],
        "grid-search": ["grid-search", "-b", "long", "--cells", "1.0:1.0", "-k", 1, "-o", out],
    }[command]
    line = assert_user_error(
        cli(*args, "-m", tiny_model_dir), "task long", "default budget of 600 new tokens", "context of 512 tokens"
    )
    assert "--max-new-tokens" in line and "or less" in line
    assert not out.exists()  # nothing written: the check comes before any generation
    explicit = cli(*args, "-m", tiny_model_dir, "--max-new-tokens", 510)  # fits alone, not after the prompt
    assert_user_error(explicit, "task long", "--max-new-tokens 510 plus its longest prompt")
    code, _, err = cli(*args, "-m", tiny_model_dir, "--max-new-tokens", 2)
    assert code == 0, err


def test_max_new_tokens_within_context_passes(cli, tiny_model_dir):
    code, out, err = cli("generate", "hi", "-m", tiny_model_dir, "-d", "greedy", "--max-new-tokens", 3)
    assert code == 0, err


# ---- 4. crash mid-write: metrics.jsonl and trainer_state.pt ------------------------------------


def test_cut_partial_last_line(tmp_path):
    from autodeco_cli.core.io_checks import cut_partial_last_line

    log = tmp_path / "metrics.jsonl"
    log.write_bytes(b'{"step": 1}\n{"step": 2, "lo')
    assert cut_partial_last_line(log) and log.read_bytes() == b'{"step": 1}\n'
    assert not cut_partial_last_line(log) and log.read_bytes() == b'{"step": 1}\n'
    log.write_bytes(b'{"step": 1, "lo')
    assert cut_partial_last_line(log) and log.read_bytes() == b""
    assert not cut_partial_last_line(tmp_path / "missing.jsonl")


def _train(cli, model, data, out, steps, *extra):
    return cli(
        "train-heads",
        "-m",
        model,
        "--data",
        data,
        "-o",
        out,
        f"max_steps={steps}",
        "save_every=1",
        "micro_batch_size=2",
        "gradient_accumulation=1",
        "head_width=16",
        *extra,
    )


def test_resume_repairs_partial_metrics_line(cli, tiny_model_dir, train_data, tmp_path):
    out = tmp_path / "run"
    assert _train(cli, tiny_model_dir, train_data, out, 2)[0] == 0
    metrics = out / "metrics.jsonl"
    with metrics.open("a", encoding="utf-8") as handle:
        handle.write('{"step": 3, "loss": 0.12')  # killed mid-write
    code, _, err = _train(cli, tiny_model_dir, train_data, out, 3, "--resume")
    assert code == 0, err
    records = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]


def test_truncated_trainer_state_falls_back_then_names_the_file(cli, tiny_model_dir, train_data, tmp_path):
    out = tmp_path / "run"
    assert _train(cli, tiny_model_dir, train_data, out, 2)[0] == 0
    newest = out / "checkpoints" / "step-2" / "trainer_state.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    code, _, err = _train(cli, tiny_model_dir, train_data, out, 3, "--resume")
    assert code == 0, err
    assert "step-2 is broken" in err and "resuming from step-1" in err and "Traceback" not in err
    for state in (out / "checkpoints").glob("step-*/trainer_state.pt"):
        state.write_bytes(b"")
    result = _train(cli, tiny_model_dir, train_data, out, 4, "--resume")
    assert_user_error(result, "trainer_state.pt", "truncated or empty", "no earlier complete checkpoint")


def test_truncated_reward_checkpoint_names_the_file(tmp_path):
    from autodeco_cli.training.config import RewardConfig
    from autodeco_cli.training.reward import RewardTrainer
    from autodeco_cli.training.run_folder import REWARD_LEGACY_DIR

    trainer = RewardTrainer(RewardConfig(tasks="arith-add", output_dir=str(tmp_path)))
    folder = tmp_path / REWARD_LEGACY_DIR
    folder.mkdir()
    torch.save({"step": 1, "pad": torch.zeros(1000)}, folder / "trainer_state.pt")
    (folder / "trainer_state.pt").write_bytes((folder / "trainer_state.pt").read_bytes()[:300])
    with pytest.raises(UserError, match=r"checkpoint.*trainer_state\.pt.*PytorchStreamReader") as info:
        trainer.resume()
    assert str(folder) in info.value.one_line() and "Delete" in info.value.one_line()


# ---- 6. a folder given as a file ---------------------------------------------------------------


def test_prompt_file_that_is_a_folder(cli, tmp_path):
    assert_user_error(cli("generate", "-f", tmp_path, "-m", NO_MODEL), "prompt file", str(tmp_path), "is a folder")


# ---- 7. mean-shift from a results file without the task ----------------------------------------


def _means_file(tmp_path) -> Path:
    path = tmp_path / "autodeco-results.json"
    path.write_text(json.dumps({"results": {"arith-mul": {"mean_temperature": 0.5, "mean_top_p": 0.8}}}))
    return path


def test_mean_shift_task_missing_from_results_is_an_error(cli, tmp_path):
    source = _means_file(tmp_path)
    common = [
        "eval",
        "-k",
        "1",
        "--seeds",
        "1",
        "-d",
        "mean-shift",
        "--mean-from",
        source,
        "-m",
        NO_MODEL,
        "-o",
        tmp_path / "out",
    ]
    assert_user_error(cli(*common, "-b", "arith-add"), str(source), "no mean T̂/P̂ for arith-add", "it has arith-mul")
    assert_user_error(cli(*common, "-b", "arith-add,arith-mul"), "one --benchmark at a time")
    assert not (tmp_path / "out").exists()


def test_mean_shift_from_results_with_the_task(tmp_path):
    from autodeco_cli.core.decoding import mean_shift_from_results

    strategy = mean_shift_from_results(_means_file(tmp_path), "arith-mul")
    assert (strategy.temperature, strategy.top_p) == (0.5, 0.8)
    with pytest.raises(UserError, match="arith-add"):
        mean_shift_from_results(_means_file(tmp_path), "arith-add")


# ---- 8. make-data into an output made with other settings --------------------------------------


def test_make_data_refuses_other_settings(cli, tiny_model_dir, tmp_path):
    out = tmp_path / "data.jsonl"
    common = [
        "make-data",
        "--tasks",
        "arith-add",
        "--limit",
        "2",
        "-m",
        tiny_model_dir,
        "--max-new-tokens",
        3,
        "-o",
        out,
    ]
    code, _, err = cli(*common, "-k", 1, "-t", 0.8)
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("data.jsonl")}
    assert "data.jsonl.progress" in before
    line = assert_user_error(
        cli(*common, "-k", 2, "-t", 1.0),
        str(out),
        "holds samples made with other settings",
        "k: 1 -> 2",
        "temperature: 0.8 -> 1.0",
    )
    assert "another --output" in line
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("data.jsonl")} == before
    code, _, err = cli(*common, "-k", 1, "-t", 0.8)  # the same settings resume
    assert code == 0, err
    assert "2 problems were already done" in err


# ---- 9. recipe values coerced by the field's annotation ----------------------------------------


@pytest.mark.parametrize(
    "override, field, value",
    [
        ("lora_target_modules=q_proj", "lora_target_modules", ["q_proj"]),
        ("lora_target_modules=q_proj,k_proj", "lora_target_modules", ["q_proj", "k_proj"]),
        ("lora_target_modules=[q_proj, v_proj]", "lora_target_modules", ["q_proj", "v_proj"]),
        ("max_steps=12", "max_steps", 12),
        ("max_steps=null", "max_steps", None),
        ("max_steps=1e3", "max_steps", 1000),
        ("lora_learning_rate=2e-4", "lora_learning_rate", 2e-4),
        ("learning_rate=1", "learning_rate", 1.0),
        ("dft_weighting=off", "dft_weighting", False),
        ("dft_weighting=true", "dft_weighting", True),
        ("cache_hidden=off", "cache_hidden", "off"),
        ("init_heads=runs/heads", "init_heads", "runs/heads"),
        ("model=1.10", "model", "1.10"),
    ],
)
def test_overrides_are_coerced_by_annotation(override, field, value):
    from autodeco_cli.training.config import TrainConfig
    from autodeco_cli.training.recipes import build_config

    got = getattr(build_config(TrainConfig, None, [override]), field)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(
    "override, needles",
    [
        ("max_steps=abc", ["max_steps", "expects int or null", "'abc'"]),
        ("epochs=1.5", ["epochs", "expects int"]),
        ("epochs=", ["epochs", "needs a value"]),
        ("learning_rate=fast", ["learning_rate", "expects float"]),
        ("dft_weighting=maybe", ["dft_weighting", "expects bool", "true or false"]),
        ("lora_target_modules={a: 1}", ["lora_target_modules", "list of str"]),
        ("max_steps=[1, 2]", ["max_steps", "expects int"]),
    ],
)
def test_bad_override_values_are_one_line_errors(override, needles):
    from autodeco_cli.training.config import TrainConfig
    from autodeco_cli.training.recipes import build_config

    with pytest.raises(UserError) as info:
        build_config(TrainConfig, None, [override])
    for needle in ["command line", *needles]:
        assert needle in info.value.one_line()


def test_recipe_value_error_names_file_and_line(cli, tmp_path, train_data):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"data: {train_data}\nmodel: {NO_MODEL}\nmax_steps: abc\n")
    assert_user_error(cli("train-heads", "-c", recipe), f"{recipe}:3", "max_steps", "whole number")
    assert_user_error(cli("train-heads", "-c", recipe, "max_steps=abc"), "command line", "max_steps")


def test_list_override_reaches_lora(train_data):
    """lora_target_modules=q_proj used to become ['q', '_', 'p', ...] (and a peft traceback)."""
    from autodeco_cli.training.config import TrainConfig
    from autodeco_cli.training.recipes import build_config

    config = build_config(TrainConfig, None, ["lora_target_modules=q_proj", "lora_r=2"], data=str(train_data))
    assert config.lora_target_modules == ["q_proj"] and config.lora_r == 2


def test_binary_recipe(cli, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_bytes(b"data: x\n\xff\xfe\x00\n")
    assert_user_error(cli("train-heads", "-c", recipe), f"{recipe}:2", "not UTF-8")


# ---- 10. a model our engine cannot run --------------------------------------------------------


def _config_only(folder: Path, config: dict) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    "config",
    [
        {"model_type": "not_a_model", "hidden_size": 32},  # a type transformers does not know
        {"model_type": "t5", "hidden_size": 32},  # one it knows, but not as a causal LM
        {"model_type": "autodeco", "base_model_type": "t5", "hidden_size": 32},  # merged, same base
    ],
)
def test_a_model_type_that_is_not_a_causal_lm(cli, tmp_path, config):
    folder = _config_only(tmp_path / "model", config)
    if "base_model_type" in config:  # a merged folder is recognised by its `llm.` weights
        from safetensors.torch import save_file

        save_file({"llm.embed.weight": torch.zeros(2, 2)}, str(folder / "model.safetensors"))
    kind = config.get("base_model_type", config["model_type"])
    assert_user_error(cli("generate", "-m", folder, "hi"), f"model type {kind!r}", "tested: llama", "gpt_oss")


def test_a_checkpoint_without_its_lm_head(cli, tmp_path):
    """transformers loads a BertModel checkpoint as BertLMHeadModel with a random LM head (a warning)."""
    from transformers import BertConfig, BertModel

    from conftest import build_tiny_tokenizer

    config = BertConfig(
        vocab_size=320, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    BertModel(config).save_pretrained(str(tmp_path / "bert"))
    build_tiny_tokenizer().save_pretrained(str(tmp_path / "bert"))
    assert_user_error(cli("generate", "-m", tmp_path / "bert", "hi"), "'bert'", "BertLMHeadModel", "tested: llama")


def test_a_recurrent_model(cli, tmp_path):
    """Mamba keeps a recurrent state, not attention keys/values: our loop decoded other tokens than
    transformers' generate() before it was refused."""
    from transformers import MambaConfig, MambaForCausalLM

    from conftest import build_tiny_tokenizer

    MambaForCausalLM(MambaConfig(vocab_size=320, hidden_size=32, num_hidden_layers=1, state_size=4)).save_pretrained(
        str(tmp_path / "mamba")
    )
    build_tiny_tokenizer().save_pretrained(str(tmp_path / "mamba"))
    for args in (["generate", "hi"], ["eval", "-b", "arith-add", "--limit", "1", "-o", tmp_path / "ev"]):
        result = cli(*args, "-d", "autodeco", "-m", tmp_path / "mamba")
        assert "LinearAttentionLayer state" in assert_user_error(result, "'mamba'", "tested: llama")
        assert "WARNING" not in result[2]  # refused before a warning about untrained heads
