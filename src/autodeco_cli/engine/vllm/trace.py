"""The per-token trace channel between the switch (in vLLM's worker) and the caller.

The switch appends one JSON line per step, ``[[id, token index, T̂, P̂, nucleus size], ...]``,
to ``$AUTODECO_VLLM_TRACE_DIR/trace-<pid>.jsonl``; `TraceReader` collects them. Kept free of
vLLM imports: the engine reads traces, and the CLI checks for vLLM, before vLLM is imported.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

TRACE_DIR_ENV = "AUTODECO_VLLM_TRACE_DIR"
# the request's extra_args keys (OpenAI requests: "vllm_xargs")
LEARNED_ARG = "autodeco"
TRACE_ARG = "autodeco_trace"


def trace_path() -> Path | None:
    """This process's trace file, or None when the caller asked for no traces."""
    directory = os.environ.get(TRACE_DIR_ENV)
    return Path(directory) / f"trace-{os.getpid()}.jsonl" if directory else None


def append_trace(path: Path, entries: list[list]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(entries) + "\n")


class TraceReader:
    """Collects the switch's trace lines as they are written: {request id: {token index: (T̂, P̂, n)}}."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.offsets: dict[Path, int] = {}
        self.steps: dict[str, dict[int, tuple[float, float, int]]] = {}

    def read(self) -> None:
        for path in sorted(self.directory.glob("trace-*.jsonl")):
            with path.open("rb") as handle:
                handle.seek(self.offsets.get(path, 0))
                data = handle.read()
            complete = data[: data.rfind(b"\n") + 1]  # a line being written is read next time
            self.offsets[path] = self.offsets.get(path, 0) + len(complete)
            for line in complete.decode("utf-8").splitlines():
                for request_id, token_index, temperature, top_p, size in json.loads(line):
                    self.steps.setdefault(request_id, {})[token_index] = (temperature, top_p, size)

    def pop(self, request_id: str) -> list[tuple[float, float, int]] | None:
        steps = self.steps.pop(request_id, None)
        return None if steps is None else [steps[i] for i in sorted(steps)]
