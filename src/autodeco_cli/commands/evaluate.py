"""`autodeco eval` and `autodeco compare`: thin wrappers over `evaluation.py`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from ..errors import UserError
from ..models import DEFAULT_MODEL
from ..options import (
    BatchSizeOpt,
    ChatOpt,
    DataDirOpt,
    AdapterOpt,
    DecodingOpt,
    DeviceOpt,
    DtypeOpt,
    EdtBaseOpt,
    EdtThetaOpt,
    HeadsOpt,
    MeanFromOpt,
    MinPOpt,
    ModelOpt,
    NSigmaOpt,
    SplitOpt,
    TempScaleOpt,
    TemperatureOpt,
    TopKOpt,
    TopPOpt,
    TopPScaleOpt,
    TrustOpt,
    strategy_from_options,
)

console = Console()
err_console = Console(stderr=True)

DEFAULT_OUTPUT_ROOT = Path("eval-results")


def eval_command(
    benchmark: Annotated[str, typer.Option("--benchmark", "-b", help="Task(s): a name, a comma list, or a group (e.g. aime = aime24+aime25, small, paper).")],
    model: ModelOpt = DEFAULT_MODEL,
    heads: HeadsOpt = None,
    decoding: DecodingOpt = "autodeco",
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    top_k: TopKOpt = None,
    temperature_scale: TempScaleOpt = 1.0,
    top_p_scale: TopPScaleOpt = 1.0,
    mean_from: MeanFromOpt = None,
    min_p: MinPOpt = None,
    n_sigma: NSigmaOpt = None,
    edt_theta: EdtThetaOpt = None,
    edt_base: EdtBaseOpt = None,
    k: Annotated[int, typer.Option("-k", help="Samples per question per seed (greedy always uses 1).")] = 16,
    seeds: Annotated[str, typer.Option("--seeds", help="Number of seeds (8 = seeds 0..7) or a comma list (0,3,5). Greedy uses the first only.")] = "8",
    max_new_tokens: Annotated[Optional[int], typer.Option("--max-new-tokens", help="Generation budget per sample (default: each task's own).")] = None,
    batch_size: BatchSizeOpt = 8,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Only the first N questions of each task (a seeded subset for tasks that define one).")] = None,
    output_dir: Annotated[Optional[Path], typer.Option("--output-dir", "-o", help="Run folder (default eval-results/<model>); one subfolder per decoding strategy.")] = None,
    chat: ChatOpt = True,
    split: SplitOpt = "test",
    data_dir: DataDirOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    trust_remote_code: TrustOpt = False,
    adapter: AdapterOpt = None,
):
    """Score a decoding strategy on benchmarks: pass@1 ± SE, seed spread, pass@k, maj@k.

    Every sample is appended to OUT/<strategy>/samples_<task>.jsonl as soon as it is scored, so an interrupted run resumes where it stopped: re-run the same command. The summary is OUT/<strategy>/results.json (lm-evaluation-harness layout plus per-question scores for `autodeco compare`). Autodeco runs also record the mean T̂/P̂ that `--decoding mean-shift --mean-from` reads. Greedy is collapsed to one sample per question. LiveCodeBench is the release_v5 window (2024-08 to 2025-01) scored on public tests only.

    Examples:\n
      autodeco eval -b arith-add --limit 50 -k 4 --seeds 2 --decoding autodeco --heads heads/\n
      autodeco eval -b gsm8k,math500 --decoding static -t 0.6 -p 0.95\n
      autodeco eval -b aime --decoding greedy          # one sample per question\n
      autodeco eval -b arith-add --decoding min-p -t 1.0 --min-p 0.1    # also top-n-sigma (--n-sigma), edt (--edt-theta)\n
      autodeco eval -b aime --decoding mean-shift --mean-from eval-results/M/autodeco/results.json\n
      autodeco compare eval-results/M/autodeco eval-results/M/static-T1-p1
    """
    from ..evaluation import parse_seeds, resolve_tasks, run_eval, strategy_slug, summary_table
    from ..progress import progress_bar
    from ..runtime import open_engine

    if k < 1 or batch_size < 1:
        raise UserError("-k and --batch-size must be at least 1")
    seed_list = parse_seeds(seeds)
    tasks = resolve_tasks(benchmark)  # a typo should fail before the model loads
    strategy = _mean_shift_for_task(decoding, mean_from, tasks, temperature, top_p) or strategy_from_options(
        decoding, temperature, top_p, top_k, temperature_scale, top_p_scale, mean_from, min_p=min_p, n_sigma=n_sigma, edt_base=edt_base, edt_theta=edt_theta
    )
    out = output_dir or DEFAULT_OUTPUT_ROOT / _folder_name(model)
    if strategy.is_greedy and (k, len(seed_list)) != (1, 1):
        err_console.print(f"note: greedy is deterministic: 1 sample per question and seed {seed_list[0]} (not -k {k} x {len(seed_list)} seeds)")
    engine = open_engine(model, heads, [strategy], device=device, dtype=dtype, trust_remote_code=trust_remote_code, adapter=adapter)
    run_info = {"model": model, "heads": _heads_label(heads, model, strategy), "adapter": adapter, "dtype": dtype or "auto", "device": str(engine.lm.device)}
    try:
        with progress_bar(err_console) as progress:
            results = run_eval(
                engine, tasks, [strategy], k=k, seeds=seed_list, max_new_tokens=max_new_tokens, batch_size=batch_size,
                limit=limit, out_dir=out, chat=chat, progress=progress, data_dir=data_dir, run_info=run_info, split=split,
            )
    finally:
        engine.close()
    console.print(summary_table(results))
    _print_labels(results)
    err_console.print(f"wrote {out / strategy_slug(strategy) / 'results.json'}")


def _mean_shift_for_task(decoding, mean_from, tasks, temperature, top_p):
    """The mean-shift baseline is per benchmark: with one task, take that task's mean T̂/P̂
    from --mean-from when it has them (options.strategy_from_options takes the file's first)."""
    if decoding != "mean-shift" or mean_from is None or len(tasks) != 1 or temperature is not None or top_p is not None:
        return None
    from ..decoding import mean_shift_from_results

    try:
        return mean_shift_from_results(mean_from, tasks[0].name)
    except UserError:
        return None


def _folder_name(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).name or model).strip("-") or "model"


def _heads_label(heads: str | None, model: str, strategy) -> str | None:
    if not strategy.uses_heads:
        return None
    if heads:
        return str(heads)
    from ..runtime import packaged_heads_path

    # only aliases have packaged heads (an absolute path would escape the assets folder)
    shipped = None if Path(model).is_absolute() else packaged_heads_path(model)
    return str(shipped) if shipped else "fresh-untrained"


def _print_labels(results: dict) -> None:
    labels = {task: m["label"] for result in results.values() for task, m in result["results"].items() if "label" in m}
    for task, label in labels.items():
        console.print(f"[bold]{task}[/]: {label}")


def compare_command(
    result_a: Annotated[Path, typer.Argument(help="results.json (or its strategy folder) of run A.")],
    result_b: Annotated[Path, typer.Argument(help="results.json (or its strategy folder) of run B.")],
    benchmark: Annotated[Optional[str], typer.Option("--benchmark", "-b", help="Only these tasks (comma list); default: every task both runs have.")] = None,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Bootstrap resamples for the CI.")] = 10_000,
    seed: Annotated[int, typer.Option("--seed", help="Bootstrap seed (the CI is reproducible).")] = 0,
):
    """Paired per-question comparison of two eval runs: Δ = A − B with SE and bootstrap 95% CI.

    Pairing by question removes the between-question variance, so it detects differences that two separate error bars hide. Only questions both runs scored are compared.

    Example:\n
      autodeco compare eval-results/M/autodeco/results.json eval-results/M/static-T1-p1/results.json
    """
    from ..evaluation import compare_results, comparison_table, load_results

    if bootstrap < 1:
        raise UserError("--bootstrap must be at least 1")
    path_a, a = load_results(result_a)
    path_b, b = load_results(result_b)
    tasks = [t.strip() for t in benchmark.split(",") if t.strip()] if benchmark else None
    comparisons = compare_results(a, b, tasks, n_boot=bootstrap, seed=seed)
    console.print(comparison_table(comparisons, _run_name(path_a, a), _run_name(path_b, b)))


def _run_name(path: Path, results: dict) -> str:
    label = results.get("decoding", {}).get("label", "?")
    return f"{label} ({results.get('model', '?')}) — {path}"


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
    app.command("compare")(compare_command)
