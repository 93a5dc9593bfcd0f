"""On-policy training data, as the paper builds it: sample the frozen model k times per training
problem and keep the trajectories the benchmark's own scorer accepts.

Resumable: problems are processed in chunks; after each chunk its kept samples are appended to
the output and the chunk's problems to a `.progress` side file, so a killed run redoes at most
one chunk and never duplicates a line.

Tasks that declare a target distribution (`benchmarks.aggregation.target_support`: the rand-*
family) are re-balanced (`rebalance.py`): one kept sample per distinct pick per question, then,
once the task's last chunk is done, list positions capped across the task; a `balanced` record
in the progress file marks that pass as done.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import rebalance
from .benchmarks.aggregation import target_support
from .benchmarks.registry import expand, get_task, task_chat, task_stop
from .decoding import DecodingStrategy
from .generation import GenerationEngine, build_requests


@dataclass
class MakeDataReport:
    problems: int
    samples: int
    kept: int
    skipped_done: int
    per_task: dict


def progress_path(output: Path) -> Path:
    return output.with_name(output.name + ".progress")


def _done_problems(output: Path) -> set[tuple[str, str]]:
    done: set[tuple[str, str | None]] = set()
    path = progress_path(output)
    if not path.is_file():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill: that chunk is redone
        done.add((record["task"], record.get("doc_id")))  # doc_id None: the task's balanced marker
    return done


def make_on_policy_data(
    engine: GenerationEngine,
    tasks: str,
    output: Path,
    strategy: DecodingStrategy,
    *,
    k: int = 4,
    split: str = "train",
    limit: int | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
    chunk_problems: int = 32,
    chat: bool = True,
    balance: bool = True,
    on_chunk: Callable[[int, int, int], None] | None = None,
) -> MakeDataReport:
    output.parent.mkdir(parents=True, exist_ok=True)
    done = _done_problems(output)
    # Output lines without a progress record belong to a chunk that was cut short: drop them.
    _truncate_to_progress(output, done)
    report = MakeDataReport(0, 0, 0, 0, {})
    for task_name in expand(tasks):
        task = get_task(task_name)
        docs = task.load_docs(split=split, limit=limit)
        todo = [d for d in docs if (task_name, d.doc_id) not in done]
        report.skipped_done += len(docs) - len(todo)
        stats = report.per_task.setdefault(task_name, {"problems": len(docs), "samples": 0, "kept": 0})
        budget = max_new_tokens or task.max_new_tokens
        chat_here = task_chat(task, chat)
        balanced = balance and target_support(task, docs[0]) is not None
        for start in range(0, len(todo), chunk_problems):
            chunk = todo[start : start + chunk_problems]
            requests = build_requests(engine.tokenizer, [d.prompt for d in chunk], strategy, n=k, seed=seed, chat=chat_here, prompt_ids=[d.doc_id for d in chunk])
            generations = engine.generate(requests, max_new_tokens=budget, batch_size=batch_size, stop=task_stop(task))
            kept = _kept_records(task, task_name, {d.doc_id: d for d in chunk}, generations, chat_here, balanced)
            kept_lines = [json.dumps(r, ensure_ascii=False) for r in kept]
            _append(output, kept_lines)
            _append(progress_path(output), [json.dumps({"task": task_name, "doc_id": d.doc_id}) for d in chunk])
            report.problems += len(chunk)
            report.samples += len(generations)
            report.kept += len(kept_lines)
            stats["samples"] += len(generations)
            stats["kept"] += len(kept_lines)
            if on_chunk is not None:
                on_chunk(len(chunk), len(generations), sum(len(g.token_ids) for g in generations))
        if balanced and (task_name, None) not in done:
            stats["dropped_by_balance"] = _balance_task(output, task_name, seed)
            report.kept -= stats["dropped_by_balance"]
    return report


def _kept_records(task, task_name: str, by_id: dict, generations, chat: bool, balanced: bool) -> list[dict]:
    """Records of the samples the scorer accepts; one per distinct pick per question if balanced."""
    per_doc: dict[str, list[dict]] = {}
    for g in generations:
        doc_id, sample = g.key
        doc = by_id[doc_id]
        score = task.score(doc, g.text)
        # a truncated trajectory is not a demonstration, even if its prefix scores
        if g.finish_reason != "stop" or not score.correct:
            continue
        prompt = [{"role": "user", "content": doc.prompt}] if chat else doc.prompt
        record = {"prompt": prompt, "completion": g.text, "task": task_name, "doc_id": doc_id, "sample": sample}
        if balanced:
            support = target_support(task, doc)
            record.update({"choice": score.extracted, "choice_position": support.index(score.extracted), "n_choices": len(support)})
        per_doc.setdefault(doc_id, []).append(record)
    if balanced:
        per_doc = {doc_id: rebalance.one_per_value(records) for doc_id, records in per_doc.items()}
    return [r for records in per_doc.values() for r in records]


def _balance_task(output: Path, task_name: str, seed: int) -> int:
    """Cap list positions across the task's records in the output; returns how many were dropped."""
    lines = output.read_text(encoding="utf-8").splitlines() if output.is_file() else []
    records = [json.loads(line) for line in lines]
    mine = [r for r in records if r.get("task") == task_name]
    keep = {id(r) for r in rebalance.balance_positions(mine, seed)}
    out = [line for line, r in zip(lines, records) if r.get("task") != task_name or id(r) in keep]
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in out), encoding="utf-8")
    tmp.replace(output)
    _append(progress_path(output), [json.dumps({"task": task_name, "doc_id": None, "balanced": True})])
    return len(mine) - len(keep)


def _append(path: Path, lines: list[str]) -> None:
    if not lines:
        path.touch()
        return
    with path.open("a", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
        handle.flush()


def _truncate_to_progress(output: Path, done: set[tuple[str, str]]) -> None:
    if not output.is_file():
        return
    kept = []
    for line in output.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if (record.get("task"), record.get("doc_id")) in done:
            kept.append(line)
    output.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
