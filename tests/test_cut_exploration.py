"""Reward training's exploration of the cut: each sampled token's top-p drawn around P̂ in logit
space, and the top-p head's Gaussian score function (`top_p_exploration`)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from autodeco_cli.core.decoding import explored_top_p, make_strategy
from autodeco_cli.core.errors import UserError
from autodeco_cli.core.heads import fresh_heads
from autodeco_cli.engine.generation import GenerationEngine
from autodeco_cli.engine.requests import Request
from autodeco_cli.training.config import RewardConfig
from autodeco_cli.training.losses import cut_exploration_loss
from autodeco_cli.training.reward import RewardTrainer, group_advantages
from conftest import TINY_HIDDEN
from test_reward import CountTask

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_the_explored_cut_moves_p_by_sigma_noise_in_logit_space():
    assert explored_top_p(0.9, 0.5, 0.0) == pytest.approx(0.9, abs=1e-12)
    assert _logit(explored_top_p(0.9, 0.5, 1.0)) == pytest.approx(_logit(0.9) + 0.5, abs=1e-9)
    assert _logit(explored_top_p(0.9, 0.5, -2.0)) == pytest.approx(_logit(0.9) - 1.0, abs=1e-9)
    # a P̂ of exactly 1 (a saturated sigmoid) still gives a cut inside (0, 1)
    assert 0.0 < explored_top_p(1.0, 2.0, -3.0) < 1.0 and 0.0 < explored_top_p(0.0, 2.0, 3.0) < 1.0


def test_the_exploration_loss_gradient_is_the_gaussian_score():
    top_p = torch.tensor([[0.9], [0.8], [0.6]], requires_grad=True)
    used = torch.tensor([0.8, 0.8, 0.7])
    sigma, advantages, counts = 0.5, torch.tensor([1.0, -2.0]), [2, 1]
    cut_exploration_loss(top_p, used, sigma, advantages, counts).backward()
    z_hat = [_logit(0.9), _logit(0.8), _logit(0.6)]
    z_used = [_logit(0.8), _logit(0.8), _logit(0.7)]
    per_token_advantage = [1.0, 1.0, -2.0]
    # d/dẑ of −A·log N(z; ẑ, σ) / N is −A(z − ẑ)/σ²/N, and dẑ/dP̂ = 1/(P̂(1 − P̂))
    expected = [
        -a * (z - zh) / sigma**2 / 3 / (p * (1 - p))
        for a, z, zh, p in zip(per_token_advantage, z_used, z_hat, (0.9, 0.8, 0.6))
    ]
    assert top_p.grad.squeeze(-1).tolist() == pytest.approx(expected, rel=1e-4, abs=1e-7)
    assert top_p.grad[1].item() == pytest.approx(0.0, abs=1e-6)  # sampled at P̂ itself: no push


@pytest.fixture(scope="module")
def engine(tiny_lm):
    engine = GenerationEngine(tiny_lm, fresh_heads(TINY_HIDDEN, seed=0))
    yield engine
    engine.close()


def _request(key, seed, sigma, prompt=(5, 6, 7)):
    return Request(
        key=key, input_ids=list(prompt), strategy=make_strategy("autodeco"), seed=seed, top_p_exploration=sigma
    )


def test_each_request_draws_its_own_cuts_whatever_its_batch_mates(engine):
    alone = engine.generate([_request("a", 11, 0.7)], max_new_tokens=6, trace=True)[0]
    plain = engine.generate([_request("a", 11, 0.0)], max_new_tokens=1, trace=True)[0]
    # the request's generator gives a normal (the cut) then a uniform (the token) at each step
    generator = torch.Generator().manual_seed(11)
    first_noise = torch.randn(1, generator=generator, dtype=torch.float64).item()
    offset = _logit(alone.trace[0].top_p) - _logit(plain.trace[0].top_p)
    assert offset == pytest.approx(0.7 * first_noise, abs=1e-5) and abs(offset) > 1e-3
    assert len({round(t.top_p, 6) for t in alone.trace}) > 1
    # batch-mates change neither its draws nor, with the same rows' values, its cuts
    mates = [_request("a", 11, 0.7)] + [_request(f"m{i}", 100 + i, 0.7, prompt=(5, 6, 7 + i)) for i in range(3)]
    together = {g.key: g for g in engine.generate(mates, max_new_tokens=6, trace=True)}["a"]
    assert [t.top_p for t in together.trace] == pytest.approx([t.top_p for t in alone.trace], abs=1e-5)
    assert (
        engine.generate(mates, max_new_tokens=6, trace=True)[0].trace
        == engine.generate(mates, max_new_tokens=6, trace=True)[0].trace
    )
    with pytest.raises(ValueError, match="top_p_exploration"):
        Request(key=0, input_ids=[5], strategy=make_strategy("static", 1.0, 0.9), seed=0, top_p_exploration=0.5)


def _cut_reward(task, doc, generations):
    """Pays for a tight cut and nothing else: the sample's mean logit(cut), negated."""
    rewards = [-sum(_logit(t.top_p) for t in g.trace) / len(g.trace) for g in generations]
    metric = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return group_advantages(rewards, metric), metric(rewards)


def _train_for_cuts(tiny_lm, tmp_path, sigma):
    config = RewardConfig(
        tasks="count",
        output_dir=str(tmp_path),
        mode="top_p",
        learning_rate=1e-9,
        top_p_learning_rate=0.01,
        top_p_restart=0.9,
        top_p_exploration=sigma,
        steps=8,
        prompts_per_step=4,
        group_size=4,
        batch_size=16,
    )
    RewardTrainer(config, reward_fn=_cut_reward).setup(lm=tiny_lm, tasks=[CountTask()]).train()
    return [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def test_exploration_teaches_the_top_p_head_a_cut_the_reward_pays_for(tiny_lm, tmp_path):
    explored = _train_for_cuts(tiny_lm, tmp_path / "explored", 0.5)
    # the sampled cuts centre on P̂: their mean starts near the restart value and falls
    assert abs(explored[0]["mean_top_p"] - 0.9) < 0.05
    assert explored[-1]["mean_top_p"] < 0.75, [r["mean_top_p"] for r in explored]
    # without exploration every sample of a group has the same cuts: no advantage, nothing learned
    fixed = _train_for_cuts(tiny_lm, tmp_path / "fixed", 0.0)
    assert all(r["mean_top_p"] == pytest.approx(0.9, abs=1e-6) for r in fixed)


def test_exploration_is_checked():
    with pytest.raises(UserError, match="top_p_exploration"):
        RewardConfig(tasks="count", top_p_exploration=-0.1).validate()
    with pytest.raises(UserError, match="top_p_exploration"):
        RewardConfig(tasks="count", top_p_exploration=0.5, mode="temperature").validate()
