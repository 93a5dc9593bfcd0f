"""The exact-pick training family (group `exact`): first-times and initial-word. Splits, prompts,
the rule each question names, and the scorer."""

from __future__ import annotations

import pytest

from autodeco_cli.tasks.registry import expand, get_task, task_chat, task_stop
from autodeco_cli.tasks.types import Doc

TASKS = ("first-times", "initial-word")
SPLITS = ("test", "validation", "train")


def _set_key(doc: Doc) -> str:
    return f"{','.join(sorted(doc.gold['choices']))}:{doc.gold['cue']}"


@pytest.mark.parametrize("name", TASKS)
def test_splits_share_no_set_and_are_deterministic(name):
    task = get_task(name)
    docs = {split: task.load_docs(split) for split in SPLITS}
    assert [len(docs[s]) for s in SPLITS] == [200, 300, 400]
    sets = {s: {_set_key(d) for d in ds} for s, ds in docs.items()}
    assert not sets["test"] & sets["validation"] and not sets["test"] & sets["train"]
    assert not sets["validation"] & sets["train"]
    assert len({d.doc_id for d in docs["train"]}) == 400  # no question twice
    again = task.load_docs("validation", limit=10)
    assert [(d.doc_id, d.prompt) for d in again] == [(d.doc_id, d.prompt) for d in docs["validation"][:10]]
    assert task_chat(task, True) is False and task_stop(task) == ["\n"]
    assert expand("exact") == list(TASKS)


@pytest.mark.parametrize("name", TASKS)
def test_the_shots_answer_their_own_questions_and_never_the_asked_one(name):
    task = get_task(name)
    train = task.load_docs("train")
    by_question = {d.prompt.rstrip("\n").rsplit("\n\n", 1)[1]: d for d in train}  # the shots come from here
    for doc in train[:40]:
        *shots, asked = doc.prompt.rstrip("\n").split("\n\n")
        assert len(shots) == 2 and "\n" not in asked
        for shot in shots:
            question, reply = shot.split("\n")
            assert question != asked  # a train question never reads its own answer
            assert task.score(by_question[question], reply).correct, shot


def test_the_named_option_is_the_target():
    first = get_task("first-times").load_docs("validation", limit=50)
    assert all(d.gold["target"] == d.gold["choices"][0] for d in first)
    assert {len(d.gold["choices"]) for d in first} == {2, 4, 8}
    for doc in get_task("initial-word").load_docs("validation", limit=50):
        initials = [w[0] for w in doc.gold["choices"]]
        assert len(set(initials)) == len(initials)  # the letter names exactly one word
        assert doc.gold["target"][0].upper() == doc.gold["cue"] and doc.gold["target"] in doc.gold["choices"]
        assert doc.prompt.endswith(f"starts with the letter {doc.gold['cue']}: {', '.join(doc.gold['choices'])}?\n")


FIRST = Doc("f", "", {"template": "first", "choices": ["7", "2", "9"], "cue": "3", "target": "7"}, {})
INITIAL = Doc("i", "", {"template": "initial", "choices": ["moon", "bell"], "cue": "B", "target": "bell"}, {})


@pytest.mark.parametrize(
    "doc, text, correct, extracted",
    [
        (FIRST, "7 x 3 = 21", True, "7"),
        (FIRST, " 7 × 3 = 21.\nTake the", True, "7"),
        (FIRST, "9 x 3 = 27", False, "9"),  # right product, a pick that is not the first
        (FIRST, "7 x 3 = 24", False, "7"),
        (FIRST, "7 x 2 = 14", False, "7"),  # another factor
        (FIRST, "seven", False, None),
        (FIRST, "", False, None),
        (INITIAL, "bell", True, "bell"),
        (INITIAL, "Bell.\nWhich", True, "bell"),
        (INITIAL, "moon", False, "moon"),
        (INITIAL, "bell bell", False, "bell bell"),
        (INITIAL, "", False, None),
    ],
)
def test_the_scorer(doc, text, correct, extracted):
    score = get_task("first-times" if doc is FIRST else "initial-word").score(doc, text)
    assert (score.correct, score.extracted) == (correct, extracted)
