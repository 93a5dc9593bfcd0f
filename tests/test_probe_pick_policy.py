"""bench/probe_pick_policy.py: which token of a sample gets which (T, p) under each policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from autodeco_cli.core.decoding import make_strategy
from autodeco_cli.engine import sampler
from autodeco_cli.engine.requests import Request

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture
def probe(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    # the probe replaces these for its process; monkeypatch puts them back after each test
    monkeypatch.setattr(sampler.Sampler, "distribution", sampler.Sampler.distribution)
    from autodeco_cli.commands import common
    from autodeco_cli.evaluation import runner

    monkeypatch.setattr(common.DecodingOptions, "strategy", common.DecodingOptions.strategy)
    monkeypatch.setattr(runner, "run_eval", runner.run_eval)
    import probe_pick_policy

    return probe_pick_policy


def _values(policy: str, probe, steps: int = 3, pick=(1.0, 0.8)) -> list[tuple[float, float]]:
    probe._patch_heads(policy, *pick)
    heads = make_strategy("autodeco")
    first, second = (Request(key=i, input_ids=[1], strategy=heads, seed=i) for i in range(2))
    s = sampler.Sampler([first, second], heads=None, record_nucleus=False)
    out = []
    for _ in range(steps):  # two samples interleaved: each keeps its own count
        out.append(s.distribution(first, 0, (0.3, 0.95))[1:3])
        s.distribution(second, 1, (0.3, 0.95))
    return out


def test_pick_replaces_only_the_first_token_of_each_sample(probe):
    assert _values("pick", probe) == [(1.0, 0.8), (0.3, 0.95), (0.3, 0.95)]


def test_pick_can_keep_the_heads_temperature(probe):
    assert _values("pick", probe, 2, pick=(None, 0.8)) == [(0.3, 0.8), (0.3, 0.95)]


def test_pick_can_keep_the_heads_top_p(probe):
    assert _values("pick", probe, 2, pick=(1.0, None)) == [(1.0, 0.95), (0.3, 0.95)]


def test_tail_keeps_the_first_token_and_makes_the_rest_greedy(probe):
    assert _values("tail", probe) == [(0.3, 0.95), (0.3, probe.GREEDY_TOP_P), (0.3, probe.GREEDY_TOP_P)]


def test_other_strategies_are_untouched(probe):
    probe._patch_heads("pick", 1.0, 0.8)
    static = make_strategy("static", temperature=0.7, top_p=0.9)
    request = Request(key=0, input_ids=[1], strategy=static, seed=0)
    s = sampler.Sampler([request], heads=None, record_nucleus=False)
    assert s.distribution(request, 0, None)[1:3] == (0.7, 0.9)


def test_handset_is_a_schedule_at_the_pick_then_greedy(probe):
    from autodeco_cli.commands import common
    from autodeco_cli.evaluation import runner

    seen = {}
    runner.run_eval = lambda *args, **kwargs: seen.update(kwargs)  # what the probe's wrapper hands on
    probe._patch_handset(1.0, 0.8)
    strategy = common.DecodingOptions.strategy(None)
    assert strategy.uses_schedule and strategy.schedule == "handset-T1-p0.8"
    runner.run_eval("engine", ["rand-times"], [strategy])
    schedule = seen["schedules"][strategy].get(("rand-times", "doc", 1, 5))
    assert schedule.at(0) == (1.0, 0.8) and schedule.at(1) == schedule.at(7) == (1.0, probe.GREEDY_TOP_P)
