"""The checks behind the off-policy table's rows that differ from Sendera et al. (2024, Table C.1) by more
than the published std (issue 13): Funnel TB Δlog Z and Manywell TB Δlog Z^RW (checks/funnel_tb.md),
25GMM PIS (checks/pis_25gmm.md), Funnel PIS and Manywell PIS (checks/pis_funnel.md), the 40GMM runs' one
mode (checks/gmm40.md) and Manywell TB + Expl. + LP + LS (checks/manywell_lpls.md).

    python benchmarks/offpolicy_checks.py evaluate [--target funnel|25gmm|manywell] [--method tb] [--repeats 5]
                                  [--models PATH ...]
    python benchmarks/offpolicy_checks.py gradients [--target funnel|25gmm] [--batch 300] [--models PATH ...]
    python benchmarks/offpolicy_checks.py manywell [--method tb] [--repeats 20] [--first-seed 1] [--models PATH ...]
    python benchmarks/offpolicy_checks.py curve --checkpoints DIR [--models PATH ...] [--method tb+expl+lp+ls]
                                  [--repeats 2] [--samples 20000]
    python benchmarks/offpolicy_checks.py spread [--target funnel|25gmm|manywell] [--method pis] [--repeats 50]
                                  [--released] [--first-seed 1] [--models PATH ...]
    python benchmarks/offpolicy_checks.py train [--target funnel] [--method tb] --iterations 3000 --seeds 0 1
                                  [--sigma2 S] [--lr-flow 0.1] [--released] [--default-network] [--curve N]
                                  [--mean-seed S] [--released-buffer] [--save DIR]
    python benchmarks/offpolicy_checks.py gmm40 [--mean-seeds 0 1 2] [--samples 100000]
    python benchmarks/offpolicy_checks.py lgcp [--models PATH ...] [--chains 256] [--temps 200 800] [--seeds 0 1]
                                  [--step-size 0.1] [--repeats 2] [--batch 16] [--grid 40]
                                  [--points finpines|synthetic] [--out FILE]

The "released" estimator and training steps, gfn-diffusion's formulas written out independently of fastsamp's
fused kernels and em_step op, on the same DriftNet weights: fastsamp/experiments/offpolicy_released.py.
`evaluate`: for each saved model, log w of the same trajectories by fastsamp and by these formulas
(largest difference), then Δlog Z and Δlog Z^RW over `--repeats` evaluation seeds of 2000 samples with
both estimators. `gradients` (PIS): our PIS loss and its gradient (fused kernels and the eager per-step
path) against the released PIS step run on the same noise (recovered from our states), for saved models
and the preset's initial network. `train`: the preset's initial network (fastsamp.experiments.offpolicy.build
at the seed) trained by `fastsamp.samplers.diffusion.train` (fused) or, with --released, by the released
step, optionally with another σ² of the reference process, log Z learning rate or train.py's default
network, or (--released-buffer, the local-search presets) with replay buffers that draw as the released loader does
(`ReleasedReplayBuffer`: one stale list of positions per pass, checks/manywell_lpls.md §6); then the evaluation of
`evaluate`, and with --curve the metrics along training. `spread`: the
spread of one table entry, Δlog Z and Δlog Z^RW of saved models per evaluation of 2000 samples over many
evaluation seeds and pooled, signed and absolute (optionally the released estimator's too); `manywell` adds the
orthant collapse and the number of left-well coordinates per sample, drawn and importance-reweighted, against
the exact Binomial(D/2, P(a < 0)), where the weight tail sits and two ESS bounds; `curve`: W2, var b and sd |a|
of a Manywell run's training checkpoints.
`gmm40`: where the 40GMM modes lie from the trajectories' start x₀ = 0, for the means of GMM40(seed=S): the
nearest mean k* and the next, the distance from 0 to the boundary of k*'s Voronoi cell, the smallest logit gap
½(|μ_k|² − |μ_k*|²) of the responsibilities at 0, and the share of N(0, σ² I) draws nearest to μ_k*, for the
reference process's end (σ² = 5) and with the exploration's extra variance (σ² = 5 + T·0.1² = 6).
`train --target 40gmm --mean-seed S` trains on those means; its curve lists the modes hit.
`lgcp` (checks/lgcp_tb.md): a reference log Z of the LGCP target (the pines on 40×40 unless --points, --grid;
fastsamp/experiments/lgcp_reference.py: Laplace at the Newton MAP, AIS from the Laplace Gaussian, float64), written
to checks/lgcp_reference.json, and saved models' ELBO, log Z^RW, moments and fused / eager TB gradient against it.
One thread; prints one JSON line per model.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import json
import math
import os
import statistics
import sys
import time

import torch

from fastsamp.experiments import lgcp_reference
from fastsamp.experiments.offpolicy import EVAL_SEED_BASE, METHODS, build, evaluate, run_stem
from fastsamp.experiments.offpolicy_released import (
    DefaultNetwork,
    N,
    ReleasedReplayBuffer,
    released_draw,
    released_estimates,
    released_log_w,
    released_log_Z,
    released_loss,
    released_noise,
    released_rollout,
    released_train,
)
from fastsamp.experiments.offpolicy_released import released_log_r as released_log_r  # tests call it from here
from fastsamp.experiments.reporting import write_json
from fastsamp.experiments.sampler_checks import compare_grads, draws, fused_and_eager, quantiles
from fastsamp.metrics import log_z_estimates, nearest_mode_weights
from fastsamp.samplers.diffusion import DiffusionSampler, ReplayBuffer, train, training
from fastsamp.targets import GMM40, get_target

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "results", "offpolicy_full")


def _summary(values):
    return {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def evaluate_model(sampler, repeats, name):
    """Same-trajectory agreement of the two log w, and both estimators over `repeats` seeds."""
    traj = sampler.forward_trajectories(N, seed=10**6)
    ours_lw = traj.log_weights().detach().double()
    released_lw = released_log_w(sampler, traj.states).double()
    ours = [evaluate(sampler, sampler.target, n=N, seed=s) for s in range(1, repeats + 1)]
    rel = [released_estimates(sampler, s) for s in range(1, repeats + 1)]
    out = {"model": name, "log_Z_learned": float(sampler.net.log_Z.detach()),
           "same_trajectories_max_abs_log_w_diff": float((ours_lw - released_lw).abs().max()),
           "same_trajectories_elbo": [float(ours_lw.mean()), float(released_lw.mean())]}
    for key in ("delta_log_Z", "delta_log_Z_rw", "ess"):
        out[f"ours_{key}"] = _summary([m[key] for m in ours])
        out[f"released_{key}"] = _summary([m[key] for m in rel])
    for key in ("w2", "modes_hit"):
        if key in ours[0]:
            out[f"ours_{key}"] = _summary([m[key] for m in ours])
    return out


def compare_pis_gradients(sampler, batch, seed, name):
    """Our PIS loss and gradient on one batch (the fused reparameterised rollout kernel, and the eager
    per-step path with the PyTorch op) against the released PIS step run on the same noise, recovered
    from our fused trajectories by `released_noise`."""
    policy, ours = fused_and_eager(sampler, "pis", batch, seed)
    (states, loss_f, grad_f), (states_e, loss_e, grad_e) = ours["fused"], ours["eager"]
    noise = released_noise(sampler, states)
    sampler.zero_grad(set_to_none=True)
    loss_r = released_loss(sampler, "pis", batch, noise=noise)
    loss_r.backward()
    grads = {"fused": grad_f, "eager": grad_e, "released": [p.grad.clone() for p in policy]}
    with torch.no_grad():
        states_r, _ = released_rollout(sampler, batch, reparam=True, noise=noise)
    out = {"model": name, "batch": batch, "seed": seed, "loss_fused": loss_f, "loss_eager": loss_e,
           "loss_released": float(loss_r.detach()),
           "states_max_abs_diff_fused_vs_released": float((states - states_r).abs().max()),
           "states_max_abs_diff_fused_vs_eager": float((states - states_e).abs().max()),
           "grad_norm_released": float(torch.cat([g.flatten() for g in grads["released"]]).double().norm())}
    for k in ("fused", "eager"):
        out.update({f"grad_{k}_vs_released_{m}": v for m, v in compare_grads(grads[k], grads["released"]).items()})
    return out


def _curve_point(sampler, repeats):
    """Δlog Z, Δlog Z^RW, W2 (and for mixtures the number of modes hit) during training: means over `repeats`
    evaluation seeds of 2000 samples; for mixtures also `modes`, {mode: share of the samples nearest to it}."""
    ms = [evaluate(sampler, sampler.target, n=N, seed=s) for s in range(1, repeats + 1)]
    out = {key: statistics.mean(m[key] for m in ms) for key in ("delta_log_Z", "delta_log_Z_rw", "w2", "modes_hit")
           if key in ms[0]}
    if "mode_weights" in ms[0]:
        share = torch.tensor([m["mode_weights"] for m in ms]).mean(0) / len(ms[0]["mode_weights"])
        out["modes"] = {k: round(float(share[k]), 4) for k in share.nonzero().flatten().tolist()}
    return out


def load_model(path, target, method):
    """A saved DiffusionSampler (.pt) or the model of a training checkpoint (.ckpt) of (target, method)."""
    if path.endswith(".pt"):
        return DiffusionSampler.load(path)
    sampler, _ = build(target, method)
    sampler.load_state_dict(torch.load(path, map_location="cpu", weights_only=False)["model"])
    return sampler


def model_paths(args, target, method):
    """--models, else the table's saved models of (target, method): OUT/<target>_<method>_seed*.pt."""
    return args.models or sorted(glob.glob(os.path.join(OUT, f"{target}_{method}_seed*.pt")))


def cmd_evaluate(args):
    paths = model_paths(args, args.target, args.method)
    for path in paths:
        model = load_model(path, args.target, args.method)
        print(json.dumps(evaluate_model(model, args.repeats, os.path.basename(path))), flush=True)


def cmd_gradients(args):
    """The preset's initial PIS network (seed 0) and the saved PIS models, evaluation seeds 1 .. repeats."""
    paths = model_paths(args, args.target, "pis")
    models = [("initial network (seed 0)", build(args.target, "pis", seed=0)[0])]
    models += [(os.path.basename(p), load_model(p, args.target, "pis")) for p in paths]
    for name, sampler in models:
        for s in range(1, args.repeats + 1):
            print(json.dumps(compare_pis_gradients(sampler, args.batch, s, name)), flush=True)


@contextlib.contextmanager
def buffers_drawing(cls):
    """`train` building its replay buffers as `cls` (ReleasedReplayBuffer: the released loader's draws)."""
    saved, training.ReplayBuffer = training.ReplayBuffer, cls
    try:
        yield
    finally:
        training.ReplayBuffer = saved


def cmd_train(args):
    if args.released_buffer and (args.released or not METHODS[args.method][0].get("local_search")):
        raise ValueError("--released-buffer is for the local-search presets trained by fastsamp (not --released)")
    if args.mean_seed is not None and args.target != "40gmm":
        raise ValueError(f"--mean-seed is for --target 40gmm, got --target {args.target}")
    for seed in args.seeds:
        sampler, cfg = build(args.target, args.method, seed=seed, iterations=args.iterations, lr_flow=args.lr_flow)
        if args.mean_seed is not None:  # another draw of the 40GMM means (the network does not depend on them)
            sampler.target = GMM40(seed=args.mean_seed)
        if args.sigma2 is not None:  # the network does not depend on σ: same initial weights
            sampler.sigma = math.sqrt(args.sigma2)
        if args.default_network:  # eager per-step path with the torch op (the fused kernels need a DriftNet)
            torch.manual_seed(seed)
            sampler.net, sampler.fused, sampler.backend = DefaultNetwork(sampler.target.dim), False, "torch"
        t0 = time.process_time()

        def point(it, s=sampler):
            out = {"iteration": it, **_curve_point(s, args.repeats)}
            print(json.dumps(out), file=sys.stderr, flush=True)  # progress of a long run
            return out
        if args.released:
            losses, curve = released_train(sampler, args.iterations, seed, args.method, lr_flow=args.lr_flow,
                                           curve=args.curve, point=point)
        else:
            with buffers_drawing(ReleasedReplayBuffer if args.released_buffer else ReplayBuffer):
                log = train(sampler, dataclasses.replace(cfg, eval_every=args.curve), progress=False,
                            callback=point)
            losses, curve = log.loss, log.evals
        cpu = time.process_time() - t0
        name = (f"{args.target}{'' if args.mean_seed is None else f' means seed {args.mean_seed}'} {args.method} "
                f"{'released' if args.released else 'fastsamp'} seed {seed} "
                f"sigma2 {sampler.sigma ** 2:g} lr_flow {args.lr_flow} it {args.iterations}"
                f"{' default network' if args.default_network else ''}"
                f"{' released buffer' if args.released_buffer else ''}")
        if args.save:
            os.makedirs(args.save, exist_ok=True)
            stem = run_stem(args.save, args.target, args.method, seed)
            sampler.save(f"{stem}{'_released_buffer' if args.released_buffer else ''}.pt")
        out = evaluate_model(sampler, args.repeats, name)
        out.update(final_loss=statistics.mean(losses[-100:]), train_cpu_seconds=cpu, curve=curve)
        print(json.dumps(out), flush=True)


def mode_geometry(means, samples=100_000, variances=(5.0, 6.0), seed=1):
    """Where the modes lie from x₀ = 0 (see the module docstring, `gmm40`): nearest mean k*, |μ_k*| and the
    next norm, the distance from 0 to the boundary of k*'s Voronoi cell, min_k (|μ_k|² − |μ_k*|²) / (2|μ_k − μ_k*|),
    the smallest logit gap at 0, min_k ½(|μ_k|² − |μ_k*|²), and the share of `samples` draws of N(0, v I)
    nearest to μ_k* for each v in `variances`, with the other modes drawn (mode: share)."""
    means = means.double()
    sq = (means ** 2).sum(1)
    order = sq.argsort()
    k, others = int(order[0]), order[1:]
    gaps = sq[others] - sq[k]
    out = {"nearest_mode": k, "nearest_norm": float(sq[k].sqrt()), "next_norm": float(sq[order[1]].sqrt()),
           "median_norm": float(sq.sqrt().median()),
           "cell_boundary_distance": float((gaps / (2 * (means[others] - means[k]).norm(dim=1))).min()),
           "logit_gap_at_0": float(gaps.min() / 2)}
    g = torch.Generator().manual_seed(seed)
    for v in variances:
        z = math.sqrt(v) * torch.randn(samples, means.shape[1], generator=g, dtype=torch.float64)
        counts = nearest_mode_weights(z, means)
        out[f"share_nearest_sigma2_{v:g}"] = float(counts[k])
        out[f"modes_drawn_sigma2_{v:g}"] = {int(i): round(float(counts[i]), 5) for i in counts.nonzero().flatten()}
    return out


def cmd_gmm40(args):
    for s in args.mean_seeds:
        print(json.dumps({"means_seed": s, **mode_geometry(GMM40(seed=s).means, args.samples)}), flush=True)


def orthant_limit(target):
    """Δlog Z^RW of a sampler exact on the dominant orthant (every a_j > 0) and empty elsewhere, as n → ∞:
    −(D/2) log P(a > 0), P by the trapezoidal rule on the grid of ManyWell.Z_well."""
    a = torch.linspace(-6.0, 6.0, 24001, dtype=torch.float64)
    f = torch.exp(target.well_log_density(a, normalised=False))
    f[0] *= 0.5
    f[-1] *= 0.5
    p_right = float(f[a > 0].sum() + 0.5 * f[a == 0].sum()) / float(f.sum())
    return p_right, -target.n_wells * math.log(p_right)


def spread(log_ws, log_Z):
    """Δlog Z and Δlog Z^RW of each evaluation's log w (rows of `log_ws`, (R, 2000): the spread of one table
    entry), of groups of five consecutive evaluations (n = 10,000: the later train.py's eval_data_size) and of
    all R pooled (less of log-mean-exp's downward bias), the signed error log Ẑ^RW − log Z likewise (with its
    quantiles per evaluation), and the pooled log w's upper quantiles (the tail that moves log-mean-exp)."""
    per = [log_z_estimates(lw) for lw in log_ws]
    fives = [log_z_estimates(log_ws[i:i + 5].flatten()) for i in range(0, len(log_ws) - 4, 5)]
    pooled = log_z_estimates(log_ws.flatten())
    signed = [m["log_Z"] - log_Z for m in per]
    q = (0.5, 0.9, 0.99, 0.999)
    return {"delta_log_Z_per_2000": _summary([abs(m["elbo"] - log_Z) for m in per]),
            "delta_log_Z_rw_per_2000": _summary([abs(e) for e in signed]),
            "log_Z_rw_error_per_2000": _summary(signed), "log_Z_rw_error_quantiles": quantiles(signed),
            "ess_per_2000": _summary([m["ess"] for m in per]),
            "delta_log_Z_rw_per_10000": _summary([abs(m["log_Z"] - log_Z) for m in fives]) if fives else None,
            "delta_log_Z_pooled": abs(pooled["elbo"] - log_Z), "delta_log_Z_rw_pooled": abs(pooled["log_Z"] - log_Z),
            "log_Z_rw_error_pooled": pooled["log_Z"] - log_Z,
            "pooled_n": pooled["n"], "pooled_ess": pooled["ess"],
            "pooled_log_w_quantiles": dict(zip(map(str, q), torch.quantile(log_ws.flatten(), torch.tensor(
                q, dtype=log_ws.dtype)).tolist()), max=float(log_ws.max()))}


def _seeds(args):
    return range(args.first_seed, args.first_seed + args.repeats)


def cmd_spread(args):
    """Saved models: `spread` over evaluation seeds first-seed .. first-seed + repeats − 1, and with
    --released that of the released estimator on the same seeds (torch's generator; `released_log_Z`)."""
    paths = model_paths(args, args.target, args.method)
    for path in paths:
        sampler = load_model(path, args.target, args.method)
        out = {"model": os.path.basename(path), "seeds": [args.first_seed, args.first_seed + args.repeats - 1],
               **spread(torch.stack([lw for _, lw in draws(sampler, _seeds(args))]), sampler.target.log_Z)}
        if args.released:
            out["released"] = spread(torch.stack([released_draw(sampler, s) for s in _seeds(args)]),
                                     released_log_Z(sampler.target))
        print(json.dumps(out), flush=True)


def left_wells(a, log_w, p_right):
    """Left-well counts k = #{j: a_j < 0} of samples with well coordinates `a` (M, D/2) and log weights: the
    right-well fraction r, the share q_k of each k, the self-normalised importance estimate of the target's P(k)
    (Σ_i w_i [k_i = k] / Σ_i w_i) and the exact π_k = Binomial(D/2, 1 − p_right); KL(q_k ‖ π_k), a lower bound of the
    marginal KL(q ‖ π) and so of Δlog Z; each k's share of Σ_i w_i², its effective draws (Σ_k w)² / Σ_k w² and the k
    of the 10 largest weights (where the weight tail sits). Two ESS fractions (n → ∞) of ideal samplers exact
    within each orthant: with the drawn q_k (spread over the orthants of each k as π), (Σ_seen π_k)² / Σ_seen π_k²/q_k,
    by Cauchy–Schwarz an upper bound for any sampler with these q_k; and with independent wells each right with
    probability r, (p_right²/r + (1 − p_right)²/(1 − r))^{−D/2}."""
    n = a.shape[1]
    k = (a < 0).sum(1)
    q = torch.bincount(k, minlength=n + 1).double() / len(k)
    w = torch.softmax(log_w, 0)
    reweighted = torch.zeros(n + 1, dtype=torch.float64).index_add_(0, k, w)
    w2 = torch.zeros(n + 1, dtype=torch.float64).index_add_(0, k, w ** 2)
    exact = torch.tensor([math.comb(n, j) * (1 - p_right) ** j * p_right ** (n - j) for j in range(n + 1)],
                         dtype=torch.float64)
    r = 1 - float((q * torch.arange(n + 1)).sum()) / n
    seen = q > 0
    return {"right_well_fraction": r, "left_wells_drawn": q.tolist(), "left_wells_reweighted": reweighted.tolist(),
            "left_wells_exact": exact.tolist(), "left_wells_kl": float((q[seen] * (q[seen] / exact[seen]).log()).sum()),
            "reweighted_right_well_fraction": 1 - float((reweighted * torch.arange(n + 1)).sum()) / n,
            "left_wells_w2_share": (w2 / w2.sum()).tolist(),
            "left_wells_effective_draws": torch.where(w2 > 0, reweighted ** 2 / w2, 0.0).tolist(),
            "largest_weights_left_wells": k[log_w.argsort(descending=True)[:10]].tolist(),
            "left_wells_ess_bound": float(exact[seen].sum() ** 2 / (exact[seen] ** 2 / q[seen]).sum()),
            "independent_wells_ess": (p_right ** 2 / r + (1 - p_right) ** 2 / (1 - r)) ** -n if 0 < r < 1 else 0.0}


def cmd_manywell(args):
    """Saved Manywell models: `spread`, the collapse's limit and `left_wells` (k = 0: every double-well
    coordinate in the right well)."""
    paths = model_paths(args, "manywell", args.method)
    for path in paths:
        sampler = load_model(path, "manywell", args.method)
        target = sampler.target
        p_right, limit = orthant_limit(target)
        ds = draws(sampler, _seeds(args))
        log_w = torch.stack([lw for _, lw in ds])
        a = torch.cat([x for x, _ in ds])[:, 0::2].double()
        print(json.dumps({"model": os.path.basename(path), "p_right_exact": p_right, "orthant_limit": limit,
                          **spread(log_w, target.log_Z), **left_wells(a, log_w.flatten(), p_right)}), flush=True)


def cmd_curve(args):
    """Manywell training checkpoints (DIR/*.ckpt in name order, then --models): W2 and that of a second exact
    sample (means over evaluation seeds first-seed .. first-seed + repeats − 1, 2000 samples each), var b and sd |a|
    of `--samples` draws at seed 7 (b: the Gaussian coordinates, a: the double wells)."""
    for path in sorted(glob.glob(os.path.join(args.checkpoints, "*.ckpt"))) + (args.models or []):
        sampler = load_model(path, "manywell", args.method)
        ms = [evaluate(sampler, sampler.target, n=N, seed=s) for s in _seeds(args)]
        x, _ = sampler.sample(args.samples, seed=7)
        print(json.dumps({"model": os.path.basename(path), "w2": statistics.mean(m["w2"] for m in ms),
                          "w2_exact": statistics.mean(m["w2_exact"] for m in ms), "var_b": float(x[:, 1::2].var()),
                          "sd_abs_a": float(x[:, 0::2].abs().std())}), flush=True)


def cmd_lgcp(args):
    """The LGCP reference of the --points pattern on the --grid lattice (fastsamp.experiments.lgcp_reference: Laplace
    and AIS), written to --out, and with --models each model's `model_report` against it (against the AIS particles'
    weighted moments and the Laplace posterior's); one JSON line each. The models are loaded and checked to be of
    this LGCP (`check_model`) first, so that a wrong --grid or --points fails before the reference's minutes."""
    target = get_target("lgcp", points=args.points, grid=args.grid)
    for path in args.models or []:
        if not path.endswith(".pt"):
            raise SystemExit(f"lgcp --models takes saved samplers (.pt), got {path}: a training checkpoint does not "
                             "record its grid and points")
    models = [(path, load_model(path, "lgcp", "tb")) for path in args.models or []]
    for path, sampler in models:
        lgcp_reference.check_model(sampler, path, target)
    out, lap, moments = lgcp_reference.reference(target, args.chains, args.temps, args.seeds, args.step_size)
    print(json.dumps(out), flush=True)
    out["models"] = []
    for path, sampler in models:
        out["models"].append(lgcp_reference.model_report(sampler, path, target, out["reference_log_Z"], lap, moments,
                                                         args.repeats, args.batch))
        print(json.dumps(out["models"][-1]), flush=True)
    if args.out:
        write_json(args.out, out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("evaluate", help="both estimators on saved models")
    e.add_argument("--models", nargs="*",
                   help="model .pt or training .ckpt files (default: OUT/<target>_<method>_seed*.pt)")
    g = sub.add_parser("gradients", help="our PIS loss and gradient against the released PIS step, same noise")
    g.add_argument("--models", nargs="*", help="PIS model .pt files (default: OUT/<target>_pis_seed*.pt)")
    g.add_argument("--batch", type=int, default=300, help="trajectories per comparison")
    t = sub.add_parser("train", help="train from the preset's initial network, then evaluate")
    t.add_argument("--iterations", type=int, default=3000)
    t.add_argument("--seeds", type=int, nargs="+", default=[0])
    t.add_argument("--sigma2", type=float, default=None, help="σ² of the reference process (default: the preset's)")
    t.add_argument("--lr-flow", type=float, default=1e-1, help="Adam lr of log Z (the preset: 0.1)")
    t.add_argument("--curve", type=int, default=0, help="the metrics every CURVE iterations (0: none)")
    t.add_argument("--default-network", action="store_true",
                   help="train.py's default network instead of the PIS architecture")
    t.add_argument("--released", action="store_true", help="train with the released formulas (eager)")
    t.add_argument("--save", metavar="DIR", help="keep each trained model as DIR/<target>_<method>_seed<s>[...].pt")
    t.add_argument("--released-buffer", action="store_true",
                   help="LS presets: the replay buffers draw as the released loader does (ReleasedReplayBuffer)")
    t.add_argument("--mean-seed", type=int, default=None, help="40gmm: the means of GMM40(seed=S) (default: 0)")
    q40 = sub.add_parser("gmm40", help="where the 40GMM modes lie from x0 = 0, for several draws of the means")
    q40.add_argument("--mean-seeds", type=int, nargs="+", default=[0], help="seeds of GMM40's means")
    q40.add_argument("--samples", type=int, default=100_000, help="draws of N(0, sigma2 I) per variance")
    c = sub.add_parser("curve", help="W2, var b and sd |a| of Manywell training checkpoints")
    c.add_argument("--checkpoints", required=True, help="folder of training checkpoints (*.ckpt)")
    c.add_argument("--samples", type=int, default=20_000, help="draws for var b and sd |a|")
    c.add_argument("--models", nargs="*", help="model .pt files after the checkpoints (the run's end)")
    m = sub.add_parser("manywell", help="Δlog Z^RW of saved Manywell models against the orthant collapse")
    m.add_argument("--models", nargs="*",
                   help="model .pt or training .ckpt files (default: OUT/manywell_<method>_seed*.pt)")
    s = sub.add_parser("spread", help="Δlog Z and Δlog Z^RW of saved models over many evaluations")
    s.add_argument("--models", nargs="*",
                   help="model .pt or training .ckpt files (default: OUT/<target>_<method>_seed*.pt)")
    s.add_argument("--released", action="store_true", help="also the released estimator (funnel, 25gmm, manywell)")
    for q in (m, s, c):
        q.add_argument("--first-seed", type=int, default=1,
                       help=f"the first evaluation seed (the table's evaluation: {EVAL_SEED_BASE} + training seed)")
    e.add_argument("--target", default="funnel", choices=("funnel", "25gmm", "manywell"), help="benchmark target")
    g.add_argument("--target", default="funnel", choices=("funnel", "25gmm"), help="benchmark target")
    t.add_argument("--target", default="funnel", choices=("funnel", "25gmm", "40gmm", "manywell"),
                   help="benchmark target")
    s.add_argument("--target", default="funnel", choices=("funnel", "25gmm", "manywell"), help="benchmark target")
    for q in (e, m, s):
        q.add_argument("--method", default="tb", choices=tuple(METHODS), help="the preset of the saved models")
    c.add_argument("--method", default="tb+expl+lp+ls", choices=tuple(METHODS), help="the preset of the run")
    t.add_argument("--method", default="tb", choices=tuple(METHODS),
                   help="the preset (with --released the objective: tb or pis)")
    for q in (e, g, t, m, s):
        q.add_argument("--repeats", type=int, default=5, help="evaluation seeds of 2000 samples")
    c.add_argument("--repeats", type=int, default=2, help="evaluation seeds of 2000 samples (W2)")
    lg = sub.add_parser("lgcp", help="a reference log Z of LGCP (Laplace, AIS) and saved models against it")
    lg.add_argument("--models", nargs="*", help="LGCP model .pt files (trained on the reference's grid and points)")
    lg.add_argument("--grid", type=int, default=40, help="the LGCP's grid × grid lattice")
    lg.add_argument("--points", default="finpines", choices=("finpines", "synthetic"), help="the point pattern")
    lg.add_argument("--chains", type=int, default=256, help="AIS chains per run")
    lg.add_argument("--temps", type=int, nargs="+", default=[200, 800], help="AIS temperatures K (runs per K)")
    lg.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="AIS seeds (runs per seed)")
    lg.add_argument("--step-size", type=float, default=0.1, help="MALA step size in the whitened coordinates")
    lg.add_argument("--repeats", type=int, default=2, help="evaluations of 2000 samples per model")
    lg.add_argument("--batch", type=int, default=16, help="trajectories of the fused / eager TB gradient check")
    lg.add_argument("--out", default=os.path.join(OUT, "checks", "lgcp_reference.json"), help="'' for none")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    {"evaluate": cmd_evaluate, "gradients": cmd_gradients, "train": cmd_train,
     "manywell": cmd_manywell, "spread": cmd_spread, "gmm40": cmd_gmm40, "curve": cmd_curve,
     "lgcp": cmd_lgcp}[args.command](args)


if __name__ == "__main__":
    main()
