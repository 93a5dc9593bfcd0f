"""The rand-* family: generators, scorer, the exact×(1−TV) question metric, re-balancing of
make-data, and the metric flowing through eval results, compare and grid's oracle."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from autodeco_cli.core.decoding import make_strategy
from autodeco_cli.core.prompt_format import PLAIN as PLAIN_FORMAT
from autodeco_cli.engine.generation import GenerationEngine
from autodeco_cli.evaluation.report import compare_results
from autodeco_cli.evaluation.runner import run_eval
from autodeco_cli.evaluation.settings import EvalSettings
from autodeco_cli.grid.search import CellScore
from autodeco_cli.tasks import aggregation, random_choice
from autodeco_cli.tasks.registry import expand, get_task, task_chat, task_stop
from autodeco_cli.tasks.types import Doc, Score
from autodeco_cli.training.rebalance import balance_positions, one_per_value

pytestmark = pytest.mark.usefixtures("torch_single_thread")

TASKS = ("rand-times", "rand-item", "rand-letter", "rand-list")
RAND = SimpleNamespace(name="rand-x", options={"question_metric": "exact_tv"})
PLAIN = SimpleNamespace(name="plain", options={})
DOC = Doc("d", "", None, {"template": "letter", "choices": ["A", "B", "C", "D"]})


def _s(value, correct=True):
    return Score(correct, value, {})


# ---------------------------------------------------------------------------
# The metric, against hand-computed cases (k = 4 over a 4-value set)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "picks, correct, expected",
    [
        (["A", "A", "A", "A"], [1, 1, 1, 1], 1 * (1 - 0.75)),  # TV = ½(3/4 + 3·1/4)
        (["A", "B", "C", "D"], [1, 1, 1, 1], 1.0),  # uniform: TV 0
        (["A", "B", "C", None], [1, 1, 1, 0], 0.75 * (1 - 0.25)),  # ½(3·0 + 1/4 + 1/4 outside)
        (["A", "B", "C", "Z"], [1, 1, 1, 0], 0.75 * (1 - 0.25)),  # an off-set pick is outside mass too
        (["A", "B", "C", "D"], [1, 0, 1, 1], 0.75),  # a wrong exact step: exact 3/4, TV 0
        (["A", "A", "B", "B"], [1, 1, 1, 1], 0.5),  # TV = ½(1/4+1/4+1/4+1/4)
    ],
)
def test_exact_tv_hand_computed(picks, correct, expected):
    scores = [_s(p, bool(c)) for p, c in zip(picks, correct)]
    assert aggregation.question_score(RAND, DOC, scores) == pytest.approx(expected)


def test_plain_tasks_score_pass1_and_names():
    scores = [_s("A"), _s("A"), _s("A", False), _s(None, False)]
    assert aggregation.question_score(PLAIN, DOC, scores) == 0.5
    assert aggregation.metric_name(PLAIN) == "pass@1" and aggregation.metric_name(RAND) == "exact×(1−TV)"
    assert (
        aggregation.metric_name(get_task("rand-item")) == "exact×(1−TV)"
        and aggregation.metric_name(get_task("arith-add")) == "pass@1"
    )
    assert aggregation.total_variation(["A"] * 8, ["A", "B"]) == pytest.approx(0.5)
    # item picks are compared lower-cased: a capitalised stated word is still in the support
    doc = Doc("d", "", None, {"template": "item", "choices": ["Apple", "river"]})
    assert aggregation.target_support(RAND, doc) == ["apple", "river"]


# ---------------------------------------------------------------------------
# Generators and registry
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", TASKS)
def test_splits_are_disjoint_by_set_and_deterministic(name):
    task = get_task(name)
    docs = {split: task.load_docs(split) for split in ("test", "validation", "train")}
    assert [len(docs[s]) for s in ("test", "validation", "train")] == [200, 100, 400]
    sets = {s: {",".join(sorted(d.meta["choices"])) + f":{d.meta['constant']}" for d in ds} for s, ds in docs.items()}
    assert (
        not sets["test"] & sets["train"]
        and not sets["test"] & sets["validation"]
        and not sets["validation"] & sets["train"]
    )
    assert len({d.doc_id for d in docs["test"]}) == 200  # no repeated question
    again = task.load_docs("test", limit=20)
    assert [(d.doc_id, d.prompt) for d in again] == [(d.doc_id, d.prompt) for d in docs["test"][:20]]
    assert {len(d.meta["choices"]) for d in docs["test"]} == {2, 4, 8}  # set sizes divide k=8
    # the prompt states this question's options, after two solved shots
    doc = docs["test"][0]
    assert (
        doc.prompt.rstrip("\n").split("\n")[-1]
        == random_choice.Question(
            task.options["random_choice"]["template"], tuple(doc.meta["choices"]), doc.meta["constant"]
        ).instruction()
    )
    assert doc.prompt.count("\n\n") == 2


def test_family_group_and_task_settings():
    assert expand("rand") == ["rand-letter", "rand-list", "rand-times"]
    for name in TASKS:
        task = get_task(name)
        assert task_chat(task, True) is False and task_stop(task) == ["\n"]
    assert task_chat(get_task("arith-add"), True) is True and task_stop(get_task("arith-add")) is None


# ---------------------------------------------------------------------------
# Scorer on real-looking outputs
# ---------------------------------------------------------------------------

TIMES = Doc(
    "t",
    "",
    {"choices": ["4", "1", "3", "7"], "constant": 3},
    {"template": "times", "choices": ["4", "1", "3", "7"], "constant": 3},
)
ITEM = Doc(
    "i",
    "",
    {"choices": ["milk", "ship"], "constant": 0},
    {"template": "item", "choices": ["milk", "ship"], "constant": 0},
)
LETTER = Doc(
    "l", "", {"choices": ["G", "T"], "constant": 0}, {"template": "letter", "choices": ["G", "T"], "constant": 0}
)
LIST = Doc(
    "s",
    "",
    {"choices": ["4", "1", "3"], "constant": 2},
    {"template": "list", "choices": ["4", "1", "3"], "constant": 2},
)


@pytest.mark.parametrize(
    "doc, text, correct, extracted",
    [
        (TIMES, "7 x 3 = 21", True, "7"),
        (TIMES, "7 x 3 = 21\n\nPick a random number", True, "7"),
        (TIMES, "4 × 3 = 12.", True, "4"),
        (TIMES, "7 x 3 = 24", False, "7"),  # wrong product: the pick still counts
        (TIMES, "7 x 2 = 14", False, "7"),  # wrong factor
        (TIMES, "5 x 3 = 15", False, "5"),  # right product, off-set pick
        (TIMES, "Let me think", False, None),
        (TIMES, "", False, None),
        (ITEM, "ship ship", True, "ship"),
        (ITEM, "Ship ship.", True, "ship"),
        (ITEM, "ship", False, "ship"),
        (ITEM, "ship milk", False, "ship"),
        (ITEM, "bread bread", False, "bread"),
        (LETTER, "T T T", True, "T"),
        (LETTER, "S S S S", False, "S"),
        (LETTER, "G G T B X", False, "G"),
        (LETTER, "g g g", True, "G"),
        (LIST, "4, 1, 3; 3 x 2 = 6", True, "3"),
        (LIST, "4, 1, 3; 4 x 2 = 8.", True, "4"),
        (LIST, "4, 1, 3; 3 x 2 = 7", False, "3"),  # wrong product
        (LIST, "4, 3, 1; 3 x 2 = 6", False, "3"),  # the list copied out of order: the pick still counts
        (LIST, "4, 1; 1 x 2 = 2", False, "1"),  # the list cut short
        (LIST, "4, 1, 3; 2 x 2 = 4", False, "2"),  # picks the constant: off the set
        (LIST, "3 x 2 = 6", False, None),  # no copy: nothing parses as the pick
        (LIST, "4, 1, 3", False, None),
    ],
)
def test_scorer_parses_model_outputs(doc, text, correct, extracted):
    score = random_choice.score_random_choice(doc, text)
    assert (score.correct, score.extracted) == (correct, extracted)
    assert score.metrics["valid_choice"] == float(
        extracted is not None and extracted in {c.lower() if doc is ITEM else c.upper() for c in doc.meta["choices"]}
    )


def test_the_list_template_moves_the_pick_with_the_set_size():
    """rand-list's reply copies the stated list before its pick: the pick's character offset (and
    so its token position) grows with the set size, unlike rand-times where it is always first."""
    question = random_choice.Question("list", ("9", "4", "6", "2"), 3)
    assert question.answer("6") == "9, 4, 6, 2; 6 x 3 = 18"
    docs = get_task("rand-list").load_docs("test", limit=60)
    offsets = {len(", ".join(d.meta["choices"])) for d in docs}
    assert offsets == {4, 10, 22}  # 2, 4 and 8 one-digit numbers copied before the pick


# ---------------------------------------------------------------------------
# Re-balancing
# ---------------------------------------------------------------------------


def test_one_per_value_keeps_first_of_each_pick():
    records = [{"choice": c, "sample": i} for i, c in enumerate(["a", "a", "b", "a", "c", "b"])]
    assert [(r["choice"], r["sample"]) for r in one_per_value(records)] == [("a", 0), ("b", 2), ("c", 4)]


def test_balance_positions_caps_the_favourite_and_invents_nothing():
    # set size 4: the model picks position 0 thirty times, 1 four times, 2 twice, never 3
    counts = {0: 30, 1: 4, 2: 2}
    records = [
        {"n_choices": 4, "choice_position": pos, "id": f"{pos}-{i}"} for pos, n in counts.items() for i in range(n)
    ]
    records += [{"n_choices": 2, "choice_position": pos, "id": f"two-{pos}-{i}"} for pos in (0, 1) for i in range(3)]
    out = balance_positions(records, seed=0)
    by_pos = {pos: sum(r["n_choices"] == 4 and r["choice_position"] == pos for r in out) for pos in range(4)}
    assert by_pos == {0: 4, 1: 4, 2: 2, 3: 0}  # capped at the median (4) of the positions that occur
    assert sum(r["n_choices"] == 2 for r in out) == 6  # already balanced: untouched
    ids = [r["id"] for r in out]
    assert len(set(ids)) == len(ids) and set(ids) <= {r["id"] for r in records}
    assert ids == [r["id"] for r in records if r["id"] in set(ids)]  # order kept
    assert balance_positions(records, seed=0) == out  # seeded


class _FakeEngine:
    """Returns fixed texts per (doc, sample): a model that favours the first listed option."""

    name, prompt_format, lm = "hf", PLAIN_FORMAT, SimpleNamespace(name=None, config=None)  # what make-data records
    dtype = "float32"

    def __init__(self, tokenizer, texts):
        self.tokenizer, self.texts, self.calls = tokenizer, texts, []

    def generate(self, requests, max_new_tokens, batch_size, stop=None):
        from autodeco_cli.engine.requests import Generation

        self.calls.append(stop)
        return [Generation(r.key, self.texts(r.key), [1], "stop") for r in requests]


def test_make_data_rebalances_declared_tasks_only(tiny_lm, tmp_path):
    from autodeco_cli.training.on_policy_data import make_on_policy_data

    docs = {d.doc_id: d for d in get_task("rand-letter").load_docs("train", limit=12)}
    even = {doc_id for i, doc_id in enumerate(docs) if i % 2 == 0}

    def texts(key):
        # the favourite (first listed) option 7 times out of 8; the second option once, on half the questions
        doc_id, sample = key
        pick = docs[doc_id].meta["choices"][1 if sample == 7 and doc_id in even else 0]
        return f"{pick} {pick} {pick}"

    engine = _FakeEngine(tiny_lm.tokenizer, texts)
    out = tmp_path / "data.jsonl"
    report = make_on_policy_data(
        engine, "rand-letter", out, make_strategy("static", temperature=1.0), k=8, limit=12, chunk_problems=5
    )
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert engine.calls and all(stop == ["\n"] for stop in engine.calls)
    assert all(isinstance(r["prompt"], str) for r in lines)  # raw few-shot text, no chat messages
    per_doc = {}
    for r in lines:
        per_doc.setdefault(r["doc_id"], []).append(r["choice"])
    # one per distinct pick: the favourite first option appears once per question, not six times
    assert all(len(v) == len(set(v)) for v in per_doc.values())
    assert all(r["choice"] in docs[r["doc_id"]].meta["choices"] for r in lines)  # nothing invented
    for m in {len(d.meta["choices"]) for d in docs.values()}:
        first = sum(len(d.meta["choices"]) == m for d in docs.values())
        second = sum(len(docs[i].meta["choices"]) == m for i in even)
        cap = int((first + second) / 2) if second else first  # the median of the positions that occur
        got = [r["choice_position"] for r in lines if r["n_choices"] == m]
        assert (got.count(0), got.count(1)) == (min(first, cap), second)
    assert report.per_task["rand-letter"]["dropped_by_balance"] > 0
    progress = (tmp_path / "data.jsonl.progress").read_text()
    assert '"balanced": true' in progress
    # a resumed run does nothing more (and does not balance twice)
    again = make_on_policy_data(
        engine, "rand-letter", out, make_strategy("static", temperature=1.0), k=8, limit=12, chunk_problems=5
    )
    assert again.problems == 0 and [json.loads(line) for line in out.read_text().splitlines()] == lines
    # --no-balance keeps every accepted sample, duplicates included
    plain = tmp_path / "plain.jsonl"
    make_on_policy_data(
        engine, "rand-letter", plain, make_strategy("static", temperature=1.0), k=8, limit=12, balance=False
    )
    assert (
        len(plain.read_text().splitlines()) == 12 * 8
        and "balanced" not in (tmp_path / "plain.jsonl.progress").read_text()
    )


# ---------------------------------------------------------------------------
# The metric through eval results, compare and grid
# ---------------------------------------------------------------------------


class ChoiceTask:
    """A fake task declaring exact_tv: the pick is the text length mod 4, every step exact."""

    name = "choice"
    max_new_tokens = 4
    description = "fake random-choice task"
    scorer = "random_choice"
    options = {"question_metric": "exact_tv", "chat": False}

    def load_docs(self, split="test", limit=None, data_dir=None):
        docs = [
            Doc(
                f"choice/{i}", "count " * (1 + i) + "now", None, {"template": "letter", "choices": ["0", "1", "2", "3"]}
            )
            for i in range(5)
        ]
        return docs[:limit] if limit else docs

    def score(self, doc, text):
        pick = str(len(text) % 5)  # "4" is off the set
        return Score(pick != "4", pick, {})


@pytest.fixture(scope="module")
def runs(tiny_lm, tmp_path_factory):
    engine = GenerationEngine(tiny_lm)
    out = tmp_path_factory.mktemp("rand-eval")
    strategies = [make_strategy("static", temperature=1.5, top_p=1.0), make_strategy("greedy")]
    return out, run_eval(engine, [ChoiceTask()], strategies, EvalSettings(k=4, seeds=[0], batch_size=4), out_dir=out)


def test_results_carry_the_declared_score(runs):
    out, results = runs
    hot = json.loads((out / "static-T1.5-p1" / "results.json").read_text())
    m, rows = hot["results"]["choice"], hot["per_question"]["choice"]
    samples = [json.loads(line) for line in (out / "static-T1.5-p1" / "samples_choice.jsonl").read_text().splitlines()]
    docs = {d.doc_id: d for d in ChoiceTask().load_docs()}
    for row in rows:
        mine = [Score(s["correct"], s["extracted"]) for s in samples if s["doc_id"] == row["doc_id"]]
        assert row["score"] == pytest.approx(aggregation.question_score(ChoiceTask(), docs[row["doc_id"]], mine))
        assert row["pass@1"] == sum(s.correct for s in mine) / 4  # kept alongside
    assert m["metric"] == "exact×(1−TV)" and m["score"] == pytest.approx(sum(r["score"] for r in rows) / len(rows))
    assert m["score_stderr"] is not None and "pass@1" in m
    assert hot["configs"]["choice"]["chat"] is False  # the task's own chat: false beats the run's chat=True
    # greedy: one pick per question over 4 options, so TV = ½(3/4 + 3·1/4) and score = pass@1 / 4
    for row in results["greedy"]["per_question"]["choice"]:
        assert row["score"] == pytest.approx(row["pass@1"] / 4)


def test_compare_and_grid_use_the_score(runs):
    _, results = runs
    hot, greedy = results["static(T=1.5, p=1)"], results["greedy"]
    # the checks below only tell score from pass@1 where they differ
    assert hot["results"]["choice"]["score"] != pytest.approx(hot["results"]["choice"]["pass@1"])
    (item,) = compare_results(hot, greedy, n_boot=200)
    assert item.metric == "exact×(1−TV)"
    assert item.comparison.mean_a == pytest.approx(hot["results"]["choice"]["score"])
    assert item.comparison.mean_b == pytest.approx(greedy["results"]["choice"]["score"])
    cell = CellScore.from_results(hot, "choice")
    assert cell.pass1 == pytest.approx(hot["results"]["choice"]["score"])
    assert cell.per_question == {r["doc_id"]: r["score"] for r in hot["per_question"]["choice"]}
    # an old results file without `score` falls back to pass@1
    old = json.loads(json.dumps(hot))
    for row in old["per_question"]["choice"]:
        del row["score"]
    for key in ("score", "score_stderr", "metric"):
        del old["results"]["choice"][key]
    assert CellScore.from_results(old, "choice").per_question == {
        r["doc_id"]: r["pass@1"] for r in old["per_question"]["choice"]
    }


def test_comparison_table_shows_the_task_metric():
    from autodeco_cli.grid.comparison import comparison_markdown

    row = {
        "name": "oracle",
        "decoding": "static(T=1, p=1)",
        "temperature": 1.0,
        "top_p": 1.0,
        "pass@1": 0.9,
        "pass@1_stderr": 0.01,
        "score": 0.25,
        "score_stderr": 0.02,
        "delta_vs_default": 0.0,
        "delta_se": None,
        "delta_ci": [0.0, 0.0],
    }
    text = comparison_markdown(
        {
            "benchmark": "rand-item",
            "model": "m",
            "n_questions": 3,
            "k": 8,
            "seeds": [0],
            "metric": "exact×(1−TV)",
            "rows": [row],
        }
    )
    assert "exact×(1−TV) ± SE" in text and "| 25.0 ± 2.0 |" in text and "90.0" not in text


def test_a_reworded_task_asks_the_same_sets_in_other_words():
    from autodeco_cli.tasks.registry import load_docs

    for name in ("rand-times", "rand-letter"):
        original, reworded = load_docs(name, "test", limit=20), load_docs(f"{name}-reworded", "test", limit=20)
        assert [d.gold for d in original] == [d.gold for d in reworded]  # same questions, same splits
        for a, b in zip(original, reworded):
            assert a.prompt.rstrip().splitlines()[-1] != b.prompt.rstrip().splitlines()[-1]
            assert "Pick a random" not in b.prompt  # the few-shot examples are reworded too
