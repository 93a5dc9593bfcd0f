"""torchtune-style recipes: a YAML file of fields, plus `key=value` overrides from the command line."""

from __future__ import annotations

import difflib
from dataclasses import MISSING, fields
from pathlib import Path
from typing import TypeVar

import yaml

from .errors import UserError

T = TypeVar("T")


def read_recipe(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        bundled = Path(__file__).resolve().parents[2] / "recipes" / path.name
        if bundled.is_file():
            path = bundled
        else:
            raise UserError(f"recipe not found: {path}", "see recipes/ for the shipped ones")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe must be a mapping of field: value")
    return data


def parse_overrides(items: list[str]) -> dict:
    values = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"override {item!r} is not key=value", "e.g. learning_rate=1e-3 epochs=3")
        key, raw = item.split("=", 1)
        try:
            values[key.strip()] = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            values[key.strip()] = raw
    return values


def as_overrides(values: dict) -> list[str]:
    """A dict of fields as key=value overrides (nested values as JSON, which YAML reads back)."""
    import json

    return [f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}" for k, v in values.items()]


def build_config(cls: type[T], recipe: str | Path | None, overrides: list[str], **explicit) -> T:
    """Recipe fields, then key=value overrides, then explicit CLI options (highest precedence)."""
    values: dict = {}
    where: dict[str, str] = {}
    if recipe:
        for key, value in read_recipe(recipe).items():
            values[key], where[key] = value, f"{recipe}"
    for key, value in parse_overrides(overrides).items():
        values[key], where[key] = value, "command line"
    for key, value in explicit.items():
        if value is not None:
            values[key], where[key] = value, "command line"
    known = {f.name: f for f in fields(cls)}
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]}?" if close else f"known fields: {', '.join(known)}"
            raise UserError(f"{where[key]}: unknown field {key!r}", hint)
    config = cls(**{k: _coerce(v, known[k], where[k]) for k, v in values.items()})
    return config


def _coerce(value, field, where):
    default = None if field.default is MISSING else field.default
    wanted = type(default) if default is not None else None
    if value is None or wanted is None or isinstance(value, wanted):
        return value
    if wanted is str and isinstance(value, bool):
        return "on" if value else "off"  # YAML 1.1 reads on/off/yes/no as booleans
    try:
        if wanted is bool and isinstance(value, str):
            return value.lower() in ("1", "true", "yes", "on")
        if wanted is float and isinstance(value, (int, str)):
            return float(value)
        if wanted is int and isinstance(value, str):
            return int(value)
    except ValueError:
        pass
    raise UserError(f"{where}: field {field.name} expects {wanted.__name__}, got {value!r}")
