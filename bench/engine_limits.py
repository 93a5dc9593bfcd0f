"""This CPU's limits for bench_engine.py: read bandwidth, matmul peaks, the model's bytes and FLOPs per token."""

from __future__ import annotations

import time

from autodeco_cli.core.cpu_features import cpu_model


def probe_limits(threads: int) -> dict:
    """Read bandwidth (sum over 512 MB) and bf16 / fp32 matmul peak (2048^3), this process."""
    import torch

    torch.set_num_threads(threads)

    def best(fn, seconds=1.0):
        fn()
        times, start = [], time.perf_counter()
        while time.perf_counter() - start < seconds:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    big = torch.ones(128 * 1024 * 1024)  # 512 MB fp32, far past the caches
    bandwidth = big.numel() * 4 / best(lambda: big.sum()) / 1e9
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    fp32 = 2 * 2048**3 / best(lambda: a @ b) / 1e9
    ab, bb = a.bfloat16(), b.bfloat16()
    bf16 = 2 * 2048**3 / best(lambda: ab @ bb) / 1e9
    return {"read_GBps": bandwidth, "fp32_GFLOPs": fp32, "bf16_GFLOPs": bf16}


def model_costs(model: str) -> dict:
    """Parameters (and so weight bytes read and FLOPs) per decoded token of the default model."""
    from autodeco_cli.engine.models import load_base_model

    lm = load_base_model(model, device="cpu", dtype="float32")
    config = lm.model.config
    body = sum(p.numel() for n, p in lm.model.named_parameters() if "embed_tokens" not in n)
    head = config.vocab_size * config.hidden_size  # tied: the LM head is the embedding matrix
    return {
        "body_params": body,
        "head_params": head,
        "layers": config.num_hidden_layers,
        "kv_dim": config.num_key_value_heads * (config.hidden_size // config.num_attention_heads),
    }


# ---- the machine: what every bench_engine run prints first ------------------------------------------

# instruction sets that decide which kernels run (x86 flags, then aarch64 features)
RELEVANT_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "bf16",
    "i8mm",
    "sve",
)


EMULATION_VARIABLES = ("AUTODECO_CPU_FLAGS_OFF", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")


def emulation() -> dict[str, str]:
    """The settings that make this CPU run another CPU's code paths (cpu_features.cpu_flags), as set."""
    import os

    return {k: os.environ[k] for k in EMULATION_VARIABLES if os.environ.get(k)}


def _emulation_text(emulated: dict[str, str]) -> str:
    return "".join(f"; EMULATED {k}={v}" for k, v in emulated.items())


def machine_line() -> str:
    """One line naming the machine a benchmark ran on: CPU model, logical CPUs, torch."""
    import os

    import torch

    emulated = _emulation_text(emulation())
    return f"machine: {cpu_model()} ({os.cpu_count()} logical CPUs); torch {torch.__version__}{emulated}"


def machine_info(threads: int) -> dict:
    """CPU model, the relevant flags, how many cores this process may use, memory; torch's view."""
    import os

    import torch

    from autodeco_cli.core.cpu_features import cpu_flags, cpu_has_native_bf16

    model = cpu_model()
    flags = cpu_flags()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": model,
        "flags": [f for f in RELEVANT_FLAGS if f in flags],
        "native_bf16": cpu_has_native_bf16(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": affinity,
        "cgroup_cpu_quota": _cgroup_quota(),
        "memory_GB": _memory_gb(),
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        # a CPU without some of these flags, as run here (cpu_features.cpu_flags): named in the report
        "emulated": emulation(),
        "threads_per_process": threads,
    }


def _cgroup_quota() -> float | None:
    """CPUs the cgroup allows (cgroup v2 cpu.max), None when unlimited or unknown."""
    from pathlib import Path

    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _memory_gb() -> float | None:
    from pathlib import Path

    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return None


def format_machine(info: dict, limits: dict) -> str:
    quota = info["cgroup_cpu_quota"]
    return "\n".join(
        [
            f"machine: {info['cpu']}; flags: {' '.join(info['flags']) or '(none of interest)'}; "
            f"native bf16: {'yes' if info['native_bf16'] else 'no'}" + _emulation_text(info.get("emulated", {})),
            f"cores: {info['usable_cpus']} usable of {info['logical_cpus']} logical"
            + (f", cgroup quota {quota:g} CPUs" if quota else "")
            + f"; {info['threads_per_process']} torch thread(s) per process; memory "
            + (f"{info['memory_GB']:.0f} GB" if info["memory_GB"] else "unknown")
            + f"; torch {info['torch']} ({info['torch_cpu_capability']})",
            f"limits (1 process, {info['threads_per_process']} thread(s)): read bandwidth "
            f"{limits['read_GBps']:.1f} GB/s, "
            f"fp32 matmul {limits['fp32_GFLOPs']:.0f} GFLOP/s, bf16 matmul {limits['bf16_GFLOPs']:.0f} GFLOP/s",
            f"model: {limits['body_params'] / 1e6:.1f} M body + {limits['head_params'] / 1e6:.1f} M LM-head "
            "parameters per token",
        ]
    )


# ---- floors: the least time a decode step can take on this machine -------------------------------

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def step_floor_ms(params: float, dtype: str, rows: float, limits: dict) -> tuple[float, str]:
    """The least time a decode step's `params` weights take at `rows` rows: reading them once
    (bandwidth) or multiplying them (matmul peak), whichever is longer; and which it was.
    KV-cache reads and everything but the weights are left out, so a real step is above it."""
    read = params * BYTES.get(dtype, 4) / (limits["read_GBps"] * 1e9)
    peak = limits["bf16_GFLOPs"] if dtype == "bfloat16" else limits["fp32_GFLOPs"]
    compute = 2 * params * rows / (peak * 1e9)
    return 1000 * max(read, compute), "bandwidth" if read >= compute else "compute"
