"""On-policy training data, as the paper builds it: sample the frozen model k times per training
problem and keep the trajectories the benchmark's own scorer accepts.

Resumable, with the eval runner's store (`run_store`): problems are processed in chunks; after
each chunk its kept samples are appended to the output and the chunk's problems to the
`.progress` log, so a killed run redoes at most one chunk and never duplicates a line. The
settings the samples were made with are claimed in `.settings.json`, as eval's run_config.json.

Tasks that declare a target distribution (`benchmarks.aggregation.target_support`: the rand-*
family) are re-balanced (`rebalance.py`): one kept sample per distinct pick per question, then,
once the task's last chunk is done, list positions capped across the task; a `balanced` record
in the progress log marks that pass as done.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..core.decoding import DecodingStrategy
from ..core.prompt_format import PLAIN, PromptFormat
from ..engine.interface import Engine
from ..engine.requests import build_requests
from ..evaluation.run_store import SampleLog, claim_settings, setting_changes, write_json
from ..evaluation.runner import check_budget, engine_info
from ..tasks.aggregation import target_support
from ..tasks.registry import expand, get_task, task_chat, task_stop
from . import rebalance


@dataclass
class MakeDataReport:
    problems: int
    samples: int
    kept: int
    skipped_done: int
    per_task: dict


def progress_path(output: Path) -> Path:
    return output.with_name(output.name + ".progress")


def settings_path(output: Path) -> Path:
    return output.with_name(output.name + ".settings.json")


def _problem_key(record: dict) -> tuple[str, str | None]:
    # a progress record: one finished problem, or (doc_id None) the task's balanced marker
    return (record["task"], record.get("doc_id"))


def _claim_output(output: Path, settings: dict) -> None:
    """Refuse to append samples made with other sampling settings to an existing output; record ours.

    Tasks and --limit may change between runs (that extends the data); how samples are made may not.
    """
    hint = (
        f"use another --output, or delete {output} and its {progress_path(output).suffix} and .settings.json files "
        "to start over"
    )
    started = output.is_file() or progress_path(output).is_file()
    changes = lambda previous: setting_changes(previous, settings)  # noqa: E731
    claim_settings(
        settings_path(output), changes, holder=output, hint=hint, started=started, what="make-data settings file"
    )
    write_json(settings_path(output), settings)


@dataclass
class _Logs:
    """The output (kept samples) and the progress log (finished problems) of one make-data run."""

    data: SampleLog
    progress: SampleLog

    @classmethod
    def open(cls, output: Path) -> "_Logs":
        # lenient: files from before these were logs could hold a line glued onto a cut one
        logs = cls(
            SampleLog(output, key=None, strict=False), SampleLog(progress_path(output), _problem_key, strict=False)
        )
        # Output lines without a progress record belong to a chunk that was cut short: drop them.
        if output.is_file():
            done = logs.progress.records
            logs.data.rewrite(r for r in logs.data.records.values() if (r.get("task"), r.get("doc_id")) in done)
        return logs

    def close(self) -> None:
        self.data.close()
        self.progress.close()


def make_on_policy_data(
    engine: Engine,
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
    # every task's problems first: a budget the model's context cannot hold fails before anything is written
    task_docs = [(name, get_task(name)) for name in expand(tasks)]
    task_docs = [(name, task, task.load_docs(split=split, limit=limit)) for name, task in task_docs]
    for _, task, docs in task_docs:
        check_budget(engine, task, docs, max_new_tokens or task.max_new_tokens, chat)
    output.parent.mkdir(parents=True, exist_ok=True)
    settings = {
        "model": engine.lm.name,
        "decoding": strategy.to_dict(),
        "k": k,
        "seed": seed,
        "split": split,
        "max_new_tokens": max_new_tokens,
        "chat": chat,
        "balance": balance,
        **engine_info(engine),
    }
    _claim_output(output, settings)
    logs = _Logs.open(output)
    report = MakeDataReport(0, 0, 0, 0, {})
    sampling = {"k": k, "seed": seed, "batch_size": batch_size, "chat": chat, "max_new_tokens": max_new_tokens}
    try:
        for task_name, task, docs in task_docs:
            todo = [d for d in docs if (task_name, d.doc_id) not in logs.progress.records]
            report.skipped_done += len(docs) - len(todo)
            stats = report.per_task.setdefault(task_name, {"problems": len(docs), "samples": 0, "kept": 0})
            balanced = balance and target_support(task, docs[0]) is not None
            for start in range(0, len(todo), chunk_problems):
                chunk = todo[start : start + chunk_problems]
                n_samples, n_kept, n_tokens = _make_chunk(
                    engine, task, task_name, chunk, strategy, sampling, balanced, logs
                )
                report.problems += len(chunk)
                report.samples += n_samples
                report.kept += n_kept
                stats["samples"] += n_samples
                stats["kept"] += n_kept
                if on_chunk is not None:
                    on_chunk(len(chunk), n_samples, n_tokens)
            if balanced and (task_name, None) not in logs.progress.records:
                stats["dropped_by_balance"] = _balance_task(logs, task_name, seed)
                report.kept -= stats["dropped_by_balance"]
    finally:
        logs.close()
    return report


def _make_chunk(
    engine: Engine,
    task,
    task_name: str,
    chunk: list,
    strategy: DecodingStrategy,
    sampling: dict,
    balanced: bool,
    logs: _Logs,
):
    """Sample one chunk of problems, keep what the scorer accepts, log it; (samples, kept, tokens)."""
    fmt = engine.prompt_format
    chat = task_chat(task, sampling["chat"])
    requests = build_requests(
        engine.tokenizer,
        [d.prompt for d in chunk],
        strategy,
        n=sampling["k"],
        seed=sampling["seed"],
        chat=chat,
        prompt_ids=[d.doc_id for d in chunk],
        fmt=fmt,
    )
    budget = sampling["max_new_tokens"] or task.max_new_tokens
    generations = engine.generate(
        requests, max_new_tokens=budget, batch_size=sampling["batch_size"], stop=task_stop(task)
    )
    kept = _kept_records(task, task_name, {d.doc_id: d for d in chunk}, generations, chat, balanced, fmt)
    # samples first: a kill between the two appends leaves samples without progress, dropped on resume
    logs.data.append(kept)
    logs.progress.append({"task": task_name, "doc_id": d.doc_id} for d in chunk)
    return len(generations), len(kept), sum(len(g.token_ids) for g in generations)


def _kept_records(
    task: Any, task_name: str, by_id: dict, generations, chat: bool, balanced: bool, fmt: PromptFormat = PLAIN
) -> list[dict]:
    """Records of the samples the scorer accepts; one per distinct pick per question if balanced."""
    per_doc: dict[str, list[dict]] = {}
    for g in generations:
        doc_id, sample = g.key
        doc = by_id[doc_id]
        score = task.score(doc, g.text)
        # a truncated trajectory is not a demonstration, even if its prefix scores
        if g.finish_reason != "stop" or not score.correct:
            continue
        prompt = fmt.messages(doc.prompt) if chat else doc.prompt  # training sees what generation saw
        record = {"prompt": prompt, "completion": g.text, "task": task_name, "doc_id": doc_id, "sample": sample}
        if balanced:
            support = target_support(task, doc)
            record.update(
                {
                    "choice": score.extracted,
                    "choice_position": support.index(score.extracted),
                    "n_choices": len(support),
                }
            )
        per_doc.setdefault(doc_id, []).append(record)
    if balanced:
        per_doc = {doc_id: rebalance.one_per_value(records) for doc_id, records in per_doc.items()}
    return [r for records in per_doc.values() for r in records]


def _balance_task(logs: _Logs, task_name: str, seed: int) -> int:
    """Cap list positions across the task's records in the output; returns how many were dropped."""
    records = list(logs.data.records.values())
    mine = [r for r in records if r.get("task") == task_name]
    keep = {id(r) for r in rebalance.balance_positions(mine, seed)}
    logs.data.rewrite(r for r in records if r.get("task") != task_name or id(r) in keep)
    logs.progress.append([{"task": task_name, "doc_id": None, "balanced": True}])
    return len(mine) - len(keep)
