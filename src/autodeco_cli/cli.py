"""The `autodeco` command line. Thin: parse, validate, call the engine, print.

Every command takes the same decoding options (see `decoding.py`) and model options.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import UserError
from .models import DEFAULT_MODEL
from .options import (
    BatchSizeOpt,
    ChatOpt,
    ActiveHeadsOpt,
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
    TempScaleOpt,
    TemperatureOpt,
    TopKOpt,
    TopPOpt,
    TopPScaleOpt,
    TrustOpt,
    strategy_from_options,
)

app = typer.Typer(
    name="autodeco",
    help=(
        "End-to-end decoding: learned per-token temperature and top-p (AutoDeco, arXiv 2510.26697).\n\n"
        "Typical flow: `train-heads` on a frozen model, then `generate`, `eval` and `grid-search` "
        "with --decoding greedy|static|autodeco|mean-shift, or the training-free adaptive min-p|top-n-sigma|edt."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
console = Console()
err_console = Console(stderr=True)

@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True)] = False,
):
    """autodeco: learned per-token decoding."""
    if version:
        from . import __version__

        console.print(f"autodeco {__version__}")
        raise typer.Exit()


@app.command()
def generate(
    prompt: Annotated[Optional[str], typer.Argument(help="The prompt; '-' or nothing reads stdin.")] = None,
    file: Annotated[Optional[Path], typer.Option("--file", "-f", help="Prompts: .jsonl ({'prompt'|'messages'} per line) or text (one per line).")] = None,
    model: ModelOpt = DEFAULT_MODEL,
    heads: HeadsOpt = None,
    decoding: DecodingOpt = "autodeco",
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    top_k: TopKOpt = None,
    temperature_scale: TempScaleOpt = 1.0,
    top_p_scale: TopPScaleOpt = 1.0,
    mean_from: MeanFromOpt = None,
    active_heads: ActiveHeadsOpt = "both",
    min_p: MinPOpt = None,
    n_sigma: NSigmaOpt = None,
    edt_theta: EdtThetaOpt = None,
    edt_base: EdtBaseOpt = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Generation budget per sample.")] = 256,
    seed: Annotated[int, typer.Option(help="Sampling seed; a sample depends only on (seed, prompt, sample index).")] = 0,
    n: Annotated[int, typer.Option("--n", help="Samples per prompt.")] = 1,
    batch_size: BatchSizeOpt = 8,
    chat: ChatOpt = True,
    stop: Annotated[Optional[list[str]], typer.Option("--stop", help="Stop string (repeatable).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write results as JSONL (default for many prompts: stdout JSONL).")] = None,
    trace: Annotated[bool, typer.Option("--trace", help="Print a compact per-token T̂/P̂ view (with --decoding edt: the entropy-based T of each token).")] = False,
    trace_out: Annotated[Optional[Path], typer.Option("--trace-out", help="Per-token JSONL: token_id, token, temperature, top_p, nucleus_size (+ sample).")] = None,
    trace_plot: Annotated[Optional[Path], typer.Option("--trace-plot", help="PNG of T̂ and P̂ per token (paper Fig. 5 style), first sample.")] = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    trust_remote_code: TrustOpt = False,
    adapter: AdapterOpt = None,
):
    """Chat or complete with per-token learned decoding (or any other --decoding).

    Examples:\n
      autodeco generate "What is 27 + 82?"\n
      autodeco generate --decoding static -t 0.6 -p 0.95 "Tell me a joke"\n
      autodeco generate --decoding edt --trace "What is 2+3?"        # per-token entropy-based T\n
      autodeco generate -f prompts.jsonl --n 4 -o out.jsonl --trace-out trace.jsonl
    """
    from .generation import build_requests
    from .prompts import read_prompts
    from .runtime import open_engine

    if max_new_tokens < 1 or n < 1 or batch_size < 1:
        raise UserError("--max-new-tokens, --n and --batch-size must be at least 1")
    adaptive = {"min_p": min_p, "n_sigma": n_sigma, "edt_base": edt_base, "edt_theta": edt_theta}
    strategy = strategy_from_options(decoding, temperature, top_p, top_k, temperature_scale, top_p_scale, mean_from, active_heads, **adaptive)
    prompts = read_prompts(prompt, file)
    want_trace = trace or trace_out is not None or trace_plot is not None
    if want_trace and not strategy.uses_heads and strategy.name != "edt":
        err_console.print("[yellow]note:[/] the trace shows the strategy's fixed T/p; use --decoding autodeco to see learned values")
    engine = open_engine(model, heads, [strategy], device=device, dtype=dtype, trust_remote_code=trust_remote_code, adapter=adapter)
    requests = build_requests(engine.tokenizer, prompts, strategy, n=n, seed=seed, chat=chat)
    single = len(requests) == 1 and output is None
    streamer = None
    if single and not stop:  # a streamed stop string could not be taken back
        from transformers import TextStreamer

        streamer = TextStreamer(engine.tokenizer, skip_prompt=True, skip_special_tokens=True)
    generations = _generate_with_progress(engine, requests, max_new_tokens, batch_size, stop, want_trace, streamer)
    if single:
        print("" if streamer is not None else generations[0].text)
    else:
        _write_generations(generations, prompts, output)
    if want_trace:
        _emit_traces(generations, trace, trace_out, trace_plot, batched=len(requests) > 1)


def _generate_with_progress(engine, requests, max_new_tokens, batch_size, stop, want_trace, streamer):
    if streamer is not None:
        return engine.generate(requests, max_new_tokens=max_new_tokens, batch_size=batch_size, stop=stop, trace=want_trace, streamer=streamer)
    from .progress import progress_bar

    with progress_bar(err_console) as progress:
        task = progress.add_task("generating", total=len(requests), tokens=0)
        tokens = 0

        def done(batch):
            nonlocal tokens
            tokens += sum(len(g.token_ids) for g in batch)
            progress.update(task, advance=len(batch), tokens=tokens)

        return engine.generate(requests, max_new_tokens=max_new_tokens, batch_size=batch_size, stop=stop, trace=want_trace, on_batch_done=done)


def _write_generations(generations, prompts, output: Path | None):
    lines = []
    for g in generations:
        prompt_index, sample = g.key
        record = {
            "prompt_index": prompt_index,
            "sample": sample,
            "prompt": prompts[prompt_index],
            "text": g.text,
            "finish_reason": g.finish_reason,
            "num_tokens": len(g.token_ids),
            "decoding": g.strategy.label,
        }
        if g.trace:
            record["mean_temperature"] = g.mean_temperature
            record["mean_top_p"] = g.mean_top_p
        lines.append(json.dumps(record, ensure_ascii=False))
    if output is None:
        sys.stdout.write("\n".join(lines) + "\n")
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(lines) + "\n", encoding="utf-8")
    err_console.print(f"wrote {len(lines)} samples to {output}")


def _emit_traces(generations, show: bool, trace_out: Path | None, trace_plot: Path | None, batched: bool):
    if show:
        for g in generations:
            table = Table(title=f"prompt {g.key[0]}, sample {g.key[1]}: per-token decoding", show_lines=False, box=None)
            for column in ("#", "token", "T̂", "P̂", "nucleus"):
                table.add_column(column, justify="right" if column != "token" else "left")
            for i, t in enumerate(g.trace or []):
                table.add_row(str(i), repr(t.token), f"{t.temperature:.3f}", f"{t.top_p:.3f}", str(t.nucleus_size))
            err_console.print(table)
    if trace_out is not None:
        trace_out.parent.mkdir(parents=True, exist_ok=True)
        with trace_out.open("w", encoding="utf-8") as handle:
            for index, g in enumerate(generations):
                for t in g.trace or []:
                    row = {"token_id": t.token_id, "token": t.token, "temperature": t.temperature, "top_p": t.top_p, "nucleus_size": t.nucleus_size}
                    if batched:
                        row = {"sample": index, "prompt_index": g.key[0], "sample_index": g.key[1], **row}
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        err_console.print(f"wrote per-token trace to {trace_out}")
    if trace_plot is not None and generations and generations[0].trace:
        from .plots import plot_token_trace

        plot_token_trace(generations[0].trace, trace_plot)
        err_console.print(f"wrote trace plot to {trace_plot}")


from .commands import register_all  # noqa: E402  (after `app` and `generate` exist)

register_all(app)


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2."""
    try:
        app()
    except UserError as exc:
        err_console.print(f"[bold red]error:[/] {exc.one_line()}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted; everything written so far is kept (re-run the same command to resume where supported)")
        sys.exit(130)


if __name__ == "__main__":
    main()
