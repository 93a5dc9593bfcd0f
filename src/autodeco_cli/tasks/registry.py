"""Task registry: one YAML definition per task in `evals/`, lm-evaluation-harness style.

A definition names its data files (relative to the data dir, with sha256 and public source),
the record fields to read, the prompt template, the doc builder and the scorer, and, like
lm-eval, what the runner must do differently for it (`aggregation`, `voting`, `label`: see
`aggregate_metrics`, `task_voting`, `task_label`), so the runner never names a task. See
`evals/README.md` for the schema. The evals folder is $AUTODECO_EVALS_DIR, else the shipped
`evals/` (see `autodeco_cli.core.bundled`).
"""

from __future__ import annotations

import functools
import hashlib
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import yaml

from ..core.errors import UserError
from . import aggregation, arithmetic, exact_pick, ifeval, item_count, random_choice, record_lookup, ticket_draw
from .data import DataFile, as_list, get_field, locate, read_records, resolve_data_dir, verify_file
from .scoring import SCORERS, get_scorer, gsm8k_gold, option_letters
from .types import Doc, Score

EVALS_DIR_ENV = "AUTODECO_EVALS_DIR"
_REQUIRED_KEYS = ("name", "description", "builder", "scorer", "max_new_tokens", "prompt", "splits")
# Builder-specific settings; anything else in a definition is most likely a typo.
_OPTION_KEYS = (
    "groups", "shuffle_seed", "subsample_seed", "arithmetic", "prompt_without_starter", "random_choice",
    "question_metric", "chat", "stop", "aggregation", "voting", "label", "ticket_draw", "record_lookup", "exact_pick",
    "item_count",
)  # fmt: skip
# Keys that only say how to report a task's samples, never how they are made or scored: left
# out of its version (`task_version`), so declaring one never orphans finished samples.
REPORT_KEYS = ("aggregation", "voting", "label")
# Aggregations of per-sample secondary metrics a task may declare (`aggregation:`): the
# per-sample keys each consumes, and the function that turns them into task metrics.
AGGREGATIONS: dict[str, tuple[tuple[str, ...], Callable[[list[dict[str, float]]], dict[str, float]]]] = {
    "ifeval": (ifeval.METRIC_KEYS, ifeval.aggregate_metrics),
}


def evals_dir() -> Path:
    env = os.environ.get(EVALS_DIR_ENV)
    if env:
        return Path(env).expanduser()
    from ..core.bundled import bundled_dir

    return bundled_dir("evals")


# ---------------------------------------------------------------------------
# Task
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """One benchmark as its YAML file defines it."""

    name: str
    description: str
    builder: str
    scorer: str
    max_new_tokens: int
    prompt: str
    splits: dict[str, dict[str, Any]]
    groups: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    source_file: Path | None = None

    @property
    def shuffle_seed(self) -> int | None:
        return self.options.get("shuffle_seed")

    def load_docs(
        self,
        split: str = "test",
        limit: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        download: bool | None = None,
    ) -> list[Doc]:
        """The split's docs in a fixed order; `limit` keeps the first N (or, for tasks with a
        `subsample_seed`, a seeded random N kept in file order)."""
        if split not in self.splits:
            raise UserError(f"Task {self.name} has no split {split!r}", f"splits: {', '.join(self.splits)}")
        if limit is not None and limit < 1:
            raise UserError(f"limit must be a positive number, got {limit}")
        if self.builder == "arithmetic":
            return _arithmetic_docs(self, split, limit)
        if self.builder in GENERATED:
            cfg = self.options[self.builder]  # each generator's settings sit under its own name
            return GENERATED[self.builder].docs(self.name, self.prompt, split, limit or int(cfg["sizes"][split]), cfg)
        records, fields = _split_records(self.splits[split], data_dir, download)
        docs = BUILDERS[self.builder](self, split, records, fields)
        return _apply_limit(docs, limit, self.options.get("subsample_seed"))

    def score(self, doc: Doc, text: str) -> Score:
        return get_scorer(self.scorer)(doc, text)

    def data_files(self) -> list[DataFile]:
        """Every data file the task can read (arithmetic tasks have none)."""
        files = []
        for spec in self.splits.values():
            if "path" in spec:
                files.append(DataFile.from_spec(spec))
            files.extend(DataFile.from_spec(spec[key]) for key in ("exclude", "fallback") if key in spec)
        return list({f.path: f for f in files}.values())


def task_chat(task: Any, run_chat: bool) -> bool:
    """Whether a task's prompts go through the chat template: its own `chat` key (few-shot
    completion tasks set `chat: false`), else the run's --chat/--no-chat."""
    value = (getattr(task, "options", None) or {}).get("chat")
    return run_chat if value is None else bool(value)


def task_stop(task: Any) -> list[str] | None:
    """Stop strings a task declares (raw completions would otherwise run on into new shots)."""
    return (getattr(task, "options", None) or {}).get("stop") or None


def task_voting(task: Any) -> bool:
    """Whether maj@k applies: `voting: false` for tasks whose extracted answers are summaries
    (IFEval's "3/4 instructions") or programs, not votes."""
    return bool((getattr(task, "options", None) or {}).get("voting", True))


def task_label(task: Any) -> str | None:
    """A caveat the task wants next to every number it reports (`label:`), e.g. LiveCodeBench's
    public-tests-only stand-in."""
    return (getattr(task, "options", None) or {}).get("label")


def aggregate_metrics(task: Any, samples: list[dict[str, float]]) -> dict[str, float]:
    """A task's secondary metrics from its samples' `Score.metrics`: its declared
    `aggregation` first (when every key it consumes is there), then a plain mean of each other key."""
    name = (getattr(task, "options", None) or {}).get("aggregation")
    present = {key for metrics in samples for key in metrics}
    out: dict[str, float] = {}
    if name is not None:
        keys, aggregate = AGGREGATIONS[name]
        if present.issuperset(keys):
            out = aggregate(samples)
            present -= set(keys)
    for key in sorted(present):
        values = [float(metrics[key]) for metrics in samples if key in metrics]
        out[key] = float(np.mean(values))
    return out


def task_version(task: Any) -> str:
    """The task definition's content hash: samples from an edited prompt are not comparable.

    Hashes the YAML's bytes without its top-level REPORT_KEYS lines (and their indented
    continuation lines); tasks without a source file give their `version` attribute."""
    source = getattr(task, "source_file", None)
    if source is None or not Path(source).is_file():
        return str(getattr(task, "version", "1"))
    kept, skipping = [], False
    for line in Path(source).read_bytes().splitlines(keepends=True):
        if line[:1] not in (b" ", b"\t"):
            skipping = line.split(b":", 1)[0].decode("utf-8", "replace") in REPORT_KEYS
        if not skipping:
            kept.append(line)
    return hashlib.sha256(b"".join(kept)).hexdigest()[:12]


def judge_fields(task: Any) -> dict[str, str]:
    """For code-judged tasks, the sandbox isolation the programs were judged under, so a weak judge
    (AUTODECO_SANDBOX=guard) is visible in every results file."""
    if getattr(task, "scorer", None) != "code":
        return {}
    from .sandbox import judge_isolation

    return {"judge_isolation": judge_isolation()}


def _apply_limit(docs: list[Doc], limit: int | None, subsample_seed: int | None) -> list[Doc]:
    if limit is None or limit >= len(docs):
        return docs
    if subsample_seed is None:
        return docs[:limit]
    # Files sorted by category (MMLU-Pro) would give a one-subject "first N"; a seeded subset
    # in file order keeps the mix and stays reproducible.
    keep = sorted(random.Random(subsample_seed).sample(range(len(docs)), limit))
    return [docs[i] for i in keep]


# ---------------------------------------------------------------------------
# Reading a split's records
# ---------------------------------------------------------------------------


def _split_records(
    spec: dict[str, Any], data_dir: Any, download: bool | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(records, field map) of a split, from its file or, if that is missing, its fallback."""
    path, fields, strip = _locate_split_file(spec, data_dir, download)
    records = read_records(path)
    if strip:
        records = [_strip_strings(r) for r in records]
    if "exclude" in spec:
        records = _exclude(records, fields, spec["exclude"], data_dir, download)
    return records, fields


def _locate_split_file(spec: dict[str, Any], data_dir: Any, download: bool | None) -> tuple[Path, dict[str, Any], bool]:
    try:
        return locate(DataFile.from_spec(spec), data_dir, download), spec.get("fields", {}), False
    except UserError as missing:
        fallback = spec.get("fallback")
        if not fallback:
            raise
        try:
            path = locate(DataFile.from_spec(fallback), data_dir, download)
        except UserError:
            raise UserError(
                missing.message, f"{missing.hint}; or provide {fallback['path']} ({fallback.get('url')})"
            ) from None
        return path, fallback.get("fields", {}), bool(fallback.get("strip", False))


def _strip_strings(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v.strip() if isinstance(v, str) else v for k, v in record.items()}


def _exclude(
    records: list[dict[str, Any]], fields: dict[str, Any], spec: dict[str, Any], data_dir: Any, download: bool | None
) -> list[dict[str, Any]]:
    """Drop records whose problem text is in another file (MATH train = MATH test - MATH-500)."""
    other = read_records(locate(DataFile.from_spec(spec), data_dir, download))
    excluded = {str(get_field(r, spec["field"])).strip() for r in other}
    key = fields["problem"]
    return [r for r in records if str(get_field(r, key)).strip() not in excluded]


def _record_id(record: dict[str, Any], fields: dict[str, Any], index: int) -> str:
    return str(get_field(record, fields["id"])) if "id" in fields else str(index)


def _doc_id(task: Task, split: str, record_id: str) -> str:
    return f"{task.name}/{split}/{record_id}"


def _meta_fields(record: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    return {name: get_field(record, path) for name, path in fields.get("meta", {}).items()}


# ---------------------------------------------------------------------------
# Doc builders: records -> Docs
# ---------------------------------------------------------------------------


def _math_docs(task: Task, split: str, records: list[dict[str, Any]], fields: dict[str, Any]) -> list[Doc]:
    answer_format = fields.get("answer_format", "plain")
    docs = []
    for i, record in enumerate(records):
        raw_answer = str(get_field(record, fields["answer"]))
        gold = gsm8k_gold(raw_answer) if answer_format == "gsm8k" else raw_answer.strip()
        problem = str(get_field(record, fields["problem"]))
        meta = {"problem": problem, **_meta_fields(record, fields)}
        docs.append(
            Doc(_doc_id(task, split, _record_id(record, fields, i)), task.prompt.format(problem=problem), gold, meta)
        )
    return docs


def render_options(options: list[str]) -> str:
    letters = option_letters(len(options))
    return "\n".join(f"{letter}. {text}" for letter, text in zip(letters, options))


def _mc_doc(task: Task, doc_id: str, question: str, options: list[str], gold_index: int, meta: dict[str, Any]) -> Doc:
    letters = option_letters(len(options))
    prompt = task.prompt.format(question=question.strip(), options=render_options(options), letters=", ".join(letters))
    meta = {"n_options": len(options), "options": options, **meta}
    return Doc(doc_id, prompt, letters[gold_index], meta)


def _gold_index(record: dict[str, Any], fields: dict[str, Any]) -> int:
    if "answer_index" in fields:
        return int(get_field(record, fields["answer_index"]))
    # ARC keys are sometimes "1".."4" instead of letters: find the key among the labels.
    labels = [str(x) for x in get_field(record, fields["labels"])]
    return labels.index(str(get_field(record, fields["answer_key"])))


def _mc_docs(task: Task, split: str, records: list[dict[str, Any]], fields: dict[str, Any]) -> list[Doc]:
    docs = []
    for i, record in enumerate(records):
        options = [str(o) for o in get_field(record, fields["options"])]
        doc_id = _doc_id(task, split, _record_id(record, fields, i))
        question = str(get_field(record, fields["question"]))
        docs.append(_mc_doc(task, doc_id, question, options, _gold_index(record, fields), _meta_fields(record, fields)))
    return docs


def _incorrect_answers(record: dict[str, Any], fields: dict[str, Any]) -> list[str]:
    spec = fields["incorrect"]
    if isinstance(spec, list):
        return [str(get_field(record, name)) for name in spec]
    return [str(x) for x in get_field(record, spec)]


def shuffled_options(correct: str, incorrect: list[str], seed: int, record_id: str) -> tuple[list[str], list[int], int]:
    """(options, permutation, gold index): original option j (0 = the correct one) is shown at
    position i where permutation[i] == j. The RNG is seeded per record, so an item's order
    does not depend on which other items are loaded."""
    original = [correct, *incorrect]
    permutation = list(range(len(original)))
    random.Random(f"{seed}:{record_id}").shuffle(permutation)
    return [original[j] for j in permutation], permutation, permutation.index(0)


def _mc_shuffle_docs(task: Task, split: str, records: list[dict[str, Any]], fields: dict[str, Any]) -> list[Doc]:
    seed = task.shuffle_seed
    if seed is None:
        raise UserError(f"Task {task.name} shuffles options but sets no shuffle_seed")
    docs = []
    for i, record in enumerate(records):
        record_id = _record_id(record, fields, i)
        correct = str(get_field(record, fields["correct"]))
        options, permutation, gold = shuffled_options(correct, _incorrect_answers(record, fields), seed, record_id)
        meta = {"shuffle_seed": seed, "permutation": permutation, **_meta_fields(record, fields)}
        docs.append(
            _mc_doc(
                task, _doc_id(task, split, record_id), str(get_field(record, fields["question"])), options, gold, meta
            )
        )
    return docs


def _ifeval_docs(task: Task, split: str, records: list[dict[str, Any]], fields: dict[str, Any]) -> list[Doc]:
    docs = []
    for i, record in enumerate(records):
        source_prompt = str(get_field(record, fields["prompt"]))
        gold = {
            "instruction_id_list": list(get_field(record, fields["instruction_id_list"])),
            "kwargs": list(get_field(record, fields["kwargs"])),
        }
        key = get_field(record, fields["id"]) if "id" in fields else i
        meta = {"key": key, "source_prompt": source_prompt}
        docs.append(Doc(_doc_id(task, split, str(key)), task.prompt.format(prompt=source_prompt), gold, meta))
    return docs


def _code_docs(task: Task, split: str, records: list[dict[str, Any]], fields: dict[str, Any]) -> list[Doc]:
    docs = []
    for i, record in enumerate(records):
        starter = str(get_field(record, fields["starter_code"]) or "")
        question = str(get_field(record, fields["question"]))
        template = task.prompt if starter.strip() else task.options["prompt_without_starter"]
        meta = {
            "public_test_cases": as_list(get_field(record, fields["tests"])),
            "starter_code": starter,
            "func_name": _optional_field(record, fields["func_name"]),
            **_meta_fields(record, fields),
        }
        prompt = template.format(question=question, starter_code=starter)
        docs.append(Doc(_doc_id(task, split, _record_id(record, fields, i)), prompt, None, meta))
    return docs


def _optional_field(record: dict[str, Any], dotted: str) -> Any:
    try:
        return get_field(record, dotted)
    except UserError:
        return None


def _arithmetic_docs(task: Task, split: str, limit: int | None) -> list[Doc]:
    cfg = task.options["arithmetic"]
    op, split_seed, fraction = cfg["op"], int(cfg["split_seed"]), float(cfg["test_fraction"])
    validation_size = int(cfg.get("validation_size", 0))
    if split == "test":
        problems = arithmetic.eval_problems(op, limit or int(cfg["test_size"]), split_seed, fraction)
    elif split == "validation":
        problems = arithmetic.eval_problems(
            op, limit or validation_size, split_seed, fraction, validation_size, split="validation"
        )
    else:
        problems = arithmetic.train_problems(op, limit, split_seed, fraction, int(cfg["train_seed"]), validation_size)
    symbol = arithmetic.SYMBOLS[op]
    return [
        Doc(
            _doc_id(task, split, f"{i}-{p.key}"),
            task.prompt.format(a=p.a, b=p.b, symbol=symbol),
            p.answer,
            {"a": p.a, "b": p.b, "op": op},
        )
        for i, p in enumerate(problems)
    ]


Builder = Callable[[Task, str, list[dict[str, Any]], dict[str, Any]], list[Doc]]
BUILDERS: dict[str, Builder] = {
    "math": _math_docs,
    "mc": _mc_docs,
    "mc_shuffle": _mc_shuffle_docs,
    "ifeval": _ifeval_docs,
    "livecodebench": _code_docs,
}
# Generated tasks without a data file: the module's `docs(task, prompt, split, n, cfg)` makes them.
GENERATED = {
    "random_choice": random_choice,
    "ticket_draw": ticket_draw,
    "record_lookup": record_lookup,
    "exact_pick": exact_pick,
    "item_count": item_count,
}
_ALL_BUILDERS = (*BUILDERS, "arithmetic", *GENERATED)

# ---------------------------------------------------------------------------
# Loading the YAML definitions
# ---------------------------------------------------------------------------


def _task_from_yaml(path: Path) -> Task:
    with open(path, encoding="utf-8") as handle:
        raw = yaml.safe_load(handle) or {}
    missing = [k for k in _REQUIRED_KEYS if k not in raw]
    if missing:
        raise UserError(f"Task definition {path} lacks {', '.join(missing)}")
    if raw["builder"] not in _ALL_BUILDERS:
        raise UserError(f"Unknown builder {raw['builder']!r} in {path}", f"valid: {', '.join(_ALL_BUILDERS)}")
    if raw["scorer"] not in SCORERS:
        raise UserError(f"Unknown scorer {raw['scorer']!r} in {path}", f"valid: {', '.join(SCORERS)}")
    unknown = sorted(set(raw) - set(_REQUIRED_KEYS) - set(_OPTION_KEYS))
    if unknown:
        raise UserError(
            f"Unknown keys {', '.join(unknown)} in {path}", f"valid: {', '.join(_REQUIRED_KEYS + _OPTION_KEYS)}"
        )
    _check_declarations(raw, path)
    known = set(_REQUIRED_KEYS) | {"groups"}
    return Task(
        name=str(raw["name"]),
        description=" ".join(str(raw["description"]).split()),
        builder=raw["builder"],
        scorer=raw["scorer"],
        max_new_tokens=int(raw["max_new_tokens"]),
        prompt=str(raw["prompt"]),
        splits=dict(raw["splits"]),
        groups=tuple(raw.get("groups", ())),
        options={k: v for k, v in raw.items() if k not in known},
        source_file=path,
    )


def _check_declarations(raw: dict[str, Any], path: Path) -> None:
    """The keys that tell the runner how to treat the task (question metric, aggregation, voting, label)."""
    if raw.get("question_metric", aggregation.PASS1) not in aggregation.METRIC_NAMES:
        valid = f"valid: {', '.join(aggregation.METRIC_NAMES)}"
        raise UserError(f"Unknown question_metric {raw['question_metric']!r} in {path}", valid)
    if raw.get("aggregation") is not None and raw["aggregation"] not in AGGREGATIONS:
        raise UserError(f"Unknown aggregation {raw['aggregation']!r} in {path}", f"valid: {', '.join(AGGREGATIONS)}")
    if not isinstance(raw.get("voting", True), bool):
        raise UserError(f"voting in {path} must be true or false")
    if not isinstance(raw.get("label", ""), str):
        raise UserError(f"label in {path} must be a string")


@functools.lru_cache(maxsize=8)
def _load_registry(directory: Path) -> tuple[dict[str, Task], dict[str, list[str]]]:
    if not directory.is_dir():
        raise UserError(f"Task definitions folder not found: {directory}", f"set {EVALS_DIR_ENV} to the evals/ folder")
    tasks: dict[str, Task] = {}
    for path in sorted(directory.glob("*.yaml")):
        task = _task_from_yaml(path)
        if task.name in tasks:
            raise UserError(f"Task {task.name} is defined twice", f"{tasks[task.name].source_file} and {path}")
        tasks[task.name] = task
    groups: dict[str, list[str]] = {}
    for task in tasks.values():
        for group in task.groups:
            groups.setdefault(group, []).append(task.name)
    clash = sorted(set(groups) & set(tasks))
    if clash:
        raise UserError(f"Group names clash with task names: {', '.join(clash)}")
    return tasks, groups


def _registry() -> tuple[dict[str, Task], dict[str, list[str]]]:
    return _load_registry(evals_dir().resolve())


def list_tasks() -> list[str]:
    return sorted(_registry()[0])


def list_groups() -> dict[str, list[str]]:
    return {name: list(members) for name, members in sorted(_registry()[1].items())}


def _unknown(name: str) -> UserError:
    tasks, groups = _registry()
    hint = f"valid tasks: {', '.join(sorted(tasks))}"
    if groups:
        hint += f"; groups: {', '.join(sorted(groups))}"
    return UserError(f"Unknown task {name!r}", hint)


def get_task(name: str) -> Task:
    tasks, _ = _registry()
    if name not in tasks:
        raise _unknown(name)
    return tasks[name]


def expand(names: str | Iterable[str]) -> list[str]:
    """Task names from a comma list and/or groups, in the order given, without repeats."""
    items = [names] if isinstance(names, str) else list(names)
    tokens = [t.strip() for item in items for t in str(item).split(",") if t.strip()]
    if not tokens:
        raise UserError("No task names given", f"valid tasks: {', '.join(list_tasks())}")
    tasks, groups = _registry()
    out: list[str] = []
    for token in tokens:
        if token in groups:
            members = groups[token]
        elif token in tasks:
            members = [token]
        else:
            raise _unknown(token)
        out.extend(m for m in members if m not in out)
    return out


def load_docs(
    task_name: str,
    split: str = "test",
    limit: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool | None = None,
) -> list[Doc]:
    return get_task(task_name).load_docs(split=split, limit=limit, data_dir=data_dir, download=download)


def verify_task_data(task_name: str, data_dir: str | os.PathLike[str] | None = None) -> list[tuple[Path, bool]]:
    """(path, sha256 matches) for each local data file of a task; missing files are skipped."""
    root = resolve_data_dir(data_dir)
    results = []
    for spec in get_task(task_name).data_files():
        path = root / spec.path
        if not path.is_file():
            continue
        try:
            verify_file(spec, path)
            results.append((path, True))
        except UserError:
            results.append((path, False))
    return results
