"""`autodeco serve`: vLLM's OpenAI-compatible server with learned decoding (the AutoDeco plugin)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..core.consoles import err_console
from ..engine.model_names import DEFAULT_MODEL
from ..engine.option_checks import check_engine_options
from .options import DataParallelOpt, HeadsOpt, ModelOpt, TensorParallelOpt, TrustOpt

# The --help text. Concatenated rather than a docstring wrapped at 120 columns: typer's rich mode
# keeps single line breaks, so wrapping would show in the help.
SERVE_HELP = (
    "Serve a base model with learned per-token decoding through vLLM's OpenAI-compatible API.\n"
    "\n"
    "Every request samples from the heads' distribution (logits / T̂, nucleus at P̂). The request's\n"
    "own `temperature` and `top_p` act as scale factors: temperature multiplies T̂ exactly (1.0 =\n"
    "the heads' T̂); a top_p below 1 cuts again inside the learned nucleus (about P̂ × top_p).\n"
    'A request opts out of learned decoding with "vllm_xargs": {"autodeco": 0} (then its\n'
    "temperature/top_p are plain static settings). The server ignores the model's\n"
    "generation_config defaults, so an omitted temperature means 1.0, i.e. T̂ itself.\n"
    "\n"
    "Per-token T̂/P̂ are not in OpenAI responses (the API has no field for them). With --trace-dir,\n"
    'requests that send "vllm_xargs": {"autodeco_trace": "my-id"} get one JSON line per step in\n'
    "DIR/trace-<pid>.jsonl: [[id, token index, T̂, P̂, nucleus size], ...]. Offline, `autodeco\n"
    "generate --engine vllm --trace` returns them per token.\n"
    "\n"
    "Arguments after `--` go to `vllm serve` unchanged (run through `autodeco_cli.engine.vllm.cli`,\n"
    "which also works under the CPU build).\n"
    "\n"
    "Examples:\n"
    "\n"
    "  autodeco serve --model Qwen/Qwen3-8B --heads heads/qwen3-8b --tp 4 --dp 2\n"
    "\n"
    "  autodeco serve --heads heads/ -- --max-model-len 4096\n"
    "\n"
    '  curl localhost:8000/v1/chat/completions -d \'{"model": "smollm2-135m-instruct", "messages": [{"role": '
    '"user", "content": "Hi"}]}\''
)


def serve_command(
    ctx: typer.Context,
    model: ModelOpt = DEFAULT_MODEL,
    heads: HeadsOpt = None,
    port: Annotated[int, typer.Option("--port", help="HTTP port.")] = 8000,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    served_name: Annotated[
        Optional[str],
        typer.Option("--served-model-name", help="The `model` name clients send (default: the --model value)."),
    ] = None,
    tensor_parallel_size: TensorParallelOpt = 1,
    data_parallel_size: DataParallelOpt = 1,
    trace_dir: Annotated[
        Optional[Path],
        typer.Option(
            "--trace-dir",
            help="Write per-token T̂/P̂ of requests tagged vllm_xargs={'autodeco_trace': ID} to DIR/trace-<pid>.jsonl.",
        ),
    ] = None,
    memory: Annotated[
        Optional[float],
        typer.Option(
            "--gpu-memory-utilization",
            help="vLLM's memory fraction (GPU; on CPU, of the node's RAM). Default: vLLM's 0.92 on GPUs, 0.25 on CPU.",
        ),
    ] = None,
    trust_remote_code: TrustOpt = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Stage the model and print the vllm command instead of running it.")
    ] = False,
):
    """Serve a base model with learned per-token decoding (see SERVE_HELP, the command's --help)."""
    from ..engine.vllm.install import import_vllm

    check_engine_options(
        model=model,
        heads=heads,
        engine="vllm",
        tensor_parallel_size=tensor_parallel_size,
        data_parallel_size=data_parallel_size,
    )
    import_vllm()  # first: without vLLM there is nothing to stage, and the heads would load torch for nothing
    from ..core.heads import heads_digest
    from ..engine.heads_source import resolve_heads
    from ..engine.vllm.engine import default_memory_fraction
    from ..engine.vllm.stage import base_model, check_architecture, hidden_size, stage
    from ..engine.vllm.trace import TRACE_DIR_ENV

    base = base_model(model)
    check_architecture(base.arch)
    heads_obj = resolve_heads(heads, _HiddenSize(model, hidden_size(base.config)), needed=True)
    folder = stage(base, heads_obj, heads_digest(heads_obj))
    command = [
        sys.executable, "-m", "autodeco_cli.engine.vllm.cli", "serve", str(folder),
        "--served-model-name", served_name or model,
        "--host", host, "--port", str(port),
        "--tensor-parallel-size", str(tensor_parallel_size),
        "--data-parallel-size", str(data_parallel_size),
        "--generation-config", "vllm",
    ]  # fmt: skip
    memory = memory or default_memory_fraction()
    if memory:
        command += ["--gpu-memory-utilization", str(memory)]
    if trust_remote_code:
        command.append("--trust-remote-code")
    command += list(ctx.args)
    if trace_dir is not None:
        trace_dir.mkdir(parents=True, exist_ok=True)
        os.environ[TRACE_DIR_ENV] = str(trace_dir.resolve())
    err_console.print(f"staged {folder} (base {base.arch}, heads {heads or 'shipped for ' + model})")
    if dry_run:
        print(" ".join(command))
        return
    os.execv(command[0], command)


class _HiddenSize:
    """The two fields `resolve_heads` reads from a loaded model, without loading it."""

    def __init__(self, name: str, size: int):
        self.name, self.hidden_size = name, size


def register(app: typer.Typer) -> None:
    app.command("serve", help=SERVE_HELP, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
        serve_command
    )
