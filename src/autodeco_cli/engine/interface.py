"""What every engine offers the code that generates with it: `GenerationEngine` (ours),
`VllmEngine` and `DataParallelEngine` all satisfy `Engine`, so evaluation, grid search, the
studies and the commands are written once against this and run on any of them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Protocol, Sequence, runtime_checkable

from ..core.prompt_format import PromptFormat
from .requests import Generation, Request

if TYPE_CHECKING:  # core.heads imports torch; code that only checks options imports this module
    from ..core.heads import AutoDecoHeads


@runtime_checkable
class ModelInfo(Protocol):
    """What callers read about the loaded model (`engine.lm`): our `LoadedModel`, or the vLLM
    engine's `EngineModel` (vLLM holds the model itself in its own processes)."""

    name: str  # --model as given: a path, hub id or alias
    device: object  # a torch.device, or "vllm:<platform>"; recorded as str(device)
    config: object  # the base's transformers config (context length), or None when unknown


@runtime_checkable
class Engine(Protocol):
    """One loaded model (+ heads) that generates for any list of requests."""

    name: str  # "hf" (ours) or "vllm": recorded in results, and resuming checks it
    # The dtype the base model computes in, as torch names it without "torch." ("float32",
    # "bfloat16"); vLLM: the --dtype it was started with, "auto" when vLLM chose. Always a str,
    # because it is recorded in results and compared when resuming.
    dtype: str
    prompt_format: PromptFormat  # how chat prompts are rendered (system prompt, template kwargs)

    @property
    def tokenizer(self): ...

    @property
    def lm(self) -> ModelInfo: ...

    @property
    def heads(self) -> AutoDecoHeads | None: ...

    def generate(
        self,
        requests: Sequence[Request],
        *,
        max_new_tokens: int,
        batch_size: int = 8,
        stop: Sequence[str] | None = None,
        trace: bool = False,
        streamer=None,
        on_batch_done: Callable[[list[Generation]], None] | None = None,
    ) -> list[Generation]:
        """A `Generation` per request, in request order; `on_batch_done` gets each finished
        group as it finishes; a `streamer` (transformers' TextStreamer) needs one request."""
        ...

    def close(self) -> None:
        """Release the model (hooks, worker processes, vLLM's engine)."""
        ...
