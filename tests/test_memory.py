"""`experiments.memory.keep_freed_memory`: after it, a large tensor allocated and freed in a loop reuses malloc's
heap pages instead of faulting in fresh ones each time (in a subprocess: the setting lasts for the process)."""
import ctypes
import ctypes.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

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
faults = []
for _ in range(11):  # the median allocation counts: one disturbed by the machine (a reclaim under load) does not
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(n).fill_(1.0)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sorted(faults)[5])
"""

PAGES = 2**26 // 4096  # 4 KiB pages of one allocation


def faults_per_allocation(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", LOOP, mode], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def glibc() -> bool:
    name = ctypes.util.find_library("c")
    return name is not None and hasattr(ctypes.CDLL(name), "gnu_get_libc_version")


needs_glibc = pytest.mark.skipif(not glibc(), reason="not glibc: keep_freed_memory has no malloc to set here")


@needs_glibc
def test_freed_memory_is_reused():
    plain = faults_per_allocation("plain")
    if plain < PAGES / 2:
        pytest.skip(f"{plain:.0f} faults per fresh 64 MiB mapping (transparent huge pages?): nothing to measure")
    kept = faults_per_allocation("keep")
    assert kept < PAGES / 4, (kept, plain)


@needs_glibc
def test_the_training_commands_keep_freed_memory_and_library_calls_do_not(tmp_path):
    """`fastsamp train` from the command line and `benchmarks/offpolicy.py` run as a script (its worker processes
    too) set it, and their run JSONs say so; `fastsamp.cli.main(argv)` from a caller's own Python does not."""
    from fastsamp import cli
    from fastsamp.experiments import memory

    tiny = ["--iterations", "2", "--eval-samples", "8"]
    cli.main(["train", "--target", "25gmm", "--method", "tb", "--no-progress", "--out", str(tmp_path / "lib"), *tiny])
    assert not memory.freed_memory_kept()
    assert json.loads((tmp_path / "lib" / "25gmm_tb_seed0.json").read_text())["freed_memory_kept"] is False
    for argv in (["-m", "fastsamp", "train", "--target", "25gmm", "--method", "tb", "--no-progress", "--out",
                  str(tmp_path / "cli"), *tiny],
                 [str(BENCHMARKS / "offpolicy.py"), "table", "--targets", "25gmm", "--methods", "tb", "--seeds", "0",
                  "1", "--jobs", "2", "--repeats", "0", "--out", str(tmp_path / "table"), *tiny]):
        run = subprocess.run([sys.executable, *argv], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-3000:]
    for path in [tmp_path / "cli" / "25gmm_tb_seed0.json"] + [tmp_path / "table" / f"25gmm_tb_seed{s}.json"
                                                            for s in (0, 1)]:
        assert json.loads(path.read_text())["freed_memory_kept"] is True, path
