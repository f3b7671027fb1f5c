"""Op benchmarks: every backend against the eager PyTorch reference (noise from
torch's generator) and torch.compile of it, measured in the same run, with the fraction of a roofline
(memory triad bandwidth; GEMM FMA rate) measured in the same run too.

The torch.compile baseline compiles one step with static shapes (dynamic=False), the noise drawn
eagerly by torch and passed in: for the streaming ops the reference op itself, for the whole-move
ops one move (reference.mala_move / hmc_move) called n_steps times, so that one small graph is
compiled once and reused; the timed calls come after the warm-up calls that compile it. The mixture
ops have two forms of the score in each: the squared distances by one matrix product
(`gmm_score_by_matmul`, what a user writing for speed writes: "eager", "torch.compile") and the
reference's (B, K, D) differences ("... (B,K,D)"). "best PyTorch" is the fastest of the baselines, and
every backend gets its ratio against it.

FLOP counts: 5·K·D per mixture-score evaluation and chain (distance and weighted sum), as in earlier
records (`flops`), and with the exp and log-sum-exp work counted too (`flops_exp`): per component 5
flops of log-sum-exp bookkeeping and the exp as the flops of its evaluation (EXP_FLOPS). The Philox
and Box-Muller work is not counted.

    fastsamp bench [--device cpu|cuda] [--ops gmm_mala,sde_step] [--json out.json]

The mixture ops (gmm_score, gmm_mala, gmm_hmc) run on three mixtures, since far components make
exp(-large) results that are denormal floats (slow on many Intel cores unless flushed):
`compact` (means 0.5·N(0, I), unit variances), `separated` (means 3·N(0, I), variances U(0.2, 1.2))
and `mainjob` (the mixture of `fastsamp sample`), at D = 8; and `separated` at wide D (WIDE_CASES).
On the CPU each C++ mixture row also reports `ftz_ratio` (the kernel's time over its time with flush-to-zero
forced by the caller: near 1 when the kernel flushes on all its threads itself) and `denormal_cost` (its time
with the kernels' flushing switched off over its time as shipped: what flushing buys on this CPU).
"""
from __future__ import annotations

import functools
import json
import math
import platform
import statistics
import sys
import time

import torch

from .. import backends
from ..ops import reference as ref
from ..profiling import cpu_model
from ..schedules import VP, reverse_em_coefficients
from .options import device_arg, positive_float

SUMMARY = "time every op on every backend against eager and torch.compile"
DESCRIPTION = ("Time each op on each available backend against the eager PyTorch reference and torch.compile of "
               "it, with the fraction of a memory triad and of an fp32 GEMM measured in the same run.")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# The clock of CPU timings: wall time, or with run(cpu_time=True) the calling thread's CPU time
# (single-threaded runs on a shared machine: other processes' load then does not count).
_clock = time.perf_counter


def timeit(fn, device, *, min_time=0.5, warmup=2, max_reps=200) -> float:
    """Median time of fn() in milliseconds (device work synchronised; on the CPU by `_clock`)."""
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
            t0 = _clock()
            fn()
            times.append(1e3 * (_clock() - t0))
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


MIXTURES = ("compact", "separated", "mainjob")


def mixture(kind, D, K, seed=0):
    """(means, log_weights, variances) in float64 of the benchmark mixture `kind` (MIXTURES)."""
    if kind == "mainjob":
        from .annealed_mixture import random_mixture
        return random_mixture(D, K, seed, torch.float64, "cpu")
    g = torch.Generator().manual_seed(seed)
    scale, var = {"compact": (0.5, None), "separated": (3.0, (0.2, 1.0))}[kind]
    means = scale * torch.randn(K, D, generator=g, dtype=torch.float64)
    log_weights = torch.randn(K, generator=g, dtype=torch.float64)
    variances = torch.ones(K, dtype=torch.float64) if var is None else \
        var[0] + var[1] * torch.rand(K, generator=g, dtype=torch.float64)
    return means, log_weights, variances


# Flops of one exp as the kernels evaluate it (range reduction 7, polynomial with FMAs counted 2, the
# 2^n scaling 1): 22 in float32 (degree 6), 32 in float64 (degree 12). Plus, per mixture component,
# the log-sum-exp bookkeeping: the log-term c - h·dist (2), the shift by the maximum (1), the weight
# sum (1) and the weight times 1/s (1).
EXP_FLOPS = {4: 22, 8: 32}
LSE_FLOPS = 5


def mixture_flops(evals, B, K, D, size):
    """(flops, flops with the exp work) of `evals` mixture-score evaluations of B chains."""
    base = 5 * evals * B * K * D
    return base, base + evals * B * K * (LSE_FLOPS + EXP_FLOPS[size])


# "(out=)": the op writing into preallocated outputs, as a sampler's loop calls it; the others allocate theirs per call
# (at these sizes fresh pages: the first touch of each costs a page fault, which the PyTorch baselines pay as well)
STREAMING_CASES = ("sde_step", "sde_step(out=)", "guided_sde_step", "mala_propose", "mala_propose(out=)", "line_points",
                   "line_points(out=)", "score_mh_accept", "score_mh_accept(out=)", "energy_mh_accept")


# Wide-D mixture cases (D off the kernels' compile-time set {1, 2, 4, 8, 16}): the `separated` mixture with the K of
# the 40GMM target, B = 4096; gmm_score at each D, gmm_mala (10 moves, n_trapezoid 3) at the 40GMM's D = 50.
WIDE_D, WIDE_K, WIDE_B, WIDE_MALA_D = (17, 50, 100), 40, 4096, 50
WIDE_CASES = tuple(name for D in WIDE_D for name in (f"gmm_score[separated/D={D}]",)
                   + ((f"gmm_mala[separated/D={D}]",) if D == WIDE_MALA_D else ()))


def case_names() -> list:
    """The benchmark cases, in table order (those of `_cases`, without building them)."""
    return ([f"{op}[{kind}]" for kind in MIXTURES for op in ("gmm_score", "gmm_mala", "gmm_hmc")] + list(WIDE_CASES)
            + list(STREAMING_CASES))


def unknown_ops(ops) -> list:
    """The names in `ops` that are neither a case nor an op with cases ("gmm_mala" means all its mixtures)."""
    names = case_names()
    return sorted(set(ops) - set(names) - {op_name(n) for n in names})


def _cases(device, dtype):
    """op name -> (args, bytes moved, flops, flops with the exp work) at the benchmark sizes."""
    g = torch.Generator(device="cpu").manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)

    size = dtype.itemsize if hasattr(dtype, "itemsize") else torch.finfo(dtype).bits // 8
    cases = {}
    # mixture ops: B=65536, D=8, K=16; gmm_mala n_trapezoid=3, 10 moves; gmm_hmc 3 leapfrog steps, 5 moves;
    # chains start at the mixture's own samples (so that far components are far from every chain)
    def chains(kind, B, D, K):
        """(x, means, lw, var, eps) with the chains at the mixture's own samples."""
        means, lw, var = mixture(kind, D, K)
        k = torch.randint(0, K, (B,), generator=g)
        x = means[k] + var[k, None].sqrt() * torch.randn(B, D, generator=g, dtype=torch.float64)
        eps = torch.full((B,), 0.05, dtype=torch.float64)
        return tuple(t.to(device=device, dtype=dtype) for t in (x, means, lw, var, eps))

    # evaluations per chain: gmm_mala 10 moves x (proposal + 2 interior points) + the start,
    # gmm_hmc 5 moves x 3 leapfrog steps + the start
    def score_case(x, means, lw, var):
        (B, D), K = x.shape, means.shape[0]
        return (x, means, lw, var, 0.9, 0.1), size * (2 * B * D + B + K * (D + 2)), *mixture_flops(1, B, K, D, size)

    def mala_case(x, means, lw, var, eps):
        (B, D), K = x.shape, means.shape[0]
        return ((x, means, lw, var, eps, 10, 3, 1.0, 0.0, 7, 0, 0, 0), size * (2 * B * D + B),
                *mixture_flops(10 * 3 + 1, B, K, D, size))

    B, D, K = 65536, 8, 16
    for kind in MIXTURES:
        x, means, lw, var, eps = chains(kind, B, D, K)
        cases[f"gmm_score[{kind}]"] = score_case(x, means, lw, var)
        cases[f"gmm_mala[{kind}]"] = mala_case(x, means, lw, var, eps)
        cases[f"gmm_hmc[{kind}]"] = ((x, means, lw, var, eps, 5, 3, 1.0, 0.0, 7, 0, 0, 0, 0.0),
                                     size * (2 * B * D + B), *mixture_flops(5 * 3 + 1, B, K, D, size))
    for D in WIDE_D:
        x, means, lw, var, eps = chains("separated", WIDE_B, D, WIDE_K)
        cases[f"gmm_score[separated/D={D}]"] = score_case(x, means, lw, var)
        if D == WIDE_MALA_D:
            cases[f"gmm_mala[separated/D={D}]"] = mala_case(x, means, lw, var, eps)
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
    cases["mala_propose(out=)"] = ((xs, ss, eps, None, 3, 0, 0, out),) + cases["mala_propose"][1:]
    xp = xs + 0.1 * ss
    cases["line_points"] = ((xs, xp, 3), 4 * size * B * D, 4 * B * D)
    points = torch.empty(2, B, D, dtype=dtype, device=device)
    cases["line_points(out=)"] = ((xs, xp, 3, points),) + cases["line_points"][1:]
    u = torch.rand(B, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    # s(x') and the interior scores are arrays of their own (the same tensor twice would be read once from cache)
    sp = ss + 1e-3 * rnd(B, D)
    interior = torch.stack([ss + 2e-3 * rnd(B, D), ss + 3e-3 * rnd(B, D)])
    # x, x', s, s', the 2 interior sets, ε, u read; x_new, s_new, log α and the accepted bytes written
    cases["score_mh_accept"] = ((xs, xp, ss, sp, eps, u, interior, 0, 0, 0),
                                size * (8 * B * D + 3 * B) + B, 14 * B * D)
    cases["score_mh_accept(out=)"] = (cases["score_mh_accept"][0] + (out, torch.empty_like(xs)),
                                      ) + cases["score_mh_accept"][1:]
    # x, x', s, s', logp, logp', ε, u read; x_new, s_new, logp_new, log α and the accepted bytes written
    logp, logp_p = rnd(B), rnd(B)
    cases["energy_mh_accept"] = ((xs, xp, ss, sp, logp, logp_p, eps, u, 0, 0, 0), size * (6 * B * D + 6 * B) + B,
                                 9 * B * D)
    return cases


def _compiled(fn):
    """torch.compile of one step: static shapes, compiled at the first (warm-up) call."""
    return torch.compile(fn, dynamic=False)


def gmm_score_by_matmul(x, means, log_weights, variances, alpha, sigma2):
    """reference.gmm_score (score and log-density of Σ_k π_k N(α μ_k, s_k I), s_k = α² v_k + σ²) in the form a
    user writing plain PyTorch for speed would take: the squared distances |x|² − 2 x·(α μ_k) + |α μ_k|² by one
    matrix product instead of (B, K, D) differences, and score = Σ_k (r_k / s_k)(α μ_k − x) = (r / s) @ (α μ) −
    (Σ_k r_k / s_k) x by another (r the responsibilities). The same values up to rounding (the distances' form
    cancels for points far from the origin relative to their distance: a speed baseline, not an oracle)."""
    D = x.shape[1]
    s = alpha * alpha * variances + sigma2
    lw = log_weights - torch.logsumexp(log_weights, 0)
    am = alpha * means
    d2 = (x * x).sum(1, keepdim=True) - 2 * (x @ am.T) + (am * am).sum(1)
    ell = lw - 0.5 * d2 / s - 0.5 * D * torch.log(2 * math.pi * s)
    rs = torch.softmax(ell, 1) / s
    return rs @ am - rs.sum(1, keepdim=True) * x, torch.logsumexp(ell, 1)


# the mixture ops' baselines: (name, score form, compiled)
MIXTURE_BASELINES = (("eager", gmm_score_by_matmul, False), ("eager (B,K,D)", ref.gmm_score, False),
                     ("torch.compile", gmm_score_by_matmul, True), ("torch.compile (B,K,D)", ref.gmm_score, True))


def baselines(op, compiled=True) -> dict:
    """name -> the PyTorch baselines of `op` (backend signature): "eager" and, with `compiled`, "torch.compile";
    for the mixture ops each in both forms of the score (MIXTURE_BASELINES)."""
    if op_name(op).startswith("gmm_"):
        return {name: baseline(op, c, score) for name, score, c in MIXTURE_BASELINES if compiled or not c}
    return {"eager": baseline(op)} | ({"torch.compile": baseline(op, compiled=True)} if compiled else {})


def baseline(op, compiled=False, score=ref.gmm_score):
    """The PyTorch baseline of `op` (backend signature): the eager reference with noise from torch's
    generator (the reference's Philox-in-int64 stream is an oracle, not a fair speed baseline), or, with
    `compiled`, the same with its step compiled (the noise drawn eagerly and passed in); the mixture ops
    with the mixture score `score` (reference.gmm_score or gmm_score_by_matmul)."""
    op = op_name(op)
    if op == "gmm_score":
        return _compiled(score) if compiled else score
    if op in ("gmm_mala", "gmm_hmc"):
        return _whole_move_baseline(op, compiled, score)
    core = getattr(ref, op)
    core = _compiled(core) if compiled else core
    if op.startswith("sde_step"):
        def sde_step(x, score, extra, noise, seed, offset, chain_offset, a, c_s, c_n, out=None):
            return core(x, score, extra, torch.randn_like(x), seed, offset, 0, a, c_s, c_n, out)
        return sde_step
    if op == "guided_sde_step":
        def guided_sde_step(x, score, shift, v, noise, seed, offset, chain_offset, a, c_s, c_v, c_diff, c_n):
            return core(x, score, shift, v, torch.randn_like(x), seed, offset, 0, a, c_s, c_v, c_diff, c_n)
        return guided_sde_step
    if op == "mala_propose":
        def mala_propose(x, score, eps, noise, seed, offset, chain_offset, out=None):
            return core(x, score, eps, torch.randn_like(x), seed, offset, chain_offset, out)
        return mala_propose
    return core


def _whole_move_baseline(op, compiled, score):
    """n_steps calls of one move (reference.mala_move / hmc_move on the mixture score `score`), its noise drawn by
    torch."""
    score_at = _compiled(score) if compiled else score
    if op == "gmm_mala":
        move = functools.partial(ref.mala_move, score_fn=score)
        move = _compiled(move) if compiled else move

        def gmm_mala(x, means, lw, var, eps, n_steps, n_trapezoid, alpha, sigma2, seed, offset, chain_offset, mh):
            score, logp = score_at(x, means, lw, var, alpha, sigma2)
            n_acc = torch.zeros_like(eps)
            for _ in range(n_steps):
                xi, u = torch.randn_like(x), torch.rand_like(eps)
                x, score, logp, accepted = move(x, score, logp, xi, u, means, lw, var, eps, n_trapezoid, alpha,
                                                sigma2, mh)
                n_acc += accepted
            return x, n_acc / n_steps
        return gmm_mala
    move = functools.partial(ref.hmc_move, score_fn=score)
    move = _compiled(move) if compiled else move

    def gmm_hmc(x, means, lw, var, eps, n_steps, n_leapfrog, alpha, sigma2, seed, offset, chain_offset, mh, damping):
        score, logp = score_at(x, means, lw, var, alpha, sigma2)
        p = torch.zeros_like(x)
        n_acc = torch.zeros_like(eps)
        for _ in range(n_steps):
            xi, u = torch.randn_like(x), torch.rand_like(eps)
            x, score, logp, p, accepted = move(x, score, logp, p, xi, u, means, lw, var, eps, n_leapfrog, alpha,
                                               sigma2, mh, damping)
            n_acc += accepted
        return x, n_acc / n_steps
    return gmm_hmc


def op_name(case):
    """The op of a benchmark case: "gmm_mala[separated]" -> "gmm_mala", "sde_step(out=)" -> "sde_step"."""
    return case.split("(")[0].split("[")[0]


def flush_rows(fn, args, device, min_time) -> dict:
    """C++ mixture kernel against itself: with FTZ forced by the caller (torch.set_flush_denormal)
    and with the kernels' own flushing switched off."""
    from .. import _C
    ms = timeit(lambda: fn(*args), device, min_time=min_time)
    torch.set_flush_denormal(True)
    try:
        forced = timeit(lambda: fn(*args), device, min_time=min_time)
    finally:
        torch.set_flush_denormal(False)
    previous = _C.cpu_set_flush_denormals(False)
    try:
        unflushed = timeit(lambda: fn(*args), device, min_time=min_time)
    finally:
        _C.cpu_set_flush_denormals(previous)
    return {"ms_again": ms, "ms_forced_ftz": forced, "ms_unflushed": unflushed, "ftz_ratio": ms / forced,
            "denormal_cost": unflushed / ms}


def run(device="cpu", ops=None, dtype=torch.float32, compile_reference=True, min_time=0.5,
        verbose=False, cpu_time=False) -> dict:
    """The report: roofline and every case's rows. cpu_time: time by the calling thread's CPU time
    (CPU, one thread only: every kernel then runs on the calling thread)."""
    global _clock
    device = torch.device(device)
    if cpu_time and (device.type != "cpu" or torch.get_num_threads() != 1):
        raise ValueError("cpu_time needs the CPU and one thread (torch.set_num_threads(1) / OMP_NUM_THREADS=1)")
    _clock = time.thread_time if cpu_time else time.perf_counter
    try:
        return _run(device, ops, dtype, compile_reference, min_time, verbose, cpu_time)
    finally:
        _clock = time.perf_counter


def _run(device, ops, dtype, compile_reference, min_time, verbose, cpu_time) -> dict:
    roof = measure_roofline(device)
    cases = _cases(device, dtype)
    unknown = unknown_ops(ops or ())
    if unknown:
        raise ValueError(f"unknown op(s) {', '.join(unknown)}; known: {', '.join(case_names())}")
    names = [n for n in cases if not ops or n in ops or op_name(n) in ops]
    order = ("cpp",) if device.type == "cpu" else ("cuda", "triton")
    results = []
    for op in names:
        args, nbytes, flops = cases[op][:3]
        flops_exp = cases[op][3] if len(cases[op]) > 3 else flops
        # the triad is re-measured next to each op: a shared machine's bandwidth drifts
        row = {"op": op, "bytes": nbytes, "flops": flops, "flops_exp": flops_exp, "backends": {},
               "triad_GBps": measure_triad(device)}
        impls = baselines(op, compile_reference)
        pytorch = set(impls)
        for name in order:
            module = backends._load(name)[0]
            if module is not None and hasattr(module, op_name(op)):
                impls[name] = getattr(module, op_name(op))
        for name, fn in impls.items():
            try:
                ms = timeit(lambda fn=fn, args=args: fn(*args), device, min_time=min_time)
            except Exception as e:  # noqa: BLE001 - a failed compile is reported, not fatal
                row["backends"][name] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
                continue
            gbps, gflops, gflops_exp = nbytes / (ms * 1e6), flops / (ms * 1e6), flops_exp / (ms * 1e6)
            row["backends"][name] = {
                "ms": ms, "GBps": gbps, "GFLOPs": gflops, "GFLOPs_exp": gflops_exp,
                "frac_triad": gbps / row["triad_GBps"], "frac_gemm": gflops / roof["fp32_gemm_GFLOPs"],
                "frac_gemm_exp": gflops_exp / roof["fp32_gemm_GFLOPs"],
            }
        if "cpp" in impls and op_name(op).startswith("gmm_"):
            row["flush"] = flush_rows(impls["cpp"], args, device, min_time)
        base = row["backends"]["eager"].get("ms")
        comp = row["backends"].get("torch.compile", {}).get("ms")
        timed = {n: r["ms"] for n, r in row["backends"].items() if n in pytorch and "ms" in r}
        row["best_pytorch"] = min(timed, key=timed.get)
        best = timed[row["best_pytorch"]]
        for r in row["backends"].values():
            if "ms" in r:
                r["speedup_vs_eager"] = base / r["ms"]
                r["speedup_vs_best_pytorch"] = best / r["ms"]
                if comp:
                    r["speedup_vs_compile"] = comp / r["ms"]
        results.append(row)
        if verbose:
            for name, r in row["backends"].items():
                print(f"  {op:22s} {name:22s} " + (f"{r['ms']:.4f} ms  {r['speedup_vs_eager']:.1f}x eager  "
                      f"{r['speedup_vs_best_pytorch']:.1f}x best PyTorch" if "ms" in r else r["error"]), flush=True)
    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
        or platform.machine(),
        "cpu": cpu_model(), "threads": torch.get_num_threads(), "dtype": str(dtype), "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"), "roofline": roof, "clock": "thread CPU time" if cpu_time else "wall",
    }
    return {"info": info, "results": results}


def format_table(report: dict) -> str:
    info = report["info"]
    lines = [f"device: {info['device']}  cpu: {info.get('cpu', '?')}  threads: {info['threads']}  "
             f"clock: {info.get('clock', 'wall')}  "
             f"{info['dtype']}  torch {info['torch']}",
             f"measured roofline: triad {info['roofline']['triad_GBps']:.1f} GB/s (re-measured per op: "
             f"%triad uses the op's own), fp32 GEMM {info['roofline']['fp32_gemm_GFLOPs']:.1f} GFLOP/s",
             f"{'op':22s} {'backend':22s} {'ms':>9s} {'GB/s':>8s} {'GFLOP/s':>8s} {'%triad':>7s} "
             f"{'%gemm':>6s} {'%gemm+exp':>9s} {'x eager':>8s} {'x compile':>9s} {'x best PyTorch':>14s}"]
    for row in report["results"]:
        for name, r in row["backends"].items():
            if "error" in r:
                lines.append(f"{row['op']:22s} {name:22s} {r['error']}")
                continue
            lines.append(f"{row['op']:22s} {name:22s} {r['ms']:9.3f} {r['GBps']:8.1f} {r['GFLOPs']:8.1f} "
                         f"{100 * r['frac_triad']:6.1f}% {100 * r['frac_gemm']:5.1f}% "
                         f"{100 * r['frac_gemm_exp']:8.1f}% {r['speedup_vs_eager']:8.1f} "
                         f"{r.get('speedup_vs_compile', float('nan')):9.1f} {r['speedup_vs_best_pytorch']:14.1f}")
        if "flush" in row:
            f = row["flush"]
            lines.append(f"{row['op']:22s} {'cpp flush':22s} ftz_ratio {f['ftz_ratio']:.2f} (vs FTZ forced by the "
                         f"caller: {f['ms_forced_ftz']:.3f} ms)  denormal_cost {f['denormal_cost']:.2f} "
                         f"(kernel flushing off: {f['ms_unflushed']:.3f} ms)")
    return "\n".join(lines)


def add_arguments(b):
    """The options of `fastsamp bench`."""
    b.add_argument("--device", type=device_arg, default="cpu", help="cpu or cuda[:N]")
    b.add_argument("--ops", default=None, help="comma-separated op names (default: all)")
    b.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="dtype of the inputs")
    b.add_argument("--no-compile", action="store_true", help="skip torch.compile of the reference")
    b.add_argument("--min-time", type=positive_float, default=0.5, help="seconds of timing per measurement")
    b.add_argument("--json", default=None, help="write the report as JSON here")
    b.add_argument("--cpu-time", action="store_true",
                   help="time by the calling thread's CPU time instead of wall time (CPU, one thread: "
                        "OMP_NUM_THREADS=1); on a shared machine other processes' load then does not count")


def check(args):
    """--ops must name known ops or cases."""
    if args.ops:
        bad = unknown_ops(args.ops.split(","))
        if bad:
            args.parser.error(f"--ops: unknown op(s) {', '.join(map(repr, bad))}; choose from "
                              f"{', '.join(case_names())} (an op name alone: all its cases)")


def main(args) -> int:
    """`fastsamp bench`: the table, and the JSON report with --json."""
    ops = args.ops.split(",") if args.ops else None
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    try:
        report = run(args.device, ops, dtype, compile_reference=not args.no_compile, min_time=args.min_time,
                     verbose=True, cpu_time=args.cpu_time)
    except ValueError as e:
        print(f"fastsamp bench: error: {e}", file=sys.stderr)
        return 2
    print(format_table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    return 0
