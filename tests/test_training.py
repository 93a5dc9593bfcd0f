"""Head training end to end on the tiny random Llama: data, gradients, resume, cache, modes, LoRA, CLI.

Every run is a few optimizer steps on a handful of short sequences, so the file stays fast on
2 CPU cores. Heads are narrow (head_width=32) for the same reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from autodeco_cli.core.errors import UserError
from autodeco_cli.core.heads import load_heads
from autodeco_cli.training.config import TrainConfig
from autodeco_cli.training.data import IGNORE_INDEX, Example, load_examples
from autodeco_cli.training.trainer import HeadTrainer, easy_drop_uniforms, epoch_order
from conftest import build_tiny_tokenizer, write_jsonl

pytestmark = pytest.mark.usefixtures("torch_single_thread")

ROWS = [
    {"prompt": "What is 2+2?", "completion": "The answer is 4."},
    {"prompt": [{"role": "user", "content": "Tell me a joke."}], "completion": "A cat and a mouse walk into a bar."},
    {"messages": [{"role": "user", "content": "Count to three."}, {"role": "assistant", "content": "one two three"}]},
    {"prompt": "def add(a, b):\n", "completion": "    return a + b\n"},
    {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 27 + 82?"}],
        "completion": "109",
    },
    {"prompt": "The quick brown fox", "completion": " jumps over the lazy dog."},
    {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Bye now."},
        ]
    },
    {"prompt": "Temperature and top-p are", "completion": " decoding parameters of a language model."},
]


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


@pytest.fixture
def data(tmp_path) -> Path:
    return write_jsonl(tmp_path / "train.jsonl", ROWS)


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def make_config(model_dir, data_path, out, **overrides) -> TrainConfig:
    base = dict(
        data=str(data_path),
        output_dir=str(out),
        model=str(model_dir),
        micro_batch_size=2,
        gradient_accumulation=2,
        epochs=1,
        learning_rate=3e-3,
        head_width=32,
        seed=7,
        cache_hidden="off",
    )
    base.update(overrides)
    return TrainConfig(**base)


def heads_state(trainer_or_dir) -> dict[str, torch.Tensor]:
    if isinstance(trainer_or_dir, HeadTrainer):
        return {k: v.detach().clone() for k, v in trainer_or_dir.heads.state_dict().items()}
    return {k: v.detach().clone() for k, v in load_heads(trainer_or_dir).state_dict().items()}


def assert_states_close(a: dict, b: dict, atol: float, prefix: str = ""):
    keys = [k for k in a if k.startswith(prefix)]
    assert keys and set(a) == set(b)
    for key in keys:
        torch.testing.assert_close(a[key], b[key], rtol=0.0, atol=atol, msg=key)


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


# ---- data ---------------------------------------------------------------------------------------------


def test_plain_string_prompt_is_used_verbatim_and_eos_appended(tmp_path, tok):
    path = write_jsonl(tmp_path / "d.jsonl", [ROWS[0]])
    (example,), report = load_examples(path, tok)
    prompt, completion = ids(tok, ROWS[0]["prompt"]), ids(tok, ROWS[0]["completion"])
    assert example.input_ids == prompt + completion + [tok.eos_token_id]
    assert example.labels == [IGNORE_INDEX] * len(prompt) + completion + [tok.eos_token_id]
    assert report.loss_tokens == len(completion) + 1 == example.num_loss_tokens
    assert report.total_tokens == len(example.input_ids)


def test_messages_prompt_gets_the_chat_template_with_generation_prompt(tmp_path, tok):
    path = write_jsonl(tmp_path / "d.jsonl", [ROWS[1]])
    (example,), _ = load_examples(path, tok)
    rendered = tok.apply_chat_template(ROWS[1]["prompt"], add_generation_prompt=True, tokenize=False)
    assert rendered.endswith("<|im_start|>assistant\n")
    prompt, completion = ids(tok, rendered), ids(tok, ROWS[1]["completion"])
    assert example.input_ids == prompt + completion + [tok.eos_token_id]
    assert example.labels == [IGNORE_INDEX] * len(prompt) + completion + [tok.eos_token_id]


def _assistant_label_positions(tok, messages, include_after_eos: bool) -> tuple[list[int], list[int]]:
    """Independent expectation from the rendered text's character offsets: a token is a label
    iff it lies inside an assistant turn's content or is that turn's closing <|im_end|> (EOS)."""
    text = tok.apply_chat_template(messages, tokenize=False)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    spans, cursor = [], 0
    for message in messages:
        header = f"<|im_start|>{message['role']}\n"
        start = text.index(header, cursor) + len(header)
        end = text.index("<|im_end|>", start) + len("<|im_end|>")
        cursor = end
        if message["role"] == "assistant":
            spans.append((start, end + (1 if include_after_eos else 0)))
    positions = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if any(s <= a and b <= e for s, e in spans)]
    return enc["input_ids"], positions


@pytest.mark.parametrize("row", [2, 6])
def test_messages_record_labels_assistant_content_and_eos(tmp_path, tok, row):
    messages = ROWS[row]["messages"]
    path = write_jsonl(tmp_path / "d.jsonl", [ROWS[row]])
    (example,), _ = load_examples(path, tok)
    full_ids, wanted = _assistant_label_positions(tok, messages, include_after_eos=False)
    assert example.input_ids == full_ids  # the whole conversation, rendered by the template
    labelled = [i for i, label in enumerate(example.labels) if label != IGNORE_INDEX]
    for i in labelled:
        assert example.labels[i] == example.input_ids[i]
    # every assistant content token and its EOS is learned ...
    assert set(wanted) <= set(labelled)
    # ... and nothing of the system/user turns or of the "<|im_start|>assistant\n" header is
    _, with_tail = _assistant_label_positions(tok, messages, include_after_eos=True)
    assert set(labelled) <= set(with_tail), "labels outside the assistant turns"


@pytest.mark.parametrize("row", [2, 6])
def test_messages_record_does_not_label_template_text_after_eos(tmp_path, tok, row):
    """Labels of a {messages} record stop at each assistant turn's EOS: the "\\n" the template
    writes after <|im_end|> is a position generation never reaches (it stops at EOS), as in the
    {prompt: [...], completion} form of the same conversation. (Regression: that newline was
    labelled.)"""
    path = write_jsonl(tmp_path / "d.jsonl", [ROWS[row]])
    (example,), _ = load_examples(path, tok)
    _, wanted = _assistant_label_positions(tok, ROWS[row]["messages"], include_after_eos=False)
    labelled = [i for i, label in enumerate(example.labels) if label != IGNORE_INDEX]
    extra = [tok.decode([example.input_ids[i]]) for i in labelled if i not in wanted]
    assert labelled == wanted, f"labelled tokens outside assistant content + EOS: {extra!r}"


def test_messages_and_prompt_completion_forms_agree_on_single_turn(tmp_path, tok):
    user = [{"role": "user", "content": "Count to three."}]
    a = write_jsonl(tmp_path / "a.jsonl", [{"prompt": user, "completion": "one two three"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"messages": user + [{"role": "assistant", "content": "one two three"}]}])
    (ea,), _ = load_examples(a, tok)
    (eb,), _ = load_examples(b, tok)
    assert eb.input_ids[: len(ea.input_ids)] == ea.input_ids
    assert eb.labels[: len(ea.labels)] == ea.labels


def test_first_token_is_not_stripped_without_bos(tmp_path):
    tokenizer = build_tiny_tokenizer()
    tokenizer.bos_token = None
    assert tokenizer.bos_token_id is None
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"prompt": "Once upon", "completion": " a time"}, {"prompt": "", "completion": "hello"}]
    )
    (first, second), _ = load_examples(path, tokenizer)
    assert first.input_ids[: len(ids(tokenizer, "Once upon"))] == ids(tokenizer, "Once upon")
    assert first.input_ids[0] == ids(tokenizer, "Once upon")[0]
    completion = ids(tokenizer, " a time")
    first_label = next(i for i, label in enumerate(first.labels) if label != IGNORE_INDEX)
    assert first.labels[first_label : first_label + len(completion)] == completion
    # empty prompt: the whole completion (first token included) is kept
    assert second.input_ids == ids(tokenizer, "hello") + [tokenizer.eos_token_id]


def test_bos_added_once_for_tokenizers_that_add_it(tmp_path):
    tokenizer = build_tiny_tokenizer()
    tokenizer.add_bos_token = True
    bos = tokenizer.bos_token_id
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [{"prompt": "Hi", "completion": "yo"}, {"prompt": tokenizer.bos_token + "Hi", "completion": "yo"}],
    )
    (a, b), _ = load_examples(path, tokenizer)
    assert a.input_ids[0] == bos and a.input_ids[1] != bos
    assert a.input_ids == b.input_ids


def test_truncate_and_drop_counts(tmp_path, tok):
    rows = [
        {"prompt": "Hi", "completion": "ok"},  # short
        {"prompt": "Hi", "completion": "a much longer completion than the budget allows"},  # overlong completion
        {
            "prompt": "a prompt that alone is longer than the whole budget of tokens",
            "completion": "x",
        },  # prompt fills it
    ]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    lengths = [len(ids(tok, r["prompt"])) + len(ids(tok, r["completion"])) + 1 for r in rows]
    max_length = 12
    assert lengths[0] <= max_length < lengths[1] and len(ids(tok, rows[2]["prompt"])) >= max_length

    kept, report = load_examples(path, tok, max_length=max_length, overlong="truncate")
    assert (report.examples, report.truncated, report.dropped) == (2, 2, 1)
    assert len(kept[1].input_ids) == max_length == len(kept[1].labels)
    assert kept[1].input_ids[-1] != tok.eos_token_id  # truncated, so the EOS is cut off
    assert report.total_tokens == lengths[0] + max_length
    assert report.loss_tokens == sum(e.num_loss_tokens for e in kept)

    kept, report = load_examples(path, tok, max_length=max_length, overlong="drop")
    assert (report.examples, report.truncated, report.dropped) == (1, 0, 2)
    assert [e.index for e in kept] == [0]

    kept, report = load_examples(path, tok, limit=2)
    assert report.examples == 2 and [e.index for e in kept] == [0, 1]


@pytest.mark.parametrize(
    "bad, needle",
    [
        ("{not json", "invalid JSON"),
        (json.dumps({"prompt": "x"}), "needs 'prompt' and 'completion'"),
        (json.dumps({"prompt": 3, "completion": "x"}), "'prompt' must be"),
        (json.dumps({"prompt": "x", "completion": ""}), "'completion' must be"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}), "no assistant turn"),
        (json.dumps({"messages": "hello"}), "messages must be"),
        (json.dumps(["prompt", "completion"]), "expected a JSON object"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, tok, bad, needle):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n" + bad + "\n", encoding="utf-8")
    with pytest.raises(UserError) as info:
        load_examples(path, tok)
    message = info.value.one_line()
    assert f"{path}:4" in message, message
    assert needle in message
    assert "\n" not in message


def test_missing_or_empty_data_file(tmp_path, tok):
    with pytest.raises(UserError, match="not found"):
        load_examples(tmp_path / "nope.jsonl", tok)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(UserError, match="no usable training examples"):
        load_examples(tmp_path / "empty.jsonl", tok)


def test_easy_drop_draws_depend_only_on_seed_epoch_and_example():
    examples = [Example(i, [0] * 5, [0] * 5) for i in range(4)]
    counts = [3, 1, 4, 2]
    together = easy_drop_uniforms(1, 0, examples, counts)
    apart = torch.cat([easy_drop_uniforms(1, 0, [examples[i]], [counts[i]]) for i in (0, 1, 2, 3)])
    assert torch.equal(together, apart)
    shuffled = easy_drop_uniforms(1, 0, [examples[2], examples[0]], [4, 3])
    assert torch.equal(shuffled, torch.cat([together[4:8], together[0:3]]))
    assert not torch.equal(easy_drop_uniforms(1, 1, examples, counts), together)
    assert not torch.equal(easy_drop_uniforms(2, 0, examples, counts), together)
    assert epoch_order(1, 0, 50) != epoch_order(1, 1, 50) and sorted(epoch_order(1, 0, 50)) == list(range(50))


# ---- training -------------------------------------------------------------------------------------


def test_only_heads_get_gradients_and_base_runs_without_graph(tiny_model_dir, data, tmp_path):
    trainer = HeadTrainer(make_config(tiny_model_dir, data, tmp_path / "out", epochs=2)).setup()
    model = trainer.lm.model
    before_base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    before_heads = heads_state(trainer)
    head_ids = {id(p) for p in trainer.heads.parameters()}
    optimised = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert optimised and {id(p) for p in optimised} == head_ids

    modes = []
    hook = model.get_decoder().register_forward_hook(
        lambda *_: modes.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled()))
    )
    try:
        batch = trainer.examples[:3]
        features = trainer._features(batch)
        assert not features.hidden.requires_grad and features.hidden.grad_fn is None
        assert features.hidden.shape == (sum(e.num_loss_tokens for e in batch), model.config.hidden_size)
        trainer.train()
    finally:
        hook.remove()
    # position t-1's last hidden state is paired with the label at t (the causal shift)
    assert features.targets.tolist() == [label for e in batch for label in e.labels[1:] if label != IGNORE_INDEX]
    offset = 0
    for example in batch:
        with torch.no_grad():
            states = model(torch.tensor([example.input_ids]), output_hidden_states=True).hidden_states[-1][0]
        rows = [t - 1 for t in range(1, len(example.labels)) if example.labels[t] != IGNORE_INDEX]
        torch.testing.assert_close(features.hidden[offset : offset + len(rows)], states[rows], rtol=1e-4, atol=1e-5)
        offset += len(rows)
    assert modes and all(inference for inference, _ in modes), "the frozen base must run under inference_mode"
    for name, param in model.named_parameters():
        assert not param.requires_grad and param.grad is None, name
    after_base = model.state_dict()
    assert all(torch.equal(before_base[k], after_base[k]) for k in before_base)
    after_heads = heads_state(trainer)
    assert all(not torch.equal(before_heads[k], after_heads[k]) for k in before_heads if k.endswith("weight"))
    # final heads are written next to the checkpoints, with provenance
    saved = heads_state(tmp_path / "out")
    assert_states_close(saved, after_heads, atol=0.0)
    assert (tmp_path / "out" / "checkpoints" / f"step-{trainer.step}").is_dir()
    assert len(read_metrics(tmp_path / "out")) == trainer.step


def test_training_reduces_the_loss_on_a_tiny_overfit_set(tiny_model_dir, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS[:4])
    cfg = make_config(
        tiny_model_dir,
        path,
        tmp_path / "out",
        micro_batch_size=4,
        gradient_accumulation=1,
        epochs=40,
        learning_rate=3e-3,
        schedule="constant",
        warmup_ratio=0.0,
        easy_drop_probability=0.0,
        cache_hidden="on",
    )
    result = HeadTrainer(cfg).setup().train()
    metrics = read_metrics(tmp_path / "out")
    assert result.steps == 40 == len(metrics)
    first, last = metrics[0], metrics[-1]
    # every step sees the same 4 examples and no random drop, so the loss is comparable step to step
    assert last["loss"] < 0.7 * first["loss"], (first["loss"], last["loss"])
    assert last["temperature_loss"] < first["temperature_loss"]
    assert last["top_p_loss"] < first["top_p_loss"]


class Interrupt(Exception):
    pass


def test_resume_after_interruption_matches_an_uninterrupted_run(tiny_model_dir, data, tmp_path):
    common = dict(epochs=3, schedule="cosine", warmup_ratio=0.2, save_every=1, easy_drop_probability=0.6)
    full = HeadTrainer(make_config(tiny_model_dir, data, tmp_path / "full", **common)).setup()
    full.train()
    assert full.step == 6  # 8 examples, global batch 4, 3 epochs

    out = tmp_path / "interrupted"
    first = HeadTrainer(make_config(tiny_model_dir, data, out, **common)).setup()

    def stop_at_two(metrics, total):
        if metrics["step"] == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        first.train(on_step=stop_at_two)
    assert (out / "checkpoints" / "step-2").is_dir()
    assert not (out / "autodeco_heads.safetensors").exists()

    with pytest.raises(UserError, match="--resume"):
        HeadTrainer(make_config(tiny_model_dir, data, out, **common)).setup().train()

    resumed = HeadTrainer(make_config(tiny_model_dir, data, out, **common)).setup()
    resumed.train(resume=True)
    assert resumed.step == 6
    assert_states_close(heads_state(resumed), heads_state(full), atol=1e-6)
    assert_states_close(heads_state(out), heads_state(tmp_path / "full"), atol=1e-6)
    metrics, reference = read_metrics(out), read_metrics(tmp_path / "full")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    assert [m["lr"] for m in metrics] == pytest.approx([m["lr"] for m in reference], rel=1e-9)


def test_setup_adopts_a_loaded_model(tiny_model_dir, tiny_lm, data, tmp_path):
    """setup(lm=...) trains on the model it is given (bench/gpu_check.py's in-memory 8B) exactly as
    on the one it would load; an adapter on top of an adopted model is refused, not ignored."""
    common = dict(epochs=1, schedule="constant", warmup_ratio=0.0)
    loaded = HeadTrainer(make_config(tiny_model_dir, data, tmp_path / "loaded", **common)).setup()
    loaded.train()
    adopted = HeadTrainer(make_config(tiny_model_dir, data, tmp_path / "adopted", **common)).setup(lm=tiny_lm)
    assert adopted.lm is tiny_lm
    adopted.train()
    assert_states_close(heads_state(adopted), heads_state(loaded), atol=1e-6)
    with pytest.raises(ValueError, match="adapter"):
        HeadTrainer(make_config(tiny_model_dir, data, tmp_path / "x", adapter=str(tmp_path))).setup(lm=tiny_lm)


def test_resume_from_a_max_steps_run_continues_to_the_full_run(tiny_model_dir, data, tmp_path):
    """max_steps=2 + save_every=1, then the full run with --resume (constant LR: max_steps also
    shortens the LR schedule, exactly like HF's max_steps, so only a flat schedule is comparable)."""
    common = dict(epochs=2, schedule="constant", warmup_ratio=0.0, save_every=1)
    full = HeadTrainer(make_config(tiny_model_dir, data, tmp_path / "full", **common)).setup()
    full.train()
    out = tmp_path / "short"
    HeadTrainer(make_config(tiny_model_dir, data, out, max_steps=2, **common)).setup().train()
    resumed = HeadTrainer(make_config(tiny_model_dir, data, out, **common)).setup()
    resumed.train(resume=True)
    assert resumed.step == full.step == 4
    assert_states_close(heads_state(resumed), heads_state(full), atol=1e-6)


def test_hidden_state_cache_gives_the_same_heads(tiny_model_dir, data, tmp_path):
    calls = {}
    states = {}
    for cache in ("on", "off"):
        trainer = HeadTrainer(make_config(tiny_model_dir, data, tmp_path / cache, epochs=3, cache_hidden=cache)).setup()
        calls[cache] = 0
        hook = trainer.lm.model.get_decoder().register_forward_hook(
            lambda *_, c=cache: calls.__setitem__(c, calls[c] + 1)
        )
        try:
            trainer.train()
        finally:
            hook.remove()
        states[cache] = heads_state(trainer)
    assert_states_close(states["on"], states["off"], atol=1e-5)
    assert list((tmp_path / "on" / "hidden_cache").glob("hidden-*.safetensors"))
    assert not (tmp_path / "off" / "hidden_cache").exists()
    # with the cache the base runs once per example batch (building it), not once per epoch
    assert calls["on"] == 4 and calls["off"] == 12, calls

    # a second run with the cache present reuses it without touching the base model
    trainer = HeadTrainer(
        make_config(
            tiny_model_dir,
            data,
            tmp_path / "again",
            epochs=3,
            cache_hidden="on",
            cache_dir=str(tmp_path / "on" / "hidden_cache"),
        )
    ).setup()
    hook = trainer.lm.model.get_decoder().register_forward_hook(
        lambda *_: calls.__setitem__("again", calls.get("again", 0) + 1)
    )
    try:
        trainer.train()
    finally:
        hook.remove()
    assert calls.get("again", 0) == 0
    assert_states_close(heads_state(trainer), states["on"], atol=0.0)


@pytest.mark.parametrize(
    "mode, frozen, trained", [("temperature", "top_p_head.", "temp_head."), ("top_p", "temp_head.", "top_p_head.")]
)
def test_single_head_modes_leave_the_other_head_unchanged(tiny_model_dir, data, tmp_path, mode, frozen, trained):
    trainer = HeadTrainer(make_config(tiny_model_dir, data, tmp_path / mode, mode=mode, epochs=2)).setup()
    before = heads_state(trainer)
    trainer.train()
    after = heads_state(tmp_path / mode)
    assert_states_close(after, before, atol=0.0, prefix=frozen)
    changed = [k for k in before if k.startswith(trained) and not torch.equal(before[k], after[k])]
    assert len(changed) == 4, changed
    last = read_metrics(tmp_path / mode)[-1]
    assert ("top_p_loss" in last) == (mode == "top_p") and ("temperature_loss" in last) == (mode == "temperature")


# ---- LoRA ------------------------------------------------------------------------------------------


@pytest.fixture
def lora_run(tiny_model_dir, data, tmp_path):
    out = tmp_path / "lora"
    trainer = HeadTrainer(make_config(tiny_model_dir, data, out, lora_r=2, epochs=2, learning_rate=1e-2)).setup()
    base_before = {k: v.detach().clone() for k, v in trainer.lm.model.state_dict().items() if "lora_" not in k}
    heads_before = heads_state(trainer)
    trainer.train()
    return trainer, out, base_before, heads_before


def test_lora_trains_adapter_and_heads_and_saves_peft_adapter(lora_run):
    trainer, out, base_before, heads_before = lora_run
    assert not trainer.config.use_cache  # auto cache is off with LoRA
    model = trainer.lm.model
    lora = {k: v for k, v in model.named_parameters() if "lora_" in k}
    assert lora and all(p.requires_grad for p in lora.values())
    assert any("lora_B" in k and p.abs().sum() > 0 for k, p in lora.items()), "lora_B starts at 0 and must have moved"
    for name, param in model.named_parameters():
        if "lora_" not in name:
            assert not param.requires_grad, name
    state = model.state_dict()
    assert all(torch.equal(base_before[k], state[k]) for k in base_before), "frozen base weights changed"
    after = heads_state(out)
    assert any(not torch.equal(heads_before[k], after[k]) for k in after)
    adapter = out / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 2 and set(config["target_modules"]) == {"q_proj", "v_proj"}
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    assert weights and all("lora_" in k for k in weights)
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())
    assert (out / "checkpoints" / f"step-{trainer.step}" / "adapter" / "adapter_model.safetensors").is_file()


def test_lora_output_loads_with_open_engine(lora_run, tiny_model_dir):
    from autodeco_cli.engine.models import load_base_model
    from autodeco_cli.engine.runtime import EngineSettings, open_engine

    trainer, out, _, _ = lora_run
    settings = EngineSettings(str(tiny_model_dir), heads=str(out), adapter=str(out / "adapter"))
    engine = open_engine(settings, force_heads=True)
    loaded = {k: v.detach() for k, v in engine.heads.state_dict().items()}
    assert_states_close(loaded, heads_state(trainer), atol=0.0)
    base = load_base_model(str(tiny_model_dir)).model
    name = "model.layers.0.self_attn.q_proj.weight"
    merged = dict(engine.lm.model.named_parameters())[name]
    assert not torch.equal(merged, dict(base.named_parameters())[name]), "the adapter was not applied"
    # the merged engine model computes what the trained PEFT model computes
    x = torch.tensor([[1, 5, 9, 42, 7]])
    trainer.lm.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(engine.lm.model(x).logits, trainer.lm.model(x).logits, rtol=1e-4, atol=1e-4)


def test_lora_heads_folder_brings_its_adapter(lora_run, tiny_model_dir):
    from autodeco_cli.engine.runtime import EngineSettings, open_engine

    trainer, out, _, _ = lora_run
    # heads=output_dir alone: the adapter saved next to the heads is applied too
    engine = open_engine(EngineSettings(str(tiny_model_dir), heads=str(out)), force_heads=True)
    x = torch.tensor([[1, 5, 9, 42, 7]])
    trainer.lm.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(engine.lm.model(x).logits, trainer.lm.model(x).logits, rtol=1e-4, atol=1e-4)


def test_lora_resume_matches_an_uninterrupted_run(tiny_model_dir, data, tmp_path):
    common = dict(epochs=2, save_every=1, lora_r=2, learning_rate=1e-2)
    full = HeadTrainer(make_config(tiny_model_dir, data, tmp_path / "full", **common)).setup()
    full.train()
    first = HeadTrainer(make_config(tiny_model_dir, data, tmp_path / "run", **common)).setup()

    def stop(metrics, total):
        if metrics["step"] == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        first.train(on_step=stop)
    resumed = HeadTrainer(make_config(tiny_model_dir, data, tmp_path / "run", **common)).setup()
    resumed.train(resume=True)
    assert_states_close(heads_state(resumed), heads_state(full), atol=1e-6)
    lora_full = {k: v.detach() for k, v in full.lm.model.named_parameters() if "lora_" in k}
    lora_resumed = {k: v.detach() for k, v in resumed.lm.model.named_parameters() if "lora_" in k}
    assert_states_close(lora_resumed, lora_full, atol=1e-6)


def test_cache_on_with_lora_is_refused(tiny_model_dir, data, tmp_path):
    with pytest.raises(UserError, match="cache_hidden=on cannot be combined with lora_r"):
        make_config(tiny_model_dir, data, tmp_path / "x", lora_r=2, cache_hidden="on").validate()


# ---- CLI ----------------------------------------------------------------------------------------------


def _recipe(tmp_path, tiny_model_dir, data, **extra) -> Path:
    recipe = {
        "model": str(tiny_model_dir),
        "data": str(data),
        "output_dir": str(tmp_path / "from-recipe"),
        "micro_batch_size": 2,
        "gradient_accumulation": 2,
        "head_width": 32,
        "learning_rate": 1e-4,
        "epochs": 1,
        **extra,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def assert_one_line_error(code, err, *needles):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_cli_recipe_with_overrides_and_options(cli, tiny_model_dir, data, tmp_path):
    recipe = _recipe(tmp_path, tiny_model_dir, data)
    out = tmp_path / "cli-out"
    code, _, err = cli(
        "train-heads",
        "--config",
        recipe,
        "epochs=2",
        "learning_rate=2e-3",
        "--output-dir",
        out,
        "--mode",
        "temperature",
    )
    assert code == 0, err
    assert "done: 4 steps" in err and "cache=on" in err  # auto: on for epochs > 1
    cfg = json.loads((out / "config.json").read_text())["autodeco_cli"]["provenance"]["config"]
    assert cfg["epochs"] == 2 and cfg["learning_rate"] == 2e-3 and cfg["mode"] == "temperature"
    assert cfg["micro_batch_size"] == 2 and cfg["head_width"] == 32 and cfg["output_dir"] == str(out)
    assert not (tmp_path / "from-recipe").exists()
    assert len(read_metrics(out)) == 4

    # again without --resume: refused; with --resume: nothing left to do, same heads
    code, _, err = cli(
        "train-heads",
        "--config",
        recipe,
        "epochs=2",
        "learning_rate=2e-3",
        "--output-dir",
        out,
        "--mode",
        "temperature",
    )
    # (refused before torch is imported: training/run_folder.py; the error is one line)
    assert code == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "already holds checkpoints" in errors[0] and "--resume" in errors[0], err
    before = heads_state(out)
    code, _, err = cli(
        "train-heads",
        "--config",
        recipe,
        "epochs=2",
        "learning_rate=2e-3",
        "--output-dir",
        out,
        "--mode",
        "temperature",
        "--resume",
    )
    assert code == 0, err
    assert_states_close(heads_state(out), before, atol=0.0)


@pytest.mark.parametrize("where", ["override", "recipe"])
@pytest.mark.parametrize("value", ["off", "on"])
def test_cli_cache_hidden_on_off_values_are_accepted(cli, tiny_model_dir, data, tmp_path, where, value):
    """`cache_hidden=off|on` (override) and `cache_hidden: off|on` (recipe), the documented values
    of a str field, reach the trainer as those strings, although YAML 1.1 reads off/on as
    booleans. (Regression: "field cache_hidden expects str, got False".)"""
    out = tmp_path / "cache-out"
    if where == "override":
        recipe = _recipe(tmp_path, tiny_model_dir, data)
        code, _, err = cli("train-heads", "--config", recipe, f"cache_hidden={value}", "--output-dir", out)
    else:
        recipe = tmp_path / "cache.yaml"
        recipe.write_text(_recipe(tmp_path, tiny_model_dir, data).read_text() + f"cache_hidden: {value}\n")
        code, _, err = cli("train-heads", "--config", recipe, "--output-dir", out)
    assert code == 0, err
    assert f"cache={value}" in err


@pytest.mark.parametrize(
    "args, needles",
    [
        (["learnin_rate=1e-3"], ["unknown field 'learnin_rate'", "learning_rate"]),
        (["epochs=three"], ["epochs"]),
        (["mode=both"], ["mode"]),
        (["notkeyvalue"], ["key=value"]),
    ],
)
def test_cli_bad_overrides_exit_2_with_one_line(cli, tiny_model_dir, data, tmp_path, args, needles):
    recipe = _recipe(tmp_path, tiny_model_dir, data)
    code, _, err = cli("train-heads", "--config", recipe, *args)
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "from-recipe").exists()


def test_cli_unknown_key_in_recipe_and_missing_recipe(cli, tiny_model_dir, data, tmp_path):
    recipe = _recipe(tmp_path, tiny_model_dir, data, warmup_steps=3)
    code, _, err = cli("train-heads", "--config", recipe)
    assert_one_line_error(code, err, "unknown field 'warmup_steps'", str(recipe))
    code, _, err = cli("train-heads", "--config", tmp_path / "missing.yaml")
    assert_one_line_error(code, err, "recipe not found")
