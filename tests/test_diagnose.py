"""`autodeco diagnose` and the schedule strategy under it: shuffles are permutations, a schedule
equal to the recorded trace redraws autodeco's tokens (same random numbers), the variance split,
the profiles, the verdict, and the command end to end on the tiny model."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from autodeco_cli.core.decoding import make_strategy, schedule_strategy
from autodeco_cli.core.heads import fresh_heads
from autodeco_cli.engine.generation import GenerationEngine
from autodeco_cli.engine.requests import Request, Schedule, build_requests
from autodeco_cli.evaluation.diagnose import DiagnoseOptions, per_token_verdict, row_strategies
from autodeco_cli.evaluation.shuffles import Trace, schedules_for, shuffle_across, shuffle_within
from autodeco_cli.evaluation.trace_stats import class_profile, position_profile, variance_decomposition
from conftest import TINY_HIDDEN

PROMPTS = ["hello", "What is 27 + 82?", "The quick brown fox", "Once upon a time there was a small model"]
MAX_NEW = 12

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def engine(tiny_lm):
    engine = GenerationEngine(tiny_lm, fresh_heads(TINY_HIDDEN, seed=0))
    yield engine
    engine.close()


def _traces(lengths: list[int]) -> list[Trace]:
    traces = []
    for i, length in enumerate(lengths):
        temperature = tuple(0.1 + 0.01 * (10 * i + t) for t in range(length))
        top_p = tuple(0.5 + 0.001 * (10 * i + t) for t in range(length))
        traces.append(Trace((f"doc{i}", 0, i % 2), temperature, top_p, tuple(str(t) for t in range(length))))
    return traces


# ---- the shuffles ----------------------------------------------------------------------------------


def test_shuffle_within_permutes_each_sequence_s_own_pairs():
    traces = _traces([1, 5, 9, 9])
    shuffled = shuffle_within(traces, seed=0)
    for trace in traces:
        assert Counter(shuffled[trace.key]) == Counter(trace.values)  # the (T̂, P̂) pairs move together
    assert any(shuffled[t.key] != t.values for t in traces)
    assert shuffle_within(traces, seed=0) == shuffled and shuffle_within(traces, seed=1) != shuffled
    # seeded per sequence: the other sequences do not change a sequence's permutation
    assert shuffle_within(traces[2:], seed=0)[traces[2].key] == shuffled[traces[2].key]


def test_shuffle_across_permutes_each_position_among_the_sequences_that_reach_it():
    traces = _traces([2, 6, 6, 4, 6])
    shuffled = shuffle_across(traces, seed=3)
    for trace in traces:
        assert len(shuffled[trace.key]) == len(trace)
    for position in range(6):
        before = Counter(t.values[position] for t in traces if len(t) > position)
        after = Counter(shuffled[t.key][position] for t in traces if len(t) > position)
        assert after == before
    assert any(shuffled[t.key] != t.values for t in traces)


def test_the_across_folder_is_named_by_the_set_of_sequences():
    traces = _traces([3, 4, 5])
    within, across = (row_strategies(DiagnoseOptions(replay=False), t).values() for t in (traces, traces[:2]))
    (within_all, across_all), (within_two, across_two) = within, across
    assert within_all == within_two  # per-sequence permutations: more questions only add samples
    assert across_all != across_two and across_all.schedule.startswith("shuffle-across-s0-")


def test_schedules_fall_back_to_the_sequence_s_own_mean():
    traces = _traces([3])
    (schedule,) = schedules_for("task", traces, shuffle_within(traces, 0)).values()
    assert schedule.at(3) == schedule.at(100) == pytest.approx(traces[0].mean)
    assert Schedule(((0.5, 0.9), (1.5, 0.7))).fallback == pytest.approx((1.0, 0.8))


def test_schedule_and_request_refuse_bad_input():
    with pytest.raises(ValueError, match="T > 0"):
        Schedule(((0.0, 0.9),))
    with pytest.raises(ValueError, match="fallback"):
        Schedule(())
    with pytest.raises(ValueError, match="schedule strategy"):
        Request(key=0, input_ids=[1], strategy=schedule_strategy("x"), seed=0)
    with pytest.raises(ValueError, match="schedule strategy"):
        Request(key=0, input_ids=[1], strategy=make_strategy("greedy"), seed=0, schedule=Schedule(((1.0, 1.0),)))
    assert schedule_strategy("shuffle-within-s0").label == "schedule(shuffle-within-s0)"
    assert "schedule" not in make_strategy("static").to_dict()  # old run_config.json files still match


# ---- the schedule path on the engine -----------------------------------------------------------------


def test_a_schedule_equal_to_the_trace_reproduces_autodeco_tokens(engine, tiny_lm):
    """The key check of the schedule path: same request seeds, (T, p) read back from the trace."""
    auto = build_requests(tiny_lm.tokenizer, PROMPTS, make_strategy("autodeco"), n=3, seed=7, chat=False)
    generations = engine.generate(auto, max_new_tokens=MAX_NEW, batch_size=4, trace=True)
    replay = [
        Request(
            key=r.key,
            input_ids=r.input_ids,
            strategy=schedule_strategy("replay"),
            seed=r.seed,
            schedule=Schedule(tuple((t.temperature, t.top_p) for t in g.trace)),
        )
        for r, g in zip(auto, generations)
    ]
    replayed = engine.generate(replay, max_new_tokens=MAX_NEW, batch_size=4)
    assert [g.token_ids for g in replayed] == [g.token_ids for g in generations]
    assert len({tuple(g.token_ids) for g in generations}) > len(PROMPTS)  # the samples differ: not vacuous
    assert len({t.temperature for g in generations for t in g.trace}) > 1


def test_a_constant_schedule_and_its_fallback_draw_as_static(engine, tiny_lm):
    """Same random numbers: a schedule of (0.8, 0.9), and one that falls back to it after one
    step, draw exactly what static(0.8, 0.9) draws."""
    static = build_requests(tiny_lm.tokenizer, PROMPTS, make_strategy("static", 0.8, 0.9), n=2, seed=1, chat=False)
    expected = [g.token_ids for g in engine.generate(static, max_new_tokens=MAX_NEW, batch_size=3)]
    for schedule in (Schedule(((0.8, 0.9),) * MAX_NEW), Schedule(((0.8, 0.9),), fallback=(0.8, 0.9))):
        requests = [
            Request(r.key, r.input_ids, schedule_strategy("constant"), r.seed, schedule=schedule) for r in static
        ]
        assert [g.token_ids for g in engine.generate(requests, max_new_tokens=MAX_NEW, batch_size=3)] == expected


def test_the_schedule_is_read_by_step_index(engine, tiny_lm):
    """Step 0 at a near-greedy T, later steps hot: only the first token must be the argmax."""
    (request,) = build_requests(tiny_lm.tokenizer, PROMPTS[:1], make_strategy("greedy"), chat=False)
    (greedy,) = engine.generate([request], max_new_tokens=1, batch_size=1)
    schedule = Schedule(((1e-4, 1.0),), fallback=(2.0, 1.0))
    scheduled = Request(0, request.input_ids, schedule_strategy("step"), 5, schedule=schedule)
    (generation,) = engine.generate([scheduled], max_new_tokens=MAX_NEW, batch_size=1, trace=True)
    assert generation.token_ids[0] == greedy.token_ids[0]
    assert [t.temperature for t in generation.trace] == [1e-4] + [2.0] * (len(generation.trace) - 1)


# ---- the statistics ------------------------------------------------------------------------------


def test_variance_decomposition_matches_a_hand_computation():
    # sequence means 2 and 5: between = ((2 - 3.5)^2 + (5 - 3.5)^2) / 2 = 2.25;
    # within: var(1, 3) = 1 and var(5, 5, 5) = 0, mean 0.5; pooled: var(1, 3, 5, 5, 5) = 2.56
    split = variance_decomposition([[1.0, 3.0], [5.0, 5.0, 5.0]])
    assert split["within"] == pytest.approx(0.5) and split["between"] == pytest.approx(2.25)
    assert split["within_share"] == pytest.approx(0.5 / 2.75)
    assert split["pooled_token_variance"] == pytest.approx(2.56)
    assert (split["n_sequences"], split["n_tokens"]) == (2, 5)
    assert variance_decomposition([[1.0], [1.0]])["within_share"] is None


def test_position_and_class_profiles():
    trace = Trace(("d", 0, 0), (1.0, 0.2, 0.2, 0.4), (0.9, 1.0, 1.0, 1.0), ("Pick", " 7", "3", " ="))
    bins = position_profile([trace], bins=2)
    assert [b["n_tokens"] for b in bins] == [2, 2]
    assert bins[0]["temperature"] == pytest.approx(0.6) and bins[1]["temperature"] == pytest.approx(0.3)
    assert position_profile([trace], bins=8)[1]["n_tokens"] == 0  # a 4-token answer leaves bins empty
    classes = class_profile([trace])
    assert classes["digit"]["n_tokens"] == 2 and classes["digit"]["temperature"] == pytest.approx(0.2)
    assert classes["other"]["temperature"] == pytest.approx(0.7)


@pytest.mark.parametrize(
    "within, across, holds, words",
    [
        ("better", "better", True, "the per-token claim holds"),
        ("better", "tied", False, "position profile"),
        ("tied", "better", False, "per-sequence level"),
        ("tied", "tied", False, "neither shuffle"),
        ("worse", "tied", False, "scores higher"),
    ],
)
def test_the_verdict_needs_both_shuffles_beaten(within, across, holds, words):
    verdict = per_token_verdict({"autodeco_is": within}, {"autodeco_is": across})
    assert verdict["holds"] is holds and words in verdict["text"]
    if not holds:
        assert verdict["text"].startswith("the per-token claim does not hold")


# ---- the command ---------------------------------------------------------------------------------


def test_cli_diagnose_end_to_end(cli, tiny_model_dir, tiny_heads_dir, tmp_path, fake_registry):
    out = tmp_path / "diag"
    args = ["diagnose", "-b", "fake", "-m", tiny_model_dir, "--heads", tiny_heads_dir, "-k", "2", "--limit", "3"]
    args += ["--bootstrap", "200", "--bins", "4", "-o", out]
    code, stdout, err = cli(*args)
    assert code == 0, err
    assert "verdict:" in stdout and "per-token claim" in stdout and "Δ = autodeco − row" in stdout
    report = json.loads((out / "diagnose.json").read_text())
    assert [row["name"] for row in report["rows"]] == [
        "autodeco",
        "replay",
        "shuffle-within",
        "shuffle-across",
        "mean-shift",
    ]
    assert all("ci" in row["autodeco_minus_row"] for row in report["rows"][1:])
    assert len(report["position_profile"]) == 4 and set(report["token_classes"]) == {"digit", "other"}
    assert report["schedule_checks"]["replay"]["samples"] == 6
    assert (out / "diagnose.md").read_text().startswith("# Per-token control")
    assert (out / "diagnose.png").stat().st_size > 0
    for folder in report["folders"].values():
        assert (out / folder / "samples_fake.jsonl").is_file()
    samples = (out / "schedule-shuffle-within-s0" / "samples_fake.jsonl").read_text()
    # a re-run resumes: nothing is generated again, the report is the same
    code, _, err = cli(*args)
    assert code == 0, err
    assert (out / "schedule-shuffle-within-s0" / "samples_fake.jsonl").read_text() == samples
    again = json.loads((out / "diagnose.json").read_text())
    assert again["rows"] == report["rows"]


def test_cli_diagnose_refuses_bad_input_before_loading(cli, fake_registry):
    code, _, err = cli("diagnose", "-b", "fake,fake2", "-m", "/nonexistent/model")
    assert code == 2 and "diagnose runs on one" in err
    code, _, err = cli("diagnose", "-b", "fake", "-m", "/nonexistent/model", "--bins", "0")
    assert code == 2 and "--bins" in err
    code, out, _ = cli("diagnose", "--help")
    assert code == 0 and "shuffle-within" in out and "shuffle-across" in out and "mean-shift" in out


def test_vllm_refuses_schedule_strategies_in_one_line():
    """vLLM has no per-request schedule; diagnose's replays must not silently run as something else."""
    from autodeco_cli.core.decoding import make_strategy, schedule_strategy
    from autodeco_cli.engine.vllm.engine import unsupported

    assert "our engine only" in unsupported(schedule_strategy("replay"))
    assert unsupported(make_strategy("autodeco")) is None
