"""Command-line options shared by every subcommand, defined once so `--help` reads the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .decoding import DECODING_CHOICES, DecodingStrategy, make_strategy, mean_shift_from_results
from .errors import UserError

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="HF folder, hub id, .gguf file, merged AutoDeco folder, or alias (default: smollm2-135m-instruct).")]
HeadsOpt = Annotated[Optional[str], typer.Option("--heads", help="Heads checkpoint folder (ours or official AutoDeco). Default: heads shipped for the model, if any.")]
DecodingOpt = Annotated[str, typer.Option("--decoding", "-d", help=f"One of {', '.join(DECODING_CHOICES)}.")]
TemperatureOpt = Annotated[Optional[float], typer.Option("--temperature", "-t", help="static/mean-shift temperature (default 1.0).")]
TopPOpt = Annotated[Optional[float], typer.Option("--top-p", "-p", help="static/mean-shift top-p (default 1.0).")]
TopKOpt = Annotated[Optional[int], typer.Option("--top-k", help="Optional top-k cut (0 = off; off by default, unlike transformers' 50).")]
TempScaleOpt = Annotated[float, typer.Option("--temperature-scale", help="autodeco: T = T̂ × scale.")]
TopPScaleOpt = Annotated[float, typer.Option("--top-p-scale", help="autodeco: p = min(1, P̂ × scale).")]
ActiveHeadsOpt = Annotated[str, typer.Option("--active-heads", help="autodeco ablation: both (default), temperature (p=1) or top_p (T=1).")]
ChatOpt = Annotated[bool, typer.Option("--chat/--no-chat", help="Apply the model's chat template (default) or complete the raw prompt.")]
DataDirOpt = Annotated[Optional[Path], typer.Option("--data-dir", help="Benchmark data folder (default $AUTODECO_DATA_DIR, else ../shared/data).")]
MeanFromOpt = Annotated[Optional[Path], typer.Option("--mean-from", help="mean-shift: take T and p from an autodeco eval results JSON.")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, cuda:N or auto.")]
DtypeOpt = Annotated[Optional[str], typer.Option("--dtype", help="auto (fp32 on CPU, bf16 on CUDA), float32, bfloat16, float16.")]
TrustOpt = Annotated[bool, typer.Option("--trust-remote-code", help="Allow the model repo's own Python code to run.")]
BatchSizeOpt = Annotated[
    int,
    typer.Option(
        "--batch-size",
        help="Rows decoded per forward pass. Finished samples leave and waiting ones join at once; samples whose tokens agree (k samples, grid cells) share a row, so more samples than rows can run.",
    ),
]
AdapterOpt = Annotated[Optional[str], typer.Option("--adapter", help="PEFT/LoRA adapter folder applied to the base model.")]



def strategy_from_options(decoding, temperature, top_p, top_k, temperature_scale, top_p_scale, mean_from=None, active_heads="both") -> DecodingStrategy:
    if decoding == "mean-shift" and mean_from is not None:
        if temperature is not None or top_p is not None:
            raise UserError("give either --mean-from or --temperature/--top-p for mean-shift, not both")
        return mean_shift_from_results(mean_from)
    return make_strategy(decoding, temperature, top_p, top_k, temperature_scale, top_p_scale, active_heads)
