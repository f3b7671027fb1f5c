"""The 2-D composition experiment: products of two mixtures (exact scores) and of two
trained score MLPs, sampled by annealed MCMC with ULA/MALA/HMC/U-HMC correctors,
unadjusted vs score-MH vs energy-MH, at an equal number of score evaluations per level.
Metrics against exact product samples: sliced W2, MMD, mode-occupancy TV.

    fastsamp compose [--samples 4000] [--budget 12] [--json out.json] [--png out.png]
"""
from __future__ import annotations

import time

import torch

from .. import metrics
from ..models import GaussianMixture, Product, train_score_mlp
from ..samplers import annealed_mcmc
from .options import count, positive_float, two_d_experiment_options
from .reporting import mean_sd, summarise_seeds, write_json

SUMMARY = "2-D composition experiment: unadjusted vs score-MH vs energy-MH"
DESCRIPTION = ("Products of two 2-D mixtures and of two trained score MLPs, sampled by annealed MCMC "
               "(ULA/MALA/HMC/U-HMC, unadjusted, score-MH, energy-MH) at an equal number of score evaluations "
               "per level; sliced W2, MMD and mode-occupancy TV against exact product samples.")


def factors():
    """Two 2-D mixtures whose product has nine modes of very different weights."""
    ring = torch.tensor([[-2.5, 0.0], [2.5, 0.0], [0.0, 2.5]])
    grid = torch.tensor([[0.0, 0.0], [2.5, 2.5], [-2.5, 2.5]])
    a = GaussianMixture(ring, torch.zeros(3), torch.full((3,), 1.0))
    b = GaussianMixture(grid, torch.log(torch.tensor([0.2, 0.3, 0.5])), torch.full((3,), 1.0))
    return a, b


def methods(budget: int, n_leapfrog: int = 3, n_trapezoid: int = 3):
    """(name, corrector, mh, kwargs) with `budget` score evaluations per noise level."""
    return [
        ("ULA", "ula", "none", {"n_corrector_steps": budget}),
        ("MALA score-MH", "mala", "score", {"n_corrector_steps": budget // n_trapezoid, "n_trapezoid": n_trapezoid}),
        ("MALA energy-MH", "mala", "energy", {"n_corrector_steps": budget}),
        ("HMC unadjusted", "hmc", "none", {"n_corrector_steps": budget // n_leapfrog, "n_leapfrog": n_leapfrog}),
        ("HMC score-MH", "hmc", "score", {"n_corrector_steps": budget // n_leapfrog, "n_leapfrog": n_leapfrog}),
        ("HMC energy-MH", "hmc", "energy", {"n_corrector_steps": budget // n_leapfrog, "n_leapfrog": n_leapfrog}),
        ("U-HMC", "uhmc", "none", {"n_corrector_steps": budget // n_leapfrog, "n_leapfrog": n_leapfrog}),
    ]


def run(n_samples=4000, budget=12, n_levels=30, step_size=0.3, seeds=(0, 1, 2), mlp_iters=2000, png=None,
        progress=False) -> dict:
    a, b = factors()
    exact_model = Product(a, b)
    mix = exact_model.as_mixture()
    exact = exact_model.sample_exact(n_samples, torch.Generator().manual_seed(123))
    g = torch.Generator().manual_seed(7)
    t0 = time.perf_counter()
    learned = Product(train_score_mlp(a.sample(20000, g), n_iters=mlp_iters, seed=1),
                      train_score_mlp(b.sample(20000, g), n_iters=mlp_iters, seed=2))
    train_s = time.perf_counter() - t0
    rows, samples = [], {}
    if progress:
        print(TABLE_HEAD, flush=True)
    for model_name, model in (("mixtures", exact_model), ("score MLPs", learned)):
        for name, corrector, mh, kw in methods(budget):
            if mh == "energy" and not getattr(model, "has_energy", False):
                continue
            per_seed = []
            for seed in seeds:
                x, st = annealed_mcmc(model, n_samples, n_levels=n_levels, corrector=corrector, mh=mh,
                                      step_size=step_size, seed=seed, **kw)
                per_seed.append({
                    "sliced_w2": metrics.sliced_w2(x, exact), "mmd": metrics.mmd(x, exact, max_n=2000),
                    "mode_tv": metrics.mode_occupancy_tv(x, exact, mix),
                    "accept": sum(st.accept_rate) / len(st.accept_rate),
                    "score_evals_per_sample": st.n_score_evals / n_samples, "wall_s": st.wall_time})
                if seed == seeds[0]:
                    samples[(model_name, name)] = x
            row = {"model": model_name, "method": name, **summarise_seeds(per_seed)}
            rows.append(row)
            if progress:
                print(format_row(row), flush=True)
    if png:
        _plot(samples, exact, png)
    return {"config": {"n_samples": n_samples, "budget_per_level": budget, "n_levels": n_levels,
                       "step_size": step_size, "seeds": list(seeds), "mlp_iters": mlp_iters,
                       "mlp_train_s": train_s}, "rows": rows}


TABLE_HEAD = (f"{'model':11s} {'method':16s} {'sliced W2':>11s} {'MMDx1e3':>7s} {'mode TV':>11s} {'acc':>4s} "
              f"{'evals':>6s}")


def format_row(r):
    """One table row: mean±sd over seeds (the mean alone for one seed)."""
    return (f"{r['model']:11s} {r['method']:16s} {mean_sd(r['sliced_w2'], r['sliced_w2_sd']):>11s} "
            f"{1e3 * r['mmd']:7.2f} {mean_sd(r['mode_tv'], r['mode_tv_sd']):>11s} {r['accept']:4.2f} "
            f"{r['score_evals_per_sample']:6.0f}")


def format_table(report) -> str:
    return "\n".join([TABLE_HEAD] + [format_row(r) for r in report["rows"]])


def _plot(samples, exact, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(samples)
    fig, axes = plt.subplots(2, (len(keys) + 2) // 2, figsize=(3 * ((len(keys) + 2) // 2), 6), squeeze=False)
    panels = [("exact product", exact)] + [(f"{m}\n{n}", samples[(m, n)]) for m, n in keys]
    for ax, (title, x) in zip(axes.flat, panels):
        x = x.double().cpu()[:2000]
        ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.5)
        ax.set_title(title, fontsize=8)
        ax.set_xlim(-5, 5)
        ax.set_ylim(-3, 6)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def add_arguments(c):
    """The options of `fastsamp compose`."""
    two_d_experiment_options(c)
    c.add_argument("--budget", type=count(3), default=12,
                   help="score evaluations per noise level (at least 3: one score-MH move with n_trapezoid = 3, or one "
                        "3-leapfrog HMC move)")
    c.add_argument("--levels", type=count(2), default=30, help="noise levels")
    c.add_argument("--step-size", type=positive_float, default=0.3, help="corrector step-size scale")
    c.add_argument("--mlp-iters", type=count(1), default=2000, help="training iterations of each score MLP")


def main(args) -> int:
    """`fastsamp compose`: the table is printed row by row as the methods finish."""
    report = run(args.samples, args.budget, args.levels, args.step_size, tuple(range(args.seeds)), args.mlp_iters,
                 args.png, progress=True)
    if args.json:
        write_json(args.json, report)
    return 0
