"""Annealed MCMC on a Product of two ScoreMLPs: the fused score-network kernel (ops.mlp_mala) against the
generic path (the samplers' Langevin / ScoreMH kernels, one batched PyTorch network call per move), and
the kernel's GFLOP/s as a fraction of the fp32 GEMM rate measured in the same run (issue 11).
`--parameterisation energy`: a Product of two EnergyMLPs with the exact energy MH, the fused
ops.mlp_energy_mala against the generic EnergyMH path (autograd forward and backward per proposal; CPU only);
`--compile` adds a fair torch.compile of one generic MALA step (static shapes, noise and log-uniforms passed in,
timed after the warm-up) against the kernel, per move: score-MH with the trapezoid on n_trapezoid sub-intervals
(x' and the interior points scored in one batched call) for score networks, the exact energy MH for energies.

Setting of the issue: hidden 128 (ScoreMLP: 3 hidden activations, 2 hidden H x H layers), D = 2, 4096
chains, 100 levels x 10 MALA moves, n_trapezoid 3, one thread. Untrained (random, fixed-seed) networks:
the cost does not depend on the weights.

FLOPs counted: 2 (D H + L H² + H D) per network evaluation (the multiply-adds of the layers the kernel
runs; the time-embedding columns of the first layer, constant over a call, are one (H, 2F) product per
call in the kernel and are not counted; nor are the activations), twice that for an energy network (the
backward through the layers to the input has the same multiply-adds).

Times are medians over the repeats, of wall time and of this process's CPU time (time.process_time: on
a machine shared with other work, CPU time is the steadier of the two; one thread, so it is the
kernel's own time). The GEMM rate is measured both ways too (a 1024³ float32 matmul). The fused and generic
samplers run interleaved (fused, generic, fused, ...): on a loaded machine both see the same load.

--device cuda: the networks and chains on the GPU, the fused path on the Triton engine (kernels/mlp.py), the
generic path on PyTorch's CUDA kernels; wall times only (after a device synchronisation), against the fp32
GEMM rate of a 4096³ matmul without TF32 (the engine's dots run at ieee fp32 precision too).

    python benchmarks/mlp_product.py [--chains 4096] [--levels 100] [--moves 10] [--repeats 3] [--device cuda]
                                     [--parameterisation energy] [--compile] [--json out.json]
"""
import argparse
import contextlib
import json
import statistics
import time
from functools import partial

import torch
from _timing import gemm_rate, timed

from fastsamp import ops
from fastsamp.experiments.bench import measure_roofline
from fastsamp.models import PARAMETERISATIONS, EnergyMLP, Product
from fastsamp.profiling import cpu_model, machine
from fastsamp.samplers import annealed_mcmc


def product(hidden, device, parameterisation="score", dim=2):
    nets = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        cls = PARAMETERISATIONS[parameterisation]
        nets.append(cls(dim, hidden=hidden, data_mean=torch.randn(dim) * 0.5, data_var=1.0).eval().to(device))
    return Product(*nets)


def flops_per_eval(model):
    """2 (D H + L H² + H D) summed over the factors (one evaluation of the product's score), twice that for an
    energy network (forward and backward)."""
    total = 0
    for m in model.models:
        linears = [x for x in m.net if isinstance(x, torch.nn.Linear)]
        per_pass = 2 * (m.dim * m.hidden + sum(x.in_features * x.out_features for x in linears[1:]))
        total += per_pass * (2 if isinstance(m, EnergyMLP) else 1)
    return total


CPU = torch.device("cpu")


def run_samplers(model, args, which):
    """{fused: (median wall s, median CPU s, score evaluations)} of annealed_mcmc for each `fused` in `which`, the
    runs interleaved."""
    kw = dict(n_levels=args.levels, corrector="mala", n_corrector_steps=args.moves, n_trapezoid=args.n_trapezoid,
              step_size=0.05, seed=0, device=args.device, mh="energy" if args.parameterisation == "energy" else "score")
    walls, cpus, evals = {f: [] for f in which}, {f: [] for f in which}, {}
    for _ in range(args.repeats):
        for fused in which:
            wall, cpu, (_, stats) = timed(partial(annealed_mcmc, model, args.chains, fused=fused, **kw), 1, args.device)
            assert stats.fused == fused
            walls[fused].append(wall)
            cpus[fused].append(cpu)
            evals[fused] = stats.n_score_evals
    return {f: (statistics.median(walls[f]), statistics.median(cpus[f]), evals[f]) for f in which}


def run_kernel(model, args):
    """Median wall and CPU time (s) of one ops.mlp_mala (energy: ops.mlp_energy_mala with the energy MH) call:
    the chains, args.moves moves, at t = 0.5."""
    x = torch.randn(args.chains, model.dim, device=args.device)
    nets = [m.fused_net(0.5, x) for m in model.models]
    if args.parameterisation == "energy":
        call = lambda: ops.mlp_energy_mala(x, nets, step_size=0.01, n_steps=args.moves)  # noqa: E731
        per_move = 1
    else:
        call = lambda: ops.mlp_mala(x, nets, step_size=0.01, n_steps=args.moves,  # noqa: E731
                                    n_trapezoid=args.n_trapezoid)
        per_move = args.n_trapezoid
    call()
    wall, cpu, _ = timed(call, max(args.repeats, 5), args.device)
    return wall, cpu, args.chains * (args.moves * per_move + 1)


def compiled_score_step(model, n_trapezoid, t):
    """One score-MALA move with the trapezoid MH test, (x, s, ξ, log u, ε) -> (x, s), for torch.compile:
    x' = x + ε s + √(2ε) ξ; log p(x') − log p(x) ≈ Σ_k (x' − x)·(s_k + s_{k+1}) / (2n) over the points
    x + (k/n)(x' − x), k = 0..n (x' and the n − 1 interior points scored in one call); log q by the Gaussian
    proposal of variance 2ε."""
    n = n_trapezoid
    fractions = torch.arange(1, n, dtype=torch.float32) / n

    def score(z):  # the factors' differentiable forward (the caller turns grad mode off)
        return sum(m(z, t) for m in model.models)

    def step(x, s, xi, log_u, eps):
        x_prop = x + eps * s + (2 * eps) ** 0.5 * xi
        delta = x_prop - x
        interior = x + fractions.to(x.device)[:, None, None] * delta
        scores = score(torch.cat([x_prop[None], interior]).flatten(0, 1)).view(n, *x.shape)
        s_prop = scores[0]
        path = torch.cat([s[None], scores[1:], s_prop[None]])  # s at the points k = 0..n
        log_ratio = (delta * (path[:-1] + path[1:]).sum(0)).sum(1) / (2 * n)
        fwd, bwd = delta - eps * s, -delta - eps * s_prop
        log_alpha = log_ratio + ((fwd * fwd).sum(1) - (bwd * bwd).sum(1)) / (4 * eps)
        take = log_u < log_alpha
        return torch.where(take[:, None], x_prop, x), torch.where(take[:, None], s_prop, s)

    return step, (lambda x: (x, model.score(x, t)))


def compiled_energy_step(model, t):
    """One energy-MALA move with the exact energy MH, (x, g, e, ξ, log u, ε) -> (x, g, e) with g = ∇E(x) and
    e = E(x) per chain, for torch.compile; the energies' gradient by torch.func.grad_and_value."""

    def energies(z):
        e = sum(m.energy(z, t) for m in model.models)
        return e.sum(), e

    grad_energies = torch.func.grad_and_value(energies, has_aux=True)

    def step(x, g, e, xi, log_u, eps):
        x_prop = x - eps * g + (2 * eps) ** 0.5 * xi
        g_prop, (_, e_prop) = grad_energies(x_prop)
        fwd, bwd = x_prop - x + eps * g, x - x_prop + eps * g_prop
        log_alpha = (e - e_prop) + ((fwd * fwd).sum(1) - (bwd * bwd).sum(1)) / (4 * eps)
        take = log_u < log_alpha
        return (torch.where(take[:, None], x_prop, x), torch.where(take[:, None], g_prop, g),
                torch.where(take, e_prop, e))

    def init(x):
        g, (_, e) = grad_energies(x)
        return x, g, e

    return step, init


def run_compiled_step(model, args):
    """Median wall and CPU time (s) of args.moves calls of one generic MALA step compiled by torch.compile (a fair
    compile: one step function, static shapes, the noise and log-uniforms passed in, timed after the warm-up that
    compiles it) at t = 0.5 (`compiled_score_step` or `compiled_energy_step`); and the compile time."""
    t = 0.5
    if args.parameterisation == "energy":
        step, init = compiled_energy_step(model, t)
    else:
        step, init = compiled_score_step(model, args.n_trapezoid, t)
    start = init(torch.randn(args.chains, model.dim, device=args.device))
    xi = torch.randn(args.chains, model.dim, device=args.device)
    log_u = torch.rand(args.chains, device=args.device).log()
    compiled = torch.compile(step, dynamic=False)
    no_grad = contextlib.nullcontext if args.parameterisation == "energy" else torch.no_grad  # energy: autograd inside
    w0 = time.perf_counter()
    with no_grad():
        compiled(*start, xi, log_u, 0.01)
    compile_s = time.perf_counter() - w0

    def moves():
        state = start
        with no_grad():
            for _ in range(args.moves):
                state = compiled(*state, xi, log_u, 0.01)
        return state
    wall, cpu, _ = timed(moves, max(args.repeats, 5), args.device)
    return wall, cpu, compile_s


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chains", type=int, default=4096)
    p.add_argument("--levels", type=int, default=100)
    p.add_argument("--moves", type=int, default=10)
    p.add_argument("--n-trapezoid", type=int, default=3)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--parameterisation", choices=tuple(PARAMETERISATIONS), default="score",
                   help="energy: EnergyMLPs with the exact energy MH (n_trapezoid unused)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-generic", action="store_true", help="time the fused path and the kernel only")
    p.add_argument("--compile", action="store_true",
                   help="also time a torch.compile'd generic MALA step against the kernel, per move")
    p.add_argument("--device", type=torch.device, default=CPU)
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(1)
    model = product(args.hidden, args.device, args.parameterisation)
    fpe = flops_per_eval(model)
    gemm = {"wall": measure_roofline(args.device)["fp32_gemm_GFLOPs"]}
    clocks = ("wall",) if args.device.type == "cuda" else ("wall", "cpu")  # the host's CPU time says nothing there
    if "cpu" in clocks:
        gemm["cpu"] = gemm_rate()["cpu"]

    def entry(wall, cpu, evals):
        rates = {k: evals * fpe / {"wall": wall, "cpu": cpu}[k] / 1e9 for k in clocks}
        return {"wall_s": wall, "cpu_s": cpu, "n_score_evals": evals, "GFLOPs": rates,
                "frac_gemm": {k: rates[k] / gemm[k] for k in rates}}

    report = {"cpu": cpu_model(), "device": machine(args.device), "date": time.strftime("%Y-%m-%d %H:%M"), "threads": 1,
              "args": {**vars(args), "device": str(args.device)},
              "fp32_gemm_GFLOPs": gemm, "flops_per_eval": fpe,
              "kernel": entry(*run_kernel(model, args))}
    samplers = run_samplers(model, args, (True,) if args.skip_generic else (True, False))
    report["fused"] = entry(*samplers[True])
    if not args.skip_generic:
        report["generic"] = entry(*samplers[False])
        report["speedup"] = {k: report["generic"][f"{k}_s"] / report["fused"][f"{k}_s"] for k in clocks}
    if args.compile:
        wall, cpu, compile_s = run_compiled_step(model, args)
        report["compiled_step"] = {"wall_s": wall, "cpu_s": cpu, "moves": args.moves, "compile_s": compile_s}
        report["kernel_vs_compiled_step"] = {k: report["compiled_step"][f"{k}_s"] / report["kernel"][f"{k}_s"]
                                             for k in clocks}
    print(json.dumps(report, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
