"""Op benchmarks: every backend against the eager PyTorch reference (noise from
torch's generator) and torch.compile of it, measured in the same run, with the fraction of a roofline
(memory triad bandwidth; GEMM FMA rate) measured in the same run too.

    fastsamp bench [--device cpu|cuda] [--ops gmm_mala,sde_step] [--json out.json]
"""
from __future__ import annotations

import json
import platform
import statistics
import time

import torch

from . import backends
from .ops import reference as ref
from .schedules import VP, reverse_em_coefficients


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn, device, *, min_time=0.5, warmup=2, max_reps=200) -> float:
    """Median wall time of fn() in milliseconds (device work synchronised)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    start = time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < min_time and len(times) < max_reps):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def measure_triad(device, min_time=0.3) -> float:
    """Triad a = b + s·c into a preallocated a, GB/s counting 3 arrays; on the CPU at the
    streaming benchmarks' array size (64 MiB, twice the L3), 256 MiB per array on GPUs."""
    n = (1 << 26) if device.type == "cuda" else (1 << 24)
    b, c = torch.randn(n, device=device), torch.randn(n, device=device)
    a = torch.empty_like(b)
    ms = timeit(lambda: torch.add(b, c, alpha=0.5, out=a), device, min_time=min_time)
    return 3 * 4 * n / (ms * 1e6)


def measure_roofline(device) -> dict:
    """Measured ceilings: the triad bandwidth (GB/s) and the float32 GEMM rate (GFLOP/s)."""
    m = 4096 if device.type == "cuda" else 1024
    x, y = torch.randn(m, m, device=device), torch.randn(m, m, device=device)
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    ms = timeit(lambda: x @ y, device)
    torch.backends.cuda.matmul.allow_tf32 = prev
    return {"triad_GBps": measure_triad(device), "fp32_gemm_GFLOPs": 2 * m**3 / (ms * 1e6)}


def _cases(device, dtype):
    """op name -> (args builder, bytes moved, flops) at the benchmark sizes."""
    g = torch.Generator(device="cpu").manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)

    size = dtype.itemsize if hasattr(dtype, "itemsize") else torch.finfo(dtype).bits // 8
    cases = {}
    # gmm_score: B=65536, D=8, K=16
    B, D, K = 65536, 8, 16
    x, means, lw = rnd(B, D), 2 * rnd(K, D), rnd(K)
    var = 0.3 + rnd(K).abs()
    cases["gmm_score"] = ((x, means, lw, var, 0.9, 0.1), size * (2 * B * D + B + K * (D + 2)), 5 * B * K * D)
    # gmm_mala: B=65536, D=8, K=16, n_trapezoid=3, 10 moves
    n_steps, n_trap = 10, 3
    eps = torch.full((B,), 0.05, dtype=dtype, device=device)
    cases["gmm_mala"] = ((x, means, lw, var, eps, n_steps, n_trap, 1.0, 0.0, 7, 0, 0, 0),
                         size * (2 * B * D + B), n_steps * n_trap * 5 * B * K * D)
    # streaming ops: B=1<<20, D=16 (64 MiB per float32 array)
    B, D = 1 << 20, 16
    xs, ss = rnd(B, D), rnd(B, D)
    a, c_s, c_n = reverse_em_coefficients(VP(), 0.5, 0.01)
    cases["sde_step"] = ((xs, ss, None, None, 3, 0, 0, a, c_s, c_n), 3 * size * B * D, 5 * B * D)
    # the same step into a preallocated output: what a sampler loop does (x updated in place)
    out = torch.empty_like(xs)
    cases["sde_step(out=)"] = ((xs, ss, None, None, 3, 0, 0, a, c_s, c_n, out), 3 * size * B * D, 5 * B * D)
    vs, sh = rnd(B, D), ss + 1e-3 * rnd(B, D)
    cases["guided_sde_step"] = ((xs, ss, sh, vs, None, 3, 0, 0, a, c_s, 0.5, 40.0, c_n), 5 * size * B * D, 10 * B * D)
    eps = torch.full((B,), 0.05, dtype=dtype, device=device)
    cases["mala_propose"] = ((xs, ss, eps, None, 3, 0, 0), size * (3 * B * D + B), 5 * B * D)
    xp = xs + 0.1 * ss
    cases["line_points"] = ((xs, xp, 3), 4 * size * B * D, 4 * B * D)
    u = torch.rand(B, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    interior = torch.stack([ss, ss])
    cases["score_mh_accept"] = ((xs, xp, ss, ss, eps, u, interior),
                                size * (8 * B * D + 4 * B) + B, 14 * B * D)
    return cases


def _torch_rng_draw(x):
    """Noise from torch's own generator: the baseline a PyTorch user writes (the reference's
    Philox-in-int64 stream is an oracle, not a fair speed baseline)."""
    def draw(m):
        return torch.randn_like(x), torch.rand(x.shape[0], dtype=x.dtype, device=x.device)
    return draw


def baseline(op):
    """The eager PyTorch implementation of `op` timed as the baseline (backend signature)."""
    if op.startswith("sde_step"):
        def sde_step(x, score, extra, noise, seed, offset, chain_offset, a, c_s, c_n, out=None):
            return ref.sde_step(x, score, extra, torch.randn_like(x), seed, offset, 0, a, c_s, c_n, out)
        return sde_step
    if op == "guided_sde_step":
        def guided_sde_step(x, score, shift, v, noise, seed, offset, chain_offset, a, c_s, c_v, c_diff, c_n):
            return ref.guided_sde_step(x, score, shift, v, torch.randn_like(x), seed, offset, 0, a, c_s, c_v, c_diff,
                                       c_n)
        return guided_sde_step
    if op == "mala_propose":
        def mala_propose(x, score, eps, noise, seed, offset, chain_offset):
            return ref.mala_propose(x, score, eps, torch.randn_like(x), seed, offset, chain_offset)
        return mala_propose
    if op == "gmm_mala":
        def gmm_mala(x, *args):
            return ref.gmm_mala(x, *args, draw=_torch_rng_draw(x))
        return gmm_mala
    return getattr(ref, op)


def run(device="cpu", ops=None, dtype=torch.float32, compile_reference=True, min_time=0.5,
        verbose=False) -> dict:
    device = torch.device(device)
    roof = measure_roofline(device)
    cases = _cases(device, dtype)
    names = [n for n in (ops or cases) if n in cases]
    order = ("cpp",) if device.type == "cpu" else ("cuda", "triton")
    results = []
    for op in names:
        args, nbytes, flops = cases[op]
        # the triad is re-measured next to each op: a shared machine's bandwidth drifts
        row = {"op": op, "bytes": nbytes, "flops": flops, "backends": {}, "triad_GBps": measure_triad(device)}
        impls = {"eager": baseline(op)}
        if compile_reference:
            impls["torch.compile"] = torch.compile(baseline(op), dynamic=False)
        for name in order:
            module = backends._load(name)[0]
            fn_name = op.split("(")[0]
            if module is not None and hasattr(module, fn_name):
                impls[name] = getattr(module, fn_name)
        for name, fn in impls.items():
            try:
                ms = timeit(lambda fn=fn, args=args: fn(*args), device, min_time=min_time)
            except Exception as e:  # noqa: BLE001 - a failed compile is reported, not fatal
                row["backends"][name] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
                continue
            gbps = nbytes / (ms * 1e6)
            gflops = flops / (ms * 1e6)
            row["backends"][name] = {
                "ms": ms, "GBps": gbps, "GFLOPs": gflops,
                "frac_triad": gbps / row["triad_GBps"], "frac_gemm": gflops / roof["fp32_gemm_GFLOPs"],
            }
        base = row["backends"]["eager"].get("ms")
        comp = row["backends"].get("torch.compile", {}).get("ms")
        for r in row["backends"].values():
            if "ms" in r:
                r["speedup_vs_eager"] = base / r["ms"]
                if comp:
                    r["speedup_vs_compile"] = comp / r["ms"]
        results.append(row)
        if verbose:
            for name, r in row["backends"].items():
                print(f"  {op:16s} {name:14s} " + (f"{r['ms']:.4f} ms  {r['speedup_vs_eager']:.1f}x eager"
                      if "ms" in r else r["error"]), flush=True)
    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
        or platform.machine(),
        "threads": torch.get_num_threads(), "dtype": str(dtype), "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"), "roofline": roof,
    }
    return {"info": info, "results": results}


def format_table(report: dict) -> str:
    info = report["info"]
    lines = [f"device: {info['device']}  threads: {info['threads']}  {info['dtype']}  torch {info['torch']}",
             f"measured roofline: triad {info['roofline']['triad_GBps']:.1f} GB/s (re-measured per op: "
             f"%triad uses the op's own), fp32 GEMM {info['roofline']['fp32_gemm_GFLOPs']:.1f} GFLOP/s",
             f"{'op':16s} {'backend':14s} {'ms':>9s} {'GB/s':>8s} {'GFLOP/s':>8s} {'%triad':>7s} "
             f"{'%gemm':>6s} {'x eager':>8s} {'x compile':>9s}"]
    for row in report["results"]:
        for name, r in row["backends"].items():
            if "error" in r:
                lines.append(f"{row['op']:16s} {name:14s} {r['error']}")
                continue
            lines.append(f"{row['op']:16s} {name:14s} {r['ms']:9.3f} {r['GBps']:8.1f} {r['GFLOPs']:8.1f} "
                         f"{100 * r['frac_triad']:6.1f}% {100 * r['frac_gemm']:5.1f}% "
                         f"{r['speedup_vs_eager']:8.1f} {r.get('speedup_vs_compile', float('nan')):9.1f}")
    return "\n".join(lines)


def main(args) -> int:
    ops = args.ops.split(",") if args.ops else None
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    report = run(args.device, ops, dtype, compile_reference=not args.no_compile, min_time=args.min_time,
                 verbose=True)
    print(format_table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    return 0
