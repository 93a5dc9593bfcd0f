"""Where a CPU model's memory lives, so that decoding does not wait on the page tables.

* glibc returned the decode step's large temporaries to the kernel and page-faulted them back
  (`keep_freed_memory`).
* A one-row decode step streams every weight once. With 4 KiB pages that is ~66k TLB misses
  per token for the default model in bf16; moving the weights the bf16 kernel reads into one
  block of 2 MiB pages (`move_to_huge_pages`) took all its linear weights at one row from 16.7
  to 10.5 ms on one core of the EPYC we measured (25 GB/s, its sequential read rate).
* oneDNN's prepacked copies (the weights at 7+ rows) are opaque and cannot be moved; the heap
  memory under them is collapsed into 2 MiB pages where it lies (`collapse_to_huge_pages`):
  1.10-1.12x on all the default model's linears at 1, 6 and 30 rows on one core of an Intel
  Xeon with AMX (30 rows: 27.7 -> 24.7 ms).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from typing import Iterable

import torch

HUGE_PAGE = 2 << 20
MADV_HUGEPAGE = 14  # linux/mman.h
MADV_COLLAPSE = 25  # Linux 6.1+


def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def keep_freed_memory() -> bool:
    """Let glibc reuse freed blocks instead of handing them back to the kernel (Linux only).

    A decode step allocates and frees many multi-megabyte tensors (logits and their fp32/fp64
    copies, KV-cache concatenations); by default glibc serves them with fresh mmaps or trims
    them off the heap, and every reuse then page-faults its memory back in. Measured: 750k minor
    faults over a 2.8k-token run, ~10% of the CPU time. Raising the mmap threshold to its
    maximum (32 MiB) and the trim threshold to 512 MiB keeps those blocks in the heap. Returns
    whether it applied; AUTODECO_MALLOPT=0 turns it off.
    """
    if os.environ.get("AUTODECO_MALLOPT", "1") == "0" or platform.system() != "Linux":
        return False
    try:
        mallopt = _libc().mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 512 << 20))


def move_to_huge_pages(parameters: Iterable[torch.nn.Parameter]) -> int:
    """Copy these CPU parameters, back to back, into one block the kernel may back with 2 MiB
    pages, and point each parameter at its copy (`param.data`, so tied weights stay tied).

    Linux only, and only where transparent huge pages are not off; the values and the
    parameters' identities do not change. Returns how many parameters moved. AUTODECO_HUGEPAGES=0
    turns it off.
    """
    if os.environ.get("AUTODECO_HUGEPAGES", "1") == "0" or platform.system() != "Linux" or not huge_pages_allowed():
        return 0
    unique = {id(p): p for p in parameters if p.device.type == "cpu" and p.is_contiguous()}
    params = [p for p in unique.values() if p.dtype == torch.bfloat16]
    if not params:
        return 0
    # every parameter starts on a 64-byte line, so the kernel's loads stay aligned
    sizes = [(p.numel() * 2 + 63) // 64 * 32 for p in params]  # in bf16 elements
    total = sum(sizes)
    raw = torch.empty(total + HUGE_PAGE // 2, dtype=torch.bfloat16)
    skip = (-raw.data_ptr() % HUGE_PAGE) // 2
    block = raw[skip : skip + total]
    length = total * 2 // HUGE_PAGE * HUGE_PAGE
    if length and _libc().madvise(ctypes.c_void_p(block.data_ptr()), ctypes.c_size_t(length), MADV_HUGEPAGE):
        return 0  # before any page is touched: nothing copied yet
    offset = 0
    for param, size in zip(params, sizes):
        view = block[offset : offset + param.numel()].view(param.shape)
        view.copy_(param.data)
        param.data = view
        offset += size
    return len(params)


def collapse_to_huge_pages(spans: Iterable[tuple[int, int]]) -> int:
    """Back the memory under these (address, bytes) spans with 2 MiB pages where it already lies,
    without moving it (MADV_COLLAPSE); returns how many bytes that covered.

    Spans closer than a huge page are merged, and only the whole huge pages inside a merged
    range are touched, so memory outside the spans' neighbourhood never is. Neighbouring heap
    bytes inside those pages keep their values. Older kernels refuse (0); AUTODECO_HUGEPAGES=0
    turns it off.
    """
    if os.environ.get("AUTODECO_HUGEPAGES", "1") == "0" or platform.system() != "Linux" or not huge_pages_allowed():
        return 0
    libc, covered = _libc(), 0
    for first, last in whole_huge_pages(spans):
        address, length = ctypes.c_void_p(first), ctypes.c_size_t(last - first)
        if libc.madvise(address, length, MADV_HUGEPAGE) or libc.madvise(address, length, MADV_COLLAPSE):
            continue
        covered += last - first
    return covered


def whole_huge_pages(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """[first, last) address ranges of the whole huge pages inside the (address, bytes) spans,
    spans less than a huge page apart merged first."""
    merged: list[list[int]] = []
    for start, size in sorted(spans):
        if merged and start <= merged[-1][1] + HUGE_PAGE:
            merged[-1][1] = max(merged[-1][1], start + size)
        else:
            merged.append([start, start + size])
    ranges = [(-(-start // HUGE_PAGE) * HUGE_PAGE, end // HUGE_PAGE * HUGE_PAGE) for start, end in merged]
    return [(first, last) for first, last in ranges if last > first]


def huge_pages_allowed() -> bool:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def free_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not on this platform
        return None
