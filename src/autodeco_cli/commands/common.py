"""What several commands share: the consoles, output-folder naming, and the option groups (model
and engine, decoding, generate's outputs) a command gathers its Typer parameters into, so that
its body hands the library a few objects instead of twenty loose values."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence, TypeVar

from ..core.consoles import console, err_console
from ..core.decoding import DecodingStrategy, make_strategy, mean_shift_from_results
from ..core.errors import UserError
from ..engine.option_checks import check_engine_options, check_option_values

if TYPE_CHECKING:  # the engine layer imports torch: commands import it when they run, not on --help
    from ..engine.interface import Engine

__all__ = [
    "DEFAULT_OUTPUT_ROOT",
    "DecodingOptions",
    "EngineOptions",
    "OutputOptions",
    "console",
    "err_console",
    "folder_name",
    "option_group",
]

DEFAULT_OUTPUT_ROOT = Path("eval-results")

Group = TypeVar("Group")


def folder_name(model: str) -> str:
    """A model path, hub id or task name as one safe folder name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).name or model).strip("-") or "model"


def option_group(group: type[Group], params: Mapping[str, Any], **given: Any) -> Group:
    """`group` built from a command's parameters (a copy of its `locals()` taken on entry): each
    field takes the parameter of its name. A command without one of the options passes its value
    in `given`; a field found in neither is a TypeError, so a renamed option cannot fall back to a
    default unnoticed."""
    names = {f.name for f in dataclasses.fields(group)}
    missing = names - params.keys() - given.keys()
    if missing:
        raise TypeError(f"{group.__name__} needs {', '.join(sorted(missing))}: pass them as given")
    return group(**{**{name: params[name] for name in names - given.keys()}, **given})


@dataclass(frozen=True)
class EngineOptions:
    """--model, --heads, --device, --dtype, --trust-remote-code, --adapter, --engine, --tp/--dp,
    --batch-size, --system-prompt and --chat-template-kwargs, as typed: what a command opens."""

    model: str
    heads: str | None
    device: str | None
    dtype: str | None
    trust_remote_code: bool
    adapter: str | None
    engine_name: str
    tensor_parallel_size: int
    data_parallel_size: int
    batch_size: int
    system_prompt: str | None
    chat_template_kwargs: str | None

    def __post_init__(self) -> None:
        # the values alone, at once: a typo in --dtype fails before any benchmark data is read
        check_option_values(
            self.engine_name, self.device, self.dtype, self.tensor_parallel_size, self.data_parallel_size
        )

    def check(self) -> None:
        """Every option, the model, heads and adapter paths among them, without torch: a missing
        --heads fails here, not after the model has loaded. `open` runs it; a command that takes a
        lock on its output folder first runs it before, so a bad path leaves no folder behind."""
        check_engine_options(
            model=self.model,
            heads=self.heads,
            device=self.device,
            dtype=self.dtype,
            adapter=self.adapter,
            engine=self.engine_name,
            tensor_parallel_size=self.tensor_parallel_size,
            data_parallel_size=self.data_parallel_size,
        )

    def open(self, strategies: Sequence[DecodingStrategy], *, seed: int) -> Engine:
        """The engine, with heads if a strategy uses them; `seed` is vLLM's engine seed."""
        from ..core.startup_gc import paused_then_frozen

        with paused_then_frozen():  # torch, transformers and the model: 0.5 s of collections otherwise
            return self._open(strategies, seed)

    def _open(self, strategies: Sequence[DecodingStrategy], seed: int) -> Engine:
        from ..core.prompt_format import prompt_format

        # before torch is imported: bad --chat-template-kwargs JSON is an option error, not a load error
        formatting = prompt_format(self.system_prompt, self.chat_template_kwargs)
        self.check()
        from ..engine.runtime import EngineSettings, open_engine

        settings = EngineSettings(
            model=self.model,
            heads=self.heads,
            device=self.device,
            dtype=self.dtype,
            trust_remote_code=self.trust_remote_code,
            adapter=self.adapter,
            engine=self.engine_name,
            tensor_parallel_size=self.tensor_parallel_size,
            data_parallel_size=self.data_parallel_size,
            batch_size=self.batch_size,
            seed=seed,
            prompt_format=formatting,
        )
        return open_engine(settings, strategies)

    def heads_label(self, strategy: DecodingStrategy) -> str | None:
        """Which heads a run used, as recorded in its results (None for strategies without heads)."""
        if not strategy.uses_heads:
            return None
        if self.heads:
            return str(self.heads)
        from ..engine.heads_source import packaged_heads_path

        # only aliases have packaged heads (an absolute path would escape the assets folder)
        shipped = None if Path(self.model).is_absolute() else packaged_heads_path(self.model)
        return str(shipped) if shipped else "fresh-untrained"

    def run_record(self, engine: Engine, heads_label: str | None) -> dict:
        """What a results file records about the run (and checks when resuming into it)."""
        return {
            "model": self.model,
            "heads": heads_label,
            "adapter": self.adapter,
            # the dtype the base really runs in (auto resolves per device), not the option as typed
            "dtype": engine.dtype,
            "device": str(engine.lm.device),
        }


@dataclass(frozen=True)
class DecodingOptions:
    """--decoding and its parameters, as typed: one decoding strategy."""

    decoding: str
    temperature: float | None
    top_p: float | None
    top_k: int | None
    temperature_scale: float
    top_p_scale: float
    mean_from: Path | None
    active_heads: str
    min_p: float | None
    n_sigma: float | None
    edt_theta: float | None
    edt_base: float | None

    def strategy(self) -> DecodingStrategy:
        if self.decoding == "mean-shift" and self.mean_from is not None:
            if self.temperature is not None or self.top_p is not None:
                raise UserError("give either --mean-from or --temperature/--top-p for mean-shift, not both")
            return mean_shift_from_results(self.mean_from)
        adaptive = {
            "min_p": self.min_p,
            "n_sigma": self.n_sigma,
            "edt_base": self.edt_base,
            "edt_theta": self.edt_theta,
        }
        return make_strategy(
            self.decoding,
            self.temperature,
            self.top_p,
            self.top_k,
            self.temperature_scale,
            self.top_p_scale,
            self.active_heads,
            **adaptive,
        )


@dataclass(frozen=True)
class OutputOptions:
    """generate's --output, and its per-token trace: --trace (shown), --trace-out, --trace-plot."""

    output: Path | None
    trace: bool
    trace_out: Path | None
    trace_plot: Path | None

    @property
    def wants_trace(self) -> bool:
        return self.trace or self.trace_out is not None or self.trace_plot is not None

    def check_writable(self) -> None:
        """Before the model loads, not after generating everything."""
        from ..core.io_checks import check_writable_output

        for path, what in (
            (self.output, "--output"),
            (self.trace_out, "--trace-out"),
            (self.trace_plot, "--trace-plot"),
        ):
            check_writable_output(path, what)
