"""What a resumable run leaves on disk, and how a re-run picks it up.

- `SampleLog`: an append-only JSONL file of records, read once at start and keyed, so a
  re-run knows which records are done. The eval runner keeps one per (strategy, task)
  (OUT/<slug>/samples_<task>.jsonl); make-data keeps its output and its `.progress` file.
- The settings claim (`claim_settings`): a JSON file next to the records says how they were
  made; a run with other settings is refused rather than mixed in (eval's run_config.json,
  make-data's OUTPUT.settings.json).
- `write_json` (atomic) and `read_json_output` (a command's JSON, given as file or folder).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable

from ..core.errors import UserError
from ..core.json_files import parse_json, read_json_file
from ..core.safe_writes import Appender, write_atomically

# An eval run folder: OUT/<slug>/samples_<task>.jsonl, run_config.json, results.json.
RESULTS_FILE = "results.json"
RUN_CONFIG_FILE = "run_config.json"


def sample_key(record: dict) -> tuple[str, int, int]:
    """An eval sample's identity: (doc id, seed, sample index)."""
    return (str(record["doc_id"]), int(record["seed"]), int(record["sample"]))


class SampleLog:
    """One JSONL file of records: read once at start, appended batch by batch.

    `key` names a record (the eval's (doc, seed, sample) by default); the first record of a
    key wins. `key=None` keeps every record, in file order, under its position. `strict=False`
    skips unreadable lines instead of refusing the file (make-data's files from before it used
    this log could hold a record glued onto a cut line; that problem is then redone).
    """

    def __init__(self, path: Path, key: Callable[[dict], Hashable] | None = sample_key, strict: bool = True):
        self.path = path
        self.key = key
        self.strict = strict
        self.records: dict[Hashable, dict] = {}
        self._appender = Appender(path)
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
                record = parse_json(line.decode("utf-8"), f"{self.path}:{number}")
                if not isinstance(record, dict):
                    raise TypeError("not an object")
                key = self._key(record)
            except (UserError, KeyError, TypeError, ValueError):
                if not self.strict:
                    continue
                raise UserError(
                    f"{self.path}:{number} is not a sample record",
                    "delete that line (it is regenerated on the next run)",
                ) from None
            self.records.setdefault(key, record)

    def _key(self, record: dict) -> Hashable:
        return len(self.records) if self.key is None else self.key(record)

    def append(self, records: Iterable[dict]) -> None:
        """Write the records whole (a full disk writes none of them): once this returns, a kill
        cannot lose them."""
        records = list(records)
        self._appender.append([json.dumps(record, ensure_ascii=False) for record in records])
        for record in records:
            self.records[self._key(record)] = record

    def rewrite(self, records: Iterable[dict]) -> None:
        """Replace the file by these records, atomically (make-data drops cut-short chunks and
        re-balances)."""
        self.close()
        records = list(records)
        write_atomically(self.path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        self.records = {}
        for record in records:
            self.records.setdefault(self._key(record), record)

    def close(self) -> None:
        self._appender.close()


def samples_path(out_dir: Path, slug: str, task_name: str) -> Path:
    return out_dir / slug / f"samples_{task_name}.jsonl"


# ---------------------------------------------------------------------------
# The settings claim
# ---------------------------------------------------------------------------


def claim_settings(
    path: Path,
    changes: Callable[[dict], list[str]],
    *,
    holder: Path,
    hint: str,
    started: bool = True,
    what: str = "settings file",
) -> dict:
    """The settings recorded in `path` ({} when none); refuses (UserError) when `changes(previous)`
    names any, so records made otherwise are never mixed into `holder`. The caller writes its
    own settings afterwards (`write_json`); an output begun before settings were recorded
    (`started` but no file) adopts them.
    """
    if not (started and path.is_file()):
        return {}
    unreadable = UserError(
        f"{path} is not a {what}", f"delete it if {holder} was made with the settings you are using now"
    )
    try:
        previous = parse_json(path.read_text(encoding="utf-8"), str(path))
    except (UserError, UnicodeDecodeError):
        raise unreadable from None
    if not isinstance(previous, dict):
        raise unreadable
    changed = changes(previous)
    if changed:
        raise UserError(f"{holder} holds samples made with other settings ({', '.join(changed)})", hint)
    return previous


def setting_changes(previous: dict, current: dict, prefix: str = "") -> list[str]:
    """'name: old -> new' for each setting that differs (dicts compared field by field); a
    setting the previous run did not record is not a change."""
    out = []
    for name, value in current.items():
        if name not in previous or previous[name] == value:
            continue
        if isinstance(value, dict) and isinstance(previous[name], dict):
            out += setting_changes({k: previous[name].get(k) for k in value}, value, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}: {previous[name]!r} -> {value!r}")
    return out


# ---------------------------------------------------------------------------
# JSON files
# ---------------------------------------------------------------------------


def write_json(path: Path, data: Any) -> None:
    """Write through a temporary file, so a kill or a full disk never leaves half a JSON file."""
    write_atomically(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_json_output(path: str | Path, file_name: str, what: str, missing_hint: str) -> tuple[Path, Any]:
    """A JSON file a command wrote, given as the file or as the folder that holds `file_name`;
    the caller checks its shape (`core.schema`)."""
    path = Path(path)
    if path.is_dir():
        path = path / file_name
    if not path.exists():
        raise UserError(f"{what} not found: {path}", missing_hint)
    return path, read_json_file(path, what)
