"""`autodeco diagnose`: does the per-token variation of the heads' T̂/P̂ matter, or only its mean?

Every row runs on the same questions, k and request seeds as autodeco, so each sample draws
the same uniform numbers (common random numbers) and is paired per question with autodeco:

- autodeco: the heads' own per-token T̂/P̂; its trace (per-token T̂, P̂, token) is recorded.
- replay: a schedule equal to the trace. With the same random numbers it redraws autodeco's
  tokens (up to float-rounding flips when batches differ), so it checks the schedule path;
  it is not a test.
- shuffle-within / shuffle-across: schedules of the trace's own values, permuted within each
  sequence or across sequences at each position (`shuffles.py`).
- mean-shift: one static (T, p) at the run's mean T̂/P̂ for the task ("Just a Better Mean?").

The per-token claim holds only where autodeco beats both its shuffled selves with a 95% CI that
excludes 0. Beside the rows: the variance of T̂/P̂ within vs between sequences, and where on the
output they move (`trace_stats.py`).

    OUT/<strategy>/...   one eval folder per row (samples, run_config, results): resumable
    OUT/diagnose.json    everything below;  OUT/diagnose.md the summary;  OUT/diagnose.png the figure
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..core.decoding import DecodingStrategy, make_strategy, mean_shift_from_results, schedule_strategy, strategy_slug
from ..core.plots import plot_trace_profile
from ..engine.interface import Engine
from .diagnose_report import summary_markdown
from .paired_table import paired, question_metric, verdict
from .run_store import RESULTS_FILE, SampleLog, samples_path, write_json
from .runner import run_eval
from .settings import EvalSettings
from .shuffles import Trace, read_traces, schedules_for, sequence_set_digest, shuffle_across, shuffle_within
from .trace_stats import class_profile, position_profile, trace_variances

REPORT_FILE = "diagnose.json"
SUMMARY_FILE = "diagnose.md"
FIGURE_FILE = "diagnose.png"


@dataclass(frozen=True)
class DiagnoseOptions:
    shuffle_seed: int = 0
    bins: int = 10  # relative-position bins of the profile
    replay: bool = True  # the schedule-path check (one more generation pass)
    n_boot: int = 10_000


def row_strategies(options: DiagnoseOptions, traces: list[Trace]) -> dict[str, DecodingStrategy]:
    """The schedule rows' strategies. Their names carry what their schedules depend on besides
    each sequence's own trace (the shuffle seed; across: the set of sequences), so a change
    starts a new folder."""
    strategies = {"replay": schedule_strategy("replay")} if options.replay else {}
    seed = options.shuffle_seed
    strategies["shuffle-within"] = schedule_strategy(f"shuffle-within-s{seed}")
    strategies["shuffle-across"] = schedule_strategy(f"shuffle-across-s{seed}-{sequence_set_digest(traces)}")
    return strategies


def run_diagnose(
    engine: Engine,
    task: Any,
    settings: EvalSettings,
    options: DiagnoseOptions,
    *,
    out_dir: str | Path,
    progress: Any = None,
    run_info: dict | None = None,
) -> dict:
    """Run (or resume) every row on one task and write the report, summary and figure."""
    out_dir = Path(out_dir)
    common = {"out_dir": out_dir, "progress": progress, "run_info": run_info}
    autodeco = make_strategy("autodeco")
    auto = run_eval(engine, [task], [autodeco], settings, keep_trace=True, **common)[autodeco.label]
    traces = _traces(out_dir, autodeco, task.name, auto, settings)
    shift = mean_shift_from_results(out_dir / strategy_slug(autodeco) / RESULTS_FILE, task.name)
    strategies = row_strategies(options, traces)
    values = {
        "replay": {t.key: t.values for t in traces},
        "shuffle-within": shuffle_within(traces, options.shuffle_seed),
        "shuffle-across": shuffle_across(traces, options.shuffle_seed),
    }
    schedules = {strategy: schedules_for(task.name, traces, values[name]) for name, strategy in strategies.items()}
    results = run_eval(engine, [task], [*strategies.values(), shift], settings, schedules=schedules, **common)
    runs = {"autodeco": auto, **{name: results[s.label] for name, s in strategies.items()}}
    runs["mean-shift"] = results[shift.label]
    report = build_report(task.name, runs, traces, options)
    report["settings"] = {
        "k": settings.k,
        "seeds": list(settings.seeds),
        "limit": settings.limit,
        "split": settings.split,
        **asdict(options),
        "model": auto.get("model"),
        "heads": auto.get("heads"),
        "mean_shift": {"temperature": shift.temperature, "top_p": shift.top_p},
    }
    report["schedule_checks"] = _schedule_checks(out_dir, task.name, traces, strategies, autodeco)
    report["folders"] = {name: strategy_slug(_strategy_of(name, strategies, autodeco, shift)) for name in runs}
    write_report(out_dir, report)
    return report


def _strategy_of(name, strategies, autodeco, shift) -> DecodingStrategy:
    return {"autodeco": autodeco, "mean-shift": shift, **strategies}[name]


def _sample_keys(results: dict, task: str, settings: EvalSettings) -> list[tuple[str, int, int]]:
    docs = [str(row["doc_id"]) for row in results["per_question"][task]]
    return [(doc, int(seed), sample) for doc in docs for seed in settings.seeds for sample in range(settings.k)]


def _traces(out_dir: Path, autodeco: DecodingStrategy, task: str, results: dict, settings: EvalSettings) -> list[Trace]:
    path = samples_path(out_dir, strategy_slug(autodeco), task)
    return read_traces(SampleLog(path).records, _sample_keys(results, task, settings), str(path))


def build_report(task: str, runs: dict[str, dict], traces: list[Trace], options: DiagnoseOptions) -> dict:
    """Scores, paired Δ = autodeco − row (SE, bootstrap 95% CI), the verdicts and the trace stats."""
    rows = []
    for name, results in runs.items():
        score, se, _ = question_metric(results, task)
        row = {"name": name, "decoding": results["decoding"]["label"], "score": score, "score_stderr": se}
        if name != "autodeco":
            row["autodeco_minus_row"] = test = paired(runs["autodeco"], results, task, options.n_boot)
            row["autodeco_is"] = verdict(test)
        rows.append(row)
    by_name = {row["name"]: row for row in rows}
    return {
        "task": task,
        "metric": question_metric(runs["autodeco"], task)[2],
        "rows": rows,
        "verdict": per_token_verdict(by_name["shuffle-within"], by_name["shuffle-across"]),
        "variance": trace_variances(traces),
        "position_profile": position_profile(traces, options.bins),
        "token_classes": class_profile(traces),
    }


def per_token_verdict(within: dict, across: dict) -> dict:
    """The claim holds only if autodeco beats both shuffled selves (CI above 0); otherwise the
    pattern says what the variation that does matter is."""
    w, a = within["autodeco_is"], across["autodeco_is"]
    holds = w == a == "better"
    if holds:
        text = "the per-token claim holds: autodeco beats its shuffled selves with 95% CIs that exclude 0"
    else:
        text = (
            "the per-token claim does not hold: autodeco does not beat both its shuffled selves "
            "with a 95% CI that excludes 0"
        )
        if w == "better":
            text += (
                "; the order within a sequence matters, but a position profile shared by all sequences "
                "(shuffle-across) does as well as the heads"
            )
        elif a == "better":
            text += "; which sequence a value belongs to matters, not its order: a per-sequence level, not per-token"
        elif "worse" in (w, a):
            text += "; a shuffled schedule scores higher than the heads' own order"
        else:
            text += "; neither shuffle costs a significant score at this sample size"
    return {"holds": holds, "shuffle-within": w, "shuffle-across": a, "text": text}


def _schedule_checks(
    out_dir: Path, task: str, traces: list[Trace], strategies: dict[str, DecodingStrategy], autodeco: DecodingStrategy
) -> dict:
    """Per schedule row: tokens generated past the schedule's end (sampled at the fallback), and
    for replay how many samples are identical to autodeco's."""
    reference = SampleLog(samples_path(out_dir, strategy_slug(autodeco), task)).records
    checks = {}
    for name, strategy in strategies.items():
        records = SampleLog(samples_path(out_dir, strategy_slug(strategy), task)).records
        tokens = past = same = 0
        for trace in traces:
            record = records[trace.key]
            tokens += record["num_tokens"]
            past += max(0, record["num_tokens"] - len(trace))
            same += record["text"] == reference[trace.key]["text"]
        checks[name] = {"samples": len(traces), "tokens": tokens, "tokens_past_schedule": past}
        if name == "replay":
            checks[name]["identical_to_autodeco"] = same
    return checks


def write_report(out_dir: Path, report: dict) -> None:
    figure = plot_trace_profile(
        report["position_profile"],
        report["token_classes"],
        out_dir / FIGURE_FILE,
        title=f"{report['task']}: mean T̂ / P̂ (± 1 SD) by relative position",
    )
    write_json(out_dir / REPORT_FILE, report)
    (out_dir / SUMMARY_FILE).write_text(summary_markdown(report, figure.name), encoding="utf-8")
