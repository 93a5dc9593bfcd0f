"""Start-up without the garbage collector's full passes over what start-up loads.

Importing torch and transformers and loading a model make ~600k objects that live until the
process exits. With the collector on, CPython walks all of them in repeated full collections
while they are being made, and once more when the interpreter exits: measured on `autodeco
generate --max-new-tokens 1` (default model, 2-core Xeon VM), 0.5 s of a 3.3 s start and 0.6 s
of exit (reports/engine-speed.md, "Start-up"). `paused_then_frozen` turns the collector off
while they are made, then moves them to the permanent generation (`gc.freeze`), which later
collections and the exit skip.

What is unreachable at that moment is frozen too (after the default model's load: ~11k small
objects, no tensors). To bound that, only the process's first freeze happens; a later call
pauses the collector and then just turns it back on (a test process opens many engines).
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def paused_then_frozen() -> Iterator[None]:
    if not gc.isenabled():  # someone else manages the collector
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        if gc.get_freeze_count() == 0:
            gc.freeze()
        gc.enable()
