"""What this CPU is and can do: its model name, its instruction-set flags, whether it computes bf16 natively."""

from __future__ import annotations

import functools
import platform
from pathlib import Path


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when this CPU has bf16 dot-product instructions (x86 AVX512_BF16 or AMX-BF16, Arm BF16).

    torch.backends.cpu.get_cpu_capability() names the vector width only ("AVX512" both with and
    without bf16), and oneDNN reports bf16 as "supported" on any AVX-512 CPU (emulated), so the
    kernel's own CPU flags decide. AUTODECO_CPU_BF16=0/1 overrides the check.
    """
    import os

    forced = os.environ.get("AUTODECO_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    return has_native_bf16(cpu_flags())


def cpu_flags() -> set[str]:
    """This CPU's feature flags, less those AUTODECO_CPU_FLAGS_OFF names (a comma list): to run, on one machine,
    the paths a CPU without them takes (our kernels and the dtype default; torch's own kernels follow
    ONEDNN_MAX_CPU_ISA and ATEN_CPU_CAPABILITY). For benchmarks: the speed of another CPU it is not."""
    import os

    if platform.system() == "Darwin":
        flags = _darwin_flags()
    else:
        try:
            flags = flags_from_cpuinfo(Path("/proc/cpuinfo").read_text())
        except OSError:
            flags = set()
    return flags - set(os.environ.get("AUTODECO_CPU_FLAGS_OFF", "").split(","))


def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (x86 "model name", ARM "Model" or "CPU part"),
    else what platform knows. Every benchmark and study's run time names it: speeds differ between CPUs."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":")[0].strip() in ("model name", "Model", "CPU part"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def flags_from_cpuinfo(text: str) -> set[str]:
    """The CPU feature flags listed in a /proc/cpuinfo text (x86 `flags`, aarch64 `Features`)."""
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


def has_native_bf16(flags: set[str]) -> bool:
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def _darwin_flags() -> set[str]:
    import subprocess

    try:
        out = subprocess.run(
            ["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return set()
    return {"bf16"} if out == "1" else set()
