"""Resource limits of one sandboxed run: what they are (`Limits`) and how they are applied (rlimits).

Applied with setrlimit in the launched process before anything else runs, so every process the
run starts inherits them; the wall-clock `timeout_s` and the output cap are enforced by the parent
(see process.py), the working-directory size by the tmpfs the isolation layer mounts.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Limits:
    """Every limit of one run. Sizes in MiB, times in seconds."""

    timeout_s: float = 6.0  # wall clock, enforced by the parent
    cpu_s: int = 4  # RLIMIT_CPU of each process
    memory_mb: int = 512  # RLIMIT_AS of each process
    max_procs: int = 32  # RLIMIT_NPROC (processes of the sandbox uid)
    file_size_mb: int = 8  # RLIMIT_FSIZE
    max_output_mb: int = 32  # stdout (and the results channel) beyond this kills the run
    work_mb: int = 64  # the private writable tmpfs (/tmp, the working directory)
    max_open_files: int = 64  # RLIMIT_NOFILE

    def __post_init__(self) -> None:
        for name in ("cpu_s", "memory_mb", "max_procs", "file_size_mb", "max_output_mb", "work_mb", "max_open_files"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Limits.{name} must be a positive int, not {value!r}")
        if not self.timeout_s > 0:
            raise ValueError(f"Limits.timeout_s must be positive, not {self.timeout_s!r}")

    @classmethod
    def of(cls, base: "Limits | None" = None, **overrides: Any) -> "Limits":
        """`base` (or the defaults) with keyword overrides, coerced to the field types."""
        base = base or cls()
        coerced = {k: (float(v) if k == "timeout_s" else int(v)) for k, v in overrides.items()}
        return replace(base, **coerced)

    @property
    def stack_bytes(self) -> int:
        # Python recursion through C frames (lru_cache, sorted keys) needs more than 8 MiB; glibc
        # also uses this as the default thread stack, so keep it well under the address-space cap.
        return min(64, max(8, self.memory_mb // 8)) * 1024 * 1024


# Probing a plan must be cheap but still exercise the real launch path.
PROBE_LIMITS = Limits(timeout_s=10.0, cpu_s=5, memory_mb=256, max_procs=16, file_size_mb=4, max_output_mb=16)


def apply_rlimits(limits: Limits, nproc: int) -> None:
    """setrlimit every limit on the calling process (runs in the child between fork and exec).

    `nproc` is passed separately: without a throw-away uid, RLIMIT_NPROC counts the caller's own
    processes too, so the caller adds those to `limits.max_procs`.
    """
    mib = 1024 * 1024
    # The kernel checks RLIMIT_CPU against tick-sampled CPU time, which on a loaded (virtual) machine
    # runs ahead of the precise time rusage reports: at the limit a program may show only ~0.7 of it.
    # A soft limit below the hard one makes the kernel's own SIGXCPU, which nothing else sends, say
    # "CPU limit" (SIGKILL follows a second later only for a program that catches SIGXCPU).
    _lower(resource.RLIMIT_CPU, limits.cpu_s, hard=limits.cpu_s + 1)
    _lower(resource.RLIMIT_AS, limits.memory_mb * mib)
    _lower(resource.RLIMIT_FSIZE, limits.file_size_mb * mib)
    _lower(resource.RLIMIT_NPROC, nproc)
    _lower(resource.RLIMIT_NOFILE, limits.max_open_files)
    _lower(resource.RLIMIT_CORE, 0)
    _lower(resource.RLIMIT_STACK, limits.stack_bytes)
    if hasattr(resource, "RLIMIT_MEMLOCK"):
        _lower(resource.RLIMIT_MEMLOCK, 0)
    if hasattr(resource, "RLIMIT_MSGQUEUE"):
        _lower(resource.RLIMIT_MSGQUEUE, 0)


def _lower(which: int, value: int, hard: int | None = None) -> None:
    try:
        resource.setrlimit(which, (value, value if hard is None else hard))
    except (ValueError, OSError):
        # Never raise a limit above an existing hard cap; lowering is all we need.
        _soft, cap = resource.getrlimit(which)
        if cap != resource.RLIM_INFINITY and value > cap:
            resource.setrlimit(which, (cap, cap))
        elif cap != resource.RLIM_INFINITY and hard is not None and hard > cap:
            resource.setrlimit(which, (value, cap))
        else:
            raise
