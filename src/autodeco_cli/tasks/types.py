"""The small records that flow between the task registry, the scorers and the eval runner."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Doc:
    """One benchmark item, already turned into a prompt.

    `prompt` is the user message (the runner applies the chat template) or, for raw completion
    tasks, the exact text. `gold` is whatever the task's scorer needs; `meta` carries anything
    else a scorer or report wants (options order and shuffle seed, test cases, ...).
    """

    doc_id: str
    prompt: str
    gold: Any
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Score:
    """The verdict on one generated sample.

    `correct` is the task's primary metric for this sample. `extracted` is the answer the
    scorer pulled out of the text (None when unparseable, which always counts as wrong).
    `metrics` holds secondary per-sample metrics, e.g. the paper's string-normalised math
    comparison, or IFEval's strict/loose prompt- and instruction-level results.
    """

    correct: bool
    extracted: str | None
    metrics: dict[str, float] = field(default_factory=dict)
