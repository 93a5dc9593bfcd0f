"""The eval runner: benchmarks x decoding strategies on one loaded engine, resumable.

A run writes one folder per strategy, so a grid of static (T, p) cells is a set of folders:

    OUT/<slug>/samples_<task>.jsonl   one line per sample, appended as soon as its batch is scored
    OUT/<slug>/run_config.json        what the samples were generated with (the resume guard)
    OUT/<slug>/results.json           lm-evaluation-harness-style summary + per-question scores

Why resuming is exact: a sample's tokens depend only on its request seed (run seed, task,
doc id, sample index; see `engine/requests.py`), never on its batch-mates or on which strategies
share a call. Regenerating just the missing samples therefore reproduces an uninterrupted run,
and strategies can share batches (a grid's cells fill each other's rows) without changing
any of them.

This module plans, generates and writes results. The files are `run_store`'s, the numbers
`eval_metrics`'s, reading back and tables `eval_report`'s; what differs per task (aggregation,
voting, labels) the task declares (`benchmarks.registry`).
"""

from __future__ import annotations

import functools
import json
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..core.decoding import DecodingStrategy, strategy_slug
from ..core.errors import UserError
from ..core.io_checks import check_task_budget
from ..engine.interface import Engine
from ..engine.requests import Generation, Request, Schedule, batch_order_key, encode_prompt, request_seed
from ..tasks.registry import judge_fields, task_chat, task_label, task_stop, task_version

# Names that lived here before the split; other modules and tests import them from here.
from .metrics import task_metrics
from .question_scores import per_question_rows, score_metrics
from .run_store import RESULTS_FILE, RUN_CONFIG_FILE, SampleLog, claim_settings, samples_path, write_json
from .settings import EvalSettings, check_run_settings

# engine.generate keeps every Generation of a call in memory (traces included), so long runs
# are fed to it in slices of this many batches' worth of requests, cut from the engine's own
# sort order: a prompt's requests stay together (one prefill) except at a slice edge.
BATCHES_PER_CALL = 32
# A schedule strategy's schedules, one per sample: (task, doc id, seed, sample index) -> Schedule.
Schedules = Mapping[tuple[str, str, int, int], Schedule]
# run_config fields that must match to resume into a folder (device may differ).
IDENTITY_FIELDS = (
    "model",
    "heads",
    "heads_sha256",
    "adapter",
    "dtype",
    "chat",
    "decoding",
    "engine",
    "system_prompt",
    "chat_template_kwargs",
)
# what a run folder written before a field existed meant by it
IDENTITY_DEFAULTS = {"engine": "hf"}


# ---------------------------------------------------------------------------
# Plans: what each strategy samples
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StrategyPlan:
    """A strategy with its sample budget: k samples for each seed, per question."""

    strategy: DecodingStrategy
    slug: str
    k: int
    seeds: tuple[int, ...]
    collapsed: bool = False  # greedy: k and seeds reduced to one sample

    @property
    def samples_per_question(self) -> int:
        return self.k * len(self.seeds)

    def sample_ids(self) -> list[tuple[int, int]]:
        """(seed, sample index) pairs, seed-major: the order stats' maj@k reads "first k" in."""
        return [(seed, sample) for seed in self.seeds for sample in range(self.k)]


def plan_strategies(strategies: Sequence[DecodingStrategy], k: int, seeds: Sequence[int]) -> list[StrategyPlan]:
    check_run_settings(k, seeds, batch_size=1)
    seeds = tuple(int(s) for s in seeds)
    if not strategies:
        raise UserError("no decoding strategy given")
    plans, seen = [], {}
    for strategy in strategies:
        slug = strategy_slug(strategy)
        if slug in seen:
            raise UserError(
                f"strategies {seen[slug].label!r} and {strategy.label!r} share the output folder {slug!r}",
                "drop the duplicate",
            )
        seen[slug] = strategy
        if strategy.is_greedy:
            # Greedy is deterministic: more samples or seeds would only repeat the same text.
            plans.append(StrategyPlan(strategy, slug, 1, seeds[:1], collapsed=(k, len(seeds)) != (1, 1)))
        else:
            plans.append(StrategyPlan(strategy, slug, k, seeds))
    return plans


def parse_seeds(value: str) -> list[int]:
    """'8' -> seeds 0..7; '3,7,11' -> exactly those seeds."""
    text = value.strip()
    try:
        if "," in text:
            return [int(part) for part in text.split(",") if part.strip()]
        count = int(text)
    except ValueError:
        raise UserError(
            f"--seeds {value!r} is neither a count nor a comma list of seeds", "e.g. --seeds 8 or --seeds 0,1,2"
        ) from None
    if count < 1:
        raise UserError(f"--seeds {count}: need at least one seed")
    return list(range(count))


# ---------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------


@dataclass
class TaskRun:
    task: Any  # benchmarks.registry.Task or anything with name/max_new_tokens/load_docs/score
    docs: list
    max_new_tokens: int
    split: str = "test"

    @property
    def name(self) -> str:
        return self.task.name


def resolve_tasks(task_names: str | Sequence[Any]) -> list[Any]:
    """Names, comma lists and groups through the registry; Task objects pass through."""
    from ..tasks import registry

    items = [task_names] if isinstance(task_names, str) else list(task_names)
    tasks = []
    for item in items:
        if isinstance(item, str):
            tasks.extend(registry.get_task(name) for name in registry.expand(item))
        else:
            tasks.append(item)
    return _unique_tasks(tasks)


def _unique_tasks(tasks: list[Any]) -> list[Any]:
    seen, out = set(), []
    for task in tasks:
        if task.name not in seen:
            seen.add(task.name)
            out.append(task)
    return out


def prepare_task(
    task: Any,
    limit: int | None,
    max_new_tokens: int | None,
    data_dir,
    split: str = "test",
    doc_ids: Sequence[str] | None = None,
) -> TaskRun:
    """The task's docs (the first `limit`, then only `doc_ids` if given, in the task's order)."""
    docs = task.load_docs(split=split, limit=limit, data_dir=data_dir)
    if doc_ids is not None:
        wanted = {str(d) for d in doc_ids}
        docs = [doc for doc in docs if str(doc.doc_id) in wanted]
    if not docs:
        raise UserError(
            f"task {task.name} has no {split} documents"
            + (" among the questions asked for" if doc_ids is not None else "")
        )
    # Fail before hours of generation, not after the first batch, when a scorer's optional
    # dependencies (IFEval's lm-eval, the code sandbox) are missing.
    task.score(docs[0], "")
    return TaskRun(task, docs, max_new_tokens or task.max_new_tokens, split)


def check_budget(engine: Engine, task: Any, docs: Sequence[Any], budget: int, chat: bool) -> None:
    """Fail before any generation when the longest prompt plus `budget` overruns the model's
    context (a task's default budget is not checked anywhere else). A budget equal to the task's
    own counts as its default: grid-search passes the resolved budget on explicitly."""
    config = engine.lm.config
    if not isinstance(getattr(config, "max_position_embeddings", None), int):
        return  # nothing to check against: skip encoding the prompts
    chat = task_chat(task, chat)
    longest = max(
        (len(encode_prompt(engine.tokenizer, doc.prompt, chat, engine.prompt_format)) for doc in docs), default=0
    )
    check_task_budget(task.name, budget, budget == task.max_new_tokens, config, longest)


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


@dataclass
class _RunState:
    engine: Engine
    plans: list[StrategyPlan]
    logs: dict[tuple[str, str], SampleLog]
    progress: Any
    settings: EvalSettings
    schedules: Mapping[DecodingStrategy, Schedules]
    keep_trace: bool


def run_eval(
    engine: Engine,
    task_names: str | Sequence[Any],
    strategies: Sequence[DecodingStrategy],
    settings: EvalSettings | None = None,
    *,
    out_dir: str | Path,
    progress: Any = None,
    run_info: dict | None = None,
    doc_ids: Sequence[str] | None = None,
    schedules: Mapping[DecodingStrategy, Schedules] | None = None,
    keep_trace: bool = False,
) -> dict[str, dict]:
    """Evaluate every strategy on every task; returns {strategy label: results dict}.

    All strategies' requests for a task go to the engine together, so a grid of static cells
    shares batches. Greedy strategies are collapsed to one sample per question (first seed).
    `progress` is an optional started rich Progress (see `progress.progress_bar`); `run_info`
    (model, heads, adapter, dtype, device) is recorded and guards resuming into `out_dir`.
    `doc_ids` restricts every task to those questions (grid-search's early-stopping rounds):
    same task name, so the same sample files and request seeds as the full run. Without
    `settings`, one sample per question (k=1, seed 0) at each task's own budget.
    A schedule strategy (`core.decoding.schedule_strategy`) needs its `schedules`, one per sample
    it draws. `keep_trace` writes each head strategy's per-token T̂, P̂ and token into its sample
    records (`trace`; `autodeco diagnose` reads them), at some 50 bytes a token.
    """
    settings = EvalSettings() if settings is None else settings
    settings.check()
    out_dir = Path(out_dir)
    plans = plan_strategies(strategies, settings.k, settings.seeds)
    task_runs = [
        prepare_task(task, settings.limit, settings.max_new_tokens, settings.data_dir, settings.split, doc_ids)
        for task in resolve_tasks(task_names)
    ]
    for run in task_runs:
        check_budget(engine, run.task, run.docs, run.max_new_tokens, settings.chat)
    info = {
        "model": engine.lm.name,
        "heads": None,
        **engine_info(engine),
        **(run_info or {}),
        "chat": settings.chat,
        "heads_sha256": heads_fingerprint(engine),
    }
    for plan in plans:
        _claim_folder(out_dir / plan.slug, plan, task_runs, info)
    logs = {
        (plan.slug, run.name): SampleLog(samples_path(out_dir, plan.slug, run.name))
        for plan in plans
        for run in task_runs
    }
    state = _RunState(engine, plans, logs, progress, settings, dict(schedules or {}), keep_trace)
    try:
        for run in task_runs:
            _generate_task(state, run)
    finally:
        for log in logs.values():
            log.close()
    recorded = {
        "k": settings.k,
        "seeds": list(settings.seeds),
        "limit": settings.limit,
        "batch_size": settings.batch_size,
        "chat": settings.chat,
        "split": settings.split,
    }
    results = {}
    for plan in plans:
        results[plan.strategy.label] = build_results(plan, task_runs, logs, info, recorded)
        write_results(out_dir / plan.slug / RESULTS_FILE, results[plan.strategy.label])
    return results


def engine_info(engine: Engine) -> dict:
    """Which engine generated, in which base dtype (as resolved: no --dtype is "auto", which means
    bf16 or fp32 by machine), and the prompt format it rendered chat prompts with."""
    return {"engine": engine.name, "dtype": engine.dtype, **engine.prompt_format.record()}


def heads_fingerprint(engine: Engine) -> str | None:
    """A hash of the heads' weights: retrained heads saved to the same path are other heads."""
    from ..core.heads import heads_digest  # torch: the CLI's checks before the model loads need none

    return None if engine.heads is None else heads_digest(engine.heads)


def plan_info(plan: StrategyPlan, info: dict) -> dict:
    """The run info as it concerns one strategy: heads only matter to head strategies."""
    if plan.strategy.uses_heads:
        return dict(info)
    return {**info, "heads": None, "heads_sha256": None}


def _claim_folder(folder: Path, plan: StrategyPlan, task_runs: list[TaskRun], info: dict) -> None:
    """Refuse to mix samples made with another model/heads/budget into a folder; record ours."""
    info = plan_info(plan, info)
    identity = {name: info.get(name) for name in IDENTITY_FIELDS if name != "decoding"}
    identity["decoding"] = plan.strategy.to_dict()
    # split: one results.json holds one split per task, so a folder never mixes them
    tasks = {
        run.name: {"max_new_tokens": run.max_new_tokens, "version": task_version(run.task), "split": run.split}
        for run in task_runs
    }

    def changes(previous: dict) -> list[str]:
        # folders made before the dtype was recorded resolved say "auto" (commands) or nothing
        # (studies), which then meant fp32 on CPU and bf16 on CUDA
        if previous.get("dtype") in ("auto", None) and identity.get("dtype") == (
            "bfloat16" if str(info.get("device", "")).startswith("cuda") else "float32"
        ):
            previous = {**previous, "dtype": identity["dtype"]}
        # a task the folder has not seen yet, or a field it did not record, is no change
        changed = [
            _dtype_change(previous.get(name), identity.get(name)) if name == "dtype" else name
            for name in IDENTITY_FIELDS
            if previous.get(name, IDENTITY_DEFAULTS.get(name)) != identity.get(name)
        ]
        before = previous.get("tasks", {})
        return changed + [
            f"{name}: {field_}"
            for name, spec in tasks.items()
            for field_, value in spec.items()
            if before.get(name, {}).get(field_, value) != value
        ]

    path = folder / RUN_CONFIG_FILE
    hint = "use another --output-dir, or delete that folder to start over"
    previous = claim_settings(path, changes, holder=folder, hint=hint)
    write_json(path, {**identity, "tasks": {**previous.get("tasks", {}), **tasks}})


def _dtype_change(recorded: str | None, now: str | None) -> str:
    # no --dtype resolves by machine, so a folder begun in fp32 meets bf16 on a CPU with native bf16
    resume = f", resume with --dtype {recorded}" if recorded in ("float32", "bfloat16", "float16") else ""
    return f"dtype {recorded} -> {now}{resume}"


def _pending_requests(state: _RunState, run: TaskRun) -> tuple[list[Request], int]:
    """Requests not yet in any sample log, and how many are already done."""
    chat = task_chat(run.task, state.settings.chat)
    fmt = state.engine.prompt_format
    prompts = [encode_prompt(state.engine.tokenizer, doc.prompt, chat, fmt) for doc in run.docs]
    pending, done = [], 0
    for plan_index, plan in enumerate(state.plans):
        log = state.logs[plan.slug, run.name]
        for doc_index, doc in enumerate(run.docs):
            for seed, sample in plan.sample_ids():
                if (doc.doc_id, seed, sample) in log.records:
                    done += 1
                    continue
                pending.append(
                    Request(
                        key=(plan_index, doc_index, seed, sample),
                        input_ids=prompts[doc_index],
                        strategy=plan.strategy,
                        # The strategy is left out on purpose: every strategy then draws with
                        # the same random numbers per sample, which sharpens paired comparisons.
                        seed=request_seed(seed, run.name, doc.doc_id, sample),
                        schedule=_schedule(state, plan, run, (str(doc.doc_id), seed, sample)),
                    )
                )
    return pending, done


def _schedule(state: _RunState, plan: StrategyPlan, run: TaskRun, sample: tuple[str, int, int]) -> Schedule | None:
    if not plan.strategy.uses_schedule:
        return None
    schedule = state.schedules.get(plan.strategy, {}).get((run.name, *sample))
    if schedule is None:
        raise ValueError(f"{plan.strategy.label}: no schedule for {run.name} sample {sample}")
    return schedule


def _generate_task(state: _RunState, run: TaskRun) -> None:
    pending, done = _pending_requests(state, run)
    bar = None
    if state.progress is not None:
        bar = state.progress.add_task(run.name, total=done + len(pending), completed=done, tokens=0)
    task_tokens = 0

    def record_batch(generations: list[Generation]) -> None:
        nonlocal task_tokens
        by_plan: dict[str, list[dict]] = defaultdict(list)
        for generation in generations:
            plan_index, doc_index, seed, sample = generation.key
            plan = state.plans[plan_index]
            record = sample_record(run, run.docs[doc_index], seed, sample, generation, state.keep_trace)
            by_plan[plan.slug].append(record)
        for slug, records in by_plan.items():
            state.logs[slug, run.name].append(records)
        task_tokens += sum(len(g.token_ids) for g in generations)
        if bar is not None:
            state.progress.update(bar, advance=len(generations), tokens=task_tokens)

    for traced, group in _trace_groups(pending):
        for chunk in _engine_slices(group, state.settings.batch_size):
            state.engine.generate(
                chunk,
                max_new_tokens=run.max_new_tokens,
                batch_size=state.settings.batch_size,
                stop=task_stop(run.task),
                trace=traced,
                on_batch_done=record_batch,
            )


def _trace_groups(requests: list[Request]) -> list[tuple[bool, list[Request]]]:
    """Head strategies need the per-token trace (for mean T̂/P̂); the engine traces a whole
    call, so they get their own call and every other strategy skips the trace cost."""
    traced = [r for r in requests if r.strategy.uses_heads]
    plain = [r for r in requests if not r.strategy.uses_heads]
    return [(flag, group) for flag, group in ((True, traced), (False, plain)) if group]


def _engine_slices(requests: list[Request], batch_size: int) -> list[list[Request]]:
    # the engine's own order, so each slice is a run of whole prompts (see BATCHES_PER_CALL)
    ordered = sorted(requests, key=batch_order_key)
    step = batch_size * BATCHES_PER_CALL
    return [ordered[start : start + step] for start in range(0, len(ordered), step)]


def sample_record(
    run: TaskRun, doc: Any, seed: int, sample: int, generation: Generation, keep_trace: bool = False
) -> dict:
    score = run.task.score(doc, generation.text)
    record = {
        "task": run.name,
        "doc_id": doc.doc_id,
        "seed": seed,
        "sample": sample,
        "decoding": generation.strategy.label if generation.strategy else None,
        "text": generation.text,
        "extracted": score.extracted,
        "correct": bool(score.correct),
        "metrics": dict(score.metrics),
        "num_tokens": len(generation.token_ids),
        "finish_reason": generation.finish_reason,
        # per sample: a resumed run may be judged under another isolation than its first part
        **judge_fields(run.task),
    }
    if generation.trace:
        record["mean_temperature"] = generation.mean_temperature
        record["mean_top_p"] = generation.mean_top_p
        if keep_trace:  # exact floats: a schedule of these values replays the same distributions
            record["trace"] = {
                "temperature": [t.temperature for t in generation.trace],
                "top_p": [t.top_p for t in generation.trace],
                "token": [t.token for t in generation.trace],
            }
    return record


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


def question_samples(plan: StrategyPlan, run: TaskRun, log: SampleLog) -> list[list[dict]]:
    """Each doc's records in seed-major sample order; only the samples this run asked for."""
    table = []
    for doc in run.docs:
        rows = [log.records.get((doc.doc_id, seed, sample)) for seed, sample in plan.sample_ids()]
        if any(row is None for row in rows):
            raise RuntimeError(f"{log.path}: samples missing for {doc.doc_id} after generation")
        table.append(rows)
    return table


def task_config(plan: StrategyPlan, run: TaskRun, settings: dict) -> dict:
    config = {
        "task": run.name,
        "description": getattr(run.task, "description", ""),
        "scorer": getattr(run.task, "scorer", None),
        "split": run.split,
        "max_new_tokens": run.max_new_tokens,
        "k": plan.k,
        "seeds": list(plan.seeds),
        "limit": settings["limit"],
        "chat": task_chat(run.task, settings["chat"]),
    }
    if plan.collapsed:
        config["note"] = (
            f"greedy is deterministic: collapsed from k={settings['k']} x {len(settings['seeds'])} seeds "
            "to 1 sample per question"
        )
    if task_label(run.task):
        config["label"] = task_label(run.task)
    return config


def judge_mix(task: Any, table: list[list[dict]]) -> dict[str, int] | None:
    """{isolation: samples} when a code task's samples were judged under more than one isolation
    (a run resumed after AUTODECO_SANDBOX changed); samples from before the field was recorded
    count as "unrecorded". None when they agree (the run-level judge_isolation then says it all)."""
    if not judge_fields(task):
        return None
    counts: dict[str, int] = defaultdict(int)
    for row in (row for rows in table for row in rows):
        counts[row.get("judge_isolation", "unrecorded")] += 1
    return dict(sorted(counts.items())) if len(counts) > 1 else None


def build_results(plan: StrategyPlan, task_runs: list[TaskRun], logs: dict, info: dict, settings: dict) -> dict:
    info = plan_info(plan, info)
    results, configs, versions, n_samples, per_question = {}, {}, {}, {}, {}
    for run in task_runs:
        table = question_samples(plan, run, logs[plan.slug, run.name])
        per_question[run.name] = per_question_rows(run, table)
        metrics = task_metrics(table, plan.k, len(plan.seeds), run.task)
        results[run.name] = {"alias": run.name, **metrics, **score_metrics(run.task, per_question[run.name])}
        if task_label(run.task):
            results[run.name]["label"] = task_label(run.task)
        results[run.name].update(judge_fields(run.task))
        mix = judge_mix(run.task, table)
        if mix:
            results[run.name]["judge_isolation_samples"] = mix
        configs[run.name] = task_config(plan, run, settings)
        versions[run.name] = task_version(run.task)
        n_samples[run.name] = {"effective": len(run.docs), "limit": settings["limit"]}
    return {
        "results": results,
        "configs": configs,
        "versions": versions,
        "n-samples": n_samples,
        "decoding": {**plan.strategy.to_dict(), "label": plan.strategy.label},
        "model": info.get("model"),
        "heads": info.get("heads"),
        "config": {**info, "batch_size": settings["batch_size"]},
        "date": time.time(),
        "git_hash": git_hash(),
        "per_question": per_question,
    }


def write_results(path: Path, results: dict) -> None:
    """Write results.json, keeping earlier runs' tasks that this run did not touch."""
    if path.is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            previous = {}
        for section in ("results", "configs", "versions", "n-samples", "per_question"):
            results[section] = {**previous.get(section, {}), **results[section]}
    write_json(path, results)


@functools.lru_cache(maxsize=1)
def git_hash() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
