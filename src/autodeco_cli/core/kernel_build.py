"""How a C kernel is compiled: its source in `assets/kernels/` (with the headers there that it includes), the CPU
features it needs, its compiler flags, its shared library in the autodeco cache (built once per source, compiler
and flags). Loading a kernel, and checking it against torch, is `cpu_kernels`'."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

FLAGS = ("-O3", "-fopenmp", "-shared", "-fPIC")
EXTRA_FLAGS = {
    "amx_matmul_bf16": ("-mavx512vl", "-mamx-tile", "-mamx-bf16"),
    # torch rounds each product and sum on its own: no fused multiply-adds
    "decode_ops_bf16": ("-ffp-contract=off",),
    "decode_ops_f32": ("-ffp-contract=off",),
    "heads_step_f32": ("-lm",),
}
AVX2 = ("avx2", "fma")
# What each kernel needs of the CPU beyond x86-64: the instruction-set levels it can be built for, best first. It is
# built for the first level this CPU has, and not at all where it has none. The kernels written on lanes16.h's
# sixteen lanes build for AVX-512 or, lane for lane the same sums, for AVX2 with FMA.
NEEDS = {
    "amx_matmul_bf16": (("amx_bf16", "avx512_bf16"),),
    "gemv_bf16": (("avx512_bf16",),),
    "decode_attention_bf16": (("avx512_bf16",),),
    "decode_ops_bf16": (("avx512f", "avx512bw"),),
    "decode_ops_f32": (AVX2, ()),  # elementwise, and a sum in torch's 8 or 16 lanes whatever the registers
    "sort_descending_f32": ((),),
    "learned_step_f32": (("avx512f",), AVX2),
    "heads_step_f32": (("avx512f",), AVX2),
    "decode_layers_bf16": (("amx_bf16", "avx512_bf16"),),  # it calls the AMX matmul and the bf16 kernels
}


def level_for(name: str, flags: set[str]) -> tuple[str, ...] | None:
    """The best level kernel `name` can be built for on a CPU with these flags (NEEDS), or None."""
    return next((level for level in NEEDS[name] if set(level) <= flags), None)


def isa_flags(level: tuple[str, ...]) -> tuple[str, ...]:
    """The compiler's instruction-set flags for a level of NEEDS. A level that needs nothing gets none: the
    compiler's AVX-512 code would stop the process on a CPU without it (AVX2-only) at the kernel's load check."""
    if not level:
        return ()
    if level == AVX2:
        return ("-mavx2", "-mfma")
    return ("-mavx512f", "-mavx512bw", "-mavx512bf16")


# the kernels' own headers, beside them in assets/kernels/
_OWN_HEADER = re.compile(r'^#include "([a-z0-9_]+\.h)"$', re.MULTILINE)


def kernel_source(name: str) -> str:
    """Kernel `name`'s C source, its own headers (`#include "x.h"`) written in: the build compiles one file, and its
    cache key then covers what the headers hold."""
    folder = resources.files("autodeco_cli") / "assets" / "kernels"
    return _OWN_HEADER.sub(lambda include: (folder / include.group(1)).read_text(), (folder / f"{name}.c").read_text())


def build_flags(name: str, level: tuple[str, ...]) -> tuple[str, ...]:
    """The compiler flags kernel `name` is built with for `level` (one of its NEEDS)."""
    return FLAGS + isa_flags(level) + EXTRA_FLAGS.get(name, ())


def build(name: str, source: str, level: tuple[str, ...]) -> Path:
    """Compile `source` for `level` (one of NEEDS[name]) into the cache, once per source, compiler and flags (the
    file name hashes them)."""
    from .user_cache import cache_root

    compiler = os.environ.get("CC", "cc")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
    flags = build_flags(name, level)
    digest = hashlib.sha256(f"{source}\0{compiler}\0{version}\0{flags}".encode()).hexdigest()[:16]
    target = cache_root() / "kernels" / f"{name}-{digest}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as folder:
        c_file, built = Path(folder) / f"{name}.c", Path(folder) / f"{name}.so"
        c_file.write_text(source)
        subprocess.run([compiler, *flags, str(c_file), "-o", str(built)], capture_output=True, timeout=120, check=True)
        os.replace(built, target)  # atomic: processes building at once all load a complete file
    return target
