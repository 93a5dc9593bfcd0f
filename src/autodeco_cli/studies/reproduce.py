"""`make reproduce`: the paper's comparison end to end, at the scale one machine allows.

Stages (each resumes on re-run; the run's folder holds everything):
1. make-data  : on-policy trajectories from the base model, kept when the task's scorer accepts them
2. train      : joint heads (the comparison's autodeco rows)
3. benchmarks : per task, the expert grid (oracle) and the comparison table (greedy, default,
                oracle, autodeco, mean-shift, T̂-only, P̂-only)
4. figures    : a per-token T̂/P̂ trace, the oracle heatmap(s), the distribution of T̂ and P̂
5. report     : reports/reproduce.md with the tables, the figures, the run time, and what held
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.decoding import MAX_STATIC_TEMPERATURE
from ..core.errors import UserError
from ..training.recipes import in_range
from .stage_clock import StageClock

if TYPE_CHECKING:
    from ..engine.interface import Engine


@dataclass
class ReproduceConfig:
    model: str = "smollm2-135m-instruct"
    # the base model's dtype for every stage; None: what training loads (fp32 on CPU, bf16 on CUDA;
    # engine.models.training_dtype). The CPU recipes pin float32: their recorded numbers are fp32's
    dtype: str | None = None
    workdir: str = "runs/reproduce"
    report: str = "reports/reproduce.md"
    # on-policy data
    data_tasks: str = "arith-add,arith-sub,arith-mul"
    data_limit: int = in_range(1, default=400)
    data_k: int = in_range(1, default=4)
    data_temperature: float = in_range(0, MAX_STATIC_TEMPERATURE, above=True, default=1.0)
    data_top_p: float = in_range(0, 1, above=True, default=1.0)
    data_max_new_tokens: int = in_range(1, default=32)
    # heads (key=value fields of TrainConfig)
    train: dict = field(
        default_factory=lambda: {
            "learning_rate": 1e-3,
            "epochs": 3,
            "micro_batch_size": 16,
            "gradient_accumulation": 2,
            "max_length": 256,
        }
    )
    # evaluation
    benchmarks: list = field(default_factory=lambda: ["arith-add", "arith-mul"])
    k: int = in_range(1, default=4)
    seeds: list = field(default_factory=lambda: [0])
    limit: int | None = in_range(1, default=100)
    max_new_tokens: int | None = in_range(1, default=None)
    batch_size: int = in_range(1, default=32)
    grid_mode: str = "expert"
    temperatures: list = in_range(
        0, MAX_STATIC_TEMPERATURE, above=True, default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 1.0, 1.3]
    )
    top_ps: list = in_range(0, 1, above=True, default_factory=lambda: [0.5, 0.7, 0.9, 0.95, 1.0])
    # figures (a folder next to the report, so the quick run cannot overwrite the full run's)
    figures_dir: str = "figures"
    trace_prompt: str = "What is 27 + 82? Reply with just the number."
    distribution_questions: int = in_range(1, default=32)
    threads: int | None = in_range(0, default=2)  # 0 or null: torch's own count


def run_reproduce(config: ReproduceConfig, log=print) -> Path:
    """Every stage in order; each one resumes from what the run's folder already holds."""

    from ..core.heads import load_heads
    from ..core.startup_gc import paused_then_frozen
    from ..engine.generation import GenerationEngine
    from ..engine.models import load_base_model, training_dtype
    from ..training.trainer import train_heads_once

    clock = StageClock.start(config.workdir, config.threads, log)
    work = Path(config.workdir)

    with paused_then_frozen():  # the model load: see core/startup_gc
        lm = load_base_model(config.model, dtype=training_dtype(config.dtype, None))
    data_path = work / "on_policy.jsonl"
    heads_dir = work / "heads"
    with clock.stage("make-data"):
        data_report = _make_data(config, lm, data_path)
    kept = sum(1 for line in data_path.read_text(encoding="utf-8").splitlines() if line.strip())
    log(f"on-policy data: {kept} trajectories in {data_path}")
    if kept < 8:
        raise UserError(f"{data_path}: only {kept} trajectories were kept", "raise data_limit or data_k")

    with clock.stage("train-heads"):
        train_heads_once(config.train, data_path, heads_dir, config.model, save_every=5, dtype=config.dtype)
    heads = load_heads(heads_dir, expected_hidden_size=lm.hidden_size)
    engine = GenerationEngine(lm, heads)
    grids, comparisons = _grids_and_comparisons(engine, config, heads_dir, clock, log)

    report_path = Path(config.report)
    figures = report_path.parent / config.figures_dir
    figures.mkdir(parents=True, exist_ok=True)
    with clock.stage("figures"):
        figure_files = _figures(engine, config, grids, figures)
    clock.close_invocation()
    training = _training_summary(heads_dir)
    report_path.write_text(
        _report(config, data_report, kept, training, comparisons, grids, figure_files, clock, work), encoding="utf-8"
    )
    clock.save()
    return report_path


def _make_data(config: ReproduceConfig, lm, data_path: Path) -> dict:
    """Stage 1: the frozen model's own accepted answers on the training split."""
    from ..core.decoding import make_strategy
    from ..engine.generation import GenerationEngine
    from ..training.on_policy_data import make_on_policy_data

    engine = GenerationEngine(lm)
    strategy = make_strategy("static", config.data_temperature, config.data_top_p)
    data_report = make_on_policy_data(
        engine,
        config.data_tasks,
        data_path,
        strategy,
        k=config.data_k,
        limit=config.data_limit,
        max_new_tokens=config.data_max_new_tokens,
        batch_size=config.batch_size,
        seed=0,
    )
    engine.close()
    return data_report


def _grids_and_comparisons(engine: Engine, config: ReproduceConfig, heads_dir: Path, clock, log) -> tuple[dict, dict]:
    """Stages 3-4 per benchmark: the static grid (the oracle), then the paired final comparison."""
    from ..grid.comparison import run_comparison
    from ..grid.search import run_grid

    run_info = {"model": config.model, "heads": str(heads_dir)}
    spec, settings = _grid_plan(config)
    comparisons, grids = {}, {}
    for benchmark in config.benchmarks:
        out = Path(config.workdir) / "eval" / benchmark
        with clock.stage(f"grid {benchmark}"):
            grids[benchmark] = run_grid(engine, benchmark, spec, settings, out_dir=out, run_info=run_info, log=log)
        with clock.stage(f"comparison {benchmark}"):
            comparisons[benchmark] = run_comparison(
                engine, benchmark, grids[benchmark], out_dir=out, batch_size=config.batch_size, run_info=run_info
            )
    return grids, comparisons


def _grid_plan(config: ReproduceConfig):
    """Each benchmark's sweep: its cells, and what every cell samples."""
    from ..evaluation.settings import EvalSettings
    from ..grid.search import GridSpec

    spec = GridSpec(mode=config.grid_mode, temperatures=config.temperatures, top_ps=config.top_ps)
    settings = EvalSettings(
        k=config.k,
        seeds=config.seeds,
        limit=config.limit,
        max_new_tokens=config.max_new_tokens,
        batch_size=config.batch_size,
    )
    return spec, settings


def _figures(engine: Engine, config: ReproduceConfig, grids: dict, figures: Path) -> dict[str, Path]:
    from ..core.decoding import make_strategy
    from ..core.plots import plot_decoding_distribution, plot_token_trace
    from ..engine.requests import build_requests
    from ..grid.report import plot_grid
    from ..tasks.registry import get_task

    files = {}
    autodeco = make_strategy("autodeco")
    trace_request = build_requests(engine.tokenizer, [config.trace_prompt], autodeco, seed=0)
    (generation,) = engine.generate(trace_request, max_new_tokens=48, trace=True)
    files["trace"] = plot_token_trace(
        generation.trace, figures / "trace.png", title=f"T̂ and P̂ per token: {config.trace_prompt}"
    )
    for benchmark, grid in grids.items():
        files[f"heatmap {benchmark}"] = plot_grid(grid, figures / f"oracle_{benchmark}.png")
    temperatures, top_ps = [], []
    for benchmark in config.benchmarks:
        docs = get_task(benchmark).load_docs(limit=config.distribution_questions)
        requests = build_requests(
            engine.tokenizer, [d.prompt for d in docs], autodeco, seed=1, prompt_ids=[d.doc_id for d in docs]
        )
        for g in engine.generate(requests, max_new_tokens=64, batch_size=config.batch_size, trace=True):
            temperatures += [t.temperature for t in g.trace or []]
            top_ps += [t.top_p for t in g.trace or []]
    files["distribution"] = plot_decoding_distribution(temperatures, top_ps, figures / "distribution.png")
    return files


def _training_summary(heads_dir: Path) -> dict:
    metrics = heads_dir / "metrics.jsonl"
    lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()] if metrics.is_file() else []
    return lines[-1] if lines else {}


def _fmt(value, digits=3, signed=False):
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _report(config, data_report, kept, training, comparisons, grids, figure_files, clock, work) -> str:
    from ..grid.comparison import comparison_table_lines

    lines = _intro_lines(config, kept, training, work)
    verdicts = []
    for benchmark, comparison in comparisons.items():
        oracle = grids[benchmark]["oracle"]
        search = f"`{grids[benchmark]['mode']}` grid; oracle cell T={oracle['temperature']}, p={oracle['top_p']}."
        lines += [f"## {benchmark}", "", f"Oracle search: {search}", ""]
        lines += comparison_table_lines(comparison) + [""]  # the same rows as comparison.md
        verdicts.append(_verdict(benchmark, comparison))
    lines += (
        [
            "## What held and what did not",
            "",
            "Each comparison is paired per question (autodeco − other): Δ ± SE over questions and a bootstrap 95% CI; "
            '"better"/"worse" only when the CI excludes 0.',
            "",
        ]
        + [f"- {v}" for v in verdicts]
        + [""]
    )
    lines += ["## Figures", ""]
    for name, path in figure_files.items():
        lines += [f"**{name}**", "", f"![{name}]({config.figures_dir}/{Path(path).name})", ""]
    lines += ["## Run time", ""] + clock.markdown()
    return "\n".join(lines)


def _intro_lines(config, kept, training, work) -> list[str]:
    """What was run: the model, why this suite, the data and the heads."""
    return [
        "# AutoDeco reproduction at CPU scale",
        "",
        f"Model: `{config.model}` (SmolLM2-135M-Instruct, GGUF Q4_1 dequantised to fp32). "
        f"Generated by `autodeco reproduce` (`make reproduce` / `make reproduce-quick`); "
        f"everything below is measured in that run, folder `{work}`.",
        "",
        "## Why this suite",
        "",
        "The default model scores ~0 on GSM8K/MATH and at chance on ARC/MMLU-Pro "
        "(see `../shared/notes/cpu-signal.md`), so paper benchmarks would compare noise. "
        "Generated arithmetic (disjoint train/test pools) has real signal and strong "
        f"decoding sensitivity. Benchmarks: {', '.join(config.benchmarks)}; {config.limit or 'all'} questions each, "
        f"k={config.k} samples × seeds {config.seeds} per question; greedy uses one sample.",
        "",
        "## Data and heads",
        "",
        f"- on-policy data: tasks {config.data_tasks}, {config.data_limit} train problems each, "
        f"k={config.data_k} samples at T={config.data_temperature}, p={config.data_top_p}; "
        f"**{kept} trajectories kept** (scorer-accepted, finished).",
        f"- heads: joint training, {json.dumps(config.train)}; final step {training.get('step', '–')}: "
        f"loss {_fmt(training.get('loss'), 4)} "
        f"(temperature {_fmt(training.get('temperature_loss'), 4)}, top-p {_fmt(training.get('top_p_loss'), 4)}), "
        f"mean T̂ {_fmt(training.get('mean_temperature'))}, mean P̂ {_fmt(training.get('mean_top_p'))} "
        "on the last batch.",
        "",
    ]


def _verdict(benchmark: str, comparison: dict) -> str:
    rows = {r["name"]: r for r in comparison["rows"]}
    auto = rows["autodeco"]
    paired = dict(comparison.get("autodeco_vs") or {})
    # the table's own column: autodeco − default
    paired["default"] = {
        "delta": auto["delta_vs_default"],
        "se": auto.get("delta_se"),
        "ci": auto.get("delta_ci") or [None, None],
    }

    def against(other: str, label: str) -> str:
        c = paired.get(other)
        if c is None or c["ci"][0] is None:
            return f"vs {label}: not measured"
        low, high = c["ci"]
        outcome = "better" if low > 0 else "worse" if high < 0 else "tied within noise"
        return (
            f"vs {label} {outcome}, Δ {_fmt(c['delta'], signed=True)} ± {_fmt(c['se'])} (95% CI "
            f"{_fmt(low, signed=True)}, {_fmt(high, signed=True)})"
        )

    parts = [
        f"**{benchmark}**: autodeco {auto['pass@1']:.3f}",
        against("default", "default"),
        against("greedy", "greedy"),
        against("oracle", "the test-set-tuned oracle"),
        against("mean-shift", "mean-shift"),
    ]
    return "; ".join(parts) + "."


def quick_config() -> ReproduceConfig:
    """The same pipeline on a sliver of the data (CI smoke run): a few minutes on 2 cores (105 s
    measured; the budget is ~10)."""
    return ReproduceConfig(
        workdir="runs/reproduce-quick",
        report="reports/reproduce-quick.md",
        figures_dir="figures-quick",
        data_tasks="arith-add",
        data_limit=96,
        data_k=2,
        data_temperature=0.7,  # more accepted trajectories per problem: the quick run has few problems
        train={
            "learning_rate": 1e-3,
            "epochs": 2,
            "micro_batch_size": 8,
            "gradient_accumulation": 1,
            "max_length": 256,
        },
        benchmarks=["arith-add"],
        k=2,
        limit=16,
        temperatures=[0.3, 1.0],
        top_ps=[0.9, 1.0],
        distribution_questions=8,
    )


def config_from(recipe: str | None, overrides: list[str], quick: bool) -> ReproduceConfig:
    from dataclasses import replace

    from ..training.recipes import build_config

    base = build_config(ReproduceConfig, recipe, overrides)
    if quick:
        # explicit recipe/overrides still win over the quick defaults
        changed = {k: v for k, v in asdict(base).items() if v != getattr(ReproduceConfig(), k)}
        base = replace(quick_config(), **changed)
    check_config(base)
    return base


def check_config(config: ReproduceConfig) -> None:
    """What the field ranges (`in_range`) cannot say, before torch is imported: the study's later
    stages would otherwise find a bad seed list, grid mode, model or train field only after the
    model has loaded and the data has been sampled."""
    from ..engine.option_checks import check_recipe_fields
    from ..evaluation.runner import resolve_tasks
    from ..grid.search import MODES
    from ..training.config import TrainConfig
    from ..training.recipes import as_overrides, build_config

    if not config.seeds or len(set(map(str, config.seeds))) != len(config.seeds):
        raise UserError(f"field seeds={config.seeds!r}: need at least one seed, without repeats", "e.g. seeds=[0,1]")
    if not all(isinstance(seed, int) and not isinstance(seed, bool) for seed in config.seeds):
        raise UserError(f"field seeds={config.seeds!r}: seeds are whole numbers", "e.g. seeds=[0,1]")
    if config.grid_mode not in MODES:
        raise UserError(f"field grid_mode={config.grid_mode!r} is not a grid mode", f"use one of: {', '.join(MODES)}")
    check_recipe_fields(config)
    resolve_tasks([config.data_tasks, *map(str, config.benchmarks)])  # a task name's typo
    # the train section as train-heads reads it (data and output_dir are the study's own)
    try:
        build_config(TrainConfig, None, as_overrides(config.train), data="on_policy.jsonl").validate()
    except UserError as exc:
        raise UserError(f"field train: {exc.message}", exc.hint) from None


def copy_heads(heads_dir: Path, destination: Path) -> Path:
    destination.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "autodeco_heads.safetensors"):
        shutil.copy2(heads_dir / name, destination / name)
    return destination
