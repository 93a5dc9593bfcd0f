"""The baseline side of a side-by-side benchmark: an earlier commit's code, run from a `git archive`."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def baseline_tree(ref: str, folder: Path) -> Path:
    """`git archive` of the baseline commit's src/ and evals/ (reads the repository, changes nothing)."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", ref, "src", "evals"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder / "src"
