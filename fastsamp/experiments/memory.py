"""glibc malloc settings for the processes that fastsamp's training entry points own.

A training iteration allocates large temporaries and frees them: at LGCP's D = 1600 each (T + 1, B, D) trajectory
array is 192 MB. glibc serves allocations above its mmap threshold with fresh mmap'd pages and returns them on free,
so every iteration pays a page fault (and the kernel's zeroing) per 4 KiB page of each one again. `keep_freed_memory`
makes malloc serve everything from its heap and keep what is freed (mallopt M_MMAP_MAX = 0, M_TRIM_THRESHOLD = the
largest int), the effect of GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=..., set from inside
the process: the next iteration reuses the same pages. Values are unchanged (only where memory comes from); the
process keeps its peak heap until it exits. Measured: benchmarks/RESULTS.md, "Twenty-sixth session".

Called by `fastsamp train` from the command line and by `benchmarks/offpolicy.py` run as a script (each owns its
process); `fastsamp.cli.main(argv)` and the experiment functions called from a caller's own Python (tests among them)
leave its malloc as it is.
"""
from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's malloc.h
_INT_MAX = 2**31 - 1
_applied = False


def keep_freed_memory() -> bool:
    """Serve every allocation from malloc's heap and keep freed memory there, for the rest of this process (glibc
    only). Returns whether the settings are in force (False where the C library is not glibc)."""
    global _applied
    if _applied:
        return True
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return False
    _applied = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX))
    return _applied


def freed_memory_kept() -> bool:
    """Whether `keep_freed_memory` put its settings in force in this process (what a run's JSON records)."""
    return _applied
