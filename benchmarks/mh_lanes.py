"""The CPU score_mh_accept kernel at a sampler's sizes (hot caches): the compiled backend function
(`fastsamp.backends.cpp.score_mh_accept`: its glue and the `_C` call) at B chains for D = 1, 2, 4, 8 (the row lanes
of csrc/cpu/mh.cpp on AVX-512 and AVX2) and 16 (the row form), with m = 0 and 2 interior score sets, the uniforms
given or drawn in the kernel, into preallocated x_new / score_new as `annealed_mcmc` calls it.

    python benchmarks/mh_lanes.py [--B 2048] [--D 1 2 4 8 16] [--m 0 2] [--dtype float32 float64]
                                  [--calls 300] [--repeats 15] [--clock cpu|wall] [--json out.json]

Per case: µs per call of the backend function ("with glue": its two output allocations and the `_C` call) and of
the `_C` kernel alone (the same arguments, captured from one glue call), medians of `repeats` timings of `calls` calls
on one intra-op thread; the kernel's ns per chain, and the bytes it must move (x, x', s, the m + 1 score sets, ε and u
read; x_new, s_new, log α and the accepted bytes written) over its time: GB/s, against `copy` (torch's copy of the
same number of bytes, read and written, in the same run: a cache-resident streaming rate of this machine).
Comparing two builds (e.g. a git worktree built in place beside this one): run the script in each, alternately
(`PYTHONPATH=<tree> python benchmarks/mh_lanes.py`); where a change is one of speed only, the outputs are the same
bits in both (the checksum column).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
from functools import partial

import torch
from _timing import CLOCKS

from fastsamp.backends import cpp

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def case(B, D, m, drawn, dtype, seed=1):
    """(call of the backend function, bytes moved, its inputs (x, x', s, the (m + 1) B x D score rows, ε, u or None))
    on fresh random inputs: a proposal near x, per-chain steps."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    x, s = rnd(B, D), rnd(B, D)
    eps = (0.01 + 0.3 * torch.rand(B, generator=g, dtype=torch.float64)).to(dtype)
    xp = x + eps[:, None] * s + (2 * eps[:, None]).sqrt() * rnd(B, D)
    stack = rnd(m + 1, B, D).view((m + 1) * B, D)  # s(x') and the m interior score sets, read in place
    u = None if drawn else torch.rand(B, generator=g, dtype=torch.float64).to(dtype)
    x_new, s_new = torch.empty_like(x), torch.empty_like(x)
    size = x.element_size()
    moved = size * (B * D * (3 + (m + 1) + 2) + B * (2 if drawn else 3)) + B

    def call():
        return cpp.score_mh_accept(x, xp, s, stack, eps, u, None, 7, 3, 0, x_out=x_new, score_out=s_new)

    return call, moved, (x, xp, s, stack, eps, u)


def kernel_alone(call):
    """(a call of the `_C` function that `call`'s backend function makes, with the same arguments, and call's
    outputs, which that call writes again): the arguments captured from one call with `_C` swapped for a recorder."""
    glue = cpp.score_mh_accept.__globals__
    real, captured = glue["_C"], {}

    class Recorder:
        def __getattr__(self, name):
            return lambda *a: captured.update(fn=getattr(real, name), args=a)

    glue["_C"] = Recorder()
    try:
        outputs = call()  # keeps the outputs the captured pointers address alive
    finally:
        glue["_C"] = real
    fn, args = captured["fn"], captured["args"]
    return (lambda: fn(*args)), outputs


def per_call(fn, calls, repeats, clock):
    """Median seconds per call of fn over `repeats` timings of `calls` calls (after a warm-up)."""
    for _ in range(max(calls // 10, 1)):
        fn()
    times = []
    for _ in range(repeats):
        t0 = clock()
        for _ in range(calls):
            fn()
        times.append((clock() - t0) / calls)
    return statistics.median(times)


def checksum(outputs) -> str:
    h = hashlib.sha256()
    for t in outputs:
        h.update(t.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--B", type=int, default=2048)
    p.add_argument("--D", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--m", type=int, nargs="+", default=[0, 2])
    p.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=["float32", "float64"])
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--clock", choices=("wall", "cpu"), default="cpu")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    for name in ("B", "calls", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if min(args.D) < 1 or min(args.m) < 0:
        p.error("--D must be >= 1 and --m >= 0")
    torch.set_num_threads(1)
    clock = CLOCKS[args.clock]
    rows = []
    print(f"score_mh_accept (cpp), B = {args.B}, one thread, {args.clock} time, median of {args.repeats} x "
          f"{args.calls} calls")
    print("| dtype | D | m | u | with glue us | kernel us | kernel ns / chain | kernel GB/s | copy GB/s | checksum |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for dname in args.dtype:
        dtype = DTYPES[dname]
        for D in args.D:
            for m in args.m:
                for drawn in (False, True):
                    call, moved, _ = case(args.B, D, m, drawn, dtype)
                    kernel, outputs = kernel_alone(call)
                    t_glue = per_call(call, args.calls, args.repeats, clock)
                    t = per_call(kernel, args.calls, args.repeats, clock)
                    src = torch.empty(moved // 2 // dtype.itemsize, dtype=dtype)
                    dst = torch.empty_like(src)
                    t_copy = per_call(partial(dst.copy_, src), args.calls, args.repeats, clock)
                    row = {"dtype": dname, "D": D, "m": m, "u": "drawn" if drawn else "given",
                           "with_glue_us": t_glue * 1e6, "kernel_us": t * 1e6,
                           "ns_per_chain": t * 1e9 / args.B, "gb_s": moved / t / 1e9,
                           "copy_gb_s": 2 * src.numel() * dtype.itemsize / t_copy / 1e9,
                           "checksum": checksum(outputs)}
                    rows.append(row)
                    print(f"| {dname} | {D} | {m} | {row['u']} | {row['with_glue_us']:.1f} | {row['kernel_us']:.1f} | "
                          f"{row['ns_per_chain']:.1f} | "
                          f"{row['gb_s']:.1f} | {row['copy_gb_s']:.1f} | {row['checksum']} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "threads": torch.get_num_threads(), "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
