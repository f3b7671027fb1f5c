"""fastsamp command line: `fastsamp sample` (the main job), `bench`, `compose`, `importance`, `train`,
`outsourced`, `info`."""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def _mixture(D, K, seed, dtype, device):
    g = torch.Generator().manual_seed(seed)
    means = 4.0 * torch.randn(K, D, generator=g, dtype=torch.float64)
    log_weights = torch.log(torch.rand(K, generator=g, dtype=torch.float64) + 0.2)
    variances = 0.2 + 0.4 * torch.rand(K, generator=g, dtype=torch.float64)
    return [t.to(dtype=dtype, device=device) for t in (means, log_weights, variances)]


def mode_occupancy(x, means, log_weights, variances):
    """Fraction of samples whose most responsible component is k, (K,)."""
    lw = log_weights.double().cpu()
    var = variances.double().cpu()
    d2 = torch.cdist(x.double().cpu(), means.double().cpu()) ** 2
    ell = lw - 0.5 * d2 / var - 0.5 * x.shape[1] * torch.log(var)
    return torch.bincount(ell.argmax(1), minlength=means.shape[0]).double() / x.shape[0]


def cmd_sample(args) -> int:
    """Predictor-corrector sampling of a Gaussian mixture: reverse VP Euler-Maruyama steps from
    t = 1 to t = 0 (predictor) and, at each level, `--moves` fused MALA moves with score-based MH
    on the exact diffusion marginal (corrector)."""
    from . import VP, ops

    device = torch.device(args.device)
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    means, lw, var = _mixture(args.dim, args.components, args.seed, dtype, device)
    vp = VP()
    g = torch.Generator().manual_seed(args.seed + 1)
    x = torch.randn(args.chains, args.dim, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
    ts = [1.0 - i / (args.levels - 1) for i in range(args.levels)]
    backend = args.backend
    # warm-up (JIT compilation of GPU kernels; page faults on the CPU)
    ops.gmm_mala(x[:64], means, lw, var, step_size=0.01, n_steps=1, n_trapezoid=args.n_trapezoid, backend=backend)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    rates = []
    for i, t in enumerate(ts):
        alpha, sigma2 = vp.alpha(t), vp.sigma2(t)
        if i > 0:  # predictor: reverse Euler-Maruyama from the previous level to t
            t_prev = ts[i - 1]
            s_prev = ops.gmm_score(x, means, lw, var, alpha=vp.alpha(t_prev), sigma2=vp.sigma2(t_prev),
                                   backend=backend)[0]
            x = ops.reverse_sde_step(x, s_prev, t=t_prev, h=t_prev - t, schedule=vp, seed=args.seed + 1,
                                     offset=i, backend=backend)
        # corrector: fused MALA moves with score-based MH on the marginal at t; step proportional
        # to the smallest marginal variance at this level
        step = args.step_scale * (alpha**2 * float(var.min()) + sigma2)
        x, rate = ops.gmm_mala(x, means, lw, var, step_size=step, n_steps=args.moves,
                               n_trapezoid=args.n_trapezoid, alpha=alpha, sigma2=sigma2,
                               seed=args.seed, offset=i * args.moves, mh=args.mh, backend=backend)
        rates.append(float(rate.mean()))
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    moves = args.chains * args.levels * args.moves
    score_evals = moves * (args.n_trapezoid if args.mh == "score" else 1) + args.chains * (args.levels - 1)
    exact = _exact_samples(means, lw, var, args.chains, args.seed + 2)
    occ, occ_exact = mode_occupancy(x, means, lw, var), mode_occupancy(exact, means, lw, var)
    tv = 0.5 * float((occ - occ_exact).abs().sum())
    summary = {
        "backend": backend, "device": str(device), "dtype": args.dtype,
        "chains": args.chains, "dim": args.dim, "components": args.components, "levels": args.levels,
        "moves_per_level": args.moves, "n_trapezoid": args.n_trapezoid, "mh": args.mh,
        "wall_s": wall, "chain_moves_per_s": moves / wall, "score_evals_per_s": score_evals / wall,
        "mean_accept_first_level": rates[0], "mean_accept_last_level": rates[-1],
        "mode_occupancy_tv_vs_exact": tv, "finite": bool(torch.isfinite(x).all()),
    }
    print(f"fastsamp sample: annealed MALA + score-MH (n_trapezoid={args.n_trapezoid}) on a {args.components}"
          f"-component mixture in D={args.dim}, {args.chains} chains, {args.levels} levels x {args.moves} moves")
    print(f"  wall {wall:.3f} s | {moves / wall / 1e6:.2f} M chain-moves/s | "
          f"{score_evals / wall / 1e6:.2f} M score evals/s (backend={backend}, device={device})")
    print(f"  acceptance first/last level {rates[0]:.3f}/{rates[-1]:.3f} | "
          f"mode-occupancy TV vs exact samples {tv:.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0 if summary["finite"] else 1


def _exact_samples(means, lw, var, n, seed):
    g = torch.Generator().manual_seed(seed)
    k = torch.multinomial(torch.softmax(lw.double().cpu(), 0), n, replacement=True, generator=g)
    z = torch.randn(n, means.shape[1], generator=g, dtype=torch.float64)
    return means.double().cpu()[k] + var.double().cpu()[k, None].sqrt() * z


def cmd_info(args) -> int:
    from . import __version__, availability

    info = {"fastsamp": __version__, "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
            "backends": availability()}
    try:
        from . import _C
        info["build"] = _C.build_info()
    except ImportError:
        pass
    print(json.dumps(info, indent=2))
    return 0


def _target_names():
    from .targets import TARGETS
    return TARGETS


def _method_names():
    from .offpolicy import METHODS
    return tuple(METHODS)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="fastsamp", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample", help="annealed score-MH MALA on a Gaussian mixture, with a throughput summary")
    s.add_argument("--chains", type=int, default=65536)
    s.add_argument("--dim", type=int, default=8)
    s.add_argument("--components", type=int, default=16)
    s.add_argument("--levels", type=int, default=100)
    s.add_argument("--moves", type=int, default=5)
    s.add_argument("--n-trapezoid", type=int, default=3)
    s.add_argument("--step-scale", type=float, default=0.5)
    s.add_argument("--mh", default="score", choices=["score", "energy", "none"])
    s.add_argument("--device", default="cpu")
    s.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    s.add_argument("--backend", default="auto")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", default=None)
    s.set_defaults(fn=cmd_sample)
    b = sub.add_parser("bench", help="time every op on every backend against eager and torch.compile")
    b.add_argument("--device", default="cpu")
    b.add_argument("--ops", default=None, help="comma-separated op names (default: all)")
    b.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    b.add_argument("--no-compile", action="store_true", help="skip torch.compile of the reference")
    b.add_argument("--min-time", type=float, default=0.5, help="seconds of timing per measurement")
    b.add_argument("--json", default=None)
    b.set_defaults(fn=lambda a: __import__("fastsamp.bench", fromlist=["main"]).main(a))
    c = sub.add_parser("compose", help="2-D composition experiment: unadjusted vs score-MH vs energy-MH")
    c.add_argument("--samples", type=int, default=4000)
    c.add_argument("--budget", type=int, default=12, help="score evaluations per noise level")
    c.add_argument("--levels", type=int, default=30)
    c.add_argument("--step-size", type=float, default=0.3)
    c.add_argument("--seeds", type=int, default=3)
    c.add_argument("--mlp-iters", type=int, default=2000)
    c.add_argument("--json", default=None)
    c.add_argument("--png", default=None)
    c.set_defaults(fn=lambda a: __import__("fastsamp.composition", fromlist=["main"]).main(a))
    m = sub.add_parser("importance", help="training-free importance sampling test bed with exact answers")
    m.add_argument("--samples", type=int, default=4000)
    m.add_argument("--steps", type=int, default=200)
    m.add_argument("--seeds", type=int, default=3)
    m.add_argument("--json", default=None)
    m.add_argument("--png", default=None)
    m.set_defaults(fn=lambda a: __import__("fastsamp.tilting", fromlist=["main"]).main(a))
    r = sub.add_parser("train", help="train an off-policy diffusion sampler on a benchmark target and evaluate it")
    r.add_argument("--target", default="25gmm", choices=_target_names())
    r.add_argument("--method", default="tb+expl+lp+ls", choices=_method_names())
    r.add_argument("--iterations", type=int, default=None, help="default: the paper's count for the method")
    r.add_argument("--batch-size", type=int, default=300)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--eval-samples", type=int, default=2000)
    r.add_argument("--out", default=None, help="directory for the model (.pt) and the JSON")
    r.add_argument("--device", default="cpu", help="cpu or cuda[:N] (network, target and trajectories)")
    r.add_argument("--checkpoint-every", type=int, default=0,
                   help="with --out: checkpoint every N iterations into OUT/checkpoints/ and resume from there")
    r.add_argument("--eager", action="store_true", help="train on the eager PyTorch path instead of the fused one")
    r.add_argument("--time", action="store_true", help="only time fused vs eager iterations")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--verbose", action="store_true")
    r.set_defaults(fn=lambda a: __import__("fastsamp.offpolicy", fromlist=["main"]).main(a))
    o = sub.add_parser("outsourced", help="posterior sampling in the noise space of digit generators")
    o.add_argument("--priors", default="vae,gan,flow", help="comma-separated: vae, gan, flow")
    o.add_argument("--rewards", default="class", help="comma-separated: class, inpaint")
    o.add_argument("--samplers", default="prior,diffusion,mala,hmc,guidance",
                   help="comma-separated: prior, diffusion, mala, hmc, guidance (flow prior only)")
    o.add_argument("--digit", type=int, default=3)
    o.add_argument("--lam", type=float, default=1.0, help="reward exponent λ")
    o.add_argument("--samples", type=int, default=256)
    o.add_argument("--budget", type=int, default=60_000, help="reward evaluations per sampler")
    o.add_argument("--size", default="full", choices=["tiny", "full"], help="prior/classifier size (cached)")
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--json", default=None)
    o.add_argument("--png", default=None)
    o.add_argument("--no-progress", action="store_true")
    o.set_defaults(fn=lambda a: __import__("fastsamp.outsourced", fromlist=["main"]).main(a))
    i = sub.add_parser("info", help="backends and build flags")
    i.set_defaults(fn=cmd_info)
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
