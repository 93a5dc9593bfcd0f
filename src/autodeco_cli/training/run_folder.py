"""An output folder's earlier training run, known without torch: which of its folders are
checkpoints (the layout `checkpoints.CheckpointStore` writes), which process speaks for the run,
and the refusals the trainers make before their model loads: an earlier run without --resume,
and (for --steer) a --resume with nothing to resume.

Torch-free, so that `train-heads` refuses these before torch is imported; the trainers call the
same functions, so a Python caller meets the same rule.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..core.errors import UserError

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE_FILE = "trainer_state.pt"
# runs of the reward trainer from before the shared scheme kept their one checkpoint here
REWARD_LEGACY_DIR = "checkpoint"


def checkpoint_folders(output_dir: str | Path, legacy: str | None = None) -> list[Path]:
    """Complete checkpoints, oldest first (by step number, not by name: step-9 < step-10). Only
    `step-N` folders holding TRAINER_STATE_FILE count, so a crash mid-write leaves none; `legacy`,
    the name of a folder in an older layout (REWARD_LEGACY_DIR), counts as the oldest."""
    old = Path(output_dir) / legacy if legacy is not None else None
    found = [old] if old is not None and (old / TRAINER_STATE_FILE).is_file() else []
    root = Path(output_dir) / CHECKPOINTS_DIR
    if root.is_dir():
        steps = [p for p in root.iterdir() if step_of(p) is not None and (p / TRAINER_STATE_FILE).is_file()]
        found += sorted(steps, key=step_of)
    return found


def step_of(folder: Path) -> int | None:
    prefix, _, number = folder.name.partition("-")
    return int(number) if prefix == "step" and number.isdigit() else None


def launcher_rank() -> tuple[int, int]:
    """The rank and world size torchrun/accelerate announce (RANK, WORLD_SIZE), without joining
    the process group: enough to know, before any model loads, which process writes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return (int(os.environ.get("RANK", "0")), world) if world > 1 else (0, 1)


def refuse_earlier_run(output_dir: str | Path, resume: bool, legacy: str | None = None) -> None:
    """Refuse to train over an earlier run's checkpoints unless resuming. Under a launcher only
    rank 0 speaks for the run (a rank on another node may see another folder)."""
    if resume or launcher_rank()[0] != 0:
        return
    folders = checkpoint_folders(output_dir, legacy)
    if folders:
        raise UserError(
            f"output_dir {output_dir} already holds checkpoints of an earlier run (newest: {folders[-1].name})",
            "pass --resume to continue that run, or choose another output_dir",
        )


def check_steer_folder(output_dir: str | Path, resume: bool) -> None:
    """`train-heads --steer`'s folder: no earlier run unless resuming, and with --resume, the
    checkpoints of the cut-off steer run it continues."""
    refuse_earlier_run(output_dir, resume)
    if resume and not checkpoint_folders(output_dir):
        raise UserError(
            f"--resume: output_dir {output_dir} holds no --steer checkpoints to resume from",
            "re-run without --resume to start the run there",
        )
