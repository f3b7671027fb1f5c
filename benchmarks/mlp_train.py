"""One training iteration of a ScoreMLP or an EnergyMLP (denoising score matching, `fastsamp.models.dsm_loss` +
Adam): the fused engine (ops.mlp_net_lsq / ops.mlp_net_energy_lsq: the network's forward, the loss and the backward
to every weight in one C++ kernel call) against eager PyTorch and a fair torch.compile of the eager step, and the
fused pass's GFLOP/s against the fp32 GEMM rate measured in the same run (issue 11 item 1).

Setting: batch 512, hidden 128 (three SiLU layers, 16 Fourier frequencies: network input D + 32), D = 2 and 8,
float32, one thread. Every variant runs the same step on the same draws (x0, t, z passed in):
zero_grad, loss, backward, Adam step; the optimizer is the same in all: torch.optim.Adam(fused=True) (one kernel
for all the parameters, what train_score_mlp uses, and the fastest PyTorch Adam on the CPU: the default per-tensor
loop and foreach take 3.4x and 2.7x its CPU time for these 38k parameters, loaded).
* eager: `dsm_loss(net, x0, t, z)` (an EnergyMLP: its score by autograd.grad(create_graph=True), then the
  double backward);
* fused: `dsm_loss(net, x0, t, z, fused=True)` (what train_score_mlp runs);
* fused_pair (score only): the same loss with the network f through the op pair ops.mlp_net (forward kernel,
  autograd through the loss, backward kernel, which recomputes the forward): the alternative measured against;
* compile: torch.compile(dynamic=False) of the loss function (AOTAutograd compiles its forward and backward
  graphs), called after a warm-up, static shapes; for an EnergyMLP the score inside it is torch.func.vjp of the
  energy (dynamo traces torch.func, not autograd.grad(create_graph=True)), the same loss.
The network pass alone is timed too, on the network's input rows: lsq_pass (the fused op and its backward), and
for the score pair_pass (ops.mlp_net forward + backward), pair_forward (its forward alone, which the pair's
backward kernel runs again), eager_pass (the nn.Sequential forward + autograd backward).

FLOPs of the score pass: forward F = 2B(Din H + L H² + H D), backward F for the weight gradients plus
C = 2B(L H² + H D) for the δ chain (no input gradient: the input is data); activations not counted. The energy
pass: the forward F, the VJP J_fᵀ r (C and 2B D H), the tangent forward (F − 2B (Din − D) H), the reverse pass
through both streams (2 C, and the weight gradients of both: 2 F − 2B (Din − D) H). GFLOP/s (lsq_pass) use these
(useful) FLOPs; the op pair runs the forward once more (`executed`).

Times: medians of per-iteration wall and process CPU time (one thread: the CPU time is the step's own), the
variants interleaved (fused, eager, compile, fused, ...) so that on a loaded machine all see the same load.

    python benchmarks/mlp_train.py [--parameterisation score|energy] [--dims 2 8] [--iters 20] [--repeats 7]
                                   [--json out.json]
"""
import argparse
import copy
import json
import statistics
import time

import torch
from _timing import gemm_rate, timed

from fastsamp import ops
from fastsamp.mlp_models import dsm_loss
from fastsamp.models import EnergyMLP, ScoreMLP
from fastsamp.profiling import cpu_model


def trainer(net, loss_fn):
    """One training iteration on the draws: zero_grad, loss, backward, Adam step."""
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)

    def step(x0, t, z):
        opt.zero_grad()
        loss = loss_fn(x0, t, z)
        loss.backward()
        opt.step()
    return step


def pass_flops(net, batch, energy):
    linears = list(net.net)[0::2]
    fwd = 2 * batch * sum(m.in_features * m.out_features for m in linears)
    chain = 2 * batch * sum(m.in_features * m.out_features for m in linears[1:])
    if energy:  # forward, VJP to x, tangent forward, reverse through both streams (module docstring)
        time_cols = 2 * batch * (linears[0].in_features - net.dim) * linears[0].out_features
        vjp = chain + 2 * batch * net.dim * linears[0].out_features
        useful = fwd + vjp + (fwd - time_cols) + 2 * chain + (2 * fwd - time_cols)
        return {"useful": useful, "executed": useful}
    return {"useful": 2 * fwd + chain, "executed": 3 * fwd + chain}


def func_energy_loss(net):
    """dsm_loss of an EnergyMLP with its score by torch.func.vjp of the energy (what torch.compile traces)."""
    def loss(x0, t, z):
        alpha, sigma2 = net.marginal(t)
        sigma = sigma2.sqrt()
        xt = alpha * x0 + sigma * z
        _, vjp = torch.func.vjp(lambda x: net.energy(x, t[:, 0]), xt)
        (grad,) = vjp(torch.ones(xt.shape[0], dtype=xt.dtype))
        return ((-sigma * grad + z) ** 2).sum(1).mean()
    return loss


def bench_dim(D, args):
    torch.manual_seed(0)
    energy = args.parameterisation == "energy"
    base = (EnergyMLP if energy else ScoreMLP)(D, hidden=args.hidden, data_mean=torch.randn(D) * 0.5, data_var=1.0)
    g = torch.Generator().manual_seed(1)
    B = args.batch
    x0 = torch.randn(B, D, generator=g)
    t = 1e-3 + (1 - 1e-3) * torch.rand(B, 1, generator=g)
    z = torch.randn(B, D, generator=g)
    # the energy parameterisation has no ops.mlp_net pair (its loss needs the network's input gradient)
    kinds = ("fused", "eager", "compile") if energy else ("fused", "fused_pair", "eager", "compile")
    nets = {k: copy.deepcopy(base) for k in kinds}
    compiled = torch.compile(func_energy_loss(nets["compile"]) if energy
                             else lambda a, b, c: dsm_loss(nets["compile"], a, b, c), dynamic=False)

    def pair_loss(a, b, c):
        """dsm_loss with ScoreMLP.forward's network f through ops.mlp_net."""
        net = nets["fused_pair"]
        alpha, sigma2 = net.marginal(b)
        xt = alpha * a + sigma2.sqrt() * c
        mean, v, inp = net.gaussian_and_input(xt, b[:, 0], (alpha, sigma2))
        score = (mean - xt) / v + ops.mlp_net(inp, *net._layers()) / v.sqrt()
        return ((sigma2.sqrt() * score + c) ** 2).sum(1).mean()
    losses = {"fused": lambda a, b, c: dsm_loss(nets["fused"], a, b, c, fused=True), "fused_pair": pair_loss,
              "eager": lambda a, b, c: dsm_loss(nets["eager"], a, b, c), "compile": compiled}
    steps = {k: trainer(nets[k], losses[k]) for k in kinds}
    # the network pass alone: input rows [x_t, emb(t)], an output cotangent, the loss's constants
    inp = torch.randn(B, D + 2 * base.n_freq, generator=g)
    g_out, lsq_c, lsq_k = torch.randn(B, D, generator=g), torch.randn(B, D, generator=g), torch.rand(B, generator=g)
    lsq_v = lsq_k + 0.1  # the energy loss's v > 0
    weights, biases = nets["fused"]._layers()

    def lsq_pass():
        if energy:
            ops.mlp_net_energy_lsq(inp, weights, biases, lsq_c, lsq_v, lsq_k, g_out).backward()
        else:
            ops.mlp_net_lsq(inp, weights, biases, lsq_c, lsq_k).backward()

    def pair_pass():
        ops.mlp_net(inp, weights, biases).backward(g_out)

    def pair_forward():
        with torch.no_grad():
            ops.mlp_net(inp, weights, biases)

    def eager_pass():
        nets["eager"].net(inp).backward(g_out)

    runs = {**{k: (lambda s=s: s(x0, t, z)) for k, s in steps.items()}, "lsq_pass": lsq_pass}
    if not energy:
        runs |= {"pair_pass": pair_pass, "pair_forward": pair_forward, "eager_pass": eager_pass}
    warmup_w0 = time.perf_counter()
    for fn in runs.values():  # warm-up: three calls of every run (the compiled step's first one compiles it)
        for _ in range(3):
            fn()
    warmup_s = time.perf_counter() - warmup_w0
    walls, cpus = {k: [] for k in runs}, {k: [] for k in runs}
    for _ in range(args.repeats):
        for k, fn in runs.items():  # interleaved: one timed sample of args.iters calls of each run in turn
            wall, cpu, _ = timed(lambda fn=fn: [fn() for _ in range(args.iters)], 1)
            walls[k].append(wall / args.iters)
            cpus[k].append(cpu / args.iters)
    med = {k: {"wall_s": statistics.median(walls[k]), "cpu_s": statistics.median(cpus[k])} for k in runs}
    return med, pass_flops(base, B, energy), warmup_s


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parameterisation", choices=("score", "energy"), default="score")
    p.add_argument("--dims", type=int, nargs="+", default=[2, 8])
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--iters", type=int, default=20, help="iterations per timed sample")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(1)
    gemm = gemm_rate()
    report = {"cpu": cpu_model(), "date": time.strftime("%Y-%m-%d %H:%M"), "threads": 1, "args": vars(args),
              "fp32_gemm_GFLOPs": gemm, "dims": {}}
    print(f"{report['cpu']}, one thread; fp32 GEMM {gemm['wall']:.1f} GFLOP/s wall, {gemm['cpu']:.1f} CPU")
    for D in args.dims:
        med, flops, warmup_s = bench_dim(D, args)
        best_torch = min(med["eager"]["cpu_s"], med["compile"]["cpu_s"])
        rate = {c: flops["useful"] / med["lsq_pass"][f"{c}_s"] / 1e9 for c in ("wall", "cpu")}
        entry = {"times": med, "flops": flops, "warmup_all_runs_wall_s": warmup_s,
                 "speedup_cpu": {k: med[k]["cpu_s"] / med["fused"]["cpu_s"] for k in ("eager", "compile", "fused_pair")
                                 if k in med} | {"best_pytorch": best_torch / med["fused"]["cpu_s"]},
                 "fused_pass_GFLOPs": rate, "fused_pass_frac_gemm": {c: rate[c] / gemm[c] for c in rate},
                 "outside_pass_share_of_step": 1 - med["lsq_pass"]["cpu_s"] / med["fused"]["cpu_s"]}
        report["dims"][D] = entry
        us = {k: 1e6 * v["cpu_s"] for k, v in med.items()}
        sp = entry["speedup_cpu"]
        if args.parameterisation == "energy":
            print(f"D={D} energy (CPU time): step fused {us['fused']:.0f} us, eager {us['eager']:.0f}, compile "
                  f"{us['compile']:.0f}: x{sp['eager']:.2f} eager, x{sp['compile']:.2f} compile, "
                  f"x{sp['best_pytorch']:.2f} best PyTorch; pass {us['lsq_pass']:.0f} us, {rate['cpu']:.1f} GFLOP/s = "
                  f"{100 * entry['fused_pass_frac_gemm']['cpu']:.0f}% of GEMM; "
                  f"{100 * entry['outside_pass_share_of_step']:.0f}% of the fused step outside the pass")
            continue
        print(f"D={D} (CPU time): step fused {us['fused']:.0f} us, op pair {us['fused_pair']:.0f}, eager "
              f"{us['eager']:.0f}, compile {us['compile']:.0f}: x{sp['eager']:.2f} eager, x{sp['compile']:.2f} "
              f"compile, x{sp['best_pytorch']:.2f} best PyTorch, x{sp['fused_pair']:.2f} op pair; pass lsq "
              f"{us['lsq_pass']:.0f} us, op pair {us['pair_pass']:.0f} (forward {us['pair_forward']:.0f}), eager "
              f"{us['eager_pass']:.0f}; "
              f"lsq pass {rate['cpu']:.1f} GFLOP/s = {100 * entry['fused_pass_frac_gemm']['cpu']:.0f}% of GEMM; "
              f"{100 * entry['outside_pass_share_of_step']:.0f}% of the fused step outside the pass")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
