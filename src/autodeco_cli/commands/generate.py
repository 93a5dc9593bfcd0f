"""`autodeco generate`: chat or complete with any decoding, printing text, JSONL and per-token traces."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ..core.consoles import err_console
from ..core.errors import UserError
from ..core.safe_writes import Appender, write_atomically
from ..engine.model_names import DEFAULT_MODEL
from .common import DecodingOptions, EngineOptions, OutputOptions, option_group
from .options import (
    ActiveHeadsOpt,
    AdapterOpt,
    BatchSizeOpt,
    ChatOpt,
    ChatTemplateKwargsOpt,
    DataParallelOpt,
    DecodingOpt,
    DeviceOpt,
    DtypeOpt,
    EdtBaseOpt,
    EdtThetaOpt,
    EngineOpt,
    HeadsOpt,
    MeanFromOpt,
    MinPOpt,
    ModelOpt,
    NSigmaOpt,
    SystemPromptOpt,
    TemperatureOpt,
    TempScaleOpt,
    TensorParallelOpt,
    TopKOpt,
    TopPOpt,
    TopPScaleOpt,
    TrustOpt,
)

if TYPE_CHECKING:
    from ..engine.interface import Engine

PromptArg = Annotated[Optional[str], typer.Argument(help="The prompt; '-' or nothing reads stdin.")]
FileOpt = Annotated[
    Optional[Path],
    typer.Option("--file", "-f", help="Prompts: .jsonl ({'prompt'|'messages'} per line) or text (one per line)."),
]
MaxNewTokensOpt = Annotated[int, typer.Option("--max-new-tokens", help="Generation budget per sample.")]
SeedOpt = Annotated[int, typer.Option(help="Sampling seed; a sample depends only on (seed, prompt, sample index).")]
SamplesOpt = Annotated[int, typer.Option("--n", help="Samples per prompt.")]
StopOpt = Annotated[Optional[list[str]], typer.Option("--stop", help="Stop string (repeatable).")]
OutputOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--output",
        "-o",
        help="Write results as JSONL, in prompt order (default for many prompts: stdout JSONL, one line per "
        "sample as its batch finishes).",
    ),
]
TraceOpt = Annotated[
    bool,
    typer.Option(
        "--trace",
        help="Print a compact per-token T̂/P̂ view (with --decoding edt: the entropy-based T of each token).",
    ),
]
TraceOutOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--trace-out",
        help="Per-token JSONL: token_id, token, temperature, top_p, nucleus_size (+ sample).",
    ),
]
TracePlotOpt = Annotated[
    Optional[Path],
    typer.Option("--trace-plot", help="PNG of T̂ and P̂ per token (paper Fig. 5 style), first sample."),
]


def generate(
    prompt: PromptArg = None,
    file: FileOpt = None,
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
    max_new_tokens: MaxNewTokensOpt = 256,
    seed: SeedOpt = 0,
    n: SamplesOpt = 1,
    batch_size: BatchSizeOpt = 8,
    chat: ChatOpt = True,
    stop: StopOpt = None,
    output: OutputOpt = None,
    trace: TraceOpt = False,
    trace_out: TraceOutOpt = None,
    trace_plot: TracePlotOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    trust_remote_code: TrustOpt = False,
    adapter: AdapterOpt = None,
    engine_name: EngineOpt = "hf",
    tensor_parallel_size: TensorParallelOpt = 1,
    data_parallel_size: DataParallelOpt = 1,
    system_prompt: SystemPromptOpt = None,
    chat_template_kwargs: ChatTemplateKwargsOpt = None,
):
    """Chat or complete with per-token learned decoding (or any other --decoding).

    Examples:\n
      autodeco generate "What is 27 + 82?"\n
      autodeco generate --decoding static -t 0.6 -p 0.95 "Tell me a joke"\n
      autodeco generate --decoding edt --trace "What is 2+3?"        # per-token entropy-based T\n
      autodeco generate -f prompts.jsonl --n 4 -o out.jsonl --trace-out trace.jsonl
    """
    params = dict(locals())
    engine_options = option_group(EngineOptions, params)
    decoding_options = option_group(DecodingOptions, params)
    outputs = option_group(OutputOptions, params)
    from .prompts import read_prompts

    # The engine would refuse these too, but only after the model loaded and with a traceback
    # (ValueError); --n has no library check at all (n=0 means no requests).
    if max_new_tokens < 1 or n < 1 or batch_size < 1:
        raise UserError("--max-new-tokens, --n and --batch-size must be at least 1")
    strategy = decoding_options.strategy()
    prompts = read_prompts(prompt, file)
    if not chat:
        _check_raw_prompts(prompts, file)
    if outputs.wants_trace and not strategy.uses_heads and strategy.name != "edt":
        err_console.print(
            "[yellow]note:[/] the trace shows the strategy's fixed T/p; use --decoding autodeco to see learned values"
        )
    outputs.check_writable()
    engine = engine_options.open([strategy], seed=seed)
    requests = _requests(engine, prompts, strategy, n=n, seed=seed, chat=chat, max_new_tokens=max_new_tokens)
    settings = {"max_new_tokens": max_new_tokens, "batch_size": batch_size, "stop": stop, "trace": outputs.wants_trace}
    run = _Run(engine, requests, prompts, settings, outputs.output)
    generations = run.generate()
    if run.single:
        print("" if run.streamed else generations[0].text)
    elif outputs.output is not None:
        _write_generations(generations, prompts, outputs.output)
    if outputs.wants_trace:
        _emit_traces(generations, outputs, batched=len(requests) > 1)


def _check_raw_prompts(prompts, file: Path | None) -> None:
    """An empty raw prompt is refused before the model loads. Generating from the BOS token
    instead would depend on the model (many tokenizers have none) and hide a blank record."""
    for index, text in enumerate(prompts):
        if isinstance(text, str) and not text:
            where = "the prompt is empty" if file is None else f"{file}: prompt_index {index} is empty"
            raise UserError(
                f"{where}: with --no-chat there is no token to start from",
                "give it some text, or drop --no-chat; for text from nothing, pass the model's BOS token "
                "(e.g. '<|endoftext|>') as the prompt",
            )


def _requests(engine: Engine, prompts, strategy, *, n: int, seed: int, chat: bool, max_new_tokens: int) -> list:
    """The engine's requests; refuses a budget that cannot fit the model's context."""
    from ..core.io_checks import check_max_new_tokens
    from ..engine.requests import build_requests

    requests = build_requests(engine.tokenizer, prompts, strategy, n=n, seed=seed, chat=chat, fmt=engine.prompt_format)
    check_max_new_tokens(max_new_tokens, engine.lm.config, max(len(r.input_ids) for r in requests))
    return requests


class _Run:
    """One generate call: a single prompt streams to stdout (unless a stop string could still cut
    what was printed); many prompts show a progress bar and write each sample as it finishes, as a
    JSONL line to stdout or appended to -o."""

    def __init__(self, engine: Engine, requests, prompts, settings: dict, output: Path | None):
        self.engine, self.requests, self.prompts, self.output = engine, requests, prompts, output
        self.settings = settings  # engine.generate's keyword arguments
        self.single = len(requests) == 1 and output is None
        self.streamed = self.single and not settings["stop"]  # a streamed stop string could not be taken back

    def generate(self) -> list:
        if self.streamed:
            from transformers import TextStreamer

            streamer = TextStreamer(self.engine.tokenizer, skip_prompt=True, skip_special_tokens=True)
            return self.engine.generate(self.requests, streamer=streamer, **self.settings)
        sink = None if self.single else _SampleSink(self.output, self.prompts)  # single: its text is printed
        try:
            return self._with_progress(sink)
        finally:
            if sink is not None:
                sink.close()

    def _with_progress(self, sink) -> list:
        from ..core.progress import progress_bar

        with progress_bar(err_console) as progress:
            task = progress.add_task("generating", total=len(self.requests), tokens=0)
            tokens = 0

            def done(batch):
                nonlocal tokens
                tokens += sum(len(g.token_ids) for g in batch)
                progress.update(task, advance=len(batch), tokens=tokens)
                if sink is not None:
                    sink.write(batch)

            return self.engine.generate(self.requests, on_batch_done=done, **self.settings)


def _generation_record(g, prompts) -> dict:
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
    return record


class _SampleSink:
    """Each sample is written as soon as its batch finishes, so a crash or Ctrl-C keeps the
    finished ones: appended to -o (which `_write_generations` rewrites in prompt order at the end),
    or printed to stdout in the order batches finish (prompt order within a batch)."""

    def __init__(self, path: Path | None, prompts):
        self.prompts = prompts
        self.log = Appender(path, truncate=True) if path is not None else None
        # Taken before the progress bar starts: on a terminal it swaps sys.stdout for a proxy that
        # prints above the bar on stderr, which is right for a terminal but would take piped JSONL.
        self.stdout = sys.stdout if path is None else None

    def write(self, batch) -> None:
        lines = [
            json.dumps(_generation_record(g, self.prompts), ensure_ascii=False)
            for g in sorted(batch, key=lambda g: g.key)
        ]
        if self.log is not None:
            self.log.append(lines)
            return
        stream = sys.stdout if self.stdout.isatty() else self.stdout
        stream.write("".join(line + "\n" for line in lines))
        stream.flush()

    def close(self) -> None:
        if self.log is not None:
            self.log.close()


def _write_generations(generations, prompts, output: Path):
    lines = [json.dumps(_generation_record(g, prompts), ensure_ascii=False) for g in generations]
    # one rename: the streamed copy stays whole until the sorted one is complete
    write_atomically(output, "\n".join(lines) + "\n")
    err_console.print(f"wrote {len(lines)} samples to {output}")


def _emit_traces(generations, outputs: OutputOptions, batched: bool):
    trace_out, trace_plot = outputs.trace_out, outputs.trace_plot
    if outputs.trace:
        _print_traces(generations)
    if trace_out is not None:
        rows = []
        for index, g in enumerate(generations):
            for t in g.trace or []:
                row = {
                    "token_id": t.token_id,
                    "token": t.token,
                    "temperature": t.temperature,
                    "top_p": t.top_p,
                    "nucleus_size": t.nucleus_size,
                }
                if batched:
                    row = {"sample": index, "prompt_index": g.key[0], "sample_index": g.key[1], **row}
                rows.append(json.dumps(row, ensure_ascii=False) + "\n")
        write_atomically(trace_out, "".join(rows))
        err_console.print(f"wrote per-token trace to {trace_out}")
    if trace_plot is not None and generations and generations[0].trace:
        from ..core.plots import plot_token_trace

        plot_token_trace(generations[0].trace, trace_plot)
        err_console.print(f"wrote trace plot to {trace_plot}")


def _print_traces(generations) -> None:
    from rich.table import Table

    for g in generations:
        title = f"prompt {g.key[0]}, sample {g.key[1]}: per-token decoding"
        table = Table(title=title, show_lines=False, box=None)
        for column in ("#", "token", "T̂", "P̂", "nucleus"):
            table.add_column(column, justify="right" if column != "token" else "left")
        for i, t in enumerate(g.trace or []):
            table.add_row(str(i), repr(t.token), f"{t.temperature:.3f}", f"{t.top_p:.3f}", str(t.nucleus_size))
        err_console.print(table)


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
