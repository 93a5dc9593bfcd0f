"""The `autodeco diagnose` report as text: the rows table the command prints, and diagnose.md."""

from __future__ import annotations

from .paired_table import fmt

WHAT_ROWS_TEST = {
    "autodeco": "the heads' own per-token T̂/P̂.",
    "replay": "a schedule equal to autodeco's trace: checks the schedule path (Δ ≈ 0), not a test.",
    "shuffle-within": "each sequence's own T̂/P̂ in random order: is the order within a sequence used?",
    "shuffle-across": "at each position, T̂/P̂ of another sequence: is the link to this sequence used?",
    "mean-shift": "one static (T, p) at the run's mean T̂/P̂: is more than the mean used?",
}


def _delta(test: dict | None) -> tuple[str, str]:
    if not test:
        return "(reference)", ""
    low, high = test["ci"]
    return (
        f"{fmt(test['delta'], signed=True)} ± {fmt(test['se'])}",
        f"{fmt(low, signed=True)}, {fmt(high, signed=True)}",
    )


def rows_table(report: dict) -> list[str]:
    """score ± SE and the paired Δ = autodeco − row per row, as markdown lines."""
    lines = [
        f"| row | decoding | {report['metric']} ± SE | Δ = autodeco − row ± SE | 95% CI | autodeco is |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        delta, ci = _delta(row.get("autodeco_minus_row"))
        lines.append(
            f"| {row['name']} | {row['decoding']} | {fmt(row['score'])} ± {fmt(row['score_stderr'])} | {delta} | "
            f"{ci} | {row.get('autodeco_is', '')} |"
        )
    return lines


def mean_shift_line(report: dict) -> str:
    row = next(r for r in report["rows"] if r["name"] == "mean-shift")
    delta, ci = _delta(row["autodeco_minus_row"])
    return f"per task (vs its mean-shift): autodeco is {row['autodeco_is']}, Δ {delta} (95% CI {ci})"


def check_lines(report: dict) -> list[str]:
    lines = []
    for name, check in report.get("schedule_checks", {}).items():
        share = check["tokens_past_schedule"] / check["tokens"] if check["tokens"] else 0.0
        text = (
            f"{name}: {check['tokens_past_schedule']} of {check['tokens']} tokens ({share:.1%}) ran past the "
            "schedule's end and sampled at the sequence's mean T̂/P̂"
        )
        if "identical_to_autodeco" in check:
            text += f"; {check['identical_to_autodeco']} of {check['samples']} samples identical to autodeco's"
        lines.append(text)
    return lines


def variance_lines(report: dict) -> list[str]:
    lines = [
        "| value | within sequences | between sequences | within share | pooled token variance | sequences | tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, label in (("temperature", "T̂"), ("top_p", "P̂")):
        v = report["variance"][name]
        share = "–" if v["within_share"] is None else f"{v['within_share']:.1%}"
        lines.append(
            f"| {label} | {v['within']:.3g} | {v['between']:.3g} | {share} | {v['pooled_token_variance']:.3g} | "
            f"{v['n_sequences']} | {v['n_tokens']} |"
        )
    return lines


def _profile_lines(report: dict) -> list[str]:
    lines = ["| where | tokens | mean T̂ (SD) | mean P̂ (SD) |", "|---|---|---|---|"]
    rows = [(f"position {r['from']:.1f}–{r['to']:.1f}", r) for r in report["position_profile"]]
    rows += [(f"{name} tokens", r) for name, r in report["token_classes"].items()]
    for where, r in rows:
        if not r["n_tokens"]:
            lines.append(f"| {where} | 0 | – | – |")
            continue
        lines.append(
            f"| {where} | {r['n_tokens']} | {r['temperature']:.3f} ({r['temperature_sd']:.3f}) | "
            f"{r['top_p']:.3f} ({r['top_p_sd']:.3f}) |"
        )
    return lines


def summary_markdown(report: dict, figure_name: str) -> str:
    s = report.get("settings", {})
    seeds = ",".join(map(str, s.get("seeds", [])))
    lines = [
        f"# Per-token control or just a better mean? `{report['task']}`",
        "",
        f"Model {s.get('model')}, heads {s.get('heads')}; {s.get('split')} split, limit {s.get('limit')}, "
        f"k={s.get('k')} per seed, seeds {seeds}; shuffle seed {s.get('shuffle_seed')}. Every row draws with "
        "autodeco's random numbers (same request seeds) and is paired with it per question; CIs are bootstrap.",
        "",
        *rows_table(report),
        "",
        f"**Verdict: {report['verdict']['text']}.**",
        "",
        f"- {mean_shift_line(report)}.",
        *(f"- {line}." for line in check_lines(report)),
        "",
        "What each row tests:",
        "",
        *(f"- **{name}**: {text}" for name, text in WHAT_ROWS_TEST.items()),
        "",
        "## Where T̂ and P̂ vary",
        "",
        "Within: the mean over sequences of each sequence's variance (what only a per-token policy can use); "
        "between: the variance of the sequence means.",
        "",
        *variance_lines(report),
        "",
        "By relative position on the output (token index / length) and by token class:",
        "",
        *_profile_lines(report),
        "",
        f"![mean T̂ and P̂ by relative position and token class]({figure_name})",
        "",
    ]
    return "\n".join(lines)
