"""Per-stage wall time of a resumable pipeline (reproduce, where-it-wins), kept across invocations."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

TOTAL = "total (this invocation)"
MACHINES = "machines"  # the CPUs (and thread counts) that ran stages: times compare only on one machine


class StageClock:
    """Seconds per stage, cumulative over invocations (a stage an earlier invocation finished
    costs ~0 in a later one), written to `path` as each stage ends."""

    def __init__(self, path: Path, log=print, machine: str | None = None):
        self.path, self.log = Path(path), log
        self.timings: dict[str, float] = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.machines: list[str] = self.timings.pop(MACHINES, [])
        self.machine = machine  # this invocation's, noted as its stages end
        self.started = time.perf_counter()

    @classmethod
    def start(cls, workdir: str | Path, threads: int | None, log=print) -> StageClock:
        """A pipeline's run folder (created) and its clock (`timings.json` there), with the
        pipeline's thread count applied first, since every stage after it inherits that count."""
        import torch

        from ..core.cpu_features import cpu_model

        if threads:
            torch.set_num_threads(threads)
        work = Path(workdir)
        work.mkdir(parents=True, exist_ok=True)
        return cls(work / "timings.json", log, machine=f"{cpu_model()}, {torch.get_num_threads()} threads")

    def close_invocation(self) -> None:
        """Record this invocation's whole wall time beside the cumulative stage times, as the last
        entry (a stage first run in a later invocation would otherwise be listed after it)."""
        self.timings.pop(TOTAL, None)
        self.timings[TOTAL] = time.perf_counter() - self.started

    @contextmanager
    def stage(self, name: str):
        self.log(f"[bold]== {name}[/]")
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
            if self.machine and self.machine not in self.machines:
                self.machines.append(self.machine)
            self.save()

    def save(self) -> None:
        saved = {**self.timings, MACHINES: self.machines} if self.machines else self.timings
        self.path.write_text(json.dumps(saved, indent=2) + "\n")

    def markdown(self) -> list[str]:
        stages = {name: seconds for name, seconds in self.timings.items() if name != TOTAL}
        lines = [f"Measured on: {'; '.join(self.machines)}.", ""] if self.machines else []
        lines += ["| stage | seconds |", "|---|---|"] + [
            f"| {name} | {seconds:.0f} |" for name, seconds in stages.items()
        ]
        lines.append(f"| all stages, summed over invocations | {sum(stages.values()):.0f} |")
        if TOTAL in self.timings:
            lines.append(f"| {TOTAL} | {self.timings[TOTAL]:.0f} |")
        return lines + [
            "",
            "Stages already finished by an earlier invocation cost ~0 s here; the per-stage times are cumulative over "
            "invocations.",
            "",
        ]
