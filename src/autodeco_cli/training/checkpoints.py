"""Checkpoints of a training run, one scheme for every trainer: OUT/checkpoints/step-N folders.

A checkpoint is the files a trainer writes into the folder (heads, adapter) plus TRAINER_STATE_FILE: the
trainer's own state (step, optimizer, ...) with the global RNG states beside it (torch CPU and
CUDA, python, numpy), so the next random draw after a resume is the one an uninterrupted run makes.

- Written whole or not at all: everything goes into `.step-N.tmp`, TRAINER_STATE_FILE last, and one rename
  publishes it; only `step-N` folders holding TRAINER_STATE_FILE count, so a crash mid-write leaves
  nothing that a resume would pick.
- Pruned to the newest `keep` after each save, so that an older one is there to fall back to.
- A resume restores the newest checkpoint that reads cleanly; a broken one (a truncated state
  file, a damaged weights file) is skipped for the one before it with a one-line warning naming
  the folder and why, and when none is left the UserError says so.

The store knows nothing of what a trainer keeps: the trainer writes its files (`write_files`) and
restores them and its state (`restore`).
"""

from __future__ import annotations

import pickle
import random
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from rich.markup import escape
from safetensors import SafetensorError

from ..core.consoles import err_console
from ..core.errors import UserError
from ..core.safe_writes import folder_size, staged_folder
from .run_folder import CHECKPOINTS_DIR, TRAINER_STATE_FILE, checkpoint_folders

RNG_KEY = "rng"  # TRAINER_STATE_FILE's entry for the RNG states; the rest of the dict is the trainer's
# what reading a truncated or damaged checkpoint raises (torch.load, safetensors, state dicts)
CHECKPOINT_ERRORS = (
    SafetensorError,
    RuntimeError,
    EOFError,
    OSError,
    KeyError,
    ValueError,
    TypeError,
    pickle.UnpicklingError,
    UserError,
)


def broken_file_reason(exc: BaseException, file: Path) -> str:
    """'FILE: why' for a checkpoint file that could not be read (load_heads' errors name their own file)."""
    if isinstance(exc, UserError):
        return exc.message.rstrip(".")
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, EOFError) or not text:
        return f"{file}: truncated or empty"
    return f"{file}: {text[:100]}{'...' if len(text) > 100 else ''}"


# ---- RNG states ---------------------------------------------------------------------------------


def rng_state() -> dict:
    """The global generators' states, in types that torch.load(weights_only=True) reads back."""
    numpy_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        # one state per visible GPU: an empty list on a machine without one, so CPU runs this same line
        "cuda": torch.cuda.get_rng_state_all(),
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
    }


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    # a run resumed on fewer GPUs than it was saved on restores the devices it has (none on CPU)
    for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
        torch.cuda.set_rng_state(cuda_state, device)
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )


# ---- the store ----------------------------------------------------------------------------------


class CheckpointStore:
    """The checkpoints of one output folder.

    `keep`: how many of the newest are kept (0 keeps all). `legacy`: the name of a folder in an older layout
    (the same files, no RNG states) that is read as the oldest checkpoint and pruned like one.
    """

    def __init__(self, output_dir: Path, keep: int, legacy: str | None = None):
        self.output_dir = Path(output_dir)
        self.root = self.output_dir / CHECKPOINTS_DIR
        self.keep = keep
        self.legacy = legacy

    def folders(self) -> list[Path]:
        """Complete checkpoints, oldest first (`run_folder.checkpoint_folders`)."""
        return checkpoint_folders(self.output_dir, self.legacy)

    def save(self, step: int, state: dict, write_files: Callable[[Path], None]) -> Path:
        """Publish checkpoint step-`step`: `write_files(folder)` writes the trainer's files, then
        `state` and the RNG states go into TRAINER_STATE_FILE; then prune."""
        final = self.root / f"step-{step}"
        previous = self.folders()
        # a full disk fails as one line and takes the staging folder with it; the newest complete
        # checkpoint is untouched, so freeing space and resuming loses at most this interval
        with staged_folder(
            final,
            self.root / f".step-{step}.tmp",
            size=folder_size(previous[-1]) if previous else None,
            hint="free some space, then re-run the same command with --resume: training continues from "
            + (f"{previous[-1].name}" if previous else "step 0"),
        ) as staging:
            write_files(staging)
            torch.save({**state, RNG_KEY: rng_state()}, staging / TRAINER_STATE_FILE)
        self.prune()
        return final

    def prune(self) -> None:
        """Delete all but the newest `keep` checkpoints, and staging folders a crash left behind."""
        if self.keep > 0:
            for old in self.folders()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        if self.root.is_dir():
            for leftover in self.root.glob(".step-*.tmp"):
                shutil.rmtree(leftover, ignore_errors=True)

    def load_newest(self, restore: Callable[[Path, dict], None], console=None) -> Path | None:
        """Restore the newest checkpoint that reads cleanly: `restore(folder, state)` loads the
        trainer's files and state, then the RNG states are set. Returns its folder (None: no
        checkpoint). A broken one is skipped for the one before it, with a warning on `console`."""
        folders = self.folders()
        for index in range(len(folders) - 1, -1, -1):
            folder = folders[index]
            reason = self._load(folder, restore)
            if reason is None:
                return folder
            if index == 0:
                where = " and ".join(sorted({str(self.root if f.parent == self.root else f) for f in folders}))
                raise UserError(
                    f"checkpoint {folder} is broken ({reason}) and no earlier complete checkpoint is left",
                    f"delete {where} to start over from step 0, or train into another output_dir",
                )
            warning = f"checkpoint {folder.name} is broken ({reason}); resuming from {folders[index - 1].name} instead"
            (console or err_console).print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
        return None

    @staticmethod
    def _load(folder: Path, restore: Callable[[Path, dict], None]) -> str | None:
        """None once restored, else why the folder could not be."""
        file = folder / TRAINER_STATE_FILE
        try:
            # weights_only: optimizer/scheduler state is tensors and plain containers; nothing is unpickled as code
            state = torch.load(file, weights_only=True)
            file = folder  # from here a damaged file is one of the trainer's, which it may not name
            # folders written before RNG states were kept (a legacy folder) restore all they hold
            rng = state.pop(RNG_KEY, None)
            restore(folder, state)
            if rng is not None:
                restore_rng_state(rng)
        except CHECKPOINT_ERRORS as exc:
            return broken_file_reason(exc, file)
        return None
