"""The reward objective: leave-one-out group advantages, the policy's log-probabilities, and a
tiny model whose reward prefers likely tokens learning a lower T̂ (and not learning it when the
gradient through T̂ is cut)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
import torch

from autodeco_cli.core.distribution import decoding_distribution
from autodeco_cli.core.errors import UserError
from autodeco_cli.engine.requests import encode_prompt
from autodeco_cli.tasks.types import Doc, Score
from autodeco_cli.training import reward as reward_module
from autodeco_cli.training.config import RewardConfig
from autodeco_cli.training.losses import policy_gradient_loss, policy_log_probs
from autodeco_cli.training.reward import RewardTrainer, group_advantages

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _pass1(scores):
    return sum(bool(s.correct) for s in scores) / len(scores)


def test_group_advantages_for_pass1_are_correct_minus_mean():
    scores = [Score(c, None) for c in (True, False, False, True, True)]
    advantages = group_advantages(scores, _pass1)
    assert advantages == pytest.approx([c - 0.6 for c in (1, 0, 0, 1, 1)])


def test_group_advantages_credit_a_rare_choice_more_than_a_repeat():
    # Q = number of distinct values / 3 (a stand-in for 1 - TV over a 3-value set)
    metric = lambda values: len(set(values)) / 3  # noqa: E731
    advantages = group_advantages(["a", "a", "a", "b"], metric)
    # removing "b" loses a value: (k-1)(2/3 - 1/3) = 1; removing an "a" loses nothing
    assert advantages == pytest.approx([-0.25, -0.25, -0.25, 0.75])
    assert sum(advantages) == pytest.approx(0.0)
    assert group_advantages(["a"], metric) == [0.0]


def test_policy_log_probs_match_the_soft_distribution():
    torch.manual_seed(0)
    logits = torch.randn(6, 11) * 3
    targets = torch.randint(0, 11, (6,))
    temperature = torch.rand(6, 1) + 0.3
    top_p = torch.rand(6, 1) * 0.5 + 0.5
    joint = policy_log_probs(logits, targets, temperature, top_p, mode="joint")
    soft = decoding_distribution(logits, temperature, top_p, mode="soft")
    expected = torch.log(soft.gather(-1, targets.unsqueeze(-1)).squeeze(-1))
    # the official log(x + 1e-9) floors a token far outside the nucleus at about -20.7
    inside = expected > -15
    assert inside.sum() >= 4 and torch.allclose(joint[inside], expected[inside], atol=1e-4)
    assert bool((joint[~inside] >= math.log(1e-9) - 1e-3).all())
    tempered = policy_log_probs(logits, targets, temperature, top_p, mode="temperature")
    assert torch.allclose(
        tempered, torch.log_softmax(logits / temperature, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1), atol=1e-5
    )


def test_policy_gradient_lowers_temperature_when_the_argmax_is_rewarded():
    logits = torch.tensor([[3.0, 1.0, 0.0]])
    temperature = torch.tensor([[1.0]], requires_grad=True)
    log_probs = policy_log_probs(logits, torch.tensor([0]), temperature, torch.ones(1, 1), mode="temperature")
    policy_gradient_loss(log_probs, torch.tensor([1.0]), [1]).backward()
    assert temperature.grad.item() > 0  # gradient descent then lowers T


@dataclass(frozen=True)
class CountTask:
    name: str = "count"
    max_new_tokens: int = 6
    splits: tuple = ("train", "validation")

    def load_docs(self, split="train", limit=None, data_dir=None):
        docs = [Doc(f"count/{split}/{i}", "count " * (1 + i % 4) + "now", None, {}) for i in range(12)]
        return docs[:limit] if limit else docs

    def score(self, doc, text):
        return Score(bool(text), text)


def _likelihood_reward(lm):
    """Reward = mean log-probability of the sample's tokens under the base: prefers low T."""

    def reward_fn(task, doc, generations):
        prompt = encode_prompt(lm.tokenizer, doc.prompt, chat=True)
        rewards = []
        for g in generations:
            ids = torch.tensor([prompt + g.token_ids])
            with torch.no_grad():
                logp = torch.log_softmax(lm.model(ids).logits[0, len(prompt) - 1 : -1].float(), -1)
            rewards.append(float(logp.gather(-1, torch.tensor(g.token_ids).unsqueeze(-1)).mean()))
        metric = lambda xs: sum(xs) / len(xs)  # noqa: E731
        return group_advantages(rewards, metric), metric(rewards)

    return reward_fn


def _mean_prompt_temperature(trainer) -> float:
    questions = trainer.train_questions
    with torch.no_grad():
        temps = []
        for q in questions:
            out = trainer.lm.model(torch.tensor([q.prompt_ids]), output_hidden_states=True)
            hidden = out.hidden_states[-1][:, -1]
            temperature, _ = trainer.heads(hidden, out.logits[:, -1].float())
            temps.append(float(temperature))
    return sum(temps) / len(temps)


def _train(tiny_lm, tmp_path, **overrides):
    fields = dict(
        tasks="count",
        output_dir=str(tmp_path / "heads"),
        mode="temperature",
        learning_rate=0.02,
        steps=12,
        prompts_per_step=4,
        group_size=8,
        batch_size=16,
        seed=0,
    )
    config = RewardConfig(**{**fields, **overrides})
    trainer = RewardTrainer(config, reward_fn=_likelihood_reward(tiny_lm)).setup(lm=tiny_lm, tasks=[CountTask()])
    before = _mean_prompt_temperature(trainer)
    trainer.train()
    return trainer, before, _mean_prompt_temperature(trainer)


def test_reward_training_learns_a_lower_temperature(tiny_lm, tmp_path):
    trainer, before, after = _train(tiny_lm, tmp_path)
    assert after < before - 0.15, (before, after)
    assert (tmp_path / "heads" / "config.json").is_file() and (tmp_path / "heads" / "last" / "config.json").is_file()
    lines = (tmp_path / "heads" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 12


def test_without_the_gradient_through_the_temperature_nothing_is_learned(tiny_lm, tmp_path, monkeypatch):
    # the same run with T̂ cut out of the policy's log-probabilities (kept in the graph at zero
    # weight, so backward still runs): the check above must then fail, T̂ stays where it was
    original = reward_module.policy_log_probs

    def detached(logits, targets, temperature, top_p, **kwargs):
        return original(logits, targets, temperature.detach(), top_p.detach(), **kwargs) + 0.0 * temperature.sum()

    monkeypatch.setattr(reward_module, "policy_log_probs", detached)
    _, before, after = _train(tiny_lm, tmp_path)
    assert after == pytest.approx(before, abs=1e-6)


def _indifferent_reward(task, doc, generations):
    """Advantages that ignore what was sampled: the policy gradient on T̂ is noise around zero."""
    marks = [float(i % 2) for i in range(len(generations))]
    metric = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return group_advantages(marks, metric), metric(marks)


def _train_indifferent(tiny_lm, tmp_path, **overrides) -> tuple[float, float]:
    fields = dict(tasks="count", output_dir=str(tmp_path), mode="temperature", learning_rate=0.02, steps=6)
    config = RewardConfig(**{**fields, "prompts_per_step": 4, "group_size": 4, "batch_size": 16, **overrides})
    trainer = RewardTrainer(config, reward_fn=_indifferent_reward).setup(lm=tiny_lm, tasks=[CountTask()])
    before = _mean_prompt_temperature(trainer)
    trainer.train()
    return before, _mean_prompt_temperature(trainer)


def test_a_temperature_cost_lowers_the_temperature_where_the_reward_is_indifferent(tiny_lm, tmp_path):
    start, free = _train_indifferent(tiny_lm, tmp_path / "free")
    same_start, priced = _train_indifferent(tiny_lm, tmp_path / "priced", temperature_cost=1.0)
    assert same_start == pytest.approx(start)
    # same seeds and the same indifferent advantages: the price on T̂ is the only difference
    assert priced < free - 0.1 and priced < start - 0.1, (start, free, priced)
    with pytest.raises(UserError, match="temperature_cost"):
        RewardConfig(tasks="count", temperature_cost=-0.1).validate()


def test_validation_keeps_the_best_heads_and_resume_continues(tiny_lm, tmp_path):
    trainer, _, _ = _train(tiny_lm, tmp_path, validation_limit=3, validate_every=6, validation_k=2)
    provenance = (tmp_path / "heads" / "config.json").read_text()
    assert "chosen_on" in provenance and "validation split" in provenance
    assert trainer.best is not None and math.isfinite(trainer.best)
    # a finished run refuses a fresh start in the same folder, and --resume has nothing left to do
    again = RewardTrainer(trainer.config, reward_fn=_likelihood_reward(tiny_lm)).setup(lm=tiny_lm, tasks=[CountTask()])
    with pytest.raises(UserError):
        again.train()
    again.train(resume=True)
    assert again.step == 12


def test_config_refuses_a_group_of_one():
    with pytest.raises(UserError, match="group_size"):
        RewardConfig(tasks="arith-add", group_size=1).validate()
    with pytest.raises(UserError, match="no tasks"):
        RewardConfig().validate()


@dataclass(frozen=True)
class SmallTask(CountTask):
    name: str = "small"

    def load_docs(self, split="train", limit=None, data_dir=None):
        return [Doc(f"small/{split}/{i}", "small " * (1 + i), None, {}) for i in range(3)]


def test_tasks_take_turns_whatever_their_size(tiny_lm, tmp_path):
    config = RewardConfig(
        tasks="count,small", output_dir=str(tmp_path / "h"), steps=1, prompts_per_step=4, group_size=2
    )
    trainer = RewardTrainer(config).setup(lm=tiny_lm, tasks=[CountTask(), SmallTask()])
    drawn = [trainer._train_question(slot) for slot in range(12)]
    assert [q.task.name for q in drawn] == ["count", "small"] * 6
    small = [q.doc.doc_id for q in drawn if q.task.name == "small"]
    assert (
        sorted(small[:3]) == sorted(small[3:]) == [f"small/train/{i}" for i in range(3)]
    )  # each epoch covers the task once


def test_a_restarted_top_p_head_starts_at_its_value_and_learns_to_cut(tiny_lm, tmp_path):
    # the likelihood reward prefers the base's likely tokens, so cutting the tail pays: from a
    # restart at 0.9 the top-p head must learn a lower P̂ (its own learning rate, T̂ frozen)
    trainer, _, _ = _train(
        tiny_lm, tmp_path, mode="top_p", learning_rate=1e-9, top_p_learning_rate=0.02, top_p_restart=0.9
    )
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [0.02]  # T̂ is frozen in top_p mode
    log = [json.loads(line) for line in (tmp_path / "heads" / "metrics.jsonl").read_text().splitlines()]
    # P̂ over the sampled tokens: exactly the restart value at the first step, cut after
    assert log[0]["mean_top_p"] == pytest.approx(0.9, abs=1e-6)
    assert log[-1]["mean_top_p"] < 0.8, [r["mean_top_p"] for r in log]


def test_top_p_restart_is_checked():
    with pytest.raises(UserError, match="top_p_restart"):
        RewardConfig(tasks="arith-add", top_p_restart=1.0).validate()


def test_a_restarted_temperature_head_starts_at_its_value_and_learns(tiny_lm, tmp_path):
    # from T̂ = 1 on every token, the likelihood reward (which prefers low T) must cool it: the
    # zeroed output layer still passes a gradient to its own weights
    config = RewardConfig(tasks="count", output_dir=str(tmp_path / "unused"), temperature_restart=1.0)
    trainer = RewardTrainer(config, reward_fn=_likelihood_reward(tiny_lm)).setup(lm=tiny_lm, tasks=[CountTask()])
    assert _mean_prompt_temperature(trainer) == pytest.approx(1.0, abs=1e-6)
    trainer, before, after = _train(tiny_lm, tmp_path, temperature_restart=1.0)
    assert before == pytest.approx(1.0, abs=1e-6)
    assert after < before - 0.15, (before, after)
    with pytest.raises(UserError, match="temperature_restart"):
        RewardConfig(tasks="count", temperature_restart=2.0).validate()
