"""bench_engine.py's tables: throughput against the reference variant and the machine's floor, and
the per-stage decode-step breakdowns with the body's and LM head's distance to their floors."""

from __future__ import annotations

import statistics

from engine_limits import step_floor_ms


def _median(rs: list[dict], value) -> float:
    """The median of value(r) over the repeats; nan if any repeat has none."""
    values = [value(r) for r in rs]
    if not values or any(v is None or v != v for v in values):
        return float("nan")
    return statistics.median(values)


def floor_tokens_per_s(r: dict, limits: dict) -> float:
    """Tokens per second if every decode forward of the run took its floor (weights read once or
    multiplied at peak; prefill, sampling and the rest free); nan when forwards were not counted."""
    if not r.get("decode_forwards") or not r.get("dtype"):
        return float("nan")
    rows = r["decode_rows"] / r["decode_forwards"]
    ms, _ = step_floor_ms(limits["body_params"] + limits["head_params"], r["dtype"], rows, limits)
    return r["tokens"] / (r["decode_forwards"] * ms / 1000)


def print_tables(results: dict) -> None:
    print_throughput(results["runs"], results["limits"])
    for part in [p for p in results["runs"] if p.startswith("breakdown-")]:
        print_breakdown(part, results["runs"][part], results["limits"])
    if "accuracy" in results:
        print("\naccuracy, fp32 vs default:")
        for name, values in results["accuracy"].items():
            print(
                f"  {name}: "
                + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
            )


def print_throughput(runs: dict, limits: dict) -> None:
    """Median tok/s per workload and variant, against the first variant and against the floor."""
    parts = [p for p in runs if not p.startswith("breakdown-")]
    if not parts:
        return
    print(
        "\n| workload | variant | dtype | tokens | rows/forward | median tok/s (wall) | median tok/s (CPU) "
        "| x reference (wall) | floor tok/s | floor ÷ measured (x) |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for part in parts:
        by_variant = {v: rs for v, rs in runs[part].items() if rs}
        reference = next(iter(by_variant.values()), None)
        ref_wall = _median(reference, lambda r: r["tokens"] / r["wall"]) if reference else float("nan")
        for variant, rs in by_variant.items():
            wall = _median(rs, lambda r: r["tokens"] / r["wall"])
            cpu = _median(rs, lambda r: r["tokens"] / r["cpu"])
            floor = _median(rs, lambda r: floor_tokens_per_s(r, limits))
            rows = _median(rs, lambda r: r["decode_rows"] / r["decode_forwards"] if r.get("decode_forwards") else None)
            print(
                f"| {part} | {variant} | {rs[0].get('dtype', '-')} | {_median(rs, lambda r: r['tokens']):.0f} | "
                f"{_fmt(rows, '.1f')} | {wall:.1f} | {_fmt(cpu, '.1f')} | {_fmt(wall / ref_wall, '.2f')} | "
                f"{_fmt(floor, '.0f')} | {_fmt(floor / wall, '.2f')} |"
            )


def _fmt(value, spec: str) -> str:
    return "-" if value is None or value != value else format(value, spec)


def print_breakdown(part: str, runs: dict, limits: dict) -> None:
    """ms per decode step by stage; the body's and LM head's floors at the rows they ran."""
    variants = [v for v in runs if runs[v]]
    if not variants:
        return
    print(f"\n{part}: CPU ms per decode step (median over repeats)")
    print("| | " + " | ".join(f"{v} ({runs[v][0].get('dtype', '?')})" for v in variants) + " |")
    print("|---|" + "---:|" * len(variants))
    names = list(runs[variants[0]][0]["ms_per_step"])
    totals = {v: statistics.median(sum(r["ms_per_step"].values()) for r in runs[v]) for v in variants}
    for name in names + ["total"]:
        cells = []
        for v in variants:
            value = totals[v] if name == "total" else statistics.median(r["ms_per_step"][name] for r in runs[v])
            cells.append(f"{value:.1f} ({100 * value / totals[v]:.0f}%)")
        print(f"| {name} | " + " | ".join(cells) + " |")
    for label, key, params in (
        ("transformer body", "decode forward: transformer body", limits["body_params"]),
        ("LM head", "decode forward: LM head", limits["head_params"]),
    ):
        cells = []
        for v in variants:
            r = runs[v][0]
            if not r.get("decode_forwards") or not r.get("dtype"):
                cells.append("-")
                continue
            per_forward = statistics.median(x["ms_per_step"][key] * x["steps"] / x["decode_forwards"] for x in runs[v])
            floor, bound = step_floor_ms(params, r["dtype"], r["decode_rows"] / r["decode_forwards"], limits)
            cells.append(f"{per_forward:.1f} vs {floor:.1f} ({bound}): {per_forward / floor:.1f}x")
        print(f"| {label}: ms per decode forward vs its floor | " + " | ".join(cells) + " |")
    for v in variants:
        r = runs[v][0]
        if r.get("decode_forwards"):
            print(
                f"{v}: {r['steps']} steps, {r['decode_rows'] / r['decode_forwards']:.1f} rows per decode forward, "
                f"{r['tokens'] / r['steps']:.1f} tokens per step"
            )
