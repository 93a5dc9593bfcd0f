"""The where-it-wins comparison table: named runs on one benchmark, paired against the oracle.

A row is one decoding run's results.json. Every row gets its question-level score ± SE and its
paired per-question difference against the oracle (the best static cell, searched on the test
questions themselves) and against default sampling; the autodeco rows also get paired tests
against every other row, from which the report's "better / worse / tied" verdicts are read
(only from a 95% CI that excludes 0).
"""

from __future__ import annotations

import math
from typing import Any

from .question_scores import metric_of
from .report import compare_results


def paired(a: dict, b: dict, task: str, n_boot: int = 10_000) -> dict:
    """Paired per-question score (the task's metric) of run a − run b on one task: Δ, SE (None
    when undefined), bootstrap 95% CI. Shared with grid-search's comparison table."""
    (item,) = compare_results(a, b, [task], n_boot=n_boot, seed=0)
    c = item.comparison
    return {"delta": c.mean_diff, "se": c.se if math.isfinite(c.se) else None, "ci": [c.ci_low, c.ci_high]}


def question_metric(results: dict, task: str) -> tuple[float, float | None, str]:
    """(score, its SE, metric name) of a results.json on a task: the task's declared question
    metric where there is one, else pass@1 (old results files have only pass@1)."""
    m = results["results"][task]
    if "score" in m:
        return m["score"], m.get("score_stderr"), metric_of(results, task)
    return m["pass@1"], m.get("pass@1_stderr"), metric_of(results, task)


def comparison_rows(
    runs: dict[str, dict], task: str, reference: str = "oracle", baseline: str = "default", n_boot: int = 10_000
) -> list[dict]:
    """One row per named run, in the given order, with paired Δ vs `reference` and vs `baseline`."""
    rows = []
    for name, results in runs.items():
        score, se, metric = question_metric(results, task)
        m = results["results"][task]
        row: dict[str, Any] = {
            "name": name,
            "decoding": results.get("decoding", {}).get("label"),
            "score": score,
            "score_stderr": se,
            "metric": metric,
            "pass@1": m.get("pass@1"),
            "n_questions": m.get("n_questions"),
            "samples_per_question": m.get("samples_per_question"),
            "mean_tokens": m.get("mean_tokens"),
        }
        if "mean_temperature" in m:
            row["mean_temperature"], row["mean_top_p"] = m["mean_temperature"], m["mean_top_p"]
        for other, key in ((reference, "vs_reference"), (baseline, "vs_baseline")):
            if other in runs and other != name:
                row[key] = paired(results, runs[other], task, n_boot)
        rows.append(row)
    return rows


def autodeco_tests(
    runs: dict[str, dict], task: str, autodeco_names: list[str], n_boot: int = 10_000
) -> dict[str, dict[str, dict]]:
    """For each autodeco row, its paired test against every other row."""
    return {
        name: {other: paired(runs[name], runs[other], task, n_boot) for other in runs if other != name}
        for name in autodeco_names
        if name in runs
    }


def verdict(test: dict) -> str:
    low, high = test["ci"]
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "tied"


def fmt(value: float | None, signed: bool = False, digits: int = 3) -> str:
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _delta_cell(test: dict | None) -> str:
    if not test:
        return "(reference)"
    return (
        f"{fmt(test['delta'], signed=True)} ± {fmt(test['se'])} ({fmt(test['ci'][0], signed=True)}, "
        f"{fmt(test['ci'][1], signed=True)})"
    )


def _params(row: dict, settings: dict[str, str]) -> str:
    if "mean_temperature" in row:
        return f"T̂ {row['mean_temperature']:.3f}, P̂ {row['mean_top_p']:.3f}"
    return settings.get(row["name"], row.get("decoding") or "")


def rows_markdown(
    rows: list[dict], settings: dict[str, str] | None = None, reference: str = "oracle", baseline: str = "default"
) -> list[str]:
    """The table as markdown lines: score ± SE, paired Δ vs the reference and vs the baseline."""
    metric = rows[0]["metric"] if rows else "score"
    lines = [
        f"| decoding | {metric} ± SE | Δ vs {reference} ± SE (95% CI) | Δ vs {baseline} ± SE (95% CI) | mean tokens | "
        "setting |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        tokens = fmt(row.get("mean_tokens"), digits=1)
        lines.append(
            f"| {row['name']} | {fmt(row['score'])} ± {fmt(row['score_stderr'])} | "
            f"{_delta_cell(row.get('vs_reference'))} | "
            f"{_delta_cell(row.get('vs_baseline'))} | {tokens} | {_params(row, settings or {})} |"
        )
    return lines


def verdict_lines(tests: dict[str, dict[str, dict]], task: str) -> list[str]:
    """'autodeco-X vs Y: better/worse/tied, Δ ± SE (CI)' for every pair, one line per autodeco row."""
    lines = []
    for name, against in tests.items():
        parts = [
            f"{other} {verdict(t)} ({fmt(t['delta'], signed=True)} ± {fmt(t['se'])}, CI "
            f"{fmt(t['ci'][0], signed=True)}, {fmt(t['ci'][1], signed=True)})"
            for other, t in against.items()
        ]
        lines.append(f"- **{task}, {name}** vs " + "; ".join(parts) + ".")
    return lines
