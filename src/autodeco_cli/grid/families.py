"""Grid-search families: which decoding a grid sweeps, and its two axes.

Every family is swept over temperature T (edt: its maximum T0) and one parameter of its own:

  static       T x top-p      (the paper's oracle static baseline; `Cell` below)
  min-p        T x min_p      defaults T {0.7, 1.0, 1.5} x min_p {0.05, 0.1, 0.2, 0.3}
  top-n-sigma  T x n          defaults T {0.7, 1.0, 1.5} x n {0.5, 1.0, 1.5}
  edt          T0 x θ         defaults T0 {0.5, 0.7, 1.0} x θ {0.1, 0.5, 1.0}, N fixed (0.8)

A cell of any family is the strategy `make_strategy` builds, scored into the same folder as
`autodeco eval --decoding <family>` with the same values, so cells and eval runs resume into
each other. The static family keeps its own `Cell` so its grid.json stays as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.decoding import ADAPTIVE_PARAMETERS, DEFAULT_EDT_BASE, DecodingStrategy, make_strategy, strategy_slug
from ..core.errors import UserError

# Upper ends of the second axes' values (`cells.check_value`); lower ends are exclusive 0.
AXIS_LIMITS = {"--top-ps": 1.0, "--min-ps": 1.0, "--n-sigmas": 10.0, "--edt-thetas": 10.0}


@dataclass(frozen=True)
class Family:
    name: str  # also the strategy's --decoding name
    axis: str  # the strategy field (and grid.json cell key) of the second axis
    axis_values_key: str  # grid.json key of the second axis' value list
    option: str  # the grid-search flag giving the second axis
    axis_label: str  # for tables and the heatmap
    temperature_label: str
    default_temperatures: str
    default_values: str
    fixed: dict = field(default_factory=dict)  # settings every cell shares (edt's N)

    @property
    def is_static(self) -> bool:
        return self.name == "static"

    def cell(self, temperature: float, value: float):
        if self.is_static:
            return Cell(temperature, value)  # static cells keep their own type (and grid.json format)
        return FamilyCell(temperature, value, self.name, tuple(sorted(self.fixed.items())))

    def describe(self) -> dict:
        """grid.json's record of the family: its axes (and the fixed settings)."""
        return {
            "name": self.name,
            "axes": {"temperature": self.temperature_label, self.axis: self.axis_label},
            "fixed": dict(self.fixed),
        }


FAMILIES = {
    "static": Family("static", "top_p", "top_ps", "--top-ps", "top-p", "temperature T", "0.1:1.5:0.1", "0.1:1.0:0.1"),
    "min-p": Family(
        "min-p", "min_p", "min_ps", "--min-ps", "min-p", "temperature T", "0.7,1.0,1.5", "0.05,0.1,0.2,0.3"
    ),
    "top-n-sigma": Family(
        "top-n-sigma", "n_sigma", "n_sigmas", "--n-sigmas", "n (σ)", "temperature T", "0.7,1.0,1.5", "0.5,1.0,1.5"
    ),
    "edt": Family(
        "edt",
        "edt_theta",
        "edt_thetas",
        "--edt-thetas",
        "θ",
        "max temperature T₀",
        "0.5,0.7,1.0",
        "0.1,0.5,1.0",
        {"edt_base": DEFAULT_EDT_BASE},
    ),
}


def get_family(name: str, edt_base: float | None = None) -> Family:
    if name not in FAMILIES:
        raise UserError(f"--family {name!r} is not a grid family", f"use one of: {', '.join(FAMILIES)}")
    family = FAMILIES[name]
    if edt_base is not None:
        if name != "edt":
            raise UserError(
                f"--edt-base is a setting of --family edt, not {name}", "drop --edt-base, or use --family edt"
            )
        make_strategy("edt", edt_base=edt_base)  # the range check, with its one-line message
        family = Family(**{**family.__dict__, "fixed": {"edt_base": float(edt_base)}})
    return family


def axis_text(family: Family, given: dict[str, str | None]) -> str | None:
    """The family's second-axis text from {flag: text} (None: the family's default); another
    family's flag is refused rather than ignored."""
    for option, text in given.items():
        if text is not None and option != family.option:
            owner = next(f.name for f in FAMILIES.values() if f.option == option)
            raise UserError(
                f"{option} is the axis of --family {owner}, not {family.name}",
                f"use {family.option} with --family {family.name}",
            )
    return given.get(family.option)


class _NamedByStrategy:
    """A grid cell's label and folder name are its strategy's, so results folders match `eval`'s."""

    @property
    def label(self) -> str:
        return self.strategy.label

    @property
    def slug(self) -> str:
        return strategy_slug(self.strategy)


@dataclass(frozen=True, order=True)
class FamilyCell(_NamedByStrategy):
    """A cell of a non-static family, with the fields and methods of the static `Cell` below."""

    temperature: float
    value: float
    family: str
    fixed: tuple = ()  # sorted (field, value) pairs shared by the grid

    @property
    def strategy(self) -> DecodingStrategy:
        return make_strategy(
            self.family, temperature=self.temperature, **{FAMILIES[self.family].axis: self.value}, **dict(self.fixed)
        )

    @property
    def axes(self) -> dict:
        return {"temperature": self.temperature, FAMILIES[self.family].axis: self.value}

    def to_dict(self) -> dict:
        return {**self.axes, **dict(self.fixed), "label": self.label, "slug": self.slug}


def grid_family(grid: dict) -> Family:
    """The family of a grid.json (static grids, old ones included, carry no family record)."""
    record = grid.get("family")
    if not record:
        return FAMILIES["static"]
    family = FAMILIES[record["name"]]
    return Family(**{**family.__dict__, "fixed": dict(record.get("fixed", {}))})


def cell_from_record(grid: dict, record: dict):
    """The cell a grid.json record (a cell, the oracle) names."""
    family = grid_family(grid)
    return family.cell(record["temperature"], record[family.axis])


def strategy_params(strategy: DecodingStrategy) -> dict:
    """The adaptive decoder's own settings, for comparison rows (empty for the others)."""
    names = ADAPTIVE_PARAMETERS.get(strategy.name, ())
    return {name: getattr(strategy, name) for name in names}


@dataclass(frozen=True, order=True)
class Cell(_NamedByStrategy):
    """A cell of the static grid: one (T, p)."""

    temperature: float
    top_p: float

    @property
    def strategy(self) -> DecodingStrategy:
        return make_strategy("static", temperature=self.temperature, top_p=self.top_p)

    @property
    def axes(self) -> dict:
        return {"temperature": self.temperature, "top_p": self.top_p}

    def to_dict(self) -> dict:
        return {"temperature": self.temperature, "top_p": self.top_p, "label": self.label, "slug": self.slug}


DEFAULT_CELL = Cell(1.0, 1.0)
