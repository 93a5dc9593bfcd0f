"""Typed schemas for the JSON and YAML files we read, and the one checker that reads them.

Each reader declares its file's shape once, next to itself, as `Field`s (a value's kinds, whether
it may be missing or null, its range) nested through `Schema`s (an object's fields). `check`
walks a parsed value against it and turns the first problem into a UserError that names where it
sits, `FILE:LINE/key[index]/key: is null; expected a number in [0, 1]`, with the reader's fix, so
code past the reader can index the data without a TypeError, KeyError or a NaN to surprise it.

Only what the reader uses is declared: other keys pass, so files from newer or older versions and
official checkpoints with extra fields still load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .errors import UserError

STRING, INTEGER, NUMBER, BOOLEAN, OBJECT, LIST = "string", "integer", "number", "boolean", "object", "list"

_NAMES = {
    STRING: "a string",
    INTEGER: "an integer",
    NUMBER: "a number",
    BOOLEAN: "true or false",
    OBJECT: "an object",
    LIST: "a list",
}


@dataclass(frozen=True)
class Field:
    """One value: its JSON kind(s) and the rules a value of that kind must meet.

    `minimum`/`maximum` are inclusive and apply to numbers; numbers must also be finite unless
    `finite=False`. `fields` describes an object's named keys, `items` a list's elements.
    """

    kinds: tuple[str, ...] | str
    required: bool = True
    nullable: bool = False
    minimum: float | None = None
    maximum: float | None = None
    finite: bool = True
    nonempty: bool = False
    choices: tuple = ()
    fields: Schema | None = None
    items: Field | None = None

    @property
    def kind_list(self) -> tuple[str, ...]:
        return (self.kinds,) if isinstance(self.kinds, str) else self.kinds


@dataclass(frozen=True)
class Schema:
    """An object's fields. `values` checks every key not named in `fields` (keys that are names:
    tasks, doc ids); `one_of` lists keys of which at least one must be present."""

    fields: dict[str, Field] = field(default_factory=dict)
    values: Field | None = None
    one_of: tuple[str, ...] = ()


def optional(kinds: tuple[str, ...] | str, **rules) -> Field:
    """A field that may be missing (the reader has a default for it)."""
    return Field(kinds, required=False, **rules)


def mapping(values: Field, **rules) -> Field:
    """An object whose keys are names (tasks, doc ids), each value a `values`."""
    return Field(OBJECT, fields=Schema(values=values), **rules)


def check(value: Any, spec: Field | Schema, where: str, hint: str | None = None) -> Any:
    """`value` unchanged if it meets `spec`; else a UserError at the first problem, located from `where`."""
    if isinstance(spec, Schema):
        spec = Field(OBJECT, fields=spec)
    problem, at = _problem(value, spec, where)
    if problem:
        raise UserError(f"{at}: {problem}", hint)
    return value


def _problem(value: Any, spec: Field, where: str) -> tuple[str | None, str]:
    """(what is wrong, where), or (None, where) when the value meets the field."""
    if value is None:
        return (None if spec.nullable else f"is null; expected {expected(spec)}"), where
    kind = _kind(value)
    if kind not in spec.kind_list and not (kind == INTEGER and NUMBER in spec.kind_list):
        return f"is {describe(value)}; expected {expected(spec)}", where
    if kind in (INTEGER, NUMBER) and not _number_ok(value, spec):
        return f"is {describe(value)}; expected {expected(spec)}", where
    if spec.nonempty and not value and kind in (STRING, LIST, OBJECT):
        return f"is empty; expected {expected(spec)}", where
    if spec.choices and value not in spec.choices:
        return f"is {describe(value)}; expected {expected(spec)}", where
    if kind == LIST and spec.items is not None:
        for index, item in enumerate(value):
            problem, at = _problem(item, spec.items, f"{where}[{index}]")
            if problem:
                return problem, at
    if kind == OBJECT and spec.fields is not None:
        return _object_problem(value, spec.fields, where)
    return None, where


def _object_problem(value: dict, schema: Schema, where: str) -> tuple[str | None, str]:
    for name, spec in schema.fields.items():
        if name not in value:
            if spec.required:
                return f"is missing; expected {expected(spec)}", f"{where}/{name}"
            continue
        problem, at = _problem(value[name], spec, f"{where}/{name}")
        if problem:
            return problem, at
    if schema.values is not None:
        for name, item in value.items():
            if name not in schema.fields:
                problem, at = _problem(item, schema.values, f"{where}/{name}")
                if problem:
                    return problem, at
    if schema.one_of and not any(name in value for name in schema.one_of):
        return f"has none of {', '.join(schema.one_of)}; expected at least one of them", where
    return None, where


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, int):
        return INTEGER
    if isinstance(value, float):
        return NUMBER
    if isinstance(value, str):
        return STRING
    if isinstance(value, (list, tuple)):
        return LIST
    if isinstance(value, dict):
        return OBJECT
    return type(value).__name__


def _number_ok(value: float, spec: Field) -> bool:
    if spec.finite and not math.isfinite(value):
        return False
    if spec.minimum is not None and not value >= spec.minimum:
        return False
    return spec.maximum is None or value <= spec.maximum


def describe(value: Any) -> str:
    """A value as an error message quotes it: 'a string ('576')', 'NaN', 'a list'."""
    if value is None:
        return "null"
    kind = _kind(value)
    if kind == BOOLEAN:
        return "true" if value else "false"
    if kind == NUMBER and math.isnan(value):
        return "NaN"
    if kind in (INTEGER, NUMBER):
        return repr(value)
    if kind == STRING:
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"a string ({shown!r})"
    return _NAMES.get(kind, kind)


def expected(spec: Field) -> str:
    """What a field wants, in words: 'a number in [0, 1]', 'a list of objects', 'an integer ≥ 1'."""
    if spec.choices:
        text = "one of " + ", ".join(map(str, spec.choices))
    else:
        text = " or ".join(_kind_words(kind, spec) for kind in spec.kind_list)
    return text + (" or null" if spec.nullable else "")


def _kind_words(kind: str, spec: Field) -> str:
    text = _NAMES.get(kind, kind)
    if spec.nonempty and kind in (STRING, LIST):
        text = "a non-empty " + text.split(" ", 1)[1]
    if kind in (INTEGER, NUMBER):
        bounded = spec.minimum is not None and spec.maximum is not None
        text = ("a finite number" if kind == NUMBER and spec.finite and not bounded else text) + _range_words(spec)
    if kind == LIST and spec.items is not None and not spec.items.fields:
        text += " of " + _plural(spec.items)
    elif kind == LIST and spec.items is not None:
        text += " of objects"
    return text


def _range_words(spec: Field) -> str:
    low, high = spec.minimum, spec.maximum
    if low is not None and high is not None:
        return f" in [{low:g}, {high:g}]"
    if low is not None:
        return f" ≥ {low:g}"
    return f" ≤ {high:g}" if high is not None else ""


def _plural(spec: Field) -> str:
    words = {STRING: "strings", INTEGER: "integers", NUMBER: "numbers", BOOLEAN: "booleans", OBJECT: "objects"}
    return " or ".join(words.get(kind, kind) for kind in spec.kind_list)
