"""What several commands share: the consoles, output-folder naming, the heads label a run
records, and opening the engine from the common engine options."""

from __future__ import annotations

import re
from pathlib import Path

from ..core.consoles import console, err_console

__all__ = [
    "DEFAULT_OUTPUT_ROOT",
    "console",
    "err_console",
    "folder_name",
    "heads_label",
    "open_command_engine",
    "run_record",
]

DEFAULT_OUTPUT_ROOT = Path("eval-results")


def folder_name(model: str) -> str:
    """A model path, hub id or task name as one safe folder name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).name or model).strip("-") or "model"


def heads_label(heads: str | None, model: str, strategy) -> str | None:
    """Which heads a run used, as recorded in its results (None for strategies without heads)."""
    if not strategy.uses_heads:
        return None
    if heads:
        return str(heads)
    from ..engine.heads_source import packaged_heads_path

    # only aliases have packaged heads (an absolute path would escape the assets folder)
    shipped = None if Path(model).is_absolute() else packaged_heads_path(model)
    return str(shipped) if shipped else "fresh-untrained"


def open_command_engine(
    model: str,
    heads: str | None,
    strategies: list,
    *,
    engine_name: str,
    tensor_parallel_size: int,
    data_parallel_size: int,
    system_prompt: str | None,
    chat_template_kwargs: str | None,
    **settings,
):
    """`runtime.open_engine` from the options every generating command takes (--engine, --tp/--dp,
    --system-prompt, --chat-template-kwargs); `settings` are open_engine's other keywords."""
    from ..core.prompt_format import prompt_format
    from ..engine.runtime import open_engine

    return open_engine(
        model,
        heads,
        strategies,
        engine=engine_name,
        prompt_format=prompt_format(system_prompt, chat_template_kwargs),
        parallel=(tensor_parallel_size, data_parallel_size),
        **settings,
    )


def run_record(engine, model: str, heads: str | None, adapter: str | None, dtype: str | None) -> dict:
    """What a results file records about the run (and checks when resuming into it)."""
    # the dtype the base really runs in (auto resolves per device), not the option as typed
    loaded = getattr(getattr(engine.lm, "model", None), "dtype", dtype or "auto")
    return {
        "model": model,
        "heads": heads,
        "adapter": adapter,
        "dtype": str(loaded).removeprefix("torch."),
        "device": str(engine.lm.device),
    }
