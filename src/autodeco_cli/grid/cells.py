"""The cells of a grid search: the static (T, p) `Cell`, and the value and cell lists the
command line gives, parsed and range-checked (other families' cells are `grid_families`').
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Sequence

from ..core.decoding import MAX_STATIC_TEMPERATURE
from ..core.errors import UserError
from .families import AXIS_LIMITS, Cell, Family, FamilyCell, get_family

DIGITS = 4  # grid values are rounded to this many decimals (labels and folders stay stable)


def _number(text: str, option: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise UserError(f"{option}: {text.strip()!r} is not a number", "e.g. 0.1:1.5:0.1 or 0.3,0.7,1.0") from None
    if not value.is_finite():
        raise UserError(f"{option}: {text.strip()!r} is not a finite number")
    return value


def check_value(value: float, option: str) -> float:
    """A value of one axis, rounded to DIGITS decimals; UserError when out of its range."""
    high = MAX_STATIC_TEMPERATURE if option == "--temperatures" else AXIS_LIMITS.get(option, 1.0)
    if not 0.0 < round(value, DIGITS) <= high:
        raise UserError(
            f"{option}: {value:g} is out of range", f"values must lie in (0, {high:g}], {DIGITS} decimals at most"
        )
    return round(value, DIGITS)


def parse_values(text: str, option: str = "--temperatures") -> list[float]:
    """'0.1:1.5:0.1' (START:STOP:STEP, STOP included) or '0.3,0.7,1.0' -> sorted unique floats.

    Decimal steps, so 0.1:0.3:0.1 is exactly [0.1, 0.2, 0.3] (floats would give 0.30000000000000004).
    """
    values: list[float] = []
    for part in (p for p in str(text).split(",") if p.strip()):
        pieces = part.split(":")
        if len(pieces) == 1:
            values.append(float(_number(pieces[0], option)))
            continue
        if len(pieces) != 3:
            raise UserError(
                f"{option}: {part.strip()!r} is not START:STOP:STEP", "e.g. 0.1:1.5:0.1 or a comma list 0.3,0.7,1.0"
            )
        start, stop, step = (_number(piece, option) for piece in pieces)
        if step <= 0 or stop < start:
            raise UserError(f"{option}: {part.strip()!r} needs STEP > 0 and STOP >= START")
        count = int((stop - start) / step) + 1
        if count > 1000:
            raise UserError(f"{option}: {part.strip()!r} gives {count} values", "use a coarser STEP")
        values.extend(float(start + i * step) for i in range(count))
    if not values:
        example = "0.1:1.5:0.1" if option == "--temperatures" else "0.1:1.0:0.1"
        raise UserError(
            f"{option} {text!r} gives no values", f"e.g. {example} or 0.3,0.7,1.0, or drop the option for its default"
        )
    return sorted({check_value(v, option) for v in values})


def parse_cells(text: str, family: Family | None = None) -> list[Cell]:
    """'0.6:0.95,1.0:1.0' -> [Cell(0.6, 0.95), Cell(1.0, 1.0)] (order kept, repeats dropped).

    For another `family` the second number is that family's parameter (min-p: T:MIN_P)."""
    family = family or get_family("static")
    shape, example = (
        ("T:P", "0.6:0.95,1.0:1.0")
        if family.is_static
        else (f"T:{family.axis.upper()}", f"1.0:{family.default_values.split(',')[1]}")
    )
    cells: list[Cell] = []
    for part in (p for p in str(text).split(",") if p.strip()):
        pieces = part.split(":")
        if len(pieces) != 2:
            raise UserError(f"--cells: {part.strip()!r} is not {shape}", f"e.g. --cells {example}")
        cell = family.cell(
            check_value(float(_number(pieces[0], "--temperatures")), "--temperatures"),
            check_value(float(_number(pieces[1], family.option)), family.option),
        )
        if cell not in cells:
            cells.append(cell)
    if not cells:
        raise UserError(f"--cells {text!r} gives no cells", f"e.g. --cells {example}")
    return cells


def full_cells(temperatures: Sequence[float], top_ps: Sequence[float], family: Family | None = None) -> list[Cell]:
    make = Cell if family is None else family.cell
    return [make(t, p) for t in temperatures for p in top_ps]


def cell_count(mode: str, temperatures: Sequence[float], values: Sequence[float], cells: Sequence | None) -> int:
    """How many cells a sweep scores at most (expert: T at p=1, then p at the best T)."""
    if mode == "cells":
        return len(cells or ())
    if mode == "expert":
        return len(temperatures) + len(values)
    return len(temperatures) * len(values)


def axes_and_cells(
    family: Family, mode: str, temperatures, values, cells
) -> tuple[list[float], list[float], list | None]:
    """The checked T and second-axis values (the family's defaults when None) and, in cells
    mode, the cell list."""
    if mode == "expert" and not family.is_static:
        raise UserError(
            f"--mode expert is the static (T, p) recipe, not for --family {family.name}",
            "use --mode full (the default) or --mode cells",
        )
    temperatures = [
        check_value(float(t), "--temperatures")
        for t in (temperatures if temperatures is not None else parse_values(family.default_temperatures))
    ]
    values = [
        check_value(float(v), family.option)
        for v in (values if values is not None else parse_values(family.default_values, family.option))
    ]
    for option, given in (("--temperatures", temperatures), (family.option, values)):
        if not given:  # an empty axis would sweep nothing and still write an empty grid.json
            raise UserError(f"{option} gives no values", "give at least one value, or drop it for the default")
    cell_list = None
    if mode == "cells":
        if not cells:
            raise UserError(
                "--mode cells needs --cells",
                "e.g. --cells 0.6:0.95,1.0:1.0"
                if family.is_static
                else f"e.g. --family {family.name} --cells 1.0:{values[0]:g}",
            )
        cell_list = [
            c
            if isinstance(c, (Cell, FamilyCell))
            else family.cell(check_value(float(c[0]), "--temperatures"), check_value(float(c[1]), family.option))
            for c in cells
        ]
        cell_list = list(dict.fromkeys(cell_list))
    return temperatures, values, cell_list
