"""Task registry, data loading and downloading.

Tests that read benchmark data use the data dir ($AUTODECO_DATA_DIR or ../shared/data) and
skip when it is missing; nothing here copies data into the repository or uses the network.
"""

from __future__ import annotations

import hashlib
import json
import sys
import types
from collections import Counter
from pathlib import Path

import pytest

from autodeco_cli.core.errors import UserError
from autodeco_cli.tasks import registry
from autodeco_cli.tasks.arithmetic import problem_space
from autodeco_cli.tasks.data import DataFile, as_list, get_field, locate, resolve_data_dir
from autodeco_cli.tasks.registry import expand, get_task, list_groups, list_tasks, load_docs, shuffled_options
from autodeco_cli.tasks.types import Doc, Score

PAPER_TASKS = [
    "aime24",
    "aime25",
    "brumo25",
    "hmmt25",
    "beyondaime",
    "gpqa-diamond",
    "mmlu-pro",
    "mmlu-pro-100",
    "livecodebench",
    "ifeval",
]
SMALL_TASKS = ["gsm8k", "math500", "arc-easy", "arc-challenge", "arith-add", "arith-sub", "arith-mul"]
RAND_TASKS = ["rand-item", "rand-letter", "rand-letter-reworded", "rand-list", "rand-times", "rand-times-reworded"]
UNSEEN_TASKS = ["count-words", "record-field", "ticket-add"]  # families no training recipe or selection step uses
EXACT_TASKS = ["first-times", "initial-word"]  # the random-choice family's exact counterpart, trained on
MATH_SUFFIX = "\nMake sure you output the final answer within \\boxed{}."


@pytest.fixture(scope="module")
def data_dir() -> Path:
    path = resolve_data_dir()
    if not (path / "MANIFEST.md").is_file():
        pytest.skip(f"benchmark data dir not found at {path} (set AUTODECO_DATA_DIR)")
    return path


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------


def test_all_tasks_are_registered() -> None:
    assert sorted(PAPER_TASKS + SMALL_TASKS + RAND_TASKS + UNSEEN_TASKS + EXACT_TASKS) == list_tasks()
    assert list_groups()["exact"] == EXACT_TASKS
    # rand-item: no per-token edge when probed
    assert list_groups()["rand"] == ["rand-letter", "rand-list", "rand-times"]
    assert list_groups()["rand-reworded"] == [
        "rand-letter-reworded",
        "rand-times-reworded",
    ]  # held-out wordings, never trained on
    for name in list_tasks():
        task = get_task(name)
        assert task.max_new_tokens > 0
        assert task.description
        assert "test" in task.splits


def test_groups_and_expand() -> None:
    assert list_groups()["aime"] == ["aime24", "aime25"]
    assert expand("aime") == ["aime24", "aime25"]
    assert expand("aime, gsm8k,aime24") == ["aime24", "aime25", "gsm8k"]
    assert expand(["gsm8k", "arith"]) == ["gsm8k", "arith-add", "arith-mul", "arith-sub"]
    assert "mmlu-pro-100" in expand("paper") and "mmlu-pro" not in expand("paper")


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(UserError) as err:
        get_task("aime26")
    message = str(err.value)
    assert "aime26" in message and "aime24" in message and "gsm8k" in message and "\n" not in message
    with pytest.raises(UserError, match="arith-add"):
        expand("gsm8k,nope")
    with pytest.raises(UserError):
        expand(" , ")


def test_livecodebench_says_it_stands_in_for_v6() -> None:
    description = get_task("livecodebench").description
    assert "v6" in description and "PUBLIC" in description


def test_evals_dir_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tiny.yaml").write_text(
        "name: tiny\ndescription: two sums\nbuilder: arithmetic\nscorer: arith\nmax_new_tokens: 8\n"
        "prompt: '{a}{symbol}{b}='\ngroups: [mine]\n"
        "arithmetic: {op: add, split_seed: 1, train_seed: 2, test_fraction: 0.5, test_size: 2}\n"
        "splits: {test: {}}\n",
        encoding="utf-8",
    )
    monkeypatch.setenv(registry.EVALS_DIR_ENV, str(tmp_path))
    assert list_tasks() == ["tiny"]
    assert expand("mine") == ["tiny"]
    docs = load_docs("tiny")
    assert len(docs) == 2 and docs[0].prompt.endswith("=")


def test_bad_definition_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bad.yaml").write_text(
        "name: bad\ndescription: x\nbuilder: math\nscorer: telepathy\nmax_new_tokens: 8\nprompt: x\nsplits: {}\n",
        encoding="utf-8",
    )
    monkeypatch.setenv(registry.EVALS_DIR_ENV, str(tmp_path))
    with pytest.raises(UserError, match="telepathy"):
        list_tasks()


def test_misspelt_key_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "typo.yaml").write_text(
        "name: typo\ndescription: x\nbuilder: mc_shuffle\nscorer: mc\nmax_new_tokens: 8\nprompt: x\n"
        "shufle_seed: 1\nsplits: {}\n",
        encoding="utf-8",
    )
    monkeypatch.setenv(registry.EVALS_DIR_ENV, str(tmp_path))
    with pytest.raises(UserError, match="shufle_seed"):
        list_tasks()


def test_task_score_dispatch() -> None:
    doc = Doc("aime24/test/0", "p", "204", {})
    assert get_task("aime24").score(doc, "\\boxed{204}").correct
    assert not get_task("aime24").score(doc, "204").correct


def test_code_scorer_is_imported_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_score_code(doc: Doc, text: str) -> Score:
        calls.append((doc.doc_id, text))
        return Score(True, "ok", {})

    fake = types.ModuleType("autodeco_cli.tasks.sandbox")
    fake.score_code = fake_score_code  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "autodeco_cli.tasks.sandbox", fake)
    doc = Doc("livecodebench/test/1", "p", None, {"public_test_cases": []})
    assert get_task("livecodebench").score(doc, "```python\nprint(1)\n```").correct
    assert calls == [("livecodebench/test/1", "```python\nprint(1)\n```")]


# ---------------------------------------------------------------------------
# Loading the real data
# ---------------------------------------------------------------------------

EXPECTED_COUNTS = {
    ("aime24", "test"): 30,
    ("aime25", "test"): 30,
    ("brumo25", "test"): 30,
    ("hmmt25", "test"): 30,
    ("beyondaime", "test"): 100,
    ("gpqa-diamond", "test"): 198,
    ("mmlu-pro-100", "test"): 100,
    ("mmlu-pro", "test"): 12032,
    ("livecodebench", "test"): 279,
    ("ifeval", "test"): 541,
    ("gsm8k", "test"): 1319,
    ("gsm8k", "train"): 7473,
    ("math500", "test"): 500,
    ("math500", "train"): 4500,
    ("arc-easy", "test"): 2376,
    ("arc-challenge", "test"): 1172,
    ("arc-challenge", "train"): 1119,
}


@pytest.mark.parametrize("task, split", sorted(EXPECTED_COUNTS))
def test_split_sizes(data_dir: Path, task: str, split: str) -> None:
    docs = load_docs(task, split)
    assert len(docs) == EXPECTED_COUNTS[(task, split)]
    assert len({d.doc_id for d in docs}) == len(docs)  # ids are unique, so runs can be paired


def test_aime_group_is_60_problems(data_dir: Path) -> None:
    assert sum(len(load_docs(name)) for name in expand("aime")) == 60


def test_math_prompt_and_gold(data_dir: Path) -> None:
    doc = load_docs("aime25")[0]
    assert doc.prompt.startswith("Find the sum of all integer bases")
    assert doc.prompt.endswith(MATH_SUFFIX)
    assert doc.gold == "70"  # the file stores an int; golds are strings
    assert load_docs("brumo25")[1].gold == "\\frac{1}{9}"


def test_gsm8k_gold(data_dir: Path) -> None:
    first = load_docs("gsm8k")[0]
    assert first.gold == "18" and first.prompt.endswith(MATH_SUFFIX)


def test_math_train_excludes_math500(data_dir: Path) -> None:
    test_problems = {d.meta["problem"].strip() for d in load_docs("math500")}
    train = load_docs("math500", "train")
    assert not test_problems & {d.meta["problem"].strip() for d in train}


def test_limit(data_dir: Path) -> None:
    assert [d.doc_id for d in load_docs("gsm8k", limit=3)] == [d.doc_id for d in load_docs("gsm8k")[:3]]
    with pytest.raises(UserError):
        load_docs("gsm8k", limit=0)
    with pytest.raises(UserError, match="train"):
        load_docs("aime24", split="train")


def test_mmlu_pro_limit_is_a_seeded_mixed_subset(data_dir: Path) -> None:
    subset = load_docs("mmlu-pro", limit=50)
    assert len(subset) == 50
    assert [d.doc_id for d in subset] == [d.doc_id for d in load_docs("mmlu-pro", limit=50)]
    assert len({d.meta["category"] for d in subset}) > 5  # the first 50 would all be one subject
    order = {d.doc_id: i for i, d in enumerate(load_docs("mmlu-pro"))}
    assert [order[d.doc_id] for d in subset] == sorted(order[d.doc_id] for d in subset)


def test_mc_prompt_and_gold(data_dir: Path) -> None:
    doc = load_docs("mmlu-pro-100")[0]
    assert doc.gold == "J" and doc.meta["n_options"] == 10
    assert "\nA. Not enough information, Not enough information\n" in doc.prompt
    assert "\nJ. False, True\n" in doc.prompt
    assert "The answer is (X)" in doc.prompt


def test_arc_numeric_keys_become_letters(data_dir: Path) -> None:
    raw = [json.loads(line) for line in open(data_dir / "arc_easy" / "test.jsonl", encoding="utf-8")]
    docs = load_docs("arc-easy")
    numeric = [(r, d) for r, d in zip(raw, docs) if r["choices"]["label"][0] == "1"]
    assert numeric
    for record, doc in numeric:
        index = record["choices"]["label"].index(record["answerKey"])
        assert doc.gold == "ABCDE"[index]
        assert doc.meta["options"][index] == record["choices"]["text"][index]


def test_gpqa_shuffle(data_dir: Path) -> None:
    raw = [json.loads(line) for line in open(data_dir / "gpqa_diamond" / "gpqa_diamond.jsonl", encoding="utf-8")]
    docs = load_docs("gpqa-diamond")
    for record, doc in zip(raw, docs):
        assert doc.meta["shuffle_seed"] == get_task("gpqa-diamond").shuffle_seed
        gold_index = "ABCD".index(doc.gold)
        assert doc.meta["options"][gold_index] == record["correct_answer"]
        assert sorted(doc.meta["options"]) == sorted([record["correct_answer"], *record["incorrect_answers"]])
    golds = Counter(d.gold for d in docs)
    assert set(golds) == set("ABCD") and min(golds.values()) > 30  # really shuffled
    assert [d.prompt for d in load_docs("gpqa-diamond", limit=5)] == [d.prompt for d in docs[:5]]


def test_shuffle_depends_on_seed_and_record_only() -> None:
    first = shuffled_options("right", ["w1", "w2", "w3"], 0, "rec1")
    assert shuffled_options("right", ["w1", "w2", "w3"], 0, "rec1") == first
    orders = {tuple(shuffled_options("right", ["w1", "w2", "w3"], seed, "rec1")[1]) for seed in range(20)}
    assert len(orders) > 5
    options, permutation, gold = first
    assert options[gold] == "right" and permutation[gold] == 0


def test_gpqa_falls_back_to_the_csv(data_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "gpqa_diamond").mkdir()
    (tmp_path / "gpqa_diamond" / "gpqa_diamond.csv").symlink_to(data_dir / "gpqa_diamond" / "gpqa_diamond.csv")
    from_csv = load_docs("gpqa-diamond", data_dir=tmp_path)
    from_jsonl = load_docs("gpqa-diamond")
    assert [(d.doc_id, d.prompt, d.gold) for d in from_csv] == [(d.doc_id, d.prompt, d.gold) for d in from_jsonl]


def test_livecodebench_docs_carry_tests(data_dir: Path) -> None:
    docs = load_docs("livecodebench")
    leetcode = next(d for d in docs if d.meta["platform"] == "leetcode")
    atcoder = next(d for d in docs if d.meta["platform"] == "atcoder")
    assert leetcode.meta["func_name"] and leetcode.meta["starter_code"] in leetcode.prompt
    assert atcoder.meta["func_name"] is None and "standard input" in atcoder.prompt
    for doc in (leetcode, atcoder):
        tests = doc.meta["public_test_cases"]
        assert tests and set(tests[0]) >= {"input", "output", "testtype"}


def test_fields_stored_as_json_text() -> None:
    # The Hugging Face export of LiveCodeBench stores tests and metadata as JSON strings.
    record = {"metadata": '{"func_name": "solve"}', "tests": '[{"input": "1", "output": "2"}]'}
    assert get_field(record, "metadata.func_name") == "solve"
    assert as_list(record["tests"]) == [{"input": "1", "output": "2"}]
    assert as_list([1]) == [1]
    with pytest.raises(UserError):
        as_list("not json")
    with pytest.raises(UserError, match="nope"):
        get_field(record, "metadata.nope")


def test_ifeval_docs(data_dir: Path) -> None:
    doc = load_docs("ifeval")[0]
    assert doc.doc_id == "ifeval/test/1000"
    assert doc.prompt.startswith("Write a 300+ word summary")
    assert doc.gold["instruction_id_list"][0] == "punctuation:no_comma"
    assert len(doc.gold["kwargs"]) == len(doc.gold["instruction_id_list"])


def test_recorded_checksums_match_the_data(data_dir: Path) -> None:
    for name in list_tasks():
        for path, ok in registry.verify_task_data(name, data_dir):
            assert ok, f"{name}: sha256 of {path} differs from the task definition"


# ---------------------------------------------------------------------------
# Arithmetic
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["add", "sub", "mul"])
def test_arithmetic_splits_are_disjoint_and_reproducible(op: str) -> None:
    name = f"arith-{op}"
    test = load_docs(name)
    assert len(test) == 200
    assert [d.prompt for d in load_docs(name)] == [d.prompt for d in test]
    train = load_docs(name, "train")
    validation = load_docs(name, "validation")
    assert len(validation) == get_task(name).options["arithmetic"]["validation_size"]
    n_test = len(problem_space(op)) - len(train) - len(validation)
    test_keys = {(d.meta["a"], d.meta["b"]) for d in load_docs(name, limit=n_test)}
    validation_keys = {(d.meta["a"], d.meta["b"]) for d in validation}
    train_keys = {(d.meta["a"], d.meta["b"]) for d in train}
    assert len(test_keys) == n_test and len(validation_keys) == len(validation)  # no repeats inside a pool
    assert not test_keys & train_keys and not validation_keys & train_keys and not test_keys & validation_keys
    assert len(test_keys) + len(validation_keys) + len(train_keys) == len(problem_space(op))
    with pytest.raises(UserError):
        load_docs(name, limit=n_test + 1)
    with pytest.raises(UserError, match="validation problems"):
        load_docs(name, "validation", limit=len(validation) + 1)


def test_arithmetic_items() -> None:
    for doc in load_docs("arith-add"):
        assert doc.prompt == f"What is {doc.meta['a']} + {doc.meta['b']}? Reply with just the number."
        assert 10 <= doc.meta["a"] <= 99 and 10 <= doc.meta["b"] <= 99 and doc.gold == doc.meta["a"] + doc.meta["b"]
    assert all(d.gold >= 0 for d in load_docs("arith-sub"))
    assert all(2 <= d.meta["a"] <= 9 and 10 <= d.meta["b"] <= 99 for d in load_docs("arith-mul"))


def test_arithmetic_train_stream_can_exceed_the_pool() -> None:
    pool = len(load_docs("arith-mul", "train"))
    longer = load_docs("arith-mul", "train", limit=pool + 10)
    assert len(longer) == pool + 10
    with pytest.raises(UserError, match="test problems"):
        load_docs("arith-mul", limit=len(problem_space("mul")))


# ---------------------------------------------------------------------------
# Missing files and downloads
# ---------------------------------------------------------------------------


def test_missing_file_is_a_one_line_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        load_docs("aime24", data_dir=tmp_path)
    message = str(err.value)
    assert str(tmp_path / "aime24" / "test.jsonl") in message
    assert "AUTODECO_DATA_DIR" in message and "AUTODECO_DOWNLOAD=1" in message and "\n" not in message


def test_missing_file_without_url_names_the_source(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="TIGER-Lab/MMLU-Pro"):
        load_docs("mmlu-pro", data_dir=tmp_path)


def test_data_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTODECO_DATA_DIR", str(tmp_path))
    assert resolve_data_dir() == tmp_path
    assert resolve_data_dir(tmp_path / "other") == tmp_path / "other"
    monkeypatch.delenv("AUTODECO_DATA_DIR")
    monkeypatch.chdir(tmp_path)
    assert resolve_data_dir() == tmp_path / ".." / "shared" / "data"


def _local_source(tmp_path: Path, content: bytes) -> tuple[str, str]:
    source = tmp_path / "upstream.jsonl"
    source.write_bytes(content)
    return source.as_uri(), hashlib.sha256(content).hexdigest()


def test_download_with_matching_checksum(tmp_path: Path) -> None:
    url, digest = _local_source(tmp_path, b'{"problem": "1+1", "gt": "2"}\n')
    spec = DataFile("sub/file.jsonl", sha256=digest, url=url)
    path = locate(spec, tmp_path / "data", download=True)
    assert path == tmp_path / "data" / "sub" / "file.jsonl"
    assert path.read_bytes().startswith(b'{"problem"')


def test_download_with_wrong_checksum_leaves_nothing(tmp_path: Path) -> None:
    url, _ = _local_source(tmp_path, b"tampered\n")
    spec = DataFile("sub/file.jsonl", sha256="0" * 64, url=url)
    with pytest.raises(UserError, match="Checksum mismatch"):
        locate(spec, tmp_path / "data", download=True)
    assert list((tmp_path / "data" / "sub").iterdir()) == []


def test_download_is_opt_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url, digest = _local_source(tmp_path, b"x\n")
    spec = DataFile("file.jsonl", sha256=digest, url=url)
    monkeypatch.delenv("AUTODECO_DOWNLOAD", raising=False)
    with pytest.raises(UserError, match="not found"):
        locate(spec, tmp_path / "data")
    monkeypatch.setenv("AUTODECO_DOWNLOAD", "1")
    assert locate(spec, tmp_path / "data").is_file()


def test_failed_download_is_a_user_error(tmp_path: Path) -> None:
    spec = DataFile("file.jsonl", sha256="0" * 64, url=(tmp_path / "absent.jsonl").as_uri())
    with pytest.raises(UserError, match="Download of"):
        locate(spec, tmp_path / "data", download=True)
