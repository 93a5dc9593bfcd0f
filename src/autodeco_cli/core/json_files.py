"""JSON and JSONL read with a nesting limit, every failure a one-line UserError naming file and line.

Python's parsers recurse once per nesting level, so a hostile file of 100k nested lists raises
RecursionError, and a tree just under the interpreter's limit would make every later recursive
walk fail instead. No file we read nests more than a few levels; MAX_DEPTH refuses both early.
NaN and Infinity are parsed (Python writes them): the schema that reads the value names them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import UserError
from .io_checks import iter_text_lines, read_text_file

MAX_DEPTH = 64


def too_deep(where: str) -> UserError:
    return UserError(
        f"{where}: nested more than {MAX_DEPTH} levels deep",
        "no autodeco file nests this deep; check that it is the right file",
    )


def check_depth(value: Any, where: str) -> Any:
    """`value` unchanged, or a UserError when lists/objects nest deeper than MAX_DEPTH.

    Walks with an explicit stack: a recursive walk is what this guards against.
    """
    stack = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise too_deep(where)
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return value


def _decode(text: str, where: str) -> Any:
    try:
        value = json.loads(text)
    except RecursionError:
        raise too_deep(where) from None
    return check_depth(value, where)


def parse_json(text: str, where: str, hint: str | None = None) -> Any:
    """One JSON value from text: a JSONL record (`where` is "FILE:LINE"), a small settings file."""
    try:
        return _decode(text, where)
    except json.JSONDecodeError as exc:
        at = f"line {exc.lineno} column {exc.colno}" if exc.lineno > 1 else f"column {exc.colno}"
        raise UserError(f"{where}: invalid JSON ({exc.msg} at {at})", hint) from None


def read_json_file(path: str | Path, what: str = "file", hint: str | None = None) -> Any:
    """A whole UTF-8 JSON file; a syntax error names its line."""
    path = Path(path).expanduser()
    text = read_text_file(path, what)
    try:
        return _decode(text, str(path))
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{path}:{exc.lineno}: {what} is not valid JSON ({exc.msg} at column {exc.colno})", hint
        ) from None


def jsonl_records(lines: Iterable[tuple[int, str]], name: str, hint: str | None = None) -> Iterator[tuple[str, Any]]:
    """("NAME:LINE", value) for each non-blank line of (line number, text) pairs."""
    for number, line in lines:
        if line.strip():
            where = f"{name}:{number}"
            yield where, parse_json(line, where, hint)


def read_jsonl_file(path: str | Path, what: str = "file", hint: str | None = None) -> Iterator[tuple[str, Any]]:
    """("FILE:LINE", value) for each record of a UTF-8 JSONL file, read line by line."""
    path = Path(path).expanduser()
    return jsonl_records(iter_text_lines(path, what), str(path), hint)
