"""Timing helpers of the benchmark scripts: the clocks, the device synchronisation, timed repeats, the float32 GEMM
rate, and a run split into the time in a network's forward and outside it.

The scripts import them as `from _timing import ...`: `python benchmarks/<script>.py` puts benchmarks/ first on
sys.path; tests' conftest.load_benchmark appends it (an installed module named _timing would win there)."""
from __future__ import annotations

import statistics
import time

import torch

# --clock wall|cpu: wall time, or this process's CPU time (steadier on a loaded machine; says nothing of a GPU's work)
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
CLOCKS_NS = {"wall": time.perf_counter_ns, "cpu": time.process_time_ns}  # the same clocks in integer nanoseconds


def device_sync(device):
    """A function that waits for the work queued on `device`: torch.cuda.synchronize on a GPU, a no-op on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def timed(fn, repeats, device="cpu"):
    """(median wall s, median CPU s of this process, last result) of `repeats` calls of fn() (on a GPU the wall
    time runs to the device's synchronisation)."""
    sync = device_sync(device)
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        sync()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus), out


def gemm_rate(m=1024, repeats=15):
    """GFLOP/s of a float32 m³ matmul on the CPU, 2 m³ flops over the median wall and the median CPU time:
    {"wall": ..., "cpu": ...}."""
    x, y = torch.randn(m, m), torch.randn(m, m)
    x @ y
    wall, cpu, _ = timed(lambda: x @ y, repeats)
    return {"wall": 2 * m**3 / wall / 1e9, "cpu": 2 * m**3 / cpu / 1e9}


def network_split(net, fn, clock, sync):
    """(total, in the network's forward) seconds and the number of network calls of one run of fn, the forward timed
    around each call (about a microsecond per call, the same on both sides), sync() before and after it and at the
    run's end (a no-op on the CPU; on a GPU it makes the network's time count its kernels)."""
    inside = [0.0, 0]

    def timed_forward(x, t, forward=net.forward):
        sync()
        t0 = clock()
        out = forward(x, t)
        sync()
        inside[0] += clock() - t0
        inside[1] += 1
        return out

    net.forward = timed_forward
    try:
        t0 = clock()
        fn()
        sync()
        total = clock() - t0
    finally:
        del net.forward
    return total, inside[0], inside[1]
