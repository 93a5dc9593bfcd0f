"""What `autodeco tasks` lists: each task's splits with their sizes here, its metric and data source.

Sizes are counted by loading the split the way eval does (exclusions and generators included), from
the local data directory only: a missing file is reported as missing, never downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.errors import UserError
from .aggregation import metric_name
from .registry import GENERATED, get_task, list_groups


@dataclass(frozen=True)
class SplitInfo:
    name: str
    size: int | None  # None: not available on this machine
    problem: str = ""  # why the size is unknown


@dataclass(frozen=True)
class TaskInfo:
    name: str
    groups: tuple[str, ...]
    metric: str
    scorer: str
    source: str
    splits: tuple[SplitInfo, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "groups": list(self.groups),
            "metric": self.metric,
            "scorer": self.scorer,
            "source": self.source,
            "splits": {s.name: s.size if s.size is not None else {"missing": s.problem} for s in self.splits},
        }


def _source(task) -> str:
    if task.builder == "arithmetic" or task.builder in GENERATED:
        return f"generated ({task.builder})"
    sources = []
    for spec in task.splits.values():
        text = spec.get("source") or spec.get("path", "")
        if text and text not in sources:
            sources.append(text)
    return "; ".join(sources) or "local files"


def _split_info(task, split: str) -> SplitInfo:
    try:
        return SplitInfo(split, len(task.load_docs(split=split, download=False)))
    except UserError as exc:
        return SplitInfo(split, None, str(exc).splitlines()[0])


def describe(name: str) -> TaskInfo:
    task = get_task(name)
    groups = tuple(g for g, members in sorted(list_groups().items()) if name in members)
    return TaskInfo(
        name=task.name,
        groups=groups,
        metric=metric_name(task),
        scorer=task.scorer,
        source=_source(task),
        splits=tuple(_split_info(task, split) for split in task.splits),
    )
