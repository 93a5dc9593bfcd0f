"""Every file we read goes through one schema check (`core.schema`) and a depth-safe JSON reader
(`core.json_files`): a wrong type, a missing key, a NaN, a score out of range or a pathologically
nested file is one error line naming FILE:LINE/KEY and the fix, exit 2, never a traceback; and
`compare` never prints nan or inf, nor pairs runs of different k.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from autodeco_cli.core.errors import UserError
from conftest import write_jsonl
from test_bad_input import NO_MODEL, TRAIN_ROWS, assert_user_error

pytestmark = pytest.mark.usefixtures("torch_single_thread")

DEEP = "[" * 100_000 + "]" * 100_000  # past the parser's recursion limit
SHALLOW_DEEP = "[" * 200 + "]" * 200  # parses, but nests past MAX_DEPTH
TASK = "arith-add"


# ---- the checker itself -------------------------------------------------------------------------


def test_schema_messages_name_the_key_and_what_was_expected():
    from autodeco_cli.core.schema import INTEGER, LIST, NUMBER, OBJECT, Field, Schema, check, mapping, optional

    rows = Schema({"per_question": mapping(Field(LIST, items=Field(OBJECT, fields=Schema({"s": Field(NUMBER)}))))})
    cases = [
        ([], "r.json: is a list; expected an object"),
        ({"per_question": {"t": [{"s": 1}, {"s": None}]}}, "r.json/per_question/t[1]/s: is null; expected a finite"),
        ({"per_question": {"t": [{}]}}, "r.json/per_question/t[0]/s: is missing; expected a finite number"),
        ({"per_question": {"t": ["x"]}}, "r.json/per_question/t[0]: is a string ('x'); expected an object"),
    ]
    for value, message in cases:
        with pytest.raises(UserError) as info:
            check(value, rows, "r.json", "fix it")
        assert info.value.one_line().startswith(message), info.value.one_line()
        assert info.value.one_line().endswith("Fix it.")
    assert check({"n": 3, "extra": "kept"}, Schema({"n": optional(INTEGER, minimum=1)}), "x") == {
        "n": 3,
        "extra": "kept",
    }
    with pytest.raises(UserError, match=r"x/n: is true; expected an integer ≥ 1"):
        check({"n": True}, Schema({"n": Field(INTEGER, minimum=1)}), "x")


@pytest.mark.parametrize("text", [DEEP, SHALLOW_DEEP, '{"a": ' * 100 + "1" + "}" * 100])
def test_deep_json_is_an_error_not_a_recursion_error(tmp_path, text):
    from autodeco_cli.core.json_files import read_json_file, read_jsonl_file

    path = tmp_path / "deep.json"
    path.write_text(text)
    with pytest.raises(UserError, match=f"{path}: nested more than 64 levels deep"):
        read_json_file(path)
    (tmp_path / "deep.jsonl").write_text('{"ok": 1}\n' + text + "\n")
    with pytest.raises(UserError, match=r"deep.jsonl:2: nested more than"):
        list(read_jsonl_file(tmp_path / "deep.jsonl"))


# ---- training data -----------------------------------------------------------------------------


def _train(cli, model, tmp_path, rows_or_text) -> tuple:
    path = tmp_path / "train.jsonl"
    if isinstance(rows_or_text, str):
        path.write_text(json.dumps(TRAIN_ROWS[0]) + "\n" + rows_or_text + "\n", encoding="utf-8")
    else:
        write_jsonl(path, [TRAIN_ROWS[0], rows_or_text])
    return path, cli("train-heads", "-m", model, "--data", path, "-o", tmp_path / "out", "max_steps=1")


@pytest.mark.parametrize(
    "row, key, problem",
    [
        (
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": 5}]},
            "/messages[1]/content",
            "is 5; expected a string",
        ),
        ({"messages": [{"role": ["user"], "content": "hi"}]}, "/messages[0]/role", "is a list; expected a non-empty"),
        ({"prompt": [{"role": "user", "content": None}], "completion": "x"}, "/prompt[0]/content", "is null"),
        ({"prompt": [{"role": 7, "content": "hi"}], "completion": "x"}, "/prompt[0]/role", "is 7"),
    ],
)
def test_training_messages_with_non_text_fields(cli, tiny_model_dir, tmp_path, row, key, problem):
    path, result = _train(cli, tiny_model_dir, tmp_path, row)
    assert_user_error(result, f"{path}:2{key}: {problem}")


@pytest.mark.parametrize("text", [DEEP, SHALLOW_DEEP])
def test_training_data_nested_too_deep(cli, tiny_model_dir, tmp_path, text):
    path, result = _train(cli, tiny_model_dir, tmp_path, text)
    assert_user_error(result, f"{path}:2: nested more than 64 levels deep")


def test_steering_reads_training_data_through_the_same_checks(tmp_path):
    from autodeco_cli.training.data import steer_records

    path = write_jsonl(tmp_path / "steer.jsonl", [TRAIN_ROWS[0], {"prompt": "x", "completion": 3}])
    with pytest.raises(UserError, match=rf"{path}:2/completion: is 3; expected a string"):
        steer_records(path)


# ---- prompt files ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, where, problem",
    [
        ({"messages": [{"role": "user", "content": ["hi"]}]}, ":2/messages[0]/content", "is a list; expected a string"),
        ({"prompt": [{"content": "hi"}]}, ":2/prompt[0]/role", "is missing"),
        ({"messages": []}, ":2/messages", "is empty"),
    ],
)
def test_prompt_file_messages_are_checked(cli, tmp_path, line, where, problem):
    path = write_jsonl(tmp_path / "prompts.jsonl", ["fine", line])
    assert_user_error(cli("generate", "-f", path, "-m", NO_MODEL), f"{path}{where}: {problem}")


def test_prompt_file_nested_too_deep(cli, tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('"fine"\n' + DEEP + "\n")
    assert_user_error(cli("generate", "-f", path, "-m", NO_MODEL), f"{path}:2: nested more than 64 levels deep")


# ---- heads config.json -------------------------------------------------------------------------


def _heads_with_config(source: Path, target: Path, text: str) -> Path:
    shutil.copytree(source, target)
    (target / "config.json").write_text(text)
    return target


def _config_with(source: Path, **changes) -> str:
    config = json.loads((source / "config.json").read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        node = config
        for parent in parents:
            node = node[parent]
        node[key] = value
    return json.dumps(config)


@pytest.mark.parametrize(
    "changes, where, problem",
    [
        ({"hidden_size": "32"}, "/hidden_size", "is a string ('32'); expected an integer ≥ 1"),
        ({"autodeco_cli": "ours"}, "/autodeco_cli", "is a string ('ours'); expected an object"),
        ({"autodeco_cli": None}, "/autodeco_cli", "is null; expected an object"),
        ({"autodeco_cli__hidden_size": 32.5}, "/autodeco_cli/hidden_size", "is 32.5; expected an integer"),
        ({"autodeco_cli__provenance": None}, "/autodeco_cli/provenance", "is null; expected an object"),
        ({"base_model_name_or_path": {"name": "x"}}, "/base_model_name_or_path", "is an object; expected a string"),
    ],
)
def test_heads_config_fields_have_types(cli, tiny_model_dir, tiny_heads_dir, tmp_path, changes, where, problem):
    heads = _heads_with_config(tiny_heads_dir, tmp_path / "heads", _config_with(tiny_heads_dir, **changes))
    result = cli("generate", "hi", "-m", tiny_model_dir, "--heads", heads, "--max-new-tokens", 2)
    assert_user_error(result, f"{heads / 'config.json'}{where}: {problem}", "Fix config.json")


@pytest.mark.parametrize("text, problem", [("[1, 2]", ": is a list; expected an object"), (DEEP, ": nested more")])
def test_heads_config_that_is_not_an_object(cli, tiny_model_dir, tiny_heads_dir, tmp_path, text, problem):
    heads = _heads_with_config(tiny_heads_dir, tmp_path / "heads", text)
    result = cli("generate", "hi", "-m", tiny_model_dir, "--heads", heads, "--max-new-tokens", 2)
    assert_user_error(result, f"{heads / 'config.json'}{problem}")


# ---- recipes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("nested", [DEEP, SHALLOW_DEEP])
def test_recipe_nested_too_deep(cli, tmp_path, nested):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: {NO_MODEL}\nlora_target_modules: {nested}\n")
    assert_user_error(cli("train-heads", "-c", recipe), f"{recipe}: nested more than 64 levels deep")


def test_deep_override_and_nan_recipe_value(cli, tmp_path, train_data):
    assert_user_error(
        cli("train-heads", "-m", NO_MODEL, "--data", train_data, f"lora_target_modules={SHALLOW_DEEP}"),
        "override lora_target_modules: nested more than",
    )
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"data: {train_data}\nmodel: {NO_MODEL}\nlearning_rate: .nan\n")
    assert_user_error(cli("train-heads", "-c", recipe), f"{recipe}:3", "learning_rate", "expects float")


@pytest.fixture
def train_data(tmp_path) -> Path:
    return write_jsonl(tmp_path / "train.jsonl", TRAIN_ROWS)


# ---- results files and compare -----------------------------------------------------------------


def _results(folder: Path, scores, *, n: int | None = 4, strategy: str = "static", k_seeds=None, rows=None, **top):
    """A results.json as `autodeco eval` writes it (the fields compare reads)."""
    if rows is None:
        rows = [{"doc_id": f"{TASK}/{i}", "pass@1": s, "score": s} for i, s in enumerate(scores)]
        for row in rows:
            if n is not None:
                row["n"] = n
    k, seeds = k_seeds or (n or 1, [0])
    data = {
        "results": {TASK: {"metric": "pass@1"}},
        "configs": {TASK: {"k": k, "seeds": seeds}},
        "decoding": {"name": strategy, "label": strategy},
        "model": "tiny",
        "per_question": {TASK: rows},
        **top,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(data))
    return folder / "results.json"


SCORES = [float(i % 3 == 0) for i in range(200)]


@pytest.fixture
def run_b(tmp_path) -> Path:
    return _results(tmp_path / "b", [1.0 - s for s in SCORES])


def _with(index: int, value) -> list:
    scores = list(SCORES)
    scores[index] = value
    return scores


@pytest.mark.parametrize(
    "scores, problem",
    [
        (_with(117, float("nan")), "[117]/score: is NaN; expected a number in [0, 1]"),
        (_with(3, float("inf")), "[3]/score: is inf; expected a number in [0, 1]"),
        (_with(3, None), "[3]/score: is null; expected a number in [0, 1]"),
        (_with(5, 1.7), "[5]/score: is 1.7; expected a number in [0, 1]"),
        (_with(5, -0.5), "[5]/score: is -0.5; expected a number in [0, 1]"),
        (_with(5, "1"), "[5]/score: is a string ('1'); expected a number in [0, 1]"),
    ],
)
def test_compare_refuses_bad_scores(cli, tmp_path, run_b, scores, problem):
    run_a = _results(tmp_path / "a", scores)
    assert_user_error(cli("compare", run_a, run_b), f"{run_a}/per_question/{TASK}{problem}", "Re-run `autodeco eval`")


@pytest.mark.parametrize(
    "rows, where, problem",
    [
        ([{"doc_id": "a", "score": 1.0}, "oops"], "[1]", "is a string ('oops'); expected an object"),
        ([{"score": 1.0}], "[0]/doc_id", "is missing; expected a string or an integer"),
        ([{"doc_id": "a", "n": 4}], "[0]", "has none of score, pass@1"),
        ([{"doc_id": "a", "score": 1.0, "n": 0}], "[0]/n", "is 0; expected an integer ≥ 1"),
        ([{"doc_id": ["a"], "score": 1.0}], "[0]/doc_id", "is a list"),
    ],
)
def test_compare_refuses_bad_rows(cli, tmp_path, run_b, rows, where, problem):
    run_a = _results(tmp_path / "a", [], rows=rows)
    assert_user_error(cli("compare", run_a, run_b), f"{run_a}/per_question/{TASK}{where}: {problem}")


@pytest.mark.parametrize(
    "top, where, problem",
    [
        ({"decoding": "static"}, "/decoding", "is a string ('static'); expected an object"),
        ({"per_question": {TASK: "rows"}}, f"/per_question/{TASK}", "is a string ('rows'); expected a list"),
        ({"per_question": []}, "/per_question", "is a list; expected an object"),
        ({"results": {TASK: None}}, f"/results/{TASK}", "is null; expected an object"),
        ({"configs": {TASK: {"k": "4"}}}, f"/configs/{TASK}/k", "is a string ('4')"),
        ({"model": 3}, "/model", "is 3; expected a string or null"),
    ],
)
def test_compare_refuses_bad_structure(cli, tmp_path, run_b, top, where, problem):
    run_a = _results(tmp_path / "a", SCORES, **top)
    assert_user_error(cli("compare", run_a, run_b), f"{run_a}{where}: {problem}")


def test_compare_refuses_a_deeply_nested_results_file(cli, tmp_path, run_b):
    run_a = tmp_path / "results.json"
    run_a.write_text('{"per_question": ' + DEEP + "}")
    assert_user_error(cli("compare", run_a, run_b), f"{run_a}: nested more than 64 levels deep")


def test_compare_refuses_a_doc_id_given_twice(cli, tmp_path, run_b):
    rows = [{"doc_id": "a", "score": 1.0}, {"doc_id": "a", "score": 0.0}]
    run_a = _results(tmp_path / "a", [], rows=rows)
    assert_user_error(cli("compare", run_a, run_b), f"{run_a}/per_question/{TASK}[1]/doc_id: 'a' is given twice")


def test_compare_refuses_different_k(cli, tmp_path, run_b):
    run_a = _results(tmp_path / "a", SCORES, n=8)
    line = assert_user_error(
        cli("compare", run_a, run_b), TASK, f"{run_a} has 8 samples per question", f"{run_b} has 4", "same -k"
    )
    assert line.index(str(run_a)) < line.index(str(run_b))


def test_compare_reads_k_from_configs_for_files_without_n(cli, tmp_path, run_b):
    """Old files: k × seeds from the task config; 2 × 2 seeds pairs with 4, 8 × 1 does not."""
    same = _results(tmp_path / "same", SCORES, n=None, k_seeds=(2, [0, 1]))
    code, out, err = cli("compare", same, run_b, "--bootstrap", 50)
    assert code == 0, err
    other = _results(tmp_path / "other", SCORES, n=None, k_seeds=(8, [0]))
    assert_user_error(cli("compare", other, run_b), f"{other} has 8 samples per question", f"{run_b} has 4")


def test_compare_pairs_greedy_with_any_k_and_prints_no_nan(cli, tmp_path, run_b):
    greedy = _results(tmp_path / "greedy", SCORES, n=1, strategy="greedy")
    code, out, err = cli("compare", greedy, run_b, "--bootstrap", 50)
    assert code == 0, err
    assert "nan" not in out.lower() and "inf" not in out.lower()
    assert "200" in out


def test_compare_results_checks_in_memory_results_too():
    from autodeco_cli.evaluation.report import compare_results

    def results(score):
        return {"per_question": {TASK: [{"doc_id": "q", "score": score, "n": 1}]}}

    with pytest.raises(UserError, match=r"run A/per_question/arith-add\[0\]/score: is NaN"):
        compare_results(results(float("nan")), results(1.0))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_percent_formats_refuse_non_finite_values(bad):
    from autodeco_cli.evaluation.report import ci_pct, pct, pct_se, signed_pct

    for call in (lambda: pct(bad), lambda: signed_pct(bad), lambda: ci_pct(0.0, bad), lambda: pct_se(0.5, bad)):
        with pytest.raises(ValueError, match="refusing to print"):
            call()
    assert pct(None) == "–" and pct(0.25) == "25.0" and ci_pct(-0.01, 0.06) == "[-1.0, +6.0]"


def test_mean_shift_source_with_a_nan_mean(cli, tmp_path):
    source = tmp_path / "autodeco-results.json"
    source.write_text(json.dumps({"results": {TASK: {"mean_temperature": math.nan, "mean_top_p": 0.8}}}))
    args = ["eval", "-b", TASK, "-k", "1", "--seeds", "1", "-d", "mean-shift", "--mean-from", source]
    result = cli(*args, "-m", NO_MODEL, "-o", tmp_path / "out")
    assert_user_error(result, f"{source}/results/{TASK}/mean_temperature: is NaN")
    assert not (tmp_path / "out").exists()


# ---- run folders and grid files ----------------------------------------------------------------


def test_sample_log_and_settings_file_nested_too_deep(tmp_path):
    from autodeco_cli.evaluation.run_store import SampleLog, claim_settings

    log = tmp_path / "samples.jsonl"
    log.write_text(json.dumps({"doc_id": "a", "seed": 0, "sample": 0}) + "\n" + DEEP + "\n")
    with pytest.raises(UserError, match=rf"{log}:2 is not a sample record"):
        SampleLog(log)
    settings = tmp_path / "run_config.json"
    settings.write_text(DEEP)
    with pytest.raises(UserError, match=rf"{settings} is not a settings file"):
        claim_settings(settings, lambda previous: [], holder=tmp_path, hint="")


def _grid(**changes) -> dict:
    cell = {
        "temperature": 0.5,
        "top_p": 1.0,
        "label": "static(T=0.5, p=1)",
        "slug": "static-T0.5-p1",
        "stages": ["full"],
        "pass@1": 0.5,
        "pass@1_stderr": 0.1,
        "n_questions": 4,
        "pruned": None,
    }
    grid = {
        "benchmark": TASK,
        "mode": "full",
        "k": 1,
        "seeds": [0],
        "n_questions": 4,
        "samples_per_question": 1,
        "stages": [{"name": "full", "best": cell["slug"]}],
        "cells": [cell],
        "oracle": {key: cell[key] for key in ("temperature", "top_p", "label", "slug", "pass@1", "n_questions")},
        "complete": True,
    }
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        node = grid
        for parent in parents:
            node = node[int(parent)] if isinstance(node, list) else node[parent]
        node[key] = value
    return grid


@pytest.mark.parametrize(
    "changes, where, problem",
    [
        ({"cells__0__pass@1": "0.5"}, "/cells[0]/pass@1", "is a string ('0.5')"),
        ({"cells__0__pass@1": 1.5}, "/cells[0]/pass@1", "is 1.5; expected a number in [0, 1] or null"),
        ({"cells__0__top_p": None}, "/cells[0]/top_p", "is null; expected a finite number"),
        ({"oracle__temperature": float("nan")}, "/oracle/temperature", "is NaN"),
        ({"family": {"name": "no-such"}}, "/family/name", "is a string ('no-such'); expected one of static"),
        ({"mode": "sideways"}, "/mode", "is a string ('sideways'); expected one of full, expert, cells"),
        ({"cells__0__pruned": "yes"}, "/cells[0]/pruned", "is a string ('yes'); expected an object or null"),
    ],
)
def test_grid_file_fields_have_types(tmp_path, changes, where, problem):
    from autodeco_cli.grid.search import load_grid

    (tmp_path / "grid.json").write_text(json.dumps(_grid(**changes)))
    with pytest.raises(UserError) as info:
        load_grid(tmp_path)
    assert f"{tmp_path / 'grid.json'}{where}: {problem}" in info.value.one_line(), info.value.one_line()


def test_good_grid_file_loads_and_deep_one_does_not(tmp_path):
    from autodeco_cli.grid.search import load_grid

    (tmp_path / "grid.json").write_text(json.dumps(_grid()))
    assert load_grid(tmp_path)["oracle"]["slug"] == "static-T0.5-p1"
    (tmp_path / "grid.json").write_text(DEEP)
    with pytest.raises(UserError, match="nested more than 64 levels deep"):
        load_grid(tmp_path)
