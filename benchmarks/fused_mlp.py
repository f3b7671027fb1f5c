"""FusedMLP (a user's Sequential(Linear, SiLU, ..., Linear) evaluated by ops.mlp_net) against the same Sequential in
eager PyTorch and under a fair torch.compile, and what it does to a whole sampler run.

1. The network pass: forward under no_grad on B rows of [x, t] (D + 1 inputs, two hidden SiLU layers of width H,
   D outputs: the benchmarks' user network, _user_mlp.UserMLP), for B = 2048 and 6144 (the chains, and the
   chains with two trapezoid points: one batched call of a generic MALA move) and H = 64, 128. Sides interleaved,
   medians: eager (nn.Sequential), compile (torch.compile(dynamic=False) of the Sequential, after a warm-up),
   fused (FusedMLP). GFLOP/s from 2B(Din H + H² + H D) and, as the roofline, the fp32 GEMM rate of a 1024³ matmul
   measured in the same run.
2. The training pass: the gradients of a mean-squared loss, mean_b |f(x_b) − y_b|², to every weight and bias
   (torch.autograd.grad), for B = 512 and 2048 and H = 64, 128: eager, compile (torch.compile(dynamic=False) of the
   loss function: AOTAutograd compiles its forward and backward), fused (FusedMLP: the forward kernel, on the CPU
   keeping the hidden activations, autograd through the loss, the backward kernel), fused recomputing (CPU only: the
   same with ops.mlp.KEEP_ACTIVATIONS_BYTES = 0, the backward recomputing the forward, as before the thirty-first
   session) and fused loss (`FusedMLP.squared_error(x, y) / D`, the same loss and gradients from one kernel call:
   ops.mlp_net_lsq). GFLOP/s (of the fused side) from the forward's
   F = 2B(Din H + H² + H D), the weight gradients' F and the cotangent chain's 2B(H² + H D) (no input gradient).
3. A sampler run: annealed_mcmc (20 levels x 5 MALA moves, score-MH with n_trapezoid 3, 2048 chains) on the user
   network as is and with its Sequential wrapped in FusedMLP, interleaved, medians.

    python benchmarks/fused_mlp.py [--dim 8] [--repeats 9] [--clock cpu|wall] [--device cpu|cuda] [--json out.json]

One thread on the CPU (torch.set_num_threads(1)); --clock cpu times the process's CPU time (steadier on a shared
machine), wall is the default (and the only clock on a GPU, where the device is synchronised around each call).
"""
import argparse
import json
import statistics

import torch
from _timing import CLOCKS, device_sync, gemm_rate
from _user_mlp import UserMLP

from fastsamp.models import FusedMLP
from fastsamp.ops import mlp as mlp_ops
from fastsamp.samplers import annealed_mcmc


def pass_flops(B, d_in, H, d_out):
    return 2 * B * (d_in * H + H * H + H * d_out)


def with_fused_mlp(user: UserMLP) -> UserMLP:
    """A copy of the user's network with the same weights, its Sequential wrapped in FusedMLP."""
    copy = UserMLP(user.dim, user.net[0].out_features).to(user.net[0].weight.device)
    copy.load_state_dict(user.state_dict())
    copy.net = FusedMLP(copy.net)
    return copy


def interleaved(fns: dict, repeats, clock, sync):
    """{name: median seconds} of fns' calls, one of each per round, the rounds' order rotated."""
    names, times = list(fns), {k: [] for k in fns}
    for r in range(repeats):
        for k in names[r % len(names):] + names[:r % len(names)]:
            sync()
            t0 = clock()
            fns[k]()
            sync()
            times[k].append(clock() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def table_row(B, H, med, flops, gemm):
    """The JSON row of one (B, H) cell, printed as a table row: the medians (µs), fused over the better of eager and
    compile, the fused side's GFLOP/s (`flops` per call) and its fraction of the GEMM rate `gemm` (None on a GPU)."""
    rate, best = flops / med["fused"] / 1e9, min(med["eager"], med["compile"])
    frac = None if gemm is None else rate / gemm
    loss_cells = f" {med['fused loss'] * 1e6:.0f} | {med['fused loss'] / best:.2f} |" if "fused loss" in med else ""
    if "fused recomputing" in med:
        loss_cells += f" {med['fused recomputing'] * 1e6:.0f} | {med['fused'] / med['fused recomputing']:.2f} |"
    print(f"| {B} | {H} | {med['eager'] * 1e6:.0f} | {med['compile'] * 1e6:.0f} | {med['fused'] * 1e6:.0f} | "
          f"{med['fused'] / best:.2f} | {rate:.1f} | {'' if frac is None else f'{100 * frac:.0f} %'} |{loss_cells}")
    return {"B": B, "H": H, "us": {k: v * 1e6 for k, v in med.items()}, "fused_over_best_pytorch": med["fused"] / best,
            "fused_GFLOPs": rate, "fused_frac_gemm": frac}


def mse(net, x, y):
    return ((net(x) - y) ** 2).mean()


def recomputing(fn):
    """fn with nothing kept for the fused backward (ops.mlp.KEEP_ACTIVATIONS_BYTES = 0 during the forward), which then
    recomputes the forward."""
    def call():
        kept, mlp_ops.KEEP_ACTIVATIONS_BYTES = mlp_ops.KEEP_ACTIVATIONS_BYTES, 0
        try:
            return fn()
        finally:
            mlp_ops.KEEP_ACTIVATIONS_BYTES = kept
    return call


def training_pass(D, H, B, device, args, clock, sync):
    """{eager, compile, fused, fused loss: median seconds} of the loss's gradients to every weight and bias (module
    docstring, 2.), after checking that the four give the same gradients."""
    torch.manual_seed(0)
    seq = UserMLP(D, H).net.to(device)
    params, fused, compiled = list(seq.parameters()), FusedMLP(seq), torch.compile(mse, dynamic=False)
    x, y = torch.randn(B, D + 1, device=device), torch.randn(B, D, device=device)
    losses = {"eager": lambda: mse(seq, x, y), "compile": lambda: compiled(seq, x, y),
              "fused": lambda: mse(fused, x, y), "fused loss": lambda: fused.squared_error(x, y) / D}
    if device.type == "cpu":
        losses["fused recomputing"] = recomputing(losses["fused"])
    grads = {k: torch.autograd.grad(f(), params) for k, f in losses.items()}  # compile's warm-up too
    for k in set(losses) - {"eager"}:
        for a, b in zip(grads[k], grads["eager"]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    sides = {k: (lambda f=f: [torch.autograd.grad(f(), params) for _ in range(args.calls)]) for k, f in losses.items()}
    return {k: v / args.calls for k, v in interleaved(sides, args.repeats, clock, sync).items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--calls", type=int, default=20, help="network passes per timed sample")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and args.clock == "cpu":
        p.error("--clock cpu would not count a GPU's kernels: use --clock wall with --device cuda")
    torch.set_num_threads(1)
    clock, sync, D = CLOCKS[args.clock], device_sync(device), args.dim
    report = {"args": vars(args), "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device)}
    if device.type == "cpu":
        report["fp32_gemm_GFLOPs"] = gemm = gemm_rate()
        print(f"fp32 GEMM 1024^3: {gemm[args.clock]:.1f} GFLOP/s ({args.clock} clock), one thread")
    gemm_now = report["fp32_gemm_GFLOPs"][args.clock] if device.type == "cpu" else None
    report["passes"] = []
    print("| B | H | eager us | compile us | fused us | fused / best PyTorch | fused GFLOP/s | of GEMM |")
    print("|---|---|---|---|---|---|---|---|")
    for H in (64, 128):
        torch.manual_seed(0)
        seq = UserMLP(D, H).net.to(device)
        fused, compiled = FusedMLP(seq), torch.compile(seq, dynamic=False)
        for B in (2048, 6144):
            x = torch.randn(B, D + 1, device=device)
            with torch.no_grad():
                torch.testing.assert_close(fused(x), seq(x), rtol=1e-4, atol=1e-4)
                for _ in range(3):
                    compiled(x)
                sides = {name: (lambda f=f, x=x: [f(x) for _ in range(args.calls)])
                         for name, f in (("eager", seq), ("compile", compiled), ("fused", fused))}
                med = {k: v / args.calls for k, v in interleaved(sides, args.repeats, clock, sync).items()}
            report["passes"].append(table_row(B, H, med, pass_flops(B, D + 1, H, D), gemm_now))

    report["train_passes"] = []
    print("\ntraining pass (loss and every weight's gradient):")
    recompute_cols = (" fused recomputing us | fused / recomputing |", "---|---|") if device.type == "cpu" else ("", "")
    print("| B | H | eager us | compile us | fused us | fused / best PyTorch | fused GFLOP/s | of GEMM | "
          "fused loss us | fused loss / best PyTorch |" + recompute_cols[0])
    print("|---|---|---|---|---|---|---|---|---|---|" + recompute_cols[1])
    for H in (64, 128):
        for B in (512, 2048):
            med = training_pass(D, H, B, device, args, clock, sync)
            flops = 2 * pass_flops(B, D + 1, H, D) + 2 * B * (H * H + H * D)
            report["train_passes"].append(table_row(B, H, med, flops, gemm_now))

    torch.manual_seed(0)
    user = UserMLP(D, 64).to(device)
    fused_user = with_fused_mlp(user)

    def run(model):
        return annealed_mcmc(model, 2048, n_levels=20, corrector="mala", mh="score", n_corrector_steps=5,
                             n_trapezoid=3, step_size=0.05, seed=0, on_nonfinite="ignore", device=device)

    run(user), run(fused_user)  # warm-up
    med = interleaved({"network": lambda: run(user), "FusedMLP": lambda: run(fused_user)}, args.repeats, clock, sync)
    report["annealed_mcmc_s"] = med
    print(f"annealed_mcmc, 2048 chains, 20 levels x 5 MALA moves, n_trapezoid 3, H 64: the user's network "
          f"{med['network'] * 1e3:.1f} ms, its Sequential as FusedMLP {med['FusedMLP'] * 1e3:.1f} ms "
          f"({med['network'] / med['FusedMLP']:.2f}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
