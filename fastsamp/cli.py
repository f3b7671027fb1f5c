"""fastsamp command line: `fastsamp sample` (the main job), `bench`, `compose`, `importance`, `train`,
`outsourced`, `info`. Every bad argument is an argparse error (exit status 2); every JSON result is
strict JSON (NaN and ±inf written as null) and records the thread count."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

MAX_COUNT = 2**31 - 1  # counts (chains, moves, levels, ...) must fit the kernels' 32-bit counters
MAX_SEED = 2**63 - 1
HELP = argparse.ArgumentDefaultsHelpFormatter


def count(minimum: int, maximum: int = MAX_COUNT):
    """argparse type: an integer in [minimum, maximum]."""
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {v}")
        if v > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}, got {v}")
        return v
    return parse


def positive_float(text):
    """argparse type: a finite real number > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be finite and > 0, got {text}")
    return v


def device_arg(text):
    """argparse type: a torch device that exists here (cpu, or cuda[:N] with a GPU)."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"not a device: {text!r} (cpu or cuda[:N])") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: no CUDA GPU is available to torch {torch.__version__} here")
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"device must be cpu or cuda[:N], got {text!r}")
    return str(device)


def choice_list(choices):
    """argparse type: a comma-separated list of names from `choices`."""
    def parse(text):
        names = [n.strip() for n in text.split(",") if n.strip()]
        bad = [n for n in names if n not in choices]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(choices)}, got {text!r}")
        return ",".join(names)
    return parse


def unwritable(path: str) -> str | None:
    """Why a file cannot be written at `path` (missing directories can be created), or None."""
    p = os.path.abspath(path)
    if os.path.isdir(p):
        return "is a directory"
    if os.path.exists(p):
        return None if os.access(p, os.W_OK) else "is not writable"
    parent = os.path.dirname(p)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"{parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create files in {parent}"
    return None


def json_safe(obj):
    """obj with non-finite floats as None (JSON has no NaN or Infinity), tensors and NumPy scalars as
    Python numbers or lists, tuples as lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return json_safe(obj.tolist())
    if type(obj).__module__ == "numpy":
        return json_safe(obj.tolist())
    return obj


def write_json(path: str, result) -> None:
    """Write a result (a dict, or a list as {"rows": ...}) as strict JSON with the thread count
    torch.get_num_threads(); missing directories are created."""
    result = result if isinstance(result, dict) else {"rows": result}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(json_safe({"threads": torch.get_num_threads(), **result}), f, indent=2, allow_nan=False)


def mean_sd(mean: float, sd: float | None, spec: str = ".3f") -> str:
    """'mean±sd', or just the mean when there is no spread (one seed: sd None)."""
    return f"{mean:{spec}}" if sd is None else f"{mean:{spec}}±{sd:{spec}}"


def summarise_seeds(per_seed: list[dict]) -> dict:
    """Per-key mean and, with more than one seed, sample standard deviation (`key_sd`; None for one seed)."""
    row = {}
    for k in per_seed[0]:
        vals = torch.tensor([r[k] for r in per_seed], dtype=torch.float64)
        row[k] = float(vals.mean())
        row[k + "_sd"] = float(vals.std()) if len(per_seed) > 1 else None
    return row


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
    on the exact diffusion marginal (corrector). Under torchrun the chains are sharded over the
    processes (noise keyed by the global chain index: the samples do not depend on the process
    count); rank 0 prints the summary and writes --json / --save."""
    from . import VP, ops
    from .distributed import Comm

    comm = Comm.resolve()
    device = torch.device(args.device)
    if device.type == "cuda" and comm.distributed:
        device = torch.device("cuda", torch.cuda.current_device())
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    means, lw, var = _mixture(args.dim, args.components, args.seed, dtype, device)
    vp = VP()
    chain0, n_local = comm.shard(args.chains)
    x = ops.normal(args.seed + 1, 0, n_local, args.dim, dtype, device, chain_offset=chain0)
    ts = [1.0 - i / (args.levels - 1) for i in range(args.levels)]
    backend = args.backend
    # warm-up (JIT compilation of GPU kernels; page faults on the CPU)
    ops.gmm_mala(x[:64], means, lw, var, step_size=0.01, n_steps=1, n_trapezoid=args.n_trapezoid, backend=backend)
    if device.type == "cuda":
        torch.cuda.synchronize()
    comm.barrier()
    t0 = time.perf_counter()
    rates = []
    for i, t in enumerate(ts):
        with comm.level(1) as lv:  # Σ acceptance rate over all chains
            alpha, sigma2 = vp.alpha(t), vp.sigma2(t)
            if i > 0:  # predictor: reverse Euler-Maruyama from the previous level to t
                t_prev = ts[i - 1]
                s_prev = ops.gmm_score(x, means, lw, var, alpha=vp.alpha(t_prev), sigma2=vp.sigma2(t_prev),
                                       backend=backend)[0]
                x = ops.reverse_sde_step(x, s_prev, t=t_prev, h=t_prev - t, schedule=vp, seed=args.seed + 1,
                                         offset=i, chain_offset=chain0, backend=backend)
            # corrector: fused MALA moves with score-based MH on the marginal at t; step proportional
            # to the smallest marginal variance at this level
            step = args.step_scale * (alpha**2 * float(var.min()) + sigma2)
            x, rate = ops.gmm_mala(x, means, lw, var, step_size=step, n_steps=args.moves,
                                   n_trapezoid=args.n_trapezoid, alpha=alpha, sigma2=sigma2, seed=args.seed,
                                   offset=i * args.moves, chain_offset=chain0, mh=args.mh, backend=backend)
            lv.values[0] = float(rate.double().sum())
        rates.append(float(lv.result[0]) / args.chains)
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = float(comm.all_reduce([time.perf_counter() - t0], "max")[0])  # the slowest rank's wall time
    x = comm.gather(x)
    if x is None:  # ranks other than 0: rank 0 reports
        return 0
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
        "mode_occupancy_tv_vs_exact": tv, "finite": bool(torch.isfinite(x).all()), "processes": comm.world_size,
    }
    print(f"fastsamp sample: annealed MALA + score-MH (n_trapezoid={args.n_trapezoid}) on a {args.components}"
          f"-component mixture in D={args.dim}, {args.chains} chains, {args.levels} levels x {args.moves} moves, "
          f"{comm.world_size} process(es)")
    print(f"  wall {wall:.3f} s | {moves / wall / 1e6:.2f} M chain-moves/s | "
          f"{score_evals / wall / 1e6:.2f} M score evals/s (backend={backend}, device={device})")
    print(f"  acceptance first/last level {rates[0]:.3f}/{rates[-1]:.3f} | "
          f"mode-occupancy TV vs exact samples {tv:.4f}")
    if args.json:
        write_json(args.json, summary)
    if args.save:
        torch.save(x.cpu(), args.save)
    return 0 if summary["finite"] else 1


def _exact_samples(means, lw, var, n, seed):
    g = torch.Generator().manual_seed(seed)
    k = torch.multinomial(torch.softmax(lw.double().cpu(), 0), n, replacement=True, generator=g)
    z = torch.randn(n, means.shape[1], generator=g, dtype=torch.float64)
    return means.double().cpu()[k] + var.double().cpu()[k, None].sqrt() * z


def cmd_info(args) -> int:
    """What is built (compiled, or importable for Triton) and what can run on this machine."""
    from . import __version__, backends

    gpu = torch.cuda.is_available()
    info = {"fastsamp": __version__, "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cuda_gpu": torch.cuda.get_device_name() if gpu else None, "threads": torch.get_num_threads(),
            "backends": {}}
    runs_on = {"torch": (True, "the PyTorch reference, on any device"),
               "cpp": (True, "CPU tensors"),
               "cuda": (gpu, "CUDA tensors" if gpu else "no CUDA GPU visible to torch here"),
               "triton": (gpu or backends.triton_interpreted(),
                          "CUDA tensors" if gpu else "CPU tensors under TRITON_INTERPRET=1 (slow interpreter)"
                          if backends.triton_interpreted() else "no CUDA GPU visible to torch here")}
    for name in backends.BACKENDS:
        module, reason = backends._load(name)
        runs, where = runs_on[name]
        info["backends"][name] = {"built": module is not None, "runs_here": module is not None and runs,
                                  "note": where if module is not None else reason}
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
    from .experiments.offpolicy import METHODS
    return tuple(METHODS)


def _check_sample(args):
    from . import backends
    try:
        backends.resolve(args.backend, "gmm_mala", torch.device(args.device))
    except (ValueError, RuntimeError) as e:
        args.parser.error(f"--backend {args.backend}: {e}")


def _check_bench(args):
    if args.ops:
        from .experiments.bench import case_names, unknown_ops
        bad = unknown_ops(args.ops.split(","))
        if bad:
            args.parser.error(f"--ops: unknown op(s) {', '.join(map(repr, bad))}; choose from "
                              f"{', '.join(case_names())} (an op name alone: all its cases)")


def _check_outsourced(args):
    from .experiments.outsourced import min_budget
    need = max(min_budget(s, args.samples) for s in args.samplers.split(","))
    if args.budget < need:
        args.parser.error(f"--budget {args.budget} is below what the samplers need at --samples {args.samples}: "
                          f"at least {need} reward calls")


def _experiment_options(parser):
    """The options shared by the 2-D experiments (compose, importance)."""
    parser.add_argument("--samples", type=count(2), default=4000, help="samples per method and seed")
    parser.add_argument("--seeds", type=count(1), default=3, help="number of seeds (0, 1, ...)")
    parser.add_argument("--json", default=None, help="write the report as JSON here")
    parser.add_argument("--png", default=None, help="write a scatter plot of the samples here")


def _module_main(name):
    return lambda args: __import__(f"fastsamp.experiments.{name}", fromlist=["main"]).main(args)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="fastsamp", description=__doc__, formatter_class=HELP)
    sub = p.add_subparsers(dest="cmd", required=True)

    def command(name, fn, summary, description, check=None):
        parser = sub.add_parser(name, help=summary, description=description, formatter_class=HELP)
        parser.set_defaults(fn=fn, parser=parser, check=check)
        return parser

    s = command("sample", cmd_sample, "annealed score-MH MALA on a Gaussian mixture, with a throughput summary",
                cmd_sample.__doc__, _check_sample)
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
    b = command("bench", _module_main("bench"), "time every op on every backend against eager and torch.compile",
                "Time each op on each available backend against the eager PyTorch reference and torch.compile of "
                "it, with the fraction of a memory triad and of an fp32 GEMM measured in the same run.",
                _check_bench)
    b.add_argument("--device", type=device_arg, default="cpu", help="cpu or cuda[:N]")
    b.add_argument("--ops", default=None, help="comma-separated op names (default: all)")
    b.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="dtype of the inputs")
    b.add_argument("--no-compile", action="store_true", help="skip torch.compile of the reference")
    b.add_argument("--min-time", type=positive_float, default=0.5, help="seconds of timing per measurement")
    b.add_argument("--json", default=None, help="write the report as JSON here")
    c = command("compose", _module_main("composition"), "2-D composition experiment: unadjusted vs score-MH vs "
                "energy-MH", "Products of two 2-D mixtures and of two trained score MLPs, sampled by annealed MCMC "
                "(ULA/MALA/HMC/U-HMC, unadjusted, score-MH, energy-MH) at an equal number of score evaluations "
                "per level; sliced W2, MMD and mode-occupancy TV against exact product samples.")
    _experiment_options(c)
    c.add_argument("--budget", type=count(3), default=12,
                   help="score evaluations per noise level (at least 3: one 3-point score-MH or 3-leapfrog move)")
    c.add_argument("--levels", type=count(2), default=30, help="noise levels")
    c.add_argument("--step-size", type=positive_float, default=0.3, help="corrector step-size scale")
    c.add_argument("--mlp-iters", type=count(1), default=2000, help="training iterations of each score MLP")
    m = command("importance", _module_main("tilting"), "training-free importance sampling test bed with exact "
                "answers", "Guided reverse SDE for q ∝ l·p (exponential tilt and Gaussian bump of a 2-D "
                "mixture, exact q in closed form), with and without the scheduler and the MH corrector, against "
                "importance resampling of exact base samples.")
    _experiment_options(m)
    m.add_argument("--steps", type=count(1), default=200, help="reverse SDE steps")
    r = command("train", _module_main("offpolicy"), "train an off-policy diffusion sampler on a benchmark target "
                "and evaluate it", "Train a preset of the off-policy diffusion sampler (Sendera et al. 2024) on a "
                "benchmark target, evaluate log Z, ESS and W2, save the model and print/write JSON.")
    r.add_argument("--target", default="25gmm", choices=_target_names(), help="benchmark target")
    r.add_argument("--method", default="tb+expl+lp+ls", choices=_method_names(), help="training preset")
    r.add_argument("--iterations", type=count(1), default=None,
                   help="training iterations (None: the paper's count for the method)")
    r.add_argument("--batch-size", type=count(1), default=300, help="trajectories per iteration")
    r.add_argument("--seed", type=count(0, MAX_SEED), default=0, help="random seed")
    r.add_argument("--eval-samples", type=count(2), default=2000, help="samples for the evaluation (at least 2)")
    r.add_argument("--out", default=None, help="directory for the model (.pt) and the JSON")
    r.add_argument("--device", default="cpu", help="cpu or cuda[:N] (network, target and trajectories)")
    r.add_argument("--checkpoint-every", type=int, default=0,
                   help="with --out: checkpoint every N iterations into OUT/checkpoints/ and resume from there")
    r.add_argument("--eager", action="store_true", help="train on the eager PyTorch path instead of the fused one")
    r.add_argument("--time", action="store_true", help="only time fused vs eager iterations")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--verbose", action="store_true", help="print the full result JSON")
    o = command("outsourced", _module_main("outsourced"), "posterior sampling in the noise space of digit "
                "generators", "Sample p(x | y) ∝ p(x) r(x, y) through the noise-space posterior of a digit "
                "generator x = f(z) (VAE, GAN, rectified flow), every sampler charged the same budget of reward "
                "calls; held-out accuracy, mean log-reward, diversity and Fréchet distance per cell.",
                _check_outsourced)
    o.add_argument("--priors", type=choice_list(("vae", "gan", "flow")), default="vae,gan,flow",
                   help="comma-separated: vae, gan, flow")
    o.add_argument("--rewards", type=choice_list(("class", "inpaint")), default="class",
                   help="comma-separated: class, inpaint")
    o.add_argument("--samplers", type=choice_list(("prior", "diffusion", "mala", "hmc", "guidance")),
                   default="prior,diffusion,mala,hmc,guidance",
                   help="comma-separated: prior, diffusion, mala, hmc, guidance (flow prior only)")
    o.add_argument("--digit", type=count(0, 9), default=3, help="the digit y")
    o.add_argument("--lam", type=positive_float, default=1.0, help="reward exponent λ")
    o.add_argument("--samples", type=count(2), default=256, help="samples per cell")
    o.add_argument("--budget", type=count(1), default=60_000, help="reward evaluations per sampler")
    o.add_argument("--size", default="full", choices=["tiny", "full"],
                   help="prior/classifier size (cached); tiny is for tests only: its VAE and GAN priors are "
                        "collapsed, so its numbers mean nothing")
    o.add_argument("--seed", type=count(0, MAX_SEED), default=0, help="random seed")
    o.add_argument("--json", default=None, help="write the rows as JSON here")
    o.add_argument("--png", default=None, help="write a grid of samples here (one row per cell)")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    command("info", cmd_info, "what is built and what can run here",
                "The fastsamp and torch versions, the thread count, and for each backend whether it is built "
                "(compiled, or importable for Triton) and whether it can run on this machine.")
    args = p.parse_args(argv)
    for flag in ("json", "png"):
        path = getattr(args, flag, None)
        why = path and unwritable(path)
        if why:
            args.parser.error(f"--{flag} {path}: {why}")
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if args.check is not None:
        args.check(args)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
