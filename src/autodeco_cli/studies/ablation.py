"""`make ablation`: why MLE heads settle at T̂≈0.4 on arithmetic, tested one factor at a time.

A recipe (recipes/ablation-cpu.yaml) names data settings and rows. Each row trains heads on one
data setting with one change to the loss or the schedule; every row is scored with autodeco on
the arithmetic tasks' VALIDATION questions (held out from the train split), next to greedy and a
few static references on the same questions. The data setting for the main study is chosen
from this table, never from test questions. Every stage resumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.errors import UserError
from ..engine.option_checks import check_recipe_fields
from ..training.recipes import in_range

if TYPE_CHECKING:
    from ..engine.interface import Engine


@dataclass
class AblationConfig:
    model: str = "smollm2-135m-instruct"
    # the base model's dtype for every stage; None: what training loads (fp32 on CPU, bf16 on CUDA;
    # engine.models.training_dtype). The CPU recipes pin float32: their recorded numbers are fp32's
    dtype: str | None = None
    workdir: str = "runs/ablate"
    report: str = "reports/ablation.md"
    tasks: str = "arith-add,arith-mul"
    threads: int | None = in_range(0, default=2)  # 0 or null: torch's own count
    batch_size: int = in_range(1, default=32)
    data_limit: int = in_range(1, default=200)  # train questions per task
    # name -> make-data settings ({decoding, temperature, top_p, k}); "a+b" concatenates two
    data: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)  # TrainConfig fields shared by every row
    # rows: {name, data, description, overrides: {TrainConfig field: value}}
    rows: list = field(default_factory=list)
    references: list = field(
        default_factory=lambda: [{"decoding": "greedy"}, {"decoding": "static", "temperature": 0.1, "top_p": 1.0}]
    )
    validation_limit: int = in_range(1, default=100)
    k: int = in_range(1, default=4)


def run_ablation(config: AblationConfig, log=print) -> Path:
    if not config.rows:
        raise UserError("the ablation recipe names no rows", "see recipes/ablation-cpu.yaml")
    check_recipe_fields(config)  # before torch is imported
    import torch

    from ..core.startup_gc import paused_then_frozen
    from ..engine.models import load_base_model, training_dtype

    if config.threads:
        torch.set_num_threads(config.threads)
    work = Path(config.workdir)
    work.mkdir(parents=True, exist_ok=True)
    with paused_then_frozen():  # the model load: see core/startup_gc
        lm = load_base_model(config.model, dtype=training_dtype(config.dtype, None))
    data_files = {name: _data(lm, config, name, work) for name in sorted({r["data"] for r in config.rows})}
    references = _score_references(lm, config, work / "val" / "ref")
    scored = []
    for row in config.rows:
        heads = _train(config, row, data_files[row["data"]], work / f"heads-{row['name']}")
        scored.append((row, _score_heads(lm, config, heads, work / "val" / row["name"]), _steps(heads)))
    from .ablation_report import write_ablation_report

    return write_ablation_report(Path(config.report), config, data_files, references, scored)


def _data(lm, config: AblationConfig, name: str, work: Path) -> Path:
    """One data setting's JSONL; "a+b" is the concatenation of settings a and b."""
    from ..core.decoding import make_strategy
    from ..engine.generation import GenerationEngine
    from ..training.on_policy_data import make_on_policy_data

    path = work / f"data-{name}.jsonl"
    if "+" in name:
        parts = [_data(lm, config, part, work) for part in name.split("+")]
        path.write_text("".join(p.read_text(encoding="utf-8") for p in parts), encoding="utf-8")
        return path
    if name not in config.data:
        raise UserError(f"ablation row data {name!r} is not defined under data:", f"defined: {', '.join(config.data)}")
    spec = config.data[name]
    engine = GenerationEngine(lm)
    try:
        strategy = make_strategy(spec.get("decoding", "static"), spec.get("temperature"), spec.get("top_p"))
        make_on_policy_data(
            engine,
            config.tasks,
            path,
            strategy,
            k=int(spec.get("k", 4)),
            limit=spec.get("limit", config.data_limit),
            batch_size=config.batch_size,
            seed=0,
        )
    finally:
        engine.close()
    return path


def _train(config: AblationConfig, row: dict, data: Path, out: Path) -> Path:
    from ..training.config import TrainConfig
    from ..training.recipes import as_overrides, build_config
    from ..training.trainer import HeadTrainer

    if (out / "autodeco_heads.safetensors").is_file():
        return out
    values = {**config.train, **row.get("overrides", {})}
    overrides = as_overrides(values)
    trainer = HeadTrainer(
        build_config(
            TrainConfig,
            None,
            overrides,
            data=str(data),
            output_dir=str(out),
            model=config.model,
            threads=config.threads,
            dtype=config.dtype,
            save_every=10,
        )
    ).setup()
    trainer.train(resume=bool(trainer.checkpoint_dirs()))
    return out


def _steps(heads: Path) -> int | None:
    from ..core.heads import load_heads

    return (load_heads(heads).config.provenance or {}).get("steps")


def _eval(engine: Engine, config: AblationConfig, strategies, out: Path, heads: Path | None = None) -> dict:
    from ..evaluation.runner import run_eval
    from ..evaluation.settings import EvalSettings

    # the same run info `autodeco eval` records, so CLI runs and this pipeline resume into each other
    run_info = {
        "model": config.model,
        "heads": str(heads) if heads else None,
        "adapter": None,
        "dtype": engine.dtype,
        "device": str(engine.lm.device),
    }
    settings = EvalSettings(
        k=config.k, seeds=[0], limit=config.validation_limit, batch_size=config.batch_size, split="validation"
    )
    return run_eval(engine, config.tasks, strategies, settings, out_dir=out, run_info=run_info)


def _score_references(lm, config: AblationConfig, out: Path) -> dict[str, dict]:
    from ..core.decoding import make_strategy
    from ..engine.generation import GenerationEngine

    strategies = [make_strategy(r["decoding"], r.get("temperature"), r.get("top_p")) for r in config.references]
    engine = GenerationEngine(lm)
    try:
        return _eval(engine, config, strategies, out)
    finally:
        engine.close()


def _score_heads(lm, config: AblationConfig, heads: Path, out: Path) -> dict:
    from ..core.decoding import make_strategy
    from ..core.heads import load_heads
    from ..engine.generation import GenerationEngine

    engine = GenerationEngine(lm, load_heads(heads, expected_hidden_size=lm.hidden_size))
    try:
        strategy = make_strategy("autodeco")
        return _eval(engine, config, [strategy], out, heads)[strategy.label]
    finally:
        engine.close()
