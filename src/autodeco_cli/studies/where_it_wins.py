"""`make where-it-wins`: where learned per-token decoding beats every static setting, measured.

Stages (each resumes on re-run; everything lands in the run's folder):
1. data     : on-policy arithmetic trajectories (at the data setting chosen on validation) and
              random-choice trajectories re-balanced to their target distribution
2. mle      : joint heads on both, the paper's loss
3. reward   : the same heads trained on further with `--objective reward`, best step on validation
4. per benchmark, on its test questions: greedy, default, the static oracle (a grid searched on
   the test questions themselves), min-p / top-nσ / EDT (each family's cell chosen on validation
   questions), autodeco-MLE, autodeco-reward, mean-shift of each, and (config `ablations`) the
   T̂-only / P̂-only rows; all paired per question against the oracle
5. held-out wordings of the benchmarks
6. suite    : one setting for all traffic over the benchmarks plus the unseen families: the single
              static and adaptive cells chosen on the benchmarks' validation questions, then every
              row on each task's test questions (where_it_wins_suite.py)
7. diagnose : the chosen heads against their shuffled selves (where_it_wins_diagnostics.py)
8. figures and reports/where-it-wins.md
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.decoding import MAX_STATIC_TEMPERATURE
from ..core.errors import UserError
from ..engine.option_checks import check_recipe_fields
from ..evaluation.settings import EvalSettings
from ..training.recipes import in_range
from .stage_clock import StageClock
from .study_runs import mean_shift, run_strategies

if TYPE_CHECKING:
    from ..engine.interface import Engine


@dataclass
class WhereItWinsConfig:
    model: str = "smollm2-135m-instruct"
    # the base model's dtype for every stage; None: what training loads (fp32 on CPU, bf16 on CUDA;
    # engine.models.training_dtype). The CPU recipes pin float32: their recorded numbers are fp32's
    dtype: str | None = None
    workdir: str = "runs/where-it-wins"
    report: str = "reports/where-it-wins.md"
    figures_dir: str = "figures-where-it-wins"
    threads: int | None = in_range(0, default=2)  # 0 or null: torch's own count
    batch_size: int = in_range(1, default=32)
    # data: per group of tasks, the make-data settings (chosen on validation, see the report)
    data: list = field(default_factory=lambda: [
        {"tasks": "rand", "temperature": 1.0, "top_p": 0.8, "k": 8, "limit": 200},
        {"tasks": "arith-add,arith-mul", "temperature": 0.1, "top_p": 1.0, "k": 4, "limit": 200},
    ])  # fmt: skip
    mle: dict = field(
        default_factory=lambda: {
            "learning_rate": 1e-3,
            "epochs": 3,
            "micro_batch_size": 16,
            "gradient_accumulation": 2,
            "max_length": 256,
        }
    )
    reward: dict = field(
        default_factory=lambda: {
            "tasks": "arith-add,arith-mul,rand",
            "steps": 30,
            "prompts_per_step": 8,
            "group_size": 8,
            "learning_rate": 3e-4,
            "validation_limit": 40,
            "validate_every": 10,
        }
    )
    # evaluation: one entry per benchmark (k samples per question, test questions); an entry may
    # set its own static grid (temperatures, top_ps) and adaptive grids, else these defaults apply
    benchmarks: list = field(default_factory=lambda: [
        {"name": "rand-times", "k": 8, "limit": 100},
        {"name": "rand-letter", "k": 8, "limit": 100},
        {"name": "arith-add", "k": 4, "limit": 200},
        {"name": "arith-mul", "k": 4, "limit": 200},
    ])  # fmt: skip
    temperatures: list = in_range(
        0, MAX_STATIC_TEMPERATURE, above=True, default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 1.0, 1.5]
    )
    top_ps: list = in_range(0, 1, above=True, default_factory=lambda: [0.5, 0.8, 1.0])
    # training-free adaptive decoders: family -> its grid, searched on validation questions
    adaptive: dict = field(default_factory=lambda: {
        "min-p": {"temperatures": [1.0, 1.5], "values": [0.1, 0.3]},
        "top-n-sigma": {"temperatures": [1.0, 1.5], "values": [0.5, 1.0]},
        "edt": {"temperatures": [0.7, 1.0], "values": [0.1, 1.0]},
    })  # fmt: skip
    # validation questions per benchmark on which every chosen cell is chosen
    selection_limit: int = in_range(1, default=40)
    ablations: bool = True  # the MLE heads' T̂-only and P̂-only rows
    heatmaps: list = field(default_factory=lambda: ["rand-times", "rand-letter"])
    # held-out wordings: task -> the benchmark whose wording the heads were trained on. Rows: greedy,
    # that benchmark's oracle cell carried over, the chosen heads and their mean-shift.
    transfer: dict = field(
        default_factory=lambda: {"rand-times-reworded": "rand-times", "rand-letter-reworded": "rand-letter"}
    )
    transfer_limit: int = in_range(1, default=100)
    # the suite (where_it_wins_suite.py): the benchmarks plus these families, which no training or
    # selection uses; each with k and limit (test questions) like a benchmark, and optionally its own
    # test grid (temperatures, top_ps; default suite_grid) for its test-tuned oracle
    unseen: list = field(default_factory=lambda: [
        {"name": "ticket-add", "k": 4, "limit": 40},
        {"name": "record-field", "k": 4, "limit": 40},
    ])  # fmt: skip
    # the static cells among which the suite's one static cell is chosen, on every benchmark's
    # validation grid (selection_limit questions, the benchmark's k)
    suite_grid: dict = field(default_factory=lambda: {"temperatures": [0.1, 0.7, 1.0, 1.5], "top_ps": [0.5, 0.8, 1.0]})
    # autodeco diagnose on the chosen heads; k and limit default to the benchmark's (its runs are reused);
    # a task that is no benchmark is an entry {name, k, limit}
    diagnose: dict = field(default_factory=lambda: {"tasks": ["rand-times", "rand-letter"], "replay": False})
    ship_to: str | None = None  # copy the chosen heads here (the package's default heads)


def _check_counts(config: WhereItWinsConfig) -> None:
    """k and limit of every data, benchmark and unseen entry: the field ranges (`in_range`) cover
    top-level fields only, and k=0 here would fail only at its stage, hours in."""
    for section in ("data", "benchmarks", "unseen"):
        for entry in getattr(config, section):
            for key in ("k", "limit"):
                value = entry.get(key) if isinstance(entry, dict) else None
                if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                    name = entry.get("name") or entry.get("tasks")
                    raise UserError(f"field {section}: entry {name!r} has {key}={value!r}", "use a whole number >= 1")


def run_where_it_wins(config: WhereItWinsConfig, log=print) -> Path:
    from ..core.startup_gc import paused_then_frozen
    from .where_it_wins_diagnostics import check_diagnose_config, diagnose_tasks, run_diagnostics, traced_benchmarks
    from .where_it_wins_suite import check_suite_config

    check_suite_config(config)  # before hours of work end in a suite that cannot be chosen
    check_diagnose_config(config)  # (all three before torch is imported: a bad recipe fails at once)
    check_recipe_fields(config)
    _check_counts(config)
    from ..engine.models import load_base_model, training_dtype

    clock = StageClock.start(config.workdir, config.threads, log)
    work = Path(config.workdir)
    with paused_then_frozen():  # the model load: see core/startup_gc
        lm = load_base_model(config.model, dtype=training_dtype(config.dtype, None))
    with clock.stage("make-data"):
        data_path, data_report = _make_data(lm, config, work)
    with clock.stage("train MLE heads"):
        mle_dir = _train_mle(config, data_path, work / "heads-mle")
    with clock.stage("train reward heads"):
        reward_dir, reward_log = _train_reward(lm, config, mle_dir, work / "heads-reward")
    heads = {"autodeco-MLE": mle_dir, "autodeco-reward": reward_dir}
    chosen = _choose_heads(reward_log, heads)
    traced = traced_benchmarks(config)
    tables = {}
    for spec in config.benchmarks:
        name = spec["name"]
        with clock.stage(f"evaluate {name}"):
            trace = chosen if name in traced else None  # diagnose reads this run's per-token traces
            tables[name] = _evaluate_benchmark(lm, config, spec, heads, work / "eval" / name, log, trace)
    transfer = {}
    for name, original in config.transfer.items():
        if original in tables:
            with clock.stage(f"transfer {name}"):
                transfer[name] = _evaluate_transfer(
                    lm, config, name, tables[original], chosen, heads[chosen], work / "eval" / name
                )
    report_path = Path(config.report)
    figures_dir = report_path.parent / config.figures_dir
    suite = _suite(lm, config, clock, chosen, heads[chosen], work, log)
    diagnostics = {}
    for name in diagnose_tasks(config):
        with clock.stage(f"diagnose {name}"):
            diagnostics[name] = run_diagnostics(lm, config, name, chosen, heads[chosen], work, figures_dir)
    with clock.stage("figures"):
        figures = _figures(lm, config, heads[chosen], tables, figures_dir)
    figures.update({f"diagnose {name}": figures_dir / f"diagnose_{name}.png" for name in diagnostics})
    clock.close_invocation()
    clock.save()
    if config.ship_to:
        from .reproduce import copy_heads

        copy_heads(Path(heads[chosen]), Path(config.ship_to))
    from .study_report import write_report

    write_report(
        report_path, config, data_report, reward_log, chosen, tables, figures, clock, transfer, suite, diagnostics
    )
    return report_path


def _suite(lm, config: WhereItWinsConfig, clock: StageClock, chosen: str, heads_dir: Path, work: Path, log) -> dict:
    """Selection on the benchmarks' validation questions, then each suite task's test rows (one
    stage each, so their times show where the suite's cost goes), then the tables."""
    from .where_it_wins_suite import SUITE_FILE, select_single_cells, suite_summary, suite_task_runs, suite_tasks

    with clock.stage("suite selection (validation)"):
        singles = select_single_cells(lm, config, work / "eval", log)
    runs = {}
    for task in suite_tasks(config):
        with clock.stage(f"suite {task.name}"):
            runs[task.name] = suite_task_runs(lm, config, task, chosen, heads_dir, singles, work / "eval", log)
    return suite_summary(config, chosen, runs, singles, work / "eval" / SUITE_FILE)


# ---- stages ---------------------------------------------------------------------------------


def _make_data(lm, config: WhereItWinsConfig, work: Path) -> tuple[Path, list[dict]]:
    from ..core.decoding import make_strategy
    from ..engine.generation import GenerationEngine
    from ..training.on_policy_data import make_on_policy_data

    combined = work / "train.jsonl"
    reports, parts = [], []
    engine = GenerationEngine(lm)
    try:
        for index, spec in enumerate(config.data):
            path = work / f"data-{index}.jsonl"
            strategy = make_strategy(spec.get("decoding", "static"), spec.get("temperature"), spec.get("top_p"))
            # (its report counts this invocation only; the kept counts are read back from the file)
            make_on_policy_data(
                engine,
                spec["tasks"],
                path,
                strategy,
                k=int(spec["k"]),
                limit=spec.get("limit"),
                batch_size=config.batch_size,
                seed=0,
            )
            reports.append({**spec, "kept_per_task": _kept_per_task(path)})
            parts.append(path.read_text(encoding="utf-8"))
    finally:
        engine.close()
    combined.write_text("".join(parts), encoding="utf-8")
    if _count_lines(combined) < 8:
        raise UserError(f"{combined}: fewer than 8 training trajectories were kept", "raise the data limits or k")
    return combined, reports


def _kept_per_task(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            task = json.loads(line).get("task", "?")
            counts[task] = counts.get(task, 0) + 1
    return counts


def _count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def _train_mle(config: WhereItWinsConfig, data_path: Path, out: Path) -> Path:
    from ..training.trainer import train_heads_once

    fixed = {"save_every": 10, "threads": config.threads, "dtype": config.dtype}
    return train_heads_once(config.mle, data_path, out, config.model, **fixed)


def _train_reward(lm, config: WhereItWinsConfig, init: Path, out: Path) -> tuple[Path, list[dict]]:
    from ..training.config import RewardConfig
    from ..training.recipes import as_overrides, build_config
    from ..training.reward import LAST_DIR, METRICS_FILE, RewardTrainer

    if not (out / LAST_DIR / "autodeco_heads.safetensors").is_file():
        overrides = as_overrides(config.reward)
        reward_config = build_config(
            RewardConfig,
            None,
            overrides,
            init_heads=str(init),
            output_dir=str(out),
            model=config.model,
            batch_size=config.batch_size,
        )
        trainer = RewardTrainer(reward_config).setup(lm=lm)
        trainer.train(resume=bool(trainer.checkpoints.folders()))
    lines = (out / METRICS_FILE).read_text(encoding="utf-8").splitlines()
    return out, [json.loads(line) for line in lines if line.strip()]


def _choose_heads(reward_log: list[dict], heads: dict[str, Path]) -> str:
    """MLE (the reward run's step-0 validation) or reward (its best later step): higher validation score wins.

    With `top_p_restart` step 0 scores the MLE heads with their top-p head restarted, not the MLE
    heads as saved; the report's data section says which."""
    scores = [(r["step"], r["validation"]) for r in reward_log if "validation" in r]
    if not scores:
        return "autodeco-MLE"
    initial = next((v for step, v in scores if step == 0), None)
    best_later = max((v for step, v in scores if step > 0), default=None)
    if best_later is not None and (initial is None or best_later > initial):
        return "autodeco-reward"
    return "autodeco-MLE"


# ---- one benchmark ----------------------------------------------------------------------------


def _evaluate_benchmark(
    lm, config: WhereItWinsConfig, spec: dict, heads: dict[str, Path], out: Path, log, trace: str | None = None
) -> dict:
    """The benchmark's table; the run of the heads named `trace` keeps its per-token traces."""
    from ..core.decoding import make_strategy
    from ..engine.generation import GenerationEngine
    from ..evaluation.paired_table import autodeco_tests, comparison_rows
    from ..grid.search import GridSpec, run_grid

    name, k, limit = spec["name"], int(spec["k"]), spec.get("limit")
    common = EvalSettings(k=k, seeds=[0], limit=limit, batch_size=config.batch_size)
    runs: dict[str, Any] = {}
    settings: dict[str, str] = {}
    plain = GenerationEngine(lm)
    try:
        temperatures, top_ps = spec.get("temperatures", config.temperatures), spec.get("top_ps", config.top_ps)
        grid_spec = GridSpec(mode="full", temperatures=temperatures, top_ps=top_ps)
        grid = run_grid(plain, name, grid_spec, common, out_dir=out / "base", log=log)
        oracle = make_strategy("static", grid["oracle"]["temperature"], grid["oracle"]["top_p"])
        settings["oracle"] = (
            f"T {oracle.temperature:g}, p {oracle.top_p:g} (best of {len(grid['cells'])} cells, on test)"
        )
        fixed = {"greedy": make_strategy("greedy"), "default": make_strategy("static", 1.0, 1.0), "oracle": oracle}
        for family, family_grid in spec.get("adaptive", config.adaptive).items():
            fixed[family], chosen_on = _select_adaptive(
                plain, name, family, family_grid, out / f"select-{family}", config, common, log
            )
            settings[family] = f"{fixed[family].label} ({chosen_on})"
    finally:
        plain.close()
    # the grid's cells are read back, not regenerated; a cell can be two rows (default and oracle)
    unique = {strategy.label: strategy for strategy in fixed.values()}
    results = run_strategies(lm, name, list(unique.values()), out / "base", common)
    runs.update({row: results[strategy.label] for row, strategy in fixed.items()})
    for label, folder in heads.items():
        strategies = [make_strategy("autodeco")]
        ablate = label == "autodeco-MLE" and config.ablations
        if ablate:
            strategies += [
                make_strategy("autodeco", active_heads="temperature"),
                make_strategy("autodeco", active_heads="top_p"),
            ]
        results = run_strategies(lm, name, strategies, out / label, common, heads_dir=folder, keep_trace=label == trace)
        runs[label] = results[strategies[0].label]
        if ablate:
            runs["autodeco-MLE T̂-only"], runs["autodeco-MLE P̂-only"] = (
                results[strategies[1].label],
                results[strategies[2].label],
            )
        # beside its heads' runs: two heads can have the same mean (and so the same folder name)
        shift, runs[f"mean-shift of {label}"] = mean_shift(lm, name, runs[label], out / label, common)
        settings[f"mean-shift of {label}"] = f"T {shift.temperature:.3f}, p {shift.top_p:.3f}"
    tests = autodeco_tests(runs, name, [n for n in heads if n in runs])
    for label, against in tests.items():  # its own ablations and the other heads' mean-shift answer other questions
        tests[label] = {
            o: t
            for o, t in against.items()
            if "-only" not in o and not (o.startswith("mean-shift") and not o.endswith(label))
        }
    table = {
        "benchmark": name,
        "k": k,
        "limit": limit,
        "rows": comparison_rows(runs, name),
        "tests": tests,
        "settings": settings,
        "grid": str(out / "base" / "grid.json"),
    }
    (out / "where_it_wins.json").write_text(json.dumps(table, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return table


def _evaluate_transfer(
    lm, config: WhereItWinsConfig, name: str, original: dict, chosen: str, heads_dir: Path, out: Path
) -> dict:
    """Do the chosen heads carry over to a wording they never saw? Against the static cell that
    was best on the original wording's test questions (carried over: no search on this task)."""
    from ..core.decoding import make_strategy
    from ..evaluation.paired_table import autodeco_tests, comparison_rows
    from ..grid.search import load_grid

    common = EvalSettings(k=original["k"], seeds=[0], limit=config.transfer_limit, batch_size=config.batch_size)
    cell = load_grid(original["grid"])["oracle"]
    greedy, static = make_strategy("greedy"), make_strategy("static", cell["temperature"], cell["top_p"])
    base = run_strategies(lm, name, [greedy, static], out / "base", common)
    auto = next(
        iter(run_strategies(lm, name, [make_strategy("autodeco")], out / chosen, common, heads_dir=heads_dir).values())
    )
    shift, shift_results = mean_shift(lm, name, auto, out / chosen, common)
    carried = f"oracle of {original['benchmark']}"
    runs = {
        "greedy": base[greedy.label],
        carried: base[static.label],
        chosen: auto,
        f"mean-shift of {chosen}": shift_results,
    }
    settings = {
        carried: f"T {static.temperature:g}, p {static.top_p:g}",
        f"mean-shift of {chosen}": f"T {shift.temperature:.3f}, p {shift.top_p:.3f}",
    }
    return {
        "benchmark": name,
        "k": original["k"],
        "limit": config.transfer_limit,
        "rows": comparison_rows(runs, name, reference=carried, baseline="greedy"),
        "tests": autodeco_tests(runs, name, [chosen]),
        "settings": settings,
    }


def _select_adaptive(
    engine: Engine, name: str, family: str, spec: dict, out: Path, config: WhereItWinsConfig, common: EvalSettings, log
):
    """The family's best grid cell on `selection_limit` validation questions (never on test)."""
    from ..grid.families import cell_from_record
    from ..grid.search import GridSpec, run_grid

    grid_spec = GridSpec(mode="full", family=family, temperatures=spec["temperatures"], values=spec["values"])
    settings = EvalSettings(
        k=common.k, seeds=[0], limit=config.selection_limit, batch_size=config.batch_size, split="validation"
    )
    grid = run_grid(engine, name, grid_spec, settings, out_dir=out, log=log, plot=False)
    strategy = cell_from_record(grid, grid["oracle"]).strategy
    return (
        strategy,
        f"best of {len(spec['temperatures']) * len(spec['values'])} cells on {config.selection_limit} validation "
        "questions",
    )


# ---- figures --------------------------------------------------------------------------------


def _figures(lm, config: WhereItWinsConfig, heads_dir: Path, tables: dict, folder: Path) -> dict[str, Path]:
    from ..core.decoding import make_strategy
    from ..core.heads import load_heads
    from ..core.plots import plot_token_trace
    from ..engine.generation import GenerationEngine
    from ..engine.requests import Request, encode_prompt, request_seed
    from ..grid.report import plot_grid
    from ..grid.search import load_grid
    from ..tasks.registry import get_task, task_chat, task_stop

    files: dict[str, Path] = {}
    engine = GenerationEngine(lm, load_heads(heads_dir, expected_hidden_size=lm.hidden_size))
    try:
        for spec in config.benchmarks:
            task = get_task(spec["name"])
            doc = task.load_docs(split="test", limit=1)[0]
            ids = encode_prompt(lm.tokenizer, doc.prompt, task_chat(task, True))
            request = Request(
                key=0, input_ids=ids, strategy=make_strategy("autodeco"), seed=request_seed(0, "trace", doc.doc_id)
            )
            (generation,) = engine.generate(
                [request], max_new_tokens=task.max_new_tokens, stop=task_stop(task), trace=True
            )
            title = f"{spec['name']}, first test question: T̂ and P̂ per generated token"
            files[f"trace {spec['name']}"] = plot_token_trace(
                generation.trace, folder / f"trace_{spec['name']}.png", title=title
            )
    finally:
        engine.close()
    for name in config.heatmaps:
        if name in tables:
            files[f"static grid {name}"] = plot_grid(load_grid(tables[name]["grid"]), folder / f"grid_{name}.png")
    return files
