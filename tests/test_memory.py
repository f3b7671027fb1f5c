"""`experiments.memory.keep_freed_memory`: after it, a large tensor allocated and freed in a loop reuses malloc's
heap pages instead of faulting in fresh ones each time (in a subprocess: the setting lasts for the process)."""
import ctypes
import ctypes.util
import subprocess
import sys

import pytest

LOOP = """
import resource, sys, torch
from fastsamp.experiments import memory
if sys.argv[1] == "keep":
    assert memory.keep_freed_memory() and memory.keep_freed_memory() and memory.freed_memory_kept()
else:
    assert not memory.freed_memory_kept()
n = 2**24  # 64 MiB of float32: above glibc's largest dynamic mmap threshold (32 MiB)
for _ in range(3):  # warm-up: the heap grows to its working size
    torch.empty(n).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.empty(n).fill_(1.0)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""

PAGES = 2**26 // 4096  # 4 KiB pages of one allocation


def faults_per_allocation(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", LOOP, mode], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def test_freed_memory_is_reused():
    name = ctypes.util.find_library("c")
    if name is None or not hasattr(ctypes.CDLL(name), "gnu_get_libc_version"):
        pytest.skip("not glibc: keep_freed_memory has no malloc to set here")
    plain = faults_per_allocation("plain")
    if plain < PAGES / 2:
        pytest.skip(f"{plain:.0f} faults per fresh 64 MiB mapping (transparent huge pages?): nothing to measure")
    kept = faults_per_allocation("keep")
    assert kept < PAGES / 4, (kept, plain)
