"""`fastsamp sample`, the main job: predictor-corrector sampling of a random Gaussian mixture with the
fused ops, a throughput summary and the mode-occupancy distance to exact samples."""
from __future__ import annotations

import sys
import time
from contextlib import nullcontext

import torch

from .. import VP, backends, ops
from ..distributed import Comm
from ..metrics import mode_occupancy_tv
from ..models import GaussianMixture
from ..profiling import breakdown, phase
from .options import MAX_SEED, count, device_arg, positive_float
from .reporting import write_json

SUMMARY = "annealed score-MH MALA on a Gaussian mixture, with a throughput summary"
DESCRIPTION = """Predictor-corrector sampling of a Gaussian mixture: reverse VP Euler-Maruyama steps from
t = 1 to t = 0 (predictor) and, at each level, `--moves` fused MALA moves with score-based MH on the exact
diffusion marginal (corrector). Under torchrun the chains are sharded over the processes (noise keyed by
the global chain index: the samples do not depend on the process count); rank 0 prints the summary and
writes --json / --save."""


def random_mixture(D, K, seed, dtype, device):
    """(means, log_weights, variances) of the main job's mixture: means 4·N(0, I), weights ∝ U(0, 1) + 0.2,
    variances U(0.2, 0.6), drawn in float64 with `seed`."""
    g = torch.Generator().manual_seed(seed)
    means = 4.0 * torch.randn(K, D, generator=g, dtype=torch.float64)
    log_weights = torch.log(torch.rand(K, generator=g, dtype=torch.float64) + 0.2)
    variances = 0.2 + 0.4 * torch.rand(K, generator=g, dtype=torch.float64)
    return [t.to(dtype=dtype, device=device) for t in (means, log_weights, variances)]


def add_arguments(s):
    """The options of `fastsamp sample`."""
    s.add_argument("--chains", type=count(1), default=65536, help="number of chains")
    s.add_argument("--dim", type=count(1), default=8, help="dimension D")
    s.add_argument("--components", type=count(1), default=16, help="mixture components K")
    s.add_argument("--levels", type=count(2), default=100, help="noise levels from t = 1 to t = 0 (at least 2)")
    s.add_argument("--moves", type=count(1), default=5, help="fused MALA moves per level")
    s.add_argument("--n-trapezoid", type=count(1), default=3, help="trapezoid sub-intervals of the score-MH test")
    s.add_argument("--step-scale", type=positive_float, default=0.5,
                   help="step = scale x (alpha_t^2 min variance + sigma_t^2)")
    s.add_argument("--mh", default="score", choices=["score", "energy", "none"], help="MH test")
    s.add_argument("--device", type=device_arg, default="cpu", help="cpu or cuda[:N]")
    s.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="state dtype")
    s.add_argument("--backend", default="auto", choices=["auto", "torch", "cpp", "triton", "cuda"],
                   help="kernel backend")
    s.add_argument("--seed", type=count(0, MAX_SEED), default=0, help="random seed")
    s.add_argument("--json", default=None, help="write the summary as JSON here")
    s.add_argument("--save", default=None, help="write all samples (gathered on rank 0) as a .pt tensor")
    s.add_argument("--profile", action="store_true",
                   help="run the sampling under torch.profiler and print the share of wall time in the score "
                        "model, in fastsamp's ops and in overhead (fastsamp.profiling)")
    s.add_argument("--trace", default=None, help="with --profile: write the Chrome trace (JSON) here (rank 0)")


def check(args):
    """--backend must have a gmm_mala kernel for --device; --trace needs --profile; the steps (--step-scale times the
    levels' smallest variance α²v_min + σ², at most max(v_min, 1) = 1 on the VP schedule, the variances being
    below 0.6: `random_mixture`) must be finite in --dtype."""
    if args.trace and not args.profile:
        args.parser.error("--trace needs --profile")
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    if args.step_scale > torch.finfo(dtype).max:
        args.parser.error(f"--step-scale {args.step_scale}: the step sizes it gives overflow {args.dtype}")
    try:
        backends.resolve(args.backend, "gmm_mala", torch.device(args.device))
    except (ValueError, RuntimeError) as e:
        args.parser.error(f"--backend {args.backend}: {e}")


def run_levels(args, comm, x, means, lw, var, chain0):
    """The timed part of the job: predictor and corrector over the noise levels from the chains x.
    Returns (x, mean acceptance per level, the slowest rank's wall time in seconds)."""
    vp, backend, device = VP(), args.backend, x.device
    ts = [1.0 - i / (args.levels - 1) for i in range(args.levels)]
    t0 = time.perf_counter()
    rates = []
    for i, t in enumerate(ts):
        with comm.level(1) as lv:  # Σ acceptance rate over all chains
            alpha, sigma2 = vp.alpha(t), vp.sigma2(t)
            if i > 0:  # predictor: reverse Euler-Maruyama from the previous level to t
                t_prev = ts[i - 1]
                with phase("predictor"):
                    with phase("score_model"):
                        s_prev = ops.gmm_score(x, means, lw, var, alpha=vp.alpha(t_prev), sigma2=vp.sigma2(t_prev),
                                               backend=backend)[0]
                    x = ops.reverse_sde_step(x, s_prev, t=t_prev, h=t_prev - t, schedule=vp, seed=args.seed + 1,
                                             offset=i, chain_offset=chain0, backend=backend)
            # corrector: fused MALA moves with score-based MH on the marginal at t; step proportional
            # to the smallest marginal variance at this level
            step = args.step_scale * (alpha**2 * float(var.min()) + sigma2)
            with phase("corrector"):
                x, rate = ops.gmm_mala(x, means, lw, var, step_size=step, n_steps=args.moves,
                                       n_trapezoid=args.n_trapezoid, alpha=alpha, sigma2=sigma2, seed=args.seed,
                                       offset=i * args.moves, chain_offset=chain0, mh=args.mh, backend=backend)
            lv.values[0] = float(rate.double().sum())
        rates.append(float(lv.result[0]) / args.chains)
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = float(comm.all_reduce([time.perf_counter() - t0], "max")[0])  # the slowest rank's wall time
    return x, rates, wall


def main(args) -> int:
    """Run the job (DESCRIPTION); exit status 1 if a chain ended non-finite."""
    comm = Comm.resolve()
    device = torch.device(args.device)
    if device.type == "cuda" and comm.distributed:
        device = torch.device("cuda", torch.cuda.current_device())
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    means, lw, var = random_mixture(args.dim, args.components, args.seed, dtype, device)
    chain0, n_local = comm.shard(args.chains)
    x = ops.normal(args.seed + 1, 0, n_local, args.dim, dtype, device, chain_offset=chain0)
    backend = args.backend
    # warm-up (JIT compilation of GPU kernels; page faults on the CPU)
    ops.gmm_mala(x[:64], means, lw, var, step_size=0.01, n_steps=1, n_trapezoid=args.n_trapezoid, backend=backend)
    if device.type == "cuda":
        torch.cuda.synchronize()
    comm.barrier()
    with breakdown(args.trace if comm.rank == 0 else None) if args.profile else nullcontext() as profile:
        x, rates, wall = run_levels(args, comm, x, means, lw, var, chain0)
    x = comm.gather(x)
    if x is None:  # ranks other than 0: rank 0 reports
        return 0
    moves = args.chains * args.levels * args.moves
    score_evals = moves * (args.n_trapezoid if args.mh == "score" else 1) + args.chains * (args.levels - 1)
    mixture = GaussianMixture(means, lw, var)
    exact = mixture.sample(args.chains, torch.Generator().manual_seed(args.seed + 2), torch.float64)
    finite = torch.isfinite(x).all(1)
    n_nonfinite = int((~finite).sum())
    tv = mode_occupancy_tv(x[finite], exact, mixture) if n_nonfinite < args.chains else float("nan")
    summary = {
        "backend": backend, "device": str(device), "dtype": args.dtype,
        "chains": args.chains, "dim": args.dim, "components": args.components, "levels": args.levels,
        "moves_per_level": args.moves, "n_trapezoid": args.n_trapezoid, "mh": args.mh,
        "wall_s": wall, "chain_moves_per_s": moves / wall, "score_evals_per_s": score_evals / wall,
        "mean_accept_first_level": rates[0], "mean_accept_last_level": rates[-1],
        "mode_occupancy_tv_vs_exact": tv, "finite": n_nonfinite == 0, "nonfinite_chains": n_nonfinite,
        "processes": comm.world_size,
    }
    rule = {"score": f"score-MH (n_trapezoid={args.n_trapezoid})", "energy": "energy-MH", "none": "no MH test (ULA)"}
    print(f"fastsamp sample: annealed MALA + {rule[args.mh]} on a {args.components}"
          f"-component mixture in D={args.dim}, {args.chains} chains, {args.levels} levels x {args.moves} moves, "
          f"{comm.world_size} process(es)")
    print(f"  wall {wall:.3f} s | {moves / wall / 1e6:.2f} M chain-moves/s | "
          f"{score_evals / wall / 1e6:.2f} M score evals/s (backend={backend}, device={device})")
    print(f"  acceptance first/last level {rates[0]:.3f}/{rates[-1]:.3f} | "
          f"mode-occupancy TV vs exact samples {tv:.4f}" + (f" (of the {args.chains - n_nonfinite} finite chains)"
                                                            if n_nonfinite else ""))
    if n_nonfinite:
        print(f"fastsamp sample: {n_nonfinite} of {args.chains} chains ended non-finite (NaN/inf): the step is too "
              f"large for this mixture (--step-scale); exit status 1", file=sys.stderr)
    if profile is not None:
        print(f"  {profile}".replace("\n", "\n  "))
        summary["profile"] = profile.as_dict()
    if args.json:
        write_json(args.json, summary)
    if args.save:
        torch.save(x.cpu(), args.save)
    return 0 if summary["finite"] else 1
