"""Finding, fetching and reading benchmark data files.

Benchmark data never lives in this repository: it is read from a data directory
(`AUTODECO_DATA_DIR`, default `../shared/data` relative to the working directory) and, for
files that have a byte-exact public copy, can be downloaded there with a sha256 check.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..core.errors import UserError

DATA_DIR_ENV = "AUTODECO_DATA_DIR"
DOWNLOAD_ENV = "AUTODECO_DOWNLOAD"
DEFAULT_DATA_DIR = Path("..") / "shared" / "data"
_DOWNLOAD_TIMEOUT_S = 60
_CHUNK = 1 << 20


@dataclass(frozen=True)
class DataFile:
    """One data file as a task definition names it.

    `url` is a byte-exact public copy (checked against `sha256` after download) or None where
    the local file was converted or joined and no such copy exists; `source` is the public
    dataset a user can rebuild it from.
    """

    path: str
    sha256: str | None = None
    url: str | None = None
    source: str | None = None

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "DataFile":
        return cls(
            path=str(spec["path"]),
            sha256=spec.get("sha256"),
            url=spec.get("url"),
            source=spec.get("source"),
        )


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: the argument, else $AUTODECO_DATA_DIR, else ../shared/data."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path.cwd() / DEFAULT_DATA_DIR


def download_enabled(download: bool | None) -> bool:
    """An explicit argument wins; otherwise downloads are opt-in through $AUTODECO_DOWNLOAD."""
    if download is not None:
        return download
    return os.environ.get(DOWNLOAD_ENV, "").strip().lower() in {"1", "true", "yes"}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def locate(
    spec: DataFile,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool | None = None,
) -> Path:
    """The local path of `spec`, downloading it first when allowed and possible.

    A missing file raises a one-line UserError that names the path and says how to get it.
    """
    root = resolve_data_dir(data_dir)
    path = root / spec.path
    if path.is_file():
        return path
    if spec.url and download_enabled(download):
        return download_file(spec, path)
    raise UserError(f"Benchmark data file not found: {path}", _missing_hint(spec, root))


def _missing_hint(spec: DataFile, root: Path) -> str:
    where = f"set {DATA_DIR_ENV} to the folder that holds {spec.path} (now {root})"
    if spec.url:
        fetch = f"or rerun with {DOWNLOAD_ENV}=1 to download it from {spec.url}"
    else:
        fetch = "there is no byte-exact public copy to download"
    source = f"; public source: {spec.source}" if spec.source else ""
    return f"{where}, {fetch}{source}"


def verify_file(spec: DataFile, path: Path) -> None:
    """Raise UserError when `path` does not have the sha256 the task definition records."""
    if not spec.sha256:
        return
    actual = sha256_file(path)
    if actual != spec.sha256:
        raise UserError(
            f"Checksum mismatch for {path}: expected sha256 {spec.sha256}, got {actual}",
            "the file is corrupt or a different version; delete it and fetch it again",
        )


def download_file(spec: DataFile, dest: Path) -> Path:
    """Fetch `spec.url` to `dest`, keeping it only if its sha256 matches.

    The download goes to a temporary file next to `dest` so that an interrupted or wrong
    download never leaves a file that later loads would trust.
    """
    if not spec.url:
        raise UserError(f"No download URL for {spec.path}", f"public source: {spec.source}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(handle, "wb") as out:
            _copy_url(spec.url, out)
        verify_file(spec, tmp)
        tmp.replace(dest)
    except UserError:
        raise
    except OSError as exc:
        raise UserError(f"Download of {spec.url} failed: {exc}", f"fetch it by hand into {dest}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _copy_url(url: str, out: Any) -> None:
    import urllib.request  # only downloads need it; keeps CLI start-up light

    with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
        for block in iter(lambda: response.read(_CHUNK), b""):
            out.write(block)


def read_records(path: Path) -> list[dict[str, Any]]:
    """Records of a .jsonl, .json (array) or .csv file, in file order."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return list(_iter_jsonl(path))
    if suffix == ".json":
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        if not isinstance(data, list):
            raise UserError(f"Expected a JSON array of records in {path}")
        return data
    if suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as handle:
            return list(csv.DictReader(handle))
    raise UserError(f"Unsupported data file type: {path}", "use .jsonl, .json or .csv")


def _iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"Bad JSON on line {line_no} of {path}: {exc.msg}") from exc


def get_field(record: dict[str, Any], dotted: str) -> Any:
    """`record["a"]["b"]` for "a.b"; a missing key is a UserError naming the field."""
    value: Any = record
    for part in dotted.split("."):
        if isinstance(value, str) and value.startswith("{"):
            # Some dataset exports store nested objects as JSON text (LiveCodeBench metadata).
            value = _json_or_none(value)
        if not isinstance(value, dict) or part not in value:
            raise UserError(f"Data record has no field {dotted!r}", f"fields present: {sorted(record)}")
        value = value[part]
    return value


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def as_list(value: Any) -> list[Any]:
    """A list field that some exports store as JSON text (LiveCodeBench's test cases)."""
    if isinstance(value, str):
        value = _json_or_none(value)
    if not isinstance(value, list):
        raise UserError(f"Expected a list field, got {type(value).__name__}")
    return value
