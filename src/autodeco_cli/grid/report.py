"""A grid search shown: the heatmap (expert mode: its two stages as curves), the terminal table
and the summary lines. Everything here reads a grid.json dict (`grid.run_grid` / `load_grid`);
nothing runs a model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.schema import BOOLEAN, INTEGER, LIST, NUMBER, OBJECT, STRING, Field, Schema, check, optional
from ..evaluation.report import ci_pct, pct, pct_se, signed_pct
from .families import FAMILIES, grid_family

CAPTION = "* oracle\n≈ tied with it (paired 95% CI of the difference includes 0)\n× pruned early"
GRID_HINT = "re-run the grid-search command that wrote it (it resumes from its samples) or fix the file"
_CELL = {
    "temperature": Field(NUMBER, minimum=0),
    "label": Field(STRING),
    "slug": Field(STRING),
    "pass@1": Field(NUMBER, minimum=0, maximum=1),
    "pass@1_stderr": optional(NUMBER, nullable=True, minimum=0),
    "n_questions": Field(INTEGER, minimum=0),
}
_PRUNED = Schema({"questions": Field(INTEGER, minimum=0), "p_value": Field(NUMBER, minimum=0, maximum=1)})
# The fields of a finished grid.json that the figure, the tables and the summary read.
GRID_SCHEMA = Schema(
    {
        "benchmark": Field(STRING),
        "mode": Field(STRING, choices=("full", "expert", "cells")),
        "metric": optional(STRING),
        "family": optional(
            OBJECT,
            nullable=True,
            fields=Schema({"name": Field(STRING, choices=tuple(FAMILIES)), "fixed": optional(OBJECT)}),
        ),
        "n_questions": Field(INTEGER, minimum=0),
        "samples_per_question": Field(INTEGER, minimum=1),
        "stages": Field(LIST, items=Field(OBJECT, fields=Schema({"name": Field(STRING), "best": optional(STRING)}))),
        "cells": Field(
            LIST,
            items=Field(
                OBJECT,
                fields=Schema(
                    {
                        **_CELL,
                        "pass@1": Field(NUMBER, nullable=True, minimum=0, maximum=1),
                        "stages": Field(LIST, items=Field(STRING)),
                        "pruned": Field(OBJECT, nullable=True, fields=_PRUNED),
                        "tied": optional(BOOLEAN),
                    }
                ),
            ),
        ),
        "oracle": Field(OBJECT, fields=Schema(_CELL)),
        "ties": optional(LIST, items=Field(OBJECT, fields=Schema({"label": Field(STRING)}))),
    }
)


def check_grid(grid: dict, where: str) -> dict:
    """A finished grid.json's shape, its family's second axis included (each cell's value on it)."""
    check(grid, GRID_SCHEMA, where, GRID_HINT)
    axis = Schema({grid_family(grid).axis: Field(NUMBER)})
    axes = Schema({"cells": Field(LIST, items=Field(OBJECT, fields=axis)), "oracle": Field(OBJECT, fields=axis)})
    return check(grid, axes, where, GRID_HINT)


# ---------------------------------------------------------------------------
# Figure
# ---------------------------------------------------------------------------


def plot_grid(grid: dict, path: str | Path) -> Path:
    """Heatmap T x p annotated with the metric (%); expert mode: the two stages as 1-D curves."""
    from ..core.plots import _pyplot, save_figure

    plt = _pyplot()
    metric = grid.get("metric", "pass@1")
    title = (
        f"{grid['benchmark']}: {metric} (%), {grid['n_questions']} questions × {grid['samples_per_question']} samples"
    )
    fig = _plot_stages(plt, grid, title) if grid["mode"] == "expert" else _plot_heatmap(plt, grid, title)
    return save_figure(fig, path)


def _plot_stages(plt, grid: dict, title: str):
    """Expert mode: T at p = 1.0, then p at the best T, each a curve with its best circled."""
    cells, oracle = grid["cells"], grid.get("oracle", {}).get("slug")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    stages = {s["name"]: s for s in grid["stages"]}
    for ax, (stage, x_key, fixed) in zip(axes, (("temperature", "temperature", "p = 1.0"), ("top_p", "top_p", None))):
        rows = sorted((c for c in cells if stage in c["stages"]), key=lambda c: c[x_key])
        full = [c for c in rows if not c["pruned"]]
        pruned = [c for c in rows if c["pruned"]]
        ax.errorbar(
            [c[x_key] for c in full],
            [100 * c["pass@1"] for c in full],
            yerr=[100 * (c["pass@1_stderr"] or 0) for c in full],
            marker="o",
            capsize=3,
            color="tab:blue",
        )
        if pruned:
            ax.scatter(
                [c[x_key] for c in pruned],
                [100 * c["pass@1"] for c in pruned],
                marker="x",
                color="grey",
                label="pruned (partial questions)",
            )
            ax.legend(fontsize=7)
        best = stages.get(stage, {}).get("best")
        for c in rows:
            if c["slug"] in (best, oracle):
                ax.scatter(
                    [c[x_key]], [100 * c["pass@1"]], s=160, facecolors="none", edgecolors="tab:red", linewidths=1.6
                )
        fixed = fixed or f"T = {stages.get('top_p', {}).get('fixed', {}).get('temperature', '?')}"
        ax.set_title(
            f"stage {1 if stage == 'temperature' else 2}: tune {'T' if stage == 'temperature' else 'p'} ({fixed})",
            fontsize=9,
        )
        ax.set_xlabel("temperature T" if x_key == "temperature" else "top-p")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{grid.get('metric', 'pass@1')} (%)")
    fig.suptitle(title, fontsize=10)
    return fig


def _plot_heatmap(plt, grid: dict, title: str):
    """Full and cells mode: T x the family's second axis, each cell annotated (* oracle, ≈ tied, × pruned)."""
    cells, oracle = grid["cells"], grid.get("oracle", {}).get("slug")
    family = grid_family(grid)  # the second axis: top-p, or min-p / n / θ
    ts = sorted({c["temperature"] for c in cells})
    ps = sorted({c[family.axis] for c in cells})
    values = np.full((len(ts), len(ps)), np.nan)
    for c in cells:
        if not c["pruned"] and c["pass@1"] is not None:
            values[ts.index(c["temperature"]), ps.index(c[family.axis])] = 100 * c["pass@1"]
    fig, ax = plt.subplots(figsize=(max(4.5, 0.75 * len(ps) + 2.5), max(3.5, 0.42 * len(ts) + 1.8)))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#eeeeee")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, aspect="auto", origin="lower")
    fig.colorbar(image, ax=ax, label=f"{grid.get('metric', 'pass@1')} (%)")
    finite = values[np.isfinite(values)]
    middle = float(finite.mean()) if finite.size else 0.0
    for c in cells:
        i, j = ts.index(c["temperature"]), ps.index(c[family.axis])
        if c["pruned"]:
            ax.text(j, i, "×", ha="center", va="center", color="grey", fontsize=8)
            continue
        if c["pass@1"] is None:
            continue
        mark = "*" if c["slug"] == oracle else ("≈" if c.get("tied") else "")
        colour = "black" if values[i, j] > middle else "white"
        ax.text(
            j,
            i,
            f"{100 * c['pass@1']:.{1 if len(ps) <= 8 else 0}f}{mark}",
            ha="center",
            va="center",
            fontsize=7,
            color=colour,
        )
        if c["slug"] == oracle:
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    ax.set_xticks(range(len(ps)), [f"{p:g}" for p in ps], fontsize=7)
    ax.set_yticks(range(len(ts)), [f"{t:g}" for t in ts], fontsize=7)
    ax.set_xlabel(family.axis_label)
    ax.set_ylabel(family.temperature_label)
    ax.set_title(title + "\n* oracle   ≈ tied with it   × pruned", fontsize=9)
    return fig


# ---------------------------------------------------------------------------
# Terminal
# ---------------------------------------------------------------------------


def grid_table(grid: dict):
    """Full mode: a T x p matrix of the metric; other modes: one row per cell with Δ vs the oracle."""
    return _matrix_table(grid) if grid["mode"] == "full" else _cell_table(grid)


def _matrix_table(grid: dict):
    from rich.table import Table

    cells, oracle = grid["cells"], grid.get("oracle", {}).get("slug")
    family = grid_family(grid)
    ts = sorted({c["temperature"] for c in cells})
    ps = sorted({c[family.axis] for c in cells})
    by_pos = {(c["temperature"], c[family.axis]): c for c in cells}
    table = Table(title=f"{grid['benchmark']}: {grid.get('metric', 'pass@1')} (%)", caption=CAPTION)
    table.add_column(f"{family.temperature_label.split()[-1]} \\ {family.axis_label}", justify="right", style="bold")
    for p in ps:
        table.add_column(f"{p:g}", justify="right")
    for t in ts:
        table.add_row(f"{t:g}", *(_matrix_entry(by_pos.get((t, p)), oracle) for p in ps))
    return table


def _matrix_entry(c: dict | None, oracle: str | None) -> str:
    if c is None or c["pass@1"] is None:
        return ""
    if c["pruned"]:
        return "[dim]×[/]"
    if c["slug"] == oracle:
        return f"[bold green]{pct(c['pass@1'])}*[/]"
    return f"{pct(c['pass@1'])}≈" if c.get("tied") else pct(c["pass@1"])


def _cell_table(grid: dict):
    from rich.table import Table

    oracle = grid.get("oracle", {}).get("slug")
    family = grid_family(grid)
    metric = grid.get("metric", "pass@1")
    table = Table(title=f"grid-search {grid['benchmark']} ({grid['mode']}): {metric} in %", caption=CAPTION)
    axis_columns = ("T", "p") if family.is_static else (family.temperature_label.split()[-1], family.axis_label)
    for column in ("stage", *axis_columns, "questions", f"{metric} ± SE", "Δ vs oracle", "95% CI", "note"):
        table.add_column(column, justify="left" if column in ("stage", "note") else "right")
    for c in grid["cells"]:
        vs = c.get("vs_oracle")
        table.add_row(
            ",".join(c["stages"]),
            f"{c['temperature']:g}",
            f"{c[family.axis]:g}",
            str(c["n_questions"]),
            pct_se(c["pass@1"], c["pass@1_stderr"]),
            signed_pct(vs["delta"]) if vs else "–",
            ci_pct(vs["ci_low"], vs["ci_high"]) if vs else "–",
            _note(c, oracle),
        )
    return table


def _note(c: dict, oracle: str | None) -> str:
    if c["pruned"]:
        return f"pruned after {c['pruned']['questions']} questions (p={c['pruned']['p_value']:.2g})"
    if c["slug"] == oracle:
        return "[bold green]oracle *[/]"
    return "tied ≈" if c.get("tied") else ""


def grid_summary_lines(grid: dict) -> list[str]:
    o = grid["oracle"]
    lines = [
        f"oracle: {o['label']}  {grid.get('metric', 'pass@1')} {pct_se(o['pass@1'], o.get('pass@1_stderr'))} % "
        f"on {o['n_questions']} questions"
    ]
    ties = grid.get("ties", [])
    lines.append(f"tied with the oracle ({len(ties)}): " + (", ".join(t["label"] for t in ties) if ties else "none"))
    early = grid.get("early_stopping", {})
    if early.get("enabled"):
        lines.append(
            f"early stopping: {early['test']}, alpha {early['alpha']:g}, rounds {early['rounds_questions']} questions; "
            f"pruned {len(early['pruned'])} cells"
        )
    return lines
