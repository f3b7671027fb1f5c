"""Why energy LA leaves more chains outside the bar than U-LA (2-D product, pure annealed MCMC).

Loads a retrain's saved energy networks (never trains: a missing file or other networks than the recorded
run's is an error), then

1. re-runs U-LA and LA exactly as `sampling.annealed` (same seed, kernels and Philox draws), recording per
   level (index 0 = the last, lowest-noise level): the off-bar fraction (|x0| > 0.2), moves that enter / leave
   the bar, acceptance of chains inside / outside the bar, and the drift length ε|s| of off-bar chains;
2. on a grid, per level: the learned product's off-bar mass (the level's MALA target), its local mode near
   the off-bar ring mode (0.354, 0.354), the curvature there (ULA is unstable where ε·λ_max > 2) and the
   mountain-pass barrier to the on-bar mode (0, 0.5) along the ring (θ-monotone paths from the mode's angle,
   max over radius);
   the chord (0.354, 0.354) → (0, 0.5); the bar factor's log p and score at x1 = 0.35, |x0| from 0 to 0.5.

    python benchmarks/product2d_checks.py --out benchmarks/results/product2d/full --retrain 0 \
        --json benchmarks/results/product2d/checks/la_vs_ula.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch

from fastsamp.experiments.product2d import networks, sampling
from fastsamp.models import Product
from fastsamp.protocol import CountingModel
from fastsamp.samplers.kernels import Langevin, PhiloxKey

HALF_WIDTH = 0.2
OFF_MODE = (0.5 * math.cos(math.pi / 4), 0.5 * math.sin(math.pi / 4))
ON_MODE = (0.0, 0.5)


def off_bar(x):
    return x[:, 0].abs() > HALF_WIDTH


def off_basin(x):
    """Chains whose angle is more than π/8 from ±π/2: in the basin of an off-bar ring mode (wall or not)."""
    theta = torch.atan2(x[:, 1], x[:, 0])
    return torch.minimum((theta - math.pi / 2).abs(), (theta + math.pi / 2).abs()) > math.pi / 8


def instrumented(model, method, settings, seed):
    """`sampling.annealed` for a Langevin method, with per-level records (lists in annealing order, reversed at the
    end so that index 0 is the last level)."""
    g = torch.Generator().manual_seed(seed)
    n = settings.n_samples
    f = CountingModel(model)
    x = torch.randn(n, 2, generator=g, dtype=torch.float32)
    eps = torch.full((n,), settings.la_step, dtype=torch.float32)
    offset = 0
    rec = {k: [] for k in ("off_bar", "off_basin", "off_bar_far", "enter", "leave", "accept_in", "accept_out",
                           "drift_out", "drift_in", "n_out_moves")}
    history = []
    for t in reversed(model.schedule.times()):
        kernel = Langevin(f, t, eps, sampling.mh_test(method), backend="torch")
        state = kernel.init(x, None)
        c = dict.fromkeys(("enter", "leave", "acc_in", "acc_out", "n_in", "n_out", "drift_in", "drift_out"), 0.0)
        for m in range(settings.n_steps):
            out = off_bar(state.x)
            drift = settings.la_step * state.score.norm(dim=1)
            state, info = kernel.step(state, PhiloxKey(seed, offset + m, 0))
            out_new = off_bar(state.x)
            c["enter"] += float((out & ~out_new).sum())
            c["leave"] += float((~out & out_new).sum())
            c["acc_in"] += float(info.accepted[~out].sum())
            c["acc_out"] += float(info.accepted[out].sum())
            c["n_in"] += float((~out).sum())
            c["n_out"] += float(out.sum())
            c["drift_in"] += float(drift[~out].sum())
            c["drift_out"] += float(drift[out].sum())
        offset += settings.n_steps
        x = state.x
        history.append(off_bar(x))
        rec["off_bar"].append(float(off_bar(x).float().mean()))
        rec["off_basin"].append(float(off_basin(x).float().mean()))
        rec["off_bar_far"].append(float((x[:, 0].abs() > 0.3).float().mean()))
        rec["enter"].append(int(c["enter"]))
        rec["leave"].append(int(c["leave"]))
        rec["n_out_moves"].append(int(c["n_out"]))
        rec["accept_in"].append(c["acc_in"] / max(c["n_in"], 1))
        rec["accept_out"].append(c["acc_out"] / c["n_out"] if c["n_out"] else None)
        rec["drift_in"].append(c["drift_in"] / max(c["n_in"], 1))
        rec["drift_out"].append(c["drift_out"] / c["n_out"] if c["n_out"] else None)
    final = history[-1]
    # of the chains off-bar at the end of a level, the fraction that end the run off-bar
    rec["kept_to_end"] = [float((h & final).sum() / max(int(h.sum()), 1)) for h in history]
    return x, {k: v[::-1] for k, v in rec.items()}


def escape(model, method, eps, level, start, n=1000, seed=7):
    """Chains started at the off-bar local mode `start` at one fixed level, Langevin time 0.1 (0.1/ε moves of
    step ε): the fraction still in the off-bar basin after every 0.01 of time, and the acceptance rate."""
    t = model.schedule.times()[level]
    n_moves, every = round(0.1 / eps), round(0.01 / eps)
    x = torch.tensor(start, dtype=torch.float32).expand(n, 2).contiguous()
    kernel = Langevin(CountingModel(model), t, torch.full((n,), eps), sampling.mh_test(method), backend="torch")
    state, kept, accepted = kernel.init(x, None), [], 0.0
    for m in range(n_moves):
        state, info = kernel.step(state, PhiloxKey(seed, m, 0))
        accepted += float(info.accepted.float().mean())
        if (m + 1) % every == 0:
            kept.append(float(off_basin(state.x).float().mean()))
    return {"level": level, "eps": eps, "start": list(start), "off_basin_every_0.01": kept,
            "accept_rate": accepted / n_moves}


def log_p(model, x, i):
    """The learned product's log p at level index i (0 = the last level), float64 out."""
    t = model.schedule.times()[i]
    return model.log_prob(x.float(), t).double()


def landscape(model, i, eps, h=0.005):
    """The level's off-bar mass (grid quadrature), off-bar local mode and its curvature, barrier along the ring."""
    g = torch.arange(-1.2, 1.2 + h / 2, h, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    lp = log_p(model, pts, i)
    w = torch.softmax(lp, 0)
    out = off_bar(pts)
    near_off = ((pts - torch.tensor(OFF_MODE, dtype=torch.float64)).norm(dim=1) < 0.15)
    sector = near_off.nonzero()[:, 0]
    k = sector[lp[sector].argmax()]
    mode = pts[k]
    # Hessian of the learned log p at the off-bar local mode by central differences of the score
    t = model.schedule.times()[i]
    d = 1e-3
    hess = torch.zeros(2, 2, dtype=torch.float64)
    for j in range(2):
        e = torch.zeros(1, 2, dtype=torch.float64)
        e[0, j] = d
        hess[:, j] = ((model.score((mode + e).float(), t) - model.score((mode - e).float(), t)).double() / (2 * d))[0]
    lam = torch.linalg.eigvalsh(0.5 * (hess + hess.T)).neg()
    # mountain pass along the ring: theta from the off-bar mode's angle to pi/2, max over radius, then min over theta
    th = torch.linspace(math.atan2(float(mode[1]), float(mode[0])), math.pi / 2, 91, dtype=torch.float64)
    r = torch.linspace(0.3, 0.7, 161, dtype=torch.float64)
    tt, rr = torch.meshgrid(th, r, indexing="ij")
    ridge = log_p(model, torch.stack([rr * tt.cos(), rr * tt.sin()], -1).reshape(-1, 2), i).reshape(91, 161).amax(1)
    near_on = ((pts - torch.tensor(ON_MODE, dtype=torch.float64)).norm(dim=1) < 0.15)
    lp_off, lp_on = float(lp[k]), float(lp[near_on].max())
    s = torch.linspace(0, 1, 51, dtype=torch.float64)[:, None]
    chord = log_p(model, (1 - s) * torch.tensor(OFF_MODE) + s * torch.tensor(ON_MODE), i) - lp_off
    return {"level": i, "t": t, "sigma_t": float(model.schedule.sigma(t)),
            "off_bar_mass": float(w[out].sum()), "mass_near_off_modes": float(w[near_off].sum()),
            "off_mode": mode.tolist(), "logp_off_minus_on": lp_off - lp_on,
            "curvature_eigs_at_off_mode": lam.tolist(), "ula_eps_lambda_max": eps * float(lam.max()),
            "ring_barrier_from_off_mode": lp_off - float(ridge.min()),
            "chord_min_minus_off": float(chord.min()), "chord_end_minus_off": float(chord[-1])}


def bar_profile(bar, i, eps):
    """The bar factor at x1 = 0.35: log p relative to x0 = 0, the score's x0 component and ε|s_x0|."""
    x0 = torch.linspace(0, 0.5, 26)
    x = torch.stack([x0, torch.full_like(x0, 0.35)], 1)
    t = bar.schedule.times()[i]
    s, lp = bar.score_and_log_prob(x, t)
    return {"level": i, "x0": [round(v, 3) for v in x0.tolist()], "logp_minus_at_0": (lp - lp[0]).tolist(),
            "score_x0": s[:, 0].tolist(), "eps_times_score_x0": (eps * s[:, 0]).abs().tolist()}


def ula_spread(model, i, eps, ring_std=0.03):
    """ULA on the noised ring mode N(m, (ᾱ·0.03² + σ_t²) I): h = ε/σ², stationary std σ·√(2/(2 − h))."""
    t = model.schedule.times()[i]
    var = float(1 - model.schedule.sigma2(t)) * ring_std**2 + float(model.schedule.sigma2(t))
    h = eps / var
    return {"level": i, "ring_std_t": var**0.5, "eps_over_var": h,
            "ula_std": var**0.5 * (2 / (2 - h)) ** 0.5 if h < 2 else None}


def write(path, result):
    with open(path, "w") as fh:
        json.dump(result, fh, indent=1)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/results/product2d/full", help="the product2d run (read only)")
    p.add_argument("--retrain", type=int, default=0)
    p.add_argument("--json", default="benchmarks/results/product2d/checks/la_vs_ula.json")
    p.add_argument("--methods", nargs="*", default=["U-LA", "LA"],
                   help="energy Langevin methods")
    p.add_argument("--escape-levels", nargs="*", type=int, default=[],
                   help="levels of the escape test (chains started at the level's off-bar mode)")
    p.add_argument("--escape-steps", nargs="*", type=float, default=[], help="Langevin steps ε of the escape test "
                   "(default: the run's)")
    p.add_argument("--levels", nargs="*", type=int, default=[0, 1, 2, 4, 9, 14, 19, 29, 49])
    args = p.parse_args()
    torch.set_num_threads(1)
    nets = []
    for factor in ("ring", "bar"):
        path = os.path.join(args.out, "models", f"energy-{factor}-r{args.retrain}.pt")
        if not os.path.exists(path):
            raise SystemExit(f"{path} is missing (this script never trains)")
        nets.append(networks.load(path))
    with open(os.path.join(args.out, "runs", f"energy-r{args.retrain}.json")) as fh:
        run = json.load(fh)
    if run.get("networks") != networks.fingerprint(nets):
        raise SystemExit("the saved networks are not those the recorded run was sampled with")
    model = Product(*nets)
    settings = sampling.Settings(**run["config"]["sampling"])
    saved = torch.load(os.path.join(args.out, "samples", f"energy-r{args.retrain}.pt"), weights_only=True)
    eps = settings.la_step
    result = {"retrain": args.retrain, "settings": run["config"]["sampling"], "methods": {},
              "saved_off_bar": {k: float(off_bar(v).float().mean()) for k, v in saved.items()},
              "saved_off_basin": {k: float(off_basin(v).float().mean()) for k, v in saved.items()},
              "saved_off_bar_median": {k: v[off_bar(v)].abs().median(0).values.tolist() for k, v in saved.items()}}
    t0 = time.perf_counter()
    result["landscape"] = [landscape(model, i, eps) for i in args.levels]
    result["bar_profile"] = [bar_profile(nets[1], i, eps) for i in args.levels[:5]]
    result["ula_spread"] = [ula_spread(model, i, eps) for i in args.levels]
    print(f"landscape {time.perf_counter() - t0:.0f} s", flush=True)
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    write(args.json, result)
    methods = {m.name: m for m in sampling.methods("energy")}
    for name in args.methods if args.escape_levels else ():
        starts = {lv["level"]: lv["off_mode"] for lv in result["landscape"]}
        result.setdefault("escape", {})[name] = [escape(model, methods[name], e, i, starts[i])
                                                 for i in args.escape_levels for e in args.escape_steps or [eps]]
        first = [(e["level"], e["eps"], e["off_basin_every_0.01"][0]) for e in result["escape"][name]]
        print(f"escape {name}: {first}", flush=True)
        write(args.json, result)
    for name in args.methods if not args.escape_levels else ():
        t0 = time.perf_counter()
        x, rec = instrumented(model, methods[name], settings, args.retrain)
        if name in saved:
            rec["max_abs_diff_to_saved"] = float((x - saved[name]).abs().max())
            rec["accept_rate_saved_last5"] = run["methods"][name]["accept_rate_per_level"][:5]
        result["methods"][name] = rec
        print(f"{name}: off-bar {rec['off_bar'][0]:.4f} (saved {result['saved_off_bar'].get(name)}), "
              f"max |x - saved| {rec.get('max_abs_diff_to_saved')}, {time.perf_counter() - t0:.0f} s", flush=True)
        write(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
