"""torchtune-style recipes: a YAML file of fields, plus `key=value` overrides from the command line."""

from __future__ import annotations

import difflib
import math
import types
import typing
from dataclasses import Field, field, fields
from pathlib import Path
from typing import TypeVar

import yaml

from ..core.errors import UserError
from ..core.io_checks import read_text_file
from ..core.json_files import check_depth, too_deep

T = TypeVar("T")
_RANGE = "autodeco_range"  # a field's metadata key: (low, high, low excluded)


def in_range(low: float, high: float | None = None, *, above: bool = False, **field_kwargs):
    """A dataclass field whose value (each element, for a list) `build_config` keeps at least
    `low` (above it, with `above`) and at most `high`; None passes, for an optional field."""
    return field(metadata={_RANGE: (low, high, above)}, **field_kwargs)


def read_recipe(path: str | Path) -> dict:
    return read_recipe_with_lines(path)[0]


def read_recipe_with_lines(path: str | Path) -> tuple[dict, dict[str, str]]:
    """The recipe's fields, and for each field where it is set ("FILE:LINE") for error messages."""
    path = Path(path)
    if not path.exists():
        from ..core.bundled import bundled_recipe, bundled_recipe_names

        bundled = bundled_recipe(path.name)
        if bundled is not None:
            path = bundled
        else:
            raise UserError(f"recipe not found: {path}", f"shipped recipes: {', '.join(bundled_recipe_names())}")
    text = read_text_file(path, "recipe")
    try:
        data = check_depth(yaml.safe_load(text) or {}, str(path))
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    except RecursionError:  # PyYAML composes nested nodes recursively
        raise too_deep(str(path)) from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe must be a mapping of field: value")
    lines = {
        str(k.value): f"{path}:{k.start_mark.line + 1}"
        for k, _ in getattr(node, "value", [])
        if isinstance(k, yaml.ScalarNode)
    }
    return data, lines


def parse_overrides(items: list[str]) -> dict:
    return {key: value for key, (value, _) in _parse_overrides(items).items()}


def _parse_overrides(items: list[str]) -> dict[str, tuple]:
    """{key: (YAML-read value, raw text)}: str fields keep the raw text (YAML 1.1 reads off/no as false)."""
    values = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"override {item!r} is not key=value", "e.g. learning_rate=1e-3 epochs=3")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        except RecursionError:
            raise too_deep(f"override {key.strip()}") from None
        values[key.strip()] = (check_depth(value, f"override {key.strip()}"), raw)
    return values


def as_overrides(values: dict) -> list[str]:
    """A dict of fields as key=value overrides (nested values as JSON, which YAML reads back)."""
    import json

    return [f"{k}={json.dumps(v) if isinstance(v, (list, dict)) or v is None else v}" for k, v in values.items()]


def build_config(cls: type[T], recipe: str | Path | None, overrides: list[str], **explicit) -> T:
    """Recipe fields, then key=value overrides, then explicit CLI options (highest precedence).

    Values are coerced by each field's type annotation (see `_coerce`)."""
    values: dict = {}
    where: dict[str, str] = {}
    raw: dict[str, str] = {}
    if recipe:
        data, lines = read_recipe_with_lines(recipe)
        for key, value in data.items():
            values[key], where[key] = value, lines.get(str(key), f"{recipe}")
    for key, (value, text) in _parse_overrides(overrides).items():
        values[key], where[key], raw[key] = value, "command line", text
    for key, value in explicit.items():
        if value is not None:
            values[key], where[key] = value, "command line"
            raw.pop(key, None)
    known = {f.name: f for f in fields(cls)}
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]}?" if close else f"known fields: {', '.join(known)}"
            raise UserError(f"{where[key]}: unknown field {key!r}", hint)
    hints = _field_types(cls)
    coerced = {k: _coerce(v, known[k], hints.get(k), where[k], raw.get(k)) for k, v in values.items()}
    for key, value in coerced.items():
        _check_range(value, known[key], where[key])
    return cls(**coerced)


def _check_range(value, field_: Field, where: str) -> None:
    """k=0 or limit=-1 in a recipe is a one-line error naming the field, not a failure hours into a study."""
    if _RANGE not in field_.metadata or value is None:
        return
    low, high, above = field_.metadata[_RANGE]
    for item in value if isinstance(value, list) else [value]:
        number = item if isinstance(item, (int, float)) and not isinstance(item, bool) else None
        inside = number is not None and (number > low if above else number >= low) and (high is None or number <= high)
        if not inside:
            interval = f"{'>' if above else '>='} {low:g}" + (f" and <= {high:g}" if high is not None else "")
            shown = f"{field_.name}={value!r} is" if item is value else f"{field_.name} holds {item!r}, which is"
            plural = "values" if item is not value else "a value"
            raise UserError(f"{where}: field {shown} out of range", f"use {plural} {interval}")


def _field_types(cls) -> dict:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation that does not evaluate: leave those fields uncoerced
        return {}


def _unwrap(annotation) -> tuple[object, object, bool]:
    """(origin type, element type for list[X], optional?) of a field annotation."""
    args = typing.get_args(annotation)
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        optional = len(rest) < len(args)
        if len(rest) != 1:
            return None, None, optional  # a real union: not coerced
        annotation, args = rest[0], typing.get_args(rest[0])
    origin = typing.get_origin(annotation) or annotation
    return origin, (args[0] if origin is list and args else None), optional


def _coerce(value, field, annotation, where, raw=None):
    """The value as the field's annotated type: bool, int, float, str, list / list[X] (a string is
    a comma list), dict, or Optional of one of them; anything else is a one-line error."""
    wanted, item, optional = _unwrap(annotation)
    if value is None:
        if optional or wanted is None or field.default is None:
            return None
        raise UserError(f"{where}: field {field.name} needs a value ({_type_name(annotation)})")
    if wanted is str and raw is not None and not isinstance(value, str):
        return raw  # key=off or key=1.10 on the command line: the text as typed
    converter = _CONVERTERS.get(wanted)
    if converter is None:
        return value
    try:
        result = converter(value)
        return [_coerce(v, field, item, where) for v in result] if wanted is list and item in _CONVERTERS else result
    except (TypeError, ValueError):
        pass
    raise UserError(f"{where}: field {field.name} expects {_type_name(annotation)}, got {value!r}", _HINTS.get(wanted))


def _type_name(annotation) -> str:
    wanted, item, optional = _unwrap(annotation)
    name = getattr(wanted, "__name__", str(wanted))
    name = f"list of {item.__name__}" if wanted is list and isinstance(item, type) else name
    return f"{name} or null" if optional else name


def _to_bool(value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def _to_int(value) -> int:
    if isinstance(value, bool) or isinstance(value, (list, dict)):
        raise TypeError(value)
    if isinstance(value, int):
        return value
    number = float(value)  # 1e3 and 8.0 are whole numbers
    if not number.is_integer():
        raise ValueError(value)
    return int(number)


def _to_float(value) -> float:
    if isinstance(value, (bool, list, dict)):
        raise TypeError(value)
    number = float(value)
    if math.isnan(number):  # YAML's .nan: no setting means "not a number"
        raise ValueError(value)
    return number


def _to_str(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"  # a recipe's on/off/yes/no reads (YAML 1.1) as booleans
    if isinstance(value, (list, dict)):
        raise TypeError(value)
    return str(value)


def _to_list(value) -> list:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):  # a,b,c: each part read as YAML (seeds=0,1 are numbers)
        return [_yaml_scalar(part.strip()) for part in value.split(",") if part.strip()]
    raise TypeError(value)


def _yaml_scalar(text: str):
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (str, int, float, bool)) else text


def _to_dict(value) -> dict:
    if isinstance(value, dict):
        return value
    raise TypeError(value)


_CONVERTERS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str, list: _to_list, dict: _to_dict}
_HINTS = {
    bool: "use true or false",
    int: "use a whole number, e.g. 100",
    float: "use a number, e.g. 1e-3",
    list: "use a comma list (a,b) or a YAML list ([a, b])",
    dict: "use a YAML mapping, e.g. {key: value}",
}
