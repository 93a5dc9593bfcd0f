"""Pooled per-token diagnostics: autodeco − each shuffled row, over several `autodeco diagnose` folders.

Each task weighs the same; differences are paired per question within a task and the CI is the
stratified bootstrap of `autodeco compare --row` (evaluation/suite.py). `--questions FROM:TO`
keeps the generated tasks' questions with index FROM..TO-1 (the number after `test/` in the
doc id), so questions another run already used can be left out: reports/per-token-confirmation.md.

Usage:
    python bench/pooled_diagnose.py runs/confirm-diagnose --tasks rand-times,rand-letter,rand-list --questions 100:200
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from autodeco_cli.evaluation.suite import paired_suite

ROWS = ("schedule-shuffle-across", "schedule-shuffle-within", "mean-shift")


def question_scores(folder: Path, task: str, prefix: str, first: int, stop: int) -> dict[str, float]:
    """{doc id: question score} of the one run folder under `folder` whose name starts with `prefix`."""
    (run,) = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(prefix)]
    rows = json.loads((run / "results.json").read_text())["per_question"][task]
    return {r["doc_id"]: r["score"] for r in rows if first <= _index(r["doc_id"]) < stop}


def _index(doc_id: str) -> int:
    """A generated task's question number: rand-list/test/17-... is 17."""
    return int(doc_id.rsplit("/", 1)[1].split("-", 1)[0])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="folder holding one diagnose folder per task")
    parser.add_argument("--tasks", default="rand-times,rand-letter,rand-list")
    parser.add_argument("--questions", default="0:1000000", help="FROM:TO question indices (default all)")
    args = parser.parse_args(argv)
    tasks = args.tasks.split(",")
    first, stop = (int(v) for v in args.questions.split(":"))
    auto = {t: question_scores(args.root / t, t, "autodeco", first, stop) for t in tasks}
    print(f"questions [{first}, {stop}) per task:", {t: len(v) for t, v in auto.items()})
    for row in ROWS:
        other = {t: question_scores(args.root / t, t, row, first, stop) for t in tasks}
        c = paired_suite(auto, other)
        per = ", ".join(f"{t} {c.per_task_delta[t]:+.3f} ± {c.per_task_se[t]:.3f}" for t in tasks)
        print(f"autodeco - {row}: pooled {c.delta:+.4f} ± {c.se:.4f} (95% CI {c.ci_low:+.4f}, {c.ci_high:+.4f}); {per}")


if __name__ == "__main__":
    main()
