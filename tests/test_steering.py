"""Instruction-steered decoding: command prompts, the report's arithmetic, and `--steer` training."""

from __future__ import annotations

import json

import pytest
import torch

from autodeco_cli.core.errors import UserError
from autodeco_cli.core.heads import MAX_TEMPERATURE, load_heads
from autodeco_cli.training.config import TrainConfig
from autodeco_cli.training.data import encode_prompt_completion
from autodeco_cli.training.hidden_features import base_features
from autodeco_cli.training.steering import (
    CONDITIONS,
    HIGH_DIVERSITY_COMMANDS,
    LOW_DIVERSITY_COMMANDS,
    anchor_loss,
    ranking_loss,
    steer_report,
    steering_logit,
    summarise_conditions,
    train_steering,
    with_command,
)
from autodeco_cli.training.trainer import HeadTrainer

PROMPTS = ["What is 12 + 30?", "Tell me a joke about a cat.", "Count to five.", "What is 7 + 8?"]
COMPLETIONS = ["42", "A cat walks into a bar.", "one two three four five", "15"]


def test_with_command_appends_to_the_last_user_message_without_mutating():
    assert with_command("Q?", None) == "Q?"
    assert with_command("Q?", "Be brief.") == "Q?\nBe brief."
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "A"},
        {"role": "user", "content": "second"},
    ]
    steered = with_command(messages, "Be brief.")
    assert steered[3]["content"] == "second\nBe brief." and steered[1]["content"] == "first"
    assert messages[3]["content"] == "second"  # the caller's prompt is untouched


def test_steering_logit_is_the_heads_pre_sigmoid_scale():
    z = torch.tensor([-4.0, -1.0, 0.0, 2.5])
    torch.testing.assert_close(
        steering_logit(MAX_TEMPERATURE * torch.sigmoid(z), MAX_TEMPERATURE), z, atol=1e-5, rtol=0
    )
    torch.testing.assert_close(steering_logit(torch.sigmoid(z), 1.0), z, atol=1e-5, rtol=0)


def test_ranking_loss_is_zero_past_the_margin_and_pushes_the_right_way():
    reference = torch.zeros(3)
    assert float(ranking_loss(reference, torch.full((3,), -1.5), torch.full((3,), 1.5), margin=1.0)) == 0.0
    low = torch.full((3,), -0.2, requires_grad=True)
    high = torch.full((3,), 0.3, requires_grad=True)
    reference = torch.zeros(3, requires_grad=True)
    loss = ranking_loss(reference, low, high, margin=1.0)
    assert float(loss) == pytest.approx((1.0 - 0.3) + (1.0 - 0.2))
    loss.backward()
    assert (low.grad > 0).all(), "gradient descent must lower the low-diversity prediction"
    assert (high.grad < 0).all(), "gradient descent must raise the high-diversity prediction"
    assert reference.grad is None or (reference.grad == 0).all(), "the reference is a fixed target"


def test_anchor_loss_is_zero_at_the_reference_only():
    reference = torch.tensor([0.5, -1.0])
    assert float(anchor_loss(reference.clone(), reference)) == 0.0
    assert float(anchor_loss(reference + 0.5, reference)) == pytest.approx(0.25)


def test_summarise_conditions_deltas_and_consistency():
    per_condition = {
        "none": {"a": (0.5, 0.9), "b": (1.0, 0.8), "c": (0.4, 0.7), "d": (0.6, 0.9)},
        "low": {"a": (0.3, 0.8), "b": (0.9, 0.9), "c": (0.5, 0.6), "d": (0.2, 0.5)},
        "high": {"a": (0.9, 0.95), "b": (1.2, 0.7), "c": (0.8, 0.9), "d": (0.6, 0.95)},
    }
    report = summarise_conditions(per_condition)
    assert report.questions == 4
    # c rises under "low"; d does not move under "high"
    assert report.consistency_temperature == {"low": 0.75, "high": 0.75}
    assert report.consistency_top_p == {"low": 0.75, "high": 0.75}
    assert report.delta_temperature["low"] == pytest.approx((0.3 + 0.9 + 0.5 + 0.2 - 2.5) / 4)
    assert report.mean_top_p["high"] == pytest.approx((0.95 + 0.7 + 0.9 + 0.95) / 4)


# ---- training on the tiny model -----------------------------------------------------------------


@pytest.fixture
def steer_data(tmp_path):
    path = tmp_path / "steer.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in zip(PROMPTS, COMPLETIONS)))
    return path


def _config(tiny_model_dir, data, out, init_heads, **overrides) -> TrainConfig:
    fields = dict(
        data=str(data),
        output_dir=str(out),
        model=str(tiny_model_dir),
        init_heads=str(init_heads) if init_heads else None,
        micro_batch_size=4,
        gradient_accumulation=1,
        epochs=1,
        learning_rate=3e-3,
        seed=3,
        cache_hidden="off",
        easy_drop_probability=0.0,
        max_steps=150,
    )
    fields.update(overrides)
    return TrainConfig(**fields)


def _teacher_forced_means(tiny_model_dir, heads_dir, data) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per example, the mean T̂/P̂ over the completion under each condition (first command of each list)."""
    trainer = HeadTrainer(_config(tiny_model_dir, data, data.parent / "unused", heads_dir)).setup()
    heads = load_heads(heads_dir).eval()
    tokenizer, pad = trainer.lm.tokenizer, trainer.lm.tokenizer.pad_token_id
    lm_head = trainer.lm.model.get_output_embeddings()
    commands = {"none": None, "low": LOW_DIVERSITY_COMMANDS[0], "high": HIGH_DIVERSITY_COMMANDS[0]}
    from autodeco_cli.training.data import Example

    means = {}
    for condition, command in commands.items():
        examples = [
            Example(i, *encode_prompt_completion(tokenizer, with_command(p, command), c))
            for i, (p, c) in enumerate(zip(PROMPTS, COMPLETIONS))
        ]
        features = base_features(trainer.lm.model, examples, pad, trainer.device, trainable_base=False)
        with torch.no_grad():
            temperature, top_p = heads(features.hidden, lm_head(features.hidden).float())
        per_example_t = torch.stack([chunk.mean() for chunk in temperature.squeeze(-1).split(features.counts)])
        per_example_p = torch.stack([chunk.mean() for chunk in top_p.squeeze(-1).split(features.counts)])
        means[condition] = (per_example_t, per_example_p)
    return means


def test_steer_training_moves_predictions_apart_and_keeps_the_plain_prompt(
    tiny_model_dir, tiny_heads_dir, steer_data, tmp_path
):
    before = _teacher_forced_means(tiny_model_dir, tiny_heads_dir, steer_data)
    out = train_steering(_config(tiny_model_dir, steer_data, tmp_path / "steered", tiny_heads_dir))
    metrics = [json.loads(line) for line in (out / "steer_metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 150
    # each step draws other responses and wordings: compare averages, not single steps
    first, last = (sum(m["rank_temperature"] for m in part) / len(part) for part in (metrics[:10], metrics[-20:]))
    assert last < 0.75 * first, (first, last)
    after = _teacher_forced_means(tiny_model_dir, out, steer_data)
    for k, name in ((0, "T"), (1, "P")):
        assert (after["low"][k] < after["none"][k]).all(), f"{name}: low-diversity command must lower the prediction"
        assert (after["high"][k] > after["none"][k]).all(), f"{name}: high-diversity command must raise the prediction"
        # the gap grew well beyond what the untrained heads show
        assert (
            float((after["high"][k] - after["low"][k]).mean())
            > float((before["high"][k] - before["low"][k]).mean()) + 0.05
        )
    # the anchor keeps the plain prompt's prediction near where it started
    assert float((after["none"][0] - before["none"][0]).abs().max()) < 0.25


def test_steer_refuses_without_heads_and_with_resume(tiny_model_dir, tiny_heads_dir, steer_data, tmp_path):
    with pytest.raises(UserError, match="init_heads"):
        train_steering(_config(tiny_model_dir, steer_data, tmp_path / "a", None))
    with pytest.raises(UserError, match="resume"):
        train_steering(_config(tiny_model_dir, steer_data, tmp_path / "b", tiny_heads_dir), resume=True)


def test_steer_report_on_the_tiny_model(tiny_lm, tiny_heads_dir):
    """The report's "none" row is the mean T̂/P̂ of plain autodeco generations on questions
    offset..offset+n; the commands change the prompts, so the other rows differ from it."""
    from autodeco_cli.core.decoding import make_strategy
    from autodeco_cli.engine.generation import GenerationEngine
    from autodeco_cli.engine.requests import build_requests
    from autodeco_cli.tasks.registry import get_task

    engine = GenerationEngine(tiny_lm, load_heads(tiny_heads_dir))
    try:
        report = steer_report(engine, "arith-add", n=3, offset=5, max_new_tokens=4, batch_size=4)
        from_start = steer_report(engine, "arith-add", n=3, offset=0, max_new_tokens=4, batch_size=4)
        docs = get_task("arith-add").load_docs(split="test", limit=8)[5:]
        requests = build_requests(
            engine.tokenizer,
            [d.prompt for d in docs],
            make_strategy("autodeco"),
            seed=0,
            prompt_ids=[d.doc_id for d in docs],
        )
        plain = engine.generate(requests, max_new_tokens=4, batch_size=4, trace=True)
    finally:
        engine.close()
    assert report.questions == 3 and set(report.mean_temperature) == set(CONDITIONS)
    assert report.mean_temperature["none"] == pytest.approx(sum(g.mean_temperature for g in plain) / 3, abs=1e-5)
    assert report.mean_top_p["none"] == pytest.approx(sum(g.mean_top_p for g in plain) / 3, abs=1e-5)
    for condition in ("low", "high"):
        assert report.mean_temperature[condition] != pytest.approx(report.mean_temperature["none"], abs=1e-6), condition
    # the offset is honoured
    assert from_start.mean_temperature["none"] != pytest.approx(report.mean_temperature["none"], abs=1e-6)


def test_cached_and_recomputed_base_states_train_the_same_heads(tiny_model_dir, tiny_heads_dir, steer_data, tmp_path):
    """The in-memory cache of frozen-base states is exact: steering with and without it gives the same heads."""
    cached = train_steering(
        _config(tiny_model_dir, steer_data, tmp_path / "on", tiny_heads_dir, max_steps=6, cache_hidden="on")
    )
    recomputed = train_steering(
        _config(tiny_model_dir, steer_data, tmp_path / "off", tiny_heads_dir, max_steps=6, cache_hidden="off")
    )
    a, b = load_heads(cached).state_dict(), load_heads(recomputed).state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def test_command_responses_answer_each_command_prompt_and_release_the_hook(tiny_model_dir, tiny_heads_dir, steer_data):
    import random

    from autodeco_cli.training.steering import command_responses

    trainer = HeadTrainer(_config(tiny_model_dir, steer_data, steer_data.parent / "unused", tiny_heads_dir)).setup()
    records = [{"prompt": [{"role": "user", "content": p}], "completion": c} for p, c in zip(PROMPTS, COMPLETIONS)]
    records.append({"prompt": "raw completion prompt", "completion": "x"})
    answers = command_responses(
        trainer, load_heads(tiny_heads_dir), records, random.Random(0), max_new_tokens=5, batch_size=3
    )
    assert len(answers) == len(records) and all(len(pair) == 2 for pair in answers)
    assert all(isinstance(text, str) for pair in answers for text in pair)
    # the engine's hidden-state hook is gone: training's forward passes run unobserved
    assert not trainer.lm.model.get_output_embeddings()._forward_pre_hooks
