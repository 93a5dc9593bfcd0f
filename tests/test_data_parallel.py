"""`--dp N` on our engine: N CPU processes give the single process's samples."""

from __future__ import annotations

import pytest
import torch

from autodeco_cli.core.decoding import make_strategy
from autodeco_cli.core.errors import UserError
from autodeco_cli.engine.data_parallel import DataParallelEngine, split_by_prompt
from autodeco_cli.engine.requests import Request, build_requests
from autodeco_cli.engine.runtime import EngineSettings, open_engine

PROMPTS = ["hello", "The quick brown fox", "What is 27 + 82?", "Once upon a time", "a b c", "x"]


def _request(prompt: list[int], key) -> Request:
    return Request(key=key, input_ids=prompt, strategy=make_strategy("greedy"), seed=0)


def test_split_keeps_a_prompts_requests_together_and_balances():
    requests = [_request([p] * (1 + p % 3), (p, s)) for p in range(7) for s in range(1 + p % 2)]
    shards = split_by_prompt(requests, 3)
    assert sorted(i for shard in shards for i in shard) == list(range(len(requests)))
    for shard in shards:
        prompts = {tuple(requests[i].input_ids) for i in shard}
        for other in shards:
            if other is not shard:
                assert not prompts & {tuple(requests[i].input_ids) for i in other}
    assert all(shards)
    assert split_by_prompt(requests[:1], 2)[1] == []


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_two_processes_generate_what_one_does(tiny_model_dir, two_threads):
    """Greedy, sampled and autodeco requests split over this process and a spawned replica:
    the same tokens and traces as one process, in request order, each reported once."""
    strategies = [
        make_strategy("greedy"),
        make_strategy("static", temperature=1.3, top_p=0.9),
        make_strategy("autodeco"),
    ]
    single = open_engine(EngineSettings(str(tiny_model_dir)), strategies, force_heads=True)
    requests = []
    for seed, strategy in enumerate(strategies):
        requests += build_requests(single.tokenizer, PROMPTS, strategy, n=2, seed=seed)
    expected = single.generate(requests, max_new_tokens=8, batch_size=4, trace=True)
    single.close()

    engine = open_engine(EngineSettings(str(tiny_model_dir), data_parallel_size=2), strategies, force_heads=True)
    try:
        assert isinstance(engine, DataParallelEngine) and engine.tokenizer is not None
        assert torch.get_num_threads() == 1  # the two cores split between the processes
        reported = []
        got = engine.generate(requests, max_new_tokens=8, batch_size=4, trace=True, on_batch_done=reported.extend)
        again = engine.generate(requests[:5], max_new_tokens=8, batch_size=4)  # the replica serves more calls
    finally:
        engine.close()
    assert [g.key for g in got] == [r.key for r in requests]
    assert sorted(map(repr, (g.key for g in reported))) == sorted(map(repr, (r.key for r in requests)))
    for a, b in zip(got, expected):
        assert a.token_ids == b.token_ids and a.text == b.text and a.finish_reason == b.finish_reason
        if b.trace:
            assert [t.temperature for t in a.trace] == pytest.approx([t.temperature for t in b.trace], abs=1e-5)
    assert [g.token_ids for g in again] == [g.token_ids for g in expected[:5]]


def test_a_replica_that_cannot_start_is_a_user_error(tiny_model_dir, tmp_path):
    lead = open_engine(EngineSettings(str(tiny_model_dir)), [make_strategy("greedy")])
    with pytest.raises(UserError, match="replica 1 did not start"):
        DataParallelEngine(lead, 2, open_engine, {"settings": EngineSettings(str(tmp_path / "missing"))})


def test_tensor_parallel_stays_a_vllm_option(tiny_model_dir):
    with pytest.raises(UserError, match="vLLM option"):
        open_engine(EngineSettings(str(tiny_model_dir), tensor_parallel_size=2), [make_strategy("greedy")])
