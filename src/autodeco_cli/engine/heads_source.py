"""Which heads a run gets: explicit, carried by a merged folder, shipped for the model, or fresh."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..core.consoles import err_console
from ..core.heads import AutoDecoHeads, fresh_heads, load_heads, read_heads_config
from .model_names import MODEL_ALIASES
from .models import LoadedModel


def packaged_heads_path(model_spec: str) -> Path | None:
    """Heads we ship inside the package for a model alias, if any."""
    if model_spec not in MODEL_ALIASES:
        return None
    folder = resources.files("autodeco_cli") / "assets" / "heads" / model_spec
    path = Path(str(folder))
    return path if (path / "config.json").is_file() else None


def heads_adapter(heads: str | None) -> str | None:
    """A LoRA adapter trained together with the heads (train-heads --lora-r) lives next to them."""
    if not heads:
        return None
    candidate = Path(heads).expanduser() / "adapter"
    return str(candidate) if (candidate / "adapter_config.json").is_file() else None


def resolve_heads(heads: str | None, lm: LoadedModel, needed: bool) -> AutoDecoHeads | None:
    """Explicit heads, else the packaged heads for the model, else fresh heads with a loud warning."""
    if heads:
        return load_heads(heads, expected_hidden_size=lm.hidden_size)
    merged = Path(lm.name)
    if (
        merged.is_dir()
        and (merged / "config.json").is_file()
        and read_heads_config(merged).get("model_type") == "autodeco"
    ):
        return load_heads(merged, expected_hidden_size=lm.hidden_size)  # a merged folder carries its heads
    if not needed:
        return None
    shipped = packaged_heads_path(lm.name)
    if shipped is not None:
        return load_heads(shipped, expected_hidden_size=lm.hidden_size)
    err_console.print(
        "[bold red]WARNING:[/] no --heads given and none ship for this model: autodeco is using "
        "[bold]freshly initialised (untrained) heads[/]. Its T̂/P̂ are meaningless; train heads with "
        "`autodeco train-heads` and pass --heads."
    )
    return fresh_heads(lm.hidden_size, base_model=lm.name)
