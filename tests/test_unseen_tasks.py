"""The unseen task families (group `unseen`): ticket-add (draw from a range, then add),
record-field (copy one field out of a record) and count-words (count a list). Generators, splits,
prompts, scorers, listing."""

from __future__ import annotations

import json

import pytest

from autodeco_cli.tasks import aggregation, record_lookup, ticket_draw
from autodeco_cli.tasks.registry import expand, get_task, task_chat, task_stop
from autodeco_cli.tasks.types import Doc, Score

TASKS = ("ticket-add", "record-field", "count-words")
SPLITS = ("test", "validation", "train")


def _question_key(task: str, doc: Doc) -> str:
    if task == "ticket-add":
        return f"{doc.gold['low']}-{doc.gold['high']}+{doc.gold['addend']}"
    if task == "count-words":
        return ",".join(doc.gold["words"])
    return f"{doc.meta['record']}?{doc.meta['asked']}"


@pytest.mark.parametrize("name", TASKS)
def test_splits_are_disjoint_sized_and_deterministic(name):
    task = get_task(name)
    docs = {split: task.load_docs(split) for split in SPLITS}
    assert [len(docs[s]) for s in SPLITS] == [200, 100, 400]
    keys = {s: {_question_key(name, d) for d in ds} for s, ds in docs.items()}
    assert all(len(keys[s]) == len(docs[s]) for s in SPLITS)  # no repeated question
    assert not keys["test"] & keys["validation"] and not keys["test"] & keys["train"]
    assert not keys["validation"] & keys["train"]
    again = task.load_docs("test", limit=20)
    assert [(d.doc_id, d.prompt, d.gold) for d in again] == [(d.doc_id, d.prompt, d.gold) for d in docs["test"][:20]]
    assert len({d.doc_id for d in docs["test"]}) == 200
    # two solved shots, then the question, as raw completion text cut at the first newline
    doc = docs["test"][0]
    assert doc.prompt.count("\n\n") == 2 and doc.prompt.endswith(".\n" if name == "ticket-add" else "?\n")
    assert task_chat(task, True) is False and task_stop(task) == ["\n"]


def test_the_family_is_its_own_group_outside_training_groups():
    assert expand("unseen") == ["count-words", "record-field", "ticket-add"]
    for trained in ("rand", "arith", "small", "exact"):
        assert not set(expand(trained)) & set(TASKS)


def test_ticket_questions_stay_in_one_decade_and_state_the_range():
    docs = get_task("ticket-add").load_docs("validation")
    assert {d.gold["high"] - d.gold["low"] + 1 for d in docs} == {2, 4, 8}
    assert all(d.gold["low"] // 10 == d.gold["high"] // 10 and d.gold["low"] >= 10 for d in docs)
    doc = docs[0]
    assert f"Tickets numbered {doc.gold['low']} to {doc.gold['high']} are in a hat" in doc.prompt.splitlines()[-1]
    assert doc.meta["choices"] == [str(v) for v in range(doc.gold["low"], doc.gold["high"] + 1)]
    assert aggregation.metric_name(get_task("ticket-add")) == "exact×(1−TV)"
    assert aggregation.metric_name(get_task("record-field")) == "pass@1"


TICKET = Doc(
    "t",
    "",
    {"low": 23, "high": 26, "addend": 7},
    {"low": 23, "high": 26, "addend": 7, "choices": ["23", "24", "25", "26"]},
)


@pytest.mark.parametrize(
    "text, correct, extracted, exact, valid",
    [
        ("24 + 7 = 31", True, "24", 1.0, 1.0),
        ("26 + 7 = 33.\n\nTickets numbered", True, "26", 1.0, 1.0),
        (" 23+7=30 ", True, "23", 1.0, 1.0),
        ("24 + 7 = 21", False, "24", 0.0, 1.0),  # the carry dropped: the pick still counts
        ("24 + 6 = 30", False, "24", 0.0, 1.0),  # another addend
        ("27 + 7 = 34", False, "27", 1.0, 0.0),  # right sum, pick outside the range
        ("I drew 24", False, None, 0.0, 0.0),
        ("", False, None, 0.0, 0.0),
        ("9" * 5000 + " + 7 = 1", False, None, 0.0, 0.0),  # a huge digit run never reaches int()
    ],
)
def test_ticket_scorer(text, correct, extracted, exact, valid):
    score = ticket_draw.score_ticket(TICKET, text)
    assert (score.correct, score.extracted) == (correct, extracted)
    assert score.metrics == {"exact_step": exact, "valid_choice": valid}


def test_ticket_question_metric_rewards_a_uniform_pick():
    task = get_task("ticket-add")
    uniform = [Score(True, v, {}) for v in TICKET.meta["choices"]]
    favourite = [Score(True, "24", {}) for _ in range(4)]
    assert aggregation.question_score(task, TICKET, uniform) == 1.0
    assert aggregation.question_score(task, TICKET, favourite) == pytest.approx(0.25)


RECORD = Doc("r", "", "K7Q-204", {"asked": "code", "record": "name: Maria; code: K7Q-204; year: 1987"})


@pytest.mark.parametrize(
    "text, correct, extracted",
    [
        ("K7Q-204", True, "K7Q-204"),
        ("  K7Q-204.\nRecord: name", True, "K7Q-204"),
        ('"K7Q-204"', True, "K7Q-204"),
        ("k7q-204", False, "k7q-204"),  # case counts: the task is an exact copy
        ("K7Q-204 (the code)", False, "K7Q-204 (the code)"),
        ("1987", False, "1987"),  # another field
        ("", False, None),
        ("\n\n", False, None),
    ],
)
def test_record_scorer(text, correct, extracted):
    score = record_lookup.score_record(RECORD, text)
    assert (score.correct, score.extracted) == (correct, extracted)


def test_record_answers_are_in_their_record_and_fields_vary():
    docs = get_task("record-field").load_docs("validation")
    assert all(f"{d.meta['asked']}: {d.gold}" in d.meta["record"] for d in docs)
    assert all(d.prompt.rstrip("\n").endswith(f"What is the {d.meta['asked']}?") for d in docs)
    assert {d.meta["asked"] for d in docs} == set(record_lookup.FIELDS)
    assert {d.meta["record"].count(";") + 1 for d in docs} == {3, 4, 5}


def test_the_solved_shots_answer_their_own_questions():
    for name in TASKS:
        task = get_task(name)
        doc = task.load_docs("test", limit=1)[0]
        shots = doc.prompt.split("\n\n")[:2]
        for shot in shots:
            question, reply = shot.rsplit("\n", 1)
            fake = _doc_from_shot(name, question)
            assert task.score(fake, reply).correct, shot


def _doc_from_shot(name: str, question: str) -> Doc:
    if name == "ticket-add":
        words = question.split()
        low, high, addend = int(words[2]), int(words[4]), int(words[-4])
        gold = {"low": low, "high": high, "addend": addend}
        return Doc("s", "", gold, {**gold, "choices": [str(v) for v in range(low, high + 1)]})
    if name == "count-words":
        words = question.split(": ", 1)[1].rstrip("?").split(", ")
        return Doc("s", "", {"words": words, "count": len(words)}, {})
    record = question.split("\n")[0].removeprefix("Record: ")
    asked = question.split("What is the ")[1].rstrip("?")
    return Doc("s", "", dict(part.split(": ") for part in record.split("; "))[asked], {})


def test_tasks_command_lists_them_with_sizes(cli):
    code, out, err = cli("tasks", "unseen", "--json")
    assert code == 0, err
    rows = {row["name"]: row for row in map(json.loads, out.strip().splitlines())}
    assert set(rows) == set(TASKS)
    for name in TASKS:
        assert rows[name]["splits"] == {"test": 200, "validation": 100, "train": 400}
        assert rows[name]["source"].startswith("generated")
    assert rows["ticket-add"]["metric"] == "exact×(1−TV)" and rows["record-field"]["metric"] == "pass@1"
