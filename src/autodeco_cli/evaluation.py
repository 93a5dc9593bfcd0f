"""The eval runner: benchmarks x decoding strategies on one loaded engine, resumable.

A run writes one folder per strategy, so a grid of static (T, p) cells is a set of folders:

    OUT/<slug>/samples_<task>.jsonl   one line per sample, appended as soon as its batch is scored
    OUT/<slug>/run_config.json        what the samples were generated with (the resume guard)
    OUT/<slug>/results.json           lm-evaluation-harness-style summary + per-question scores

Why resuming is exact: a sample's tokens depend only on its request seed (run seed, task,
doc id, sample index; see `generation.py`), never on its batch-mates or on which strategies
share a call. Regenerating just the missing samples therefore reproduces an uninterrupted run,
and strategies can share batches (a grid's cells fill each other's rows) without changing
any of them.
"""

from __future__ import annotations

import functools
import json
import math
import re
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from . import stats
from .benchmarks.registry import task_chat, task_stop
from .decoding import DecodingStrategy
from .errors import UserError
from .generation import Generation, GenerationEngine, Request, batch_order_key, encode_prompt, request_seed
from .question_scores import metric_of, per_question_rows, row_score, score_metrics

RESULTS_FILE = "results.json"
RUN_CONFIG_FILE = "run_config.json"
# engine.generate keeps every Generation of a call in memory (traces included), so long runs
# are fed to it in slices of this many batches' worth of requests, cut from the engine's own
# sort order: a prompt's requests stay together (one prefill) except at a slice edge.
BATCHES_PER_CALL = 32
# run_config fields that must match to resume into a folder (device may differ).
IDENTITY_FIELDS = ("model", "heads", "heads_sha256", "adapter", "dtype", "chat", "decoding")
# Their "extracted" answers are summaries ("3/4" instructions) or programs, not votes.
NO_VOTE_SCORERS = ("ifeval", "code")
IFEVAL_KEYS = ("prompt_strict", "prompt_loose", "inst_strict_correct", "inst_strict_total", "inst_loose_correct", "inst_loose_total")
LIVECODEBENCH_LABEL = (
    "LiveCodeBench release_v5 window (problems dated 2024-08 to 2025-01), PUBLIC tests only: "
    "not the official private-test score and not comparable with the paper's v6 column"
)


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


def strategy_slug(strategy: DecodingStrategy) -> str:
    """A folder name from the label: 'static(T=0.6, p=0.95)' -> 'static-T0.6-p0.95'."""
    text = strategy.label.replace("×", "x").replace("=", "")
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


def plan_strategies(strategies: Sequence[DecodingStrategy], k: int, seeds: Sequence[int]) -> list[StrategyPlan]:
    if k < 1:
        raise UserError(f"-k {k}: need at least one sample per seed")
    seeds = tuple(int(s) for s in seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError("need at least one seed, without repeats")
    if not strategies:
        raise UserError("no decoding strategy given")
    plans, seen = [], {}
    for strategy in strategies:
        slug = strategy_slug(strategy)
        if slug in seen:
            raise UserError(f"strategies {seen[slug].label!r} and {strategy.label!r} share the output folder {slug!r}", "drop the duplicate")
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
        raise UserError(f"--seeds {value!r} is neither a count nor a comma list of seeds", "e.g. --seeds 8 or --seeds 0,1,2") from None
    if count < 1:
        raise UserError(f"--seeds {count}: need at least one seed")
    return list(range(count))


# ---------------------------------------------------------------------------
# Sample logs: the JSONL files that make a run resumable
# ---------------------------------------------------------------------------


def sample_key(record: dict) -> tuple[str, int, int]:
    return (str(record["doc_id"]), int(record["seed"]), int(record["sample"]))


class SampleLog:
    """One strategy's samples for one task: read once at start, appended batch by batch."""

    def __init__(self, path: Path):
        self.path = path
        self.records: dict[tuple[str, int, int], dict] = {}
        self._handle = None
        self._load()

    def _load(self) -> None:
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            # A kill mid-write leaves a partial last line. Cutting it off (rather than skipping
            # it) matters: the next append would otherwise glue a record onto it.
            with self.path.open("r+b") as handle:
                handle.truncate(end)
        for number, line in enumerate(data[:end].split(b"\n"), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                key = sample_key(record)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise UserError(f"{self.path}:{number} is not a sample record", "delete that line (it is regenerated on the next run)") from None
            self.records.setdefault(key, record)

    def append(self, records: Iterable[dict]) -> None:
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("a", encoding="utf-8")
        for record in records:
            self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.records[sample_key(record)] = record
        self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def samples_path(out_dir: Path, slug: str, task_name: str) -> Path:
    return out_dir / slug / f"samples_{task_name}.jsonl"


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
    from .benchmarks import registry

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


def prepare_task(task: Any, limit: int | None, max_new_tokens: int | None, data_dir, split: str = "test") -> TaskRun:
    docs = task.load_docs(split=split, limit=limit, data_dir=data_dir)
    if not docs:
        raise UserError(f"task {task.name} has no {split} documents")
    # Fail before hours of generation, not after the first batch, when a scorer's optional
    # dependencies (IFEval's lm-eval, the code sandbox) are missing.
    task.score(docs[0], "")
    return TaskRun(task, docs, max_new_tokens or task.max_new_tokens, split)


def task_version(task: Any) -> str:
    """The task definition's content hash: samples from an edited prompt are not comparable."""
    source = getattr(task, "source_file", None)
    if source is not None and Path(source).is_file():
        import hashlib

        return hashlib.sha256(Path(source).read_bytes()).hexdigest()[:12]
    return str(getattr(task, "version", "1"))


def is_livecodebench(task: Any) -> bool:
    return task.name.startswith("livecodebench") or getattr(task, "builder", None) == "livecodebench"


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


@dataclass
class _RunState:
    engine: GenerationEngine
    plans: list[StrategyPlan]
    logs: dict[tuple[str, str], SampleLog]
    progress: Any
    batch_size: int
    chat: bool


def run_eval(
    engine: GenerationEngine,
    task_names: str | Sequence[Any],
    strategies: Sequence[DecodingStrategy],
    *,
    k: int = 1,
    seeds: Sequence[int] = (0,),
    max_new_tokens: int | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    out_dir: str | Path,
    chat: bool = True,
    progress: Any = None,
    data_dir: str | Path | None = None,
    run_info: dict | None = None,
    split: str = "test",
) -> dict[str, dict]:
    """Evaluate every strategy on every task; returns {strategy label: results dict}.

    All strategies' requests for a task go to the engine together, so a grid of static cells
    shares batches. Greedy strategies are collapsed to one sample per question (first seed).
    `progress` is an optional started rich Progress (see `progress.progress_bar`); `run_info`
    (model, heads, adapter, dtype, device) is recorded and guards resuming into `out_dir`.
    `split` is "test" for reported numbers; "validation" is where settings are chosen.
    """
    if batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise UserError("--max-new-tokens must be at least 1")
    out_dir = Path(out_dir)
    plans = plan_strategies(strategies, k, seeds)
    task_runs = [prepare_task(task, limit, max_new_tokens, data_dir, split) for task in resolve_tasks(task_names)]
    info = {"model": getattr(engine.lm, "name", None), "heads": None, **(run_info or {}), "chat": chat, "heads_sha256": heads_fingerprint(engine)}
    for plan in plans:
        _claim_folder(out_dir / plan.slug, plan, task_runs, info)
    logs = {(plan.slug, run.name): SampleLog(samples_path(out_dir, plan.slug, run.name)) for plan in plans for run in task_runs}
    state = _RunState(engine, plans, logs, progress, batch_size, chat)
    try:
        for run in task_runs:
            _generate_task(state, run)
    finally:
        for log in logs.values():
            log.close()
    settings = {"k": k, "seeds": list(seeds), "limit": limit, "batch_size": batch_size, "chat": chat, "split": split}
    results = {}
    for plan in plans:
        results[plan.strategy.label] = build_results(plan, task_runs, logs, info, settings)
        write_results(out_dir / plan.slug / RESULTS_FILE, results[plan.strategy.label])
    return results


def heads_fingerprint(engine: GenerationEngine) -> str | None:
    """A hash of the heads' weights: retrained heads saved to the same path are other heads."""
    if engine.heads is None:
        return None
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(engine.heads.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


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
    tasks = {run.name: {"max_new_tokens": run.max_new_tokens, "version": task_version(run.task), "split": run.split} for run in task_runs}
    path = folder / RUN_CONFIG_FILE
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        changed = [name for name in IDENTITY_FIELDS if previous.get(name) != identity.get(name)]
        changed += [f"{name}: {field_}" for name, spec in tasks.items() for field_, value in spec.items() if previous.get("tasks", {}).get(name, {}).get(field_, value) != value]
        if changed:
            raise UserError(
                f"{folder} holds samples made with other settings ({', '.join(changed)})",
                "use another --output-dir, or delete that folder to start over",
            )
        tasks = {**previous.get("tasks", {}), **tasks}
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**identity, "tasks": tasks}, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _pending_requests(state: _RunState, run: TaskRun) -> tuple[list[Request], int]:
    """Requests not yet in any sample log, and how many are already done."""
    chat = task_chat(run.task, state.chat)
    prompts = [encode_prompt(state.engine.tokenizer, doc.prompt, chat) for doc in run.docs]
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
                    )
                )
    return pending, done


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
            by_plan[plan.slug].append(sample_record(run, run.docs[doc_index], seed, sample, generation))
        for slug, records in by_plan.items():
            state.logs[slug, run.name].append(records)
        task_tokens += sum(len(g.token_ids) for g in generations)
        if bar is not None:
            state.progress.update(bar, advance=len(generations), tokens=task_tokens)

    for traced, group in _trace_groups(pending):
        for chunk in _engine_slices(group, state.batch_size):
            state.engine.generate(
                chunk, max_new_tokens=run.max_new_tokens, batch_size=state.batch_size, stop=task_stop(run.task), trace=traced, on_batch_done=record_batch
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


def sample_record(run: TaskRun, doc: Any, seed: int, sample: int, generation: Generation) -> dict:
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
    }
    if generation.trace:
        record["mean_temperature"] = generation.mean_temperature
        record["mean_top_p"] = generation.mean_top_p
    return record


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


def pass_k_ladder(n: int) -> list[int]:
    """1, 4, 8, 16, ... up to n: the k values reported for pass@k and maj@k."""
    ladder, k = [1], 4
    while k <= n:
        ladder.append(k)
        k *= 2
    return ladder


def _finite(value: float | None) -> float | None:
    # JSON has no NaN: a statistic that is undefined (one question, one seed) is null.
    return None if value is None or not math.isfinite(value) else float(value)


def question_samples(plan: StrategyPlan, run: TaskRun, log: SampleLog) -> list[list[dict]]:
    """Each doc's records in seed-major sample order; only the samples this run asked for."""
    table = []
    for doc in run.docs:
        rows = [log.records.get((doc.doc_id, seed, sample)) for seed, sample in plan.sample_ids()]
        if any(row is None for row in rows):
            raise RuntimeError(f"{log.path}: samples missing for {doc.doc_id} after generation")
        table.append(rows)
    return table


def task_metrics(plan: StrategyPlan, table: list[list[dict]], voting: bool = True) -> dict[str, Any]:
    correct = np.array([[r["correct"] for r in rows] for rows in table], dtype=float)
    n_q, n = correct.shape
    pass1, se = stats.mean_pass1(correct.tolist())
    per_seed = correct.reshape(n_q, len(plan.seeds), plan.k).mean(axis=(0, 2))
    _, seed_std = stats.seed_spread(per_seed)
    metrics: dict[str, Any] = {
        "pass@1": pass1,
        "pass@1_stderr": _finite(se),
        "pass@1_seed_std": _finite(seed_std) if len(plan.seeds) > 1 else None,
        "pass@1_per_seed": [float(x) for x in per_seed],
        "n_questions": n_q,
        "samples_per_question": n,
    }
    counts = [(n, int(c)) for c in correct.sum(axis=1)]
    answers = [[_vote_key(r["extracted"]) for r in rows] for rows in table]
    for kk in pass_k_ladder(n)[1:]:
        metrics[f"pass@{kk}"] = stats.mean_pass_at_k(counts, kk)
    for kk in pass_k_ladder(n) if voting else []:
        metrics[f"maj@{kk}"] = float(np.mean([stats.maj_at_k(a, [r["correct"] for r in rows], kk) for a, rows in zip(answers, table)]))
    records = [r for rows in table for r in rows]
    metrics["mean_tokens"] = float(np.mean([r["num_tokens"] for r in records]))
    metrics["unparseable"] = sum(r["extracted"] is None for r in records)
    metrics["truncated"] = sum(r["finish_reason"] == "length" for r in records)
    metrics.update(sample_metric_means(records))
    metrics.update(mean_decoding_parameters(records))
    return metrics


def _vote_key(extracted: Any) -> Any:
    return None if extracted is None else " ".join(str(extracted).split())


def sample_metric_means(records: list[dict]) -> dict[str, float]:
    """Scorers' secondary metrics: IFEval's four accuracies, else a plain mean per key."""
    keys = sorted({key for r in records for key in r.get("metrics", {})})
    if not keys:
        return {}
    out = {}
    if all(key in keys for key in IFEVAL_KEYS):
        total = lambda key: sum(r["metrics"].get(key, 0.0) for r in records)  # noqa: E731
        out["prompt_level_strict_acc"] = total("prompt_strict") / len(records)
        out["prompt_level_loose_acc"] = total("prompt_loose") / len(records)
        out["inst_level_strict_acc"] = total("inst_strict_correct") / max(total("inst_strict_total"), 1.0)
        out["inst_level_loose_acc"] = total("inst_loose_correct") / max(total("inst_loose_total"), 1.0)
        keys = [key for key in keys if key not in IFEVAL_KEYS]
    for key in keys:
        values = [float(r["metrics"][key]) for r in records if key in r.get("metrics", {})]
        out[key] = float(np.mean(values))
    return out


def mean_decoding_parameters(records: list[dict]) -> dict[str, float]:
    """Token-weighted mean T̂/P̂ of an autodeco run: the keys the mean-shift baseline reads."""
    traced = [r for r in records if r.get("mean_temperature") is not None and r["num_tokens"] > 0]
    if not traced:
        return {}
    weights = np.array([r["num_tokens"] for r in traced], dtype=float)
    return {
        "mean_temperature": float(np.average([r["mean_temperature"] for r in traced], weights=weights)),
        "mean_top_p": float(np.average([r["mean_top_p"] for r in traced], weights=weights)),
    }


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
        config["note"] = f"greedy is deterministic: collapsed from k={settings['k']} x {len(settings['seeds'])} seeds to 1 sample per question"
    if is_livecodebench(run.task):
        config["label"] = LIVECODEBENCH_LABEL
    return config


def build_results(plan: StrategyPlan, task_runs: list[TaskRun], logs: dict, info: dict, settings: dict) -> dict:
    info = plan_info(plan, info)
    results, configs, versions, n_samples, per_question = {}, {}, {}, {}, {}
    for run in task_runs:
        table = question_samples(plan, run, logs[plan.slug, run.name])
        voting = getattr(run.task, "scorer", None) not in NO_VOTE_SCORERS
        per_question[run.name] = per_question_rows(run, table)
        results[run.name] = {"alias": run.name, **task_metrics(plan, table, voting), **score_metrics(run.task, per_question[run.name])}
        if is_livecodebench(run.task):
            results[run.name]["label"] = LIVECODEBENCH_LABEL
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


@functools.lru_cache(maxsize=1)
def git_hash() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


# ---------------------------------------------------------------------------
# Reading results back (compare)
# ---------------------------------------------------------------------------


def read_json_output(path: str | Path, file_name: str, what: str, missing_hint: str) -> tuple[Path, dict]:
    """A JSON file a command wrote, given as the file or as the folder that holds `file_name`."""
    path = Path(path)
    if path.is_dir():
        path = path / file_name
    try:
        return path, json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}", missing_hint) from None
    except json.JSONDecodeError:
        raise UserError(f"{path} is not valid JSON") from None


def load_results(path: str | Path) -> tuple[Path, dict]:
    """A results.json, or a strategy folder that holds one."""
    path, data = read_json_output(path, RESULTS_FILE, "results file", "pass a results.json or the strategy folder eval wrote")
    if not isinstance(data, dict) or "per_question" not in data:
        raise UserError(f"{path} has no per-question scores", "compare reads results.json files written by `autodeco eval`")
    return path, data


@dataclass(frozen=True)
class TaskComparison:
    task: str
    comparison: stats.PairedComparison
    only_a: int
    only_b: int
    metric: str = "pass@1"


def compare_results(a: dict, b: dict, tasks: Sequence[str] | None = None, n_boot: int = 10_000, seed: int = 0) -> list[TaskComparison]:
    """Paired per-question differences (A − B) of each task's question metric (`score`;
    pass@1 for ordinary tasks and old files) on the questions both runs scored."""
    shared = [t for t in a["per_question"] if t in b["per_question"]]
    if tasks:
        missing = [t for t in tasks if t not in shared]
        if missing:
            raise UserError(f"not in both results: {', '.join(missing)}", f"shared tasks: {', '.join(shared) or 'none'}")
        shared = [t for t in shared if t in tasks]
    if not shared:
        raise UserError("the two results share no task")
    out = []
    for task in shared:
        metric = metric_of(a, task)
        if metric != metric_of(b, task):
            raise UserError(f"{task}: the runs score questions by different metrics ({metric} vs {metric_of(b, task)})")
        scores_a = {row["doc_id"]: row_score(row) for row in a["per_question"][task]}
        scores_b = {row["doc_id"]: row_score(row) for row in b["per_question"][task]}
        common = scores_a.keys() & scores_b.keys()
        if not common:
            raise UserError(f"{task}: the two results share no question")
        comparison = stats.paired_comparison({d: scores_a[d] for d in common}, {d: scores_b[d] for d in common}, n_boot=n_boot, seed=seed)
        out.append(TaskComparison(task, comparison, len(scores_a) - len(common), len(scores_b) - len(common), metric))
    return out


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def summary_table(results: dict[str, dict]):
    """One row per (strategy, task): the numbers a paper table would quote."""
    from rich.table import Table

    table = Table(title="eval results (accuracy in %)")
    for column in ("decoding", "task", "questions × samples", "pass@1 ± SE", "task metric ± SE", "± seeds", "pass@k", "maj@k", "tokens", "unparseable", "T̂ / P̂"):
        table.add_column(column, justify="left" if column in ("decoding", "task") else "right")
    for label, result in results.items():
        for task, m in result["results"].items():
            top_k = pass_k_ladder(m["samples_per_question"])[-1]
            mean_tp = f"{m['mean_temperature']:.3f} / {m['mean_top_p']:.3f}" if "mean_temperature" in m else "–"
            stderr = f" ± {_pct(m['pass@1_stderr'])}" if m.get("pass@1_stderr") is not None else ""
            table.add_row(
                label,
                task,
                f"{m['n_questions']} × {m['samples_per_question']}",
                f"{_pct(m['pass@1'])}{stderr}",
                _declared_score(m),
                _pct(m.get("pass@1_seed_std")),
                f"{_pct(m[f'pass@{top_k}'])} (k={top_k})",
                f"{_pct(m[f'maj@{top_k}'])} (k={top_k})" if f"maj@{top_k}" in m else "–",
                f"{m['mean_tokens']:.0f}",
                str(m["unparseable"]),
                mean_tp,
            )
    return table


def _declared_score(m: dict) -> str:
    """The task's own question metric, where it declares one other than pass@1."""
    if m.get("metric", "pass@1") == "pass@1":
        return "(pass@1)"
    stderr = f" ± {_pct(m['score_stderr'])}" if m.get("score_stderr") is not None else ""
    return f"{m['metric']} {_pct(m['score'])}{stderr}"


def comparison_table(comparisons: list[TaskComparison], name_a: str, name_b: str):
    from rich.table import Table

    metrics = sorted({item.metric for item in comparisons}) or ["pass@1"]
    table = Table(title=f"paired per-question {' / '.join(metrics)} (in %), Δ = A − B", caption=f"A = {name_a}\nB = {name_b}")
    for column in ("task", "metric", "questions", "A", "B", "Δ", "SE", "95% CI (bootstrap)"):
        table.add_column(column, justify="left" if column == "task" else "right")
    for item in comparisons:
        c = item.comparison
        table.add_row(
            item.task,
            item.metric,
            str(c.n) + (f" (+{item.only_a} A-only, +{item.only_b} B-only)" if item.only_a or item.only_b else ""),
            _pct(c.mean_a),
            _pct(c.mean_b),
            f"{100 * c.mean_diff:+.1f}",
            _pct(_finite(c.se)),
            f"[{100 * c.ci_low:+.1f}, {100 * c.ci_high:+.1f}]",
        )
    return table
