"""The eval runs a study makes: strategies on one task into a folder, each on an engine opened for
them (with the heads when given) and closed after, and the mean-shift baseline of an autodeco run.
Re-running a call with the same settings reads its samples back (run_eval resumes), so a study
stage that calls these again regenerates nothing it finished."""

from __future__ import annotations

from pathlib import Path

from ..evaluation.settings import EvalSettings


def run_strategies(
    lm,
    name: str,
    strategies: list,
    out_dir: Path,
    common: EvalSettings,
    heads_dir: Path | None = None,
    keep_trace: bool = False,
) -> dict:
    """run_eval on an engine opened for these strategies (with the heads when given), then closed."""
    from ..core.heads import load_heads
    from ..engine.generation import GenerationEngine
    from ..evaluation.runner import run_eval

    heads = load_heads(heads_dir, expected_hidden_size=lm.hidden_size) if heads_dir else None
    engine = GenerationEngine(lm, heads)
    try:
        run_info = {"heads": str(heads_dir)} if heads_dir else None
        return run_eval(engine, name, strategies, common, out_dir=out_dir, run_info=run_info, keep_trace=keep_trace)
    finally:
        engine.close()


def mean_shift(lm, name: str, autodeco_results: dict, out_dir: Path, common: EvalSettings):
    """The "Just a Better Mean?" baseline of an autodeco run: (its strategy, its results)."""
    from ..core.decoding import make_strategy

    m = autodeco_results["results"][name]
    shift = make_strategy("mean-shift", temperature=m["mean_temperature"], top_p=m["mean_top_p"])
    return shift, run_strategies(lm, name, [shift], out_dir, common)[shift.label]
