"""What a task declares for the eval runner (lm-eval style): its aggregation of per-sample metrics,
whether its answers vote, a caveat label; and why declaring one keeps the task's version."""

from __future__ import annotations

from pathlib import Path

import pytest

from autodeco_cli.core.errors import UserError
from autodeco_cli.tasks import registry
from autodeco_cli.tasks.registry import aggregate_metrics, get_task, task_label, task_version, task_voting

BASE = """name: declared
description: a task for these tests
builder: arithmetic
scorer: arith
max_new_tokens: 8
prompt: '{a} {symbol} {b} ='
splits: {test: {}}
arithmetic: {op: add, split_seed: 0, train_seed: 1, test_fraction: 0.2, test_size: 4}
"""


def _task(tmp_path: Path, extra: str = "", base: str = BASE) -> registry.Task:
    path = tmp_path / "declared.yaml"
    path.write_text(base + extra, encoding="utf-8")
    return registry._task_from_yaml(path)


def test_the_paper_tasks_declare_their_special_cases():
    lcb, ifeval, gsm8k = get_task("livecodebench"), get_task("ifeval"), get_task("gsm8k")
    assert not task_voting(lcb) and not task_voting(ifeval) and task_voting(gsm8k)
    assert "PUBLIC tests only" in task_label(lcb) and task_label(ifeval) is None and task_label(gsm8k) is None
    assert ifeval.options["aggregation"] == "ifeval" and "aggregation" not in gsm8k.options
    # duck-typed tasks (no options) get the defaults
    assert task_voting(object()) and task_label(object()) is None


def test_report_keys_do_not_change_the_version(tmp_path):
    plain = task_version(_task(tmp_path))
    declared = _task(tmp_path, "voting: false\naggregation: ifeval\nlabel: >-\n  a caveat\n  on two lines\n")
    assert task_version(declared) == plain
    assert not task_voting(declared) and task_label(declared) == "a caveat on two lines"
    # what makes the samples does change it
    assert task_version(_task(tmp_path, base=BASE.replace("max_new_tokens: 8", "max_new_tokens: 9"))) != plain


BAD = [("aggregation: median\n", "aggregation"), ("voting: maybe\n", "voting"), ("label: [1]\n", "label")]


@pytest.mark.parametrize("extra, message", BAD)
def test_bad_declarations_are_refused(tmp_path, extra, message):
    with pytest.raises(UserError, match=message):
        _task(tmp_path, extra)


def test_declared_aggregation_needs_its_keys():
    declared = type("T", (), {"options": {"aggregation": "ifeval"}})()
    counts = {"prompt_strict": 1.0, "prompt_loose": 1.0, "inst_strict_correct": 1.0, "inst_strict_total": 2.0}
    counts |= {"inst_loose_correct": 2.0, "inst_loose_total": 2.0}
    assert aggregate_metrics(declared, [counts])["inst_level_strict_acc"] == 0.5
    # without every key it consumes, a declared aggregation falls back to plain means
    assert aggregate_metrics(declared, [{"prompt_strict": 1.0}, {"prompt_strict": 0.0}]) == {"prompt_strict": 0.5}
    assert aggregate_metrics(None, []) == {}
