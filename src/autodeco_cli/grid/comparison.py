"""A benchmark's final comparison (`grid-search --then-eval`, `autodeco reproduce`).

Rows: greedy, default (T=1, p=1), the grid's oracle, autodeco, mean-shift (static at the
autodeco run's mean T̂/P̂) and the T̂-only / P̂-only ablations, each with its paired
per-question difference against default. `row_cells` is the one formatter of a row: the
terminal table, comparison.md and reproduce's report all print its cells.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.decoding import DecodingStrategy, make_strategy, strategy_slug
from ..core.errors import UserError
from ..core.safe_writes import write_atomically
from ..engine.interface import Engine
from ..evaluation.paired_table import paired as paired_delta
from ..evaluation.report import ci_pct, pct_se, signed_pct
from ..evaluation.run_store import write_json
from ..evaluation.runner import resolve_tasks, run_eval
from ..evaluation.settings import EvalSettings
from ..tasks.aggregation import metric_name
from .families import cell_from_record, strategy_params

COMPARISON_FILE = "comparison.json"
COMPARISON_MD = "comparison.md"
# The reference every row is paired against: grid.DEFAULT_CELL's strategy, so the grid's own
# (1.0, 1.0) samples are read back rather than generated again.
DEFAULT = make_strategy("static", temperature=1.0, top_p=1.0)
# `row_cells` order; {metric} is the task's question metric
COLUMNS = ("method", "decoding", "T / p", "{metric} ± SE", "Δ vs default ± SE", "95% CI", "mean tokens")
AUTODECO_VS = ("greedy", "oracle", "mean-shift")  # autodeco's own paired tests, for the report's verdicts


def run_comparison(
    engine: Engine,
    task: str | Any,
    grid: dict,
    *,
    out_dir: str | Path,
    batch_size: int = 8,
    progress: Any = None,
    data_dir: str | Path | None = None,
    run_info: dict | None = None,
    n_boot: int = 10_000,
) -> dict:
    """The benchmark's final table (see the module docstring); writes OUT/comparison.json and
    OUT/comparison.md and returns the dict.

    Every row is the task's metric ± SE with its paired difference against default (± SE,
    bootstrap 95% CI) over the same questions. k, seeds, limit, budget and chat come from `grid`
    (a run_grid result or a loaded grid.json), so the rows match the grid's cells. The oracle
    and default cells are read back from the grid's sample logs in `out_dir` (no generation;
    default is generated only if the grid did not score it on every question). `engine` needs
    heads (open it with an autodeco strategy).
    """
    task_obj = _grid_task(task, grid)
    out_dir = Path(out_dir)
    settings = EvalSettings(
        k=grid["k"], seeds=grid["seeds"], limit=grid["limit"], max_new_tokens=grid["max_new_tokens"],
        batch_size=batch_size, chat=grid["chat"], data_dir=data_dir,
    )  # fmt: skip
    common = {"out_dir": out_dir, "progress": progress, "run_info": run_info}
    specs = _row_specs(cell_from_record(grid, grid["oracle"]).strategy)
    results = run_eval(engine, [task_obj], _unique([s for _, s in specs.items()]), settings, **common)
    auto = results[specs["autodeco"].label]["results"][task_obj.name]
    if "mean_temperature" not in auto:
        raise UserError("the autodeco run recorded no mean T̂/P̂", "check that its samples generated tokens")
    shift = make_strategy("mean-shift", temperature=auto["mean_temperature"], top_p=auto["mean_top_p"])
    results.update(run_eval(engine, [task_obj], [shift], settings, **common))
    specs = _with_mean_shift(specs, shift)
    name, metric = task_obj.name, metric_name(task_obj)
    reference = results[DEFAULT.label]
    comparison = {
        "benchmark": name,
        "model": grid.get("model"),
        "heads": (run_info or {}).get("heads"),
        "k": grid["k"],
        "seeds": grid["seeds"],
        "limit": grid["limit"],
        "n_questions": grid["n_questions"],
        "grid_mode": grid["mode"],
        "reference": "default",
        "metric": metric,
        "paired": f"Δ = row − default per question ({metric}), SE over questions, "
        f"bootstrap 95% CI ({n_boot} resamples, seed 0)",
        "rows": [_row(row_name, s, results[s.label], reference, name, n_boot) for row_name, s in specs.items()],
        "autodeco_vs": {
            other: paired_delta(results[specs["autodeco"].label], results[specs[other].label], name, n_boot)
            for other in AUTODECO_VS
        },
    }
    write_json(out_dir / COMPARISON_FILE, comparison)
    write_atomically(out_dir / COMPARISON_MD, comparison_markdown(comparison))
    return comparison


def _grid_task(task: str | Any, grid: dict) -> Any:
    tasks = resolve_tasks(task if isinstance(task, str) else [task])
    if len(tasks) != 1 or tasks[0].name != grid["benchmark"]:
        raise UserError(f"the comparison task must be the grid's benchmark ({grid['benchmark']})")
    return tasks[0]


def _row_specs(oracle: DecodingStrategy) -> dict[str, DecodingStrategy]:
    """The rows before mean-shift (which needs autodeco's measured means), in table order."""
    return {
        "greedy": make_strategy("greedy"),
        "default": DEFAULT,
        "oracle": oracle,
        "autodeco": make_strategy("autodeco"),
        "autodeco T̂-only": make_strategy("autodeco", active_heads="temperature"),
        "autodeco P̂-only": make_strategy("autodeco", active_heads="top_p"),
    }


def _with_mean_shift(specs: dict[str, DecodingStrategy], shift: DecodingStrategy) -> dict[str, DecodingStrategy]:
    items = list(specs.items())
    return dict(items[:4] + [("mean-shift", shift)] + items[4:])  # right after autodeco


def _unique(strategies: list[DecodingStrategy]) -> list[DecodingStrategy]:
    # the oracle may be the default cell: one folder, one strategy
    seen, out = set(), []
    for strategy in strategies:
        slug = strategy_slug(strategy)
        if slug not in seen:
            seen.add(slug)
            out.append(strategy)
    return out


def _row(name: str, strategy: DecodingStrategy, result: dict, reference: dict, task: str, n_boot: int) -> dict:
    m = result["results"][task]
    paired = paired_delta(result, reference, task, n_boot)
    row = {
        "name": name,
        "decoding": strategy.label,
        "slug": strategy_slug(strategy),
        "pass@1": m["pass@1"],
        "pass@1_stderr": m.get("pass@1_stderr"),
        "score": m.get("score", m["pass@1"]),
        "score_stderr": m.get("score_stderr", m.get("pass@1_stderr")),
        "n_questions": m["n_questions"],
        "samples_per_question": m["samples_per_question"],
        "mean_tokens": m.get("mean_tokens"),
        "delta_vs_default": paired["delta"],
        "delta_se": paired["se"],
        "delta_ci": paired["ci"],
    }
    if strategy.temperature is not None:
        row.update({"temperature": strategy.temperature, "top_p": strategy.top_p, **strategy_params(strategy)})
    if "mean_temperature" in m:
        row.update({"mean_temperature": m["mean_temperature"], "mean_top_p": m["mean_top_p"]})
    return row


# ---------------------------------------------------------------------------
# Rendering: one row formatter, three outputs
# ---------------------------------------------------------------------------


def row_cells(row: dict) -> tuple[str, ...]:
    """A comparison row as the text of its COLUMNS, rates in % (comparison.json files written
    before rows recorded `score` or `mean_tokens` fall back to pass@1 and '–')."""
    score = pct_se(row.get("score", row["pass@1"]), row.get("score_stderr", row.get("pass@1_stderr")))
    tokens = "–" if row.get("mean_tokens") is None else f"{row['mean_tokens']:.1f}"
    return (row["name"], row["decoding"], _row_params(row), score, *_delta(row), tokens)


def _row_params(row: dict) -> str:
    if "mean_temperature" in row:
        return f"T̂ {row['mean_temperature']:.3f}, P̂ {row['mean_top_p']:.3f}"
    if "temperature" in row:
        extra = "".join(
            f", {name} {row[name]:.3g}" for name in ("min_p", "n_sigma", "edt_base", "edt_theta") if name in row
        )
        return f"T {row['temperature']:.3g}, p {row['top_p']:.3g}{extra}"
    return "argmax"


def _delta(row: dict) -> tuple[str, str]:
    if row["name"] == "default":
        return "(reference)", ""
    se = f" ± {100 * row['delta_se']:.1f}" if row.get("delta_se") is not None else ""
    low, high = row.get("delta_ci") or (None, None)
    ci = "–" if low is None or high is None else ci_pct(low, high)
    return f"{signed_pct(row['delta_vs_default'])}{se}", ci


def _headers(comparison: dict) -> list[str]:
    return [column.format(metric=comparison.get("metric", "pass@1")) for column in COLUMNS]


def comparison_table_lines(comparison: dict) -> list[str]:
    """The rows as a markdown table (comparison.md and reproduce's report)."""
    align = ["---" if i < 3 else "---:" for i in range(len(COLUMNS))]
    lines = ["| " + " | ".join(_headers(comparison)) + " |", "| " + " | ".join(align) + " |"]
    return lines + ["| " + " | ".join(row_cells(row)) + " |" for row in comparison["rows"]]


def comparison_markdown(comparison: dict) -> str:
    metric = comparison.get("metric", "pass@1")
    lines = [
        f"# {comparison['benchmark']}: decoding comparison",
        "",
        f"Model {comparison.get('model')}; {comparison['n_questions']} questions; "
        f"k={comparison['k']} × seeds {comparison['seeds']} "
        f"(greedy: 1 sample); {metric} in %. Δ: paired per-question difference against default (T=1, p=1).",
        "",
        *comparison_table_lines(comparison),
    ]
    return "\n".join(lines) + "\n"


def comparison_rich_table(comparison: dict):
    from rich.table import Table

    metric = comparison.get("metric", "pass@1")
    table = Table(title=f"{comparison['benchmark']}: {metric} (%) and paired Δ vs default (T=1, p=1)")
    names = [row["name"] for row in comparison["rows"]]
    for index, column in enumerate(_headers(comparison)):
        # the method names stay whole on a narrow terminal; the other columns wrap
        width = {"min_width": max(map(len, names), default=0), "no_wrap": True} if index == 0 else {}
        table.add_column(column, justify="left" if index < 3 else "right", **width)
    for row in comparison["rows"]:
        table.add_row(*row_cells(row))
    return table
