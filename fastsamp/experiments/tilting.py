"""Importance-sampling test bed with exact answers: a mixture base p and weights l whose
tilted target q ∝ l·p is again a mixture.

- exponential tilt l = exp(aᵀx): component k moves to μ_k + v_k a, log-weight + aᵀμ_k + ½ v_k |a|²;
- Gaussian bump l = exp(−|x − c|²/(2w²)): the product of p with N(c, w² I).

    fastsamp importance [--samples 4000] [--json out.json] [--png out.png]
"""
from __future__ import annotations

import torch

from .. import metrics
from ..models import GaussianMixture, Product
from ..samplers.importance import effective_sample_size, importance_sde, self_normalised_weights
from .options import count, two_d_experiment_options
from .reporting import mean_sd, summarise_seeds, write_json

SUMMARY = "training-free importance sampling test bed with exact answers"
DESCRIPTION = ("Guided reverse SDE for q ∝ l·p (exponential tilt and Gaussian bump of a 2-D mixture, exact q in "
               "closed form), with and without the scheduler and the MH corrector, against importance resampling "
               "of exact base samples.")


def base_mixture() -> GaussianMixture:
    """Five 2-D modes of unequal weight."""
    means = torch.tensor([[-3.0, 0.0], [0.0, 0.0], [3.0, 0.0], [-1.5, 2.5], [1.5, 2.5]])
    return GaussianMixture(means, torch.log(torch.tensor([0.3, 0.2, 0.1, 0.25, 0.15])), torch.full((5,), 0.3))


def exponential_tilt(p: GaussianMixture, a):
    """(log l, exact q) for l = exp(aᵀx)."""
    a = torch.as_tensor(a, dtype=p.means.dtype)
    q = GaussianMixture(p.means + p.variances[:, None] * a, p.log_weights + p.means @ a
                        + 0.5 * p.variances * (a @ a), p.variances, p.schedule)
    return (lambda x: x @ a.to(x.dtype)), q


def gaussian_bump(p: GaussianMixture, c, width):
    """(log l, exact q) for l = exp(−|x − c|²/(2 w²))."""
    c = torch.as_tensor(c, dtype=p.means.dtype)
    bump = GaussianMixture(c[None], torch.zeros(1, dtype=p.means.dtype),
                           torch.tensor([width**2], dtype=p.means.dtype), p.schedule)
    q = Product(p, bump).as_mixture()
    return (lambda x: -((x - c.to(x.dtype)) ** 2).sum(1) / (2 * width**2)), q


def cases(p):
    return {"tilt a=(1.2, 0.4)": exponential_tilt(p, [1.2, 0.4]),
            "bump c=(2, 2), w=1": gaussian_bump(p, [2.0, 2.0], 1.0)}


def methods():
    """(name, importance_sde keyword arguments); None marks the base sampler (no guidance)."""
    return [("base only", None),
            ("guidance", {}),
            ("guidance + scheduler", {"guidance_schedule": 0.5}),
            ("guidance + MH corrector", {"corrector": "mala"})]


def run(n_samples=4000, n_steps=200, seeds=(0, 1, 2), png=None, backend="auto") -> dict:
    p = base_mixture()
    rows, panels = [], {}
    for case, (log_l, q) in cases(p).items():
        exact = q.sample(n_samples, torch.Generator().manual_seed(99))
        for name, kw in methods():
            per = []
            for seed in seeds:
                if kw is None:
                    x, st = importance_sde(p, lambda z: torch.zeros(z.shape[0], dtype=z.dtype), n_samples,
                                           n_steps=n_steps, seed=seed, guidance_schedule=lambda t: 0.0,
                                           backend=backend)
                else:
                    x, st = importance_sde(p, log_l, n_samples, n_steps=n_steps, seed=seed, backend=backend, **kw)
                per.append({"sliced_w2": metrics.sliced_w2(x, exact),
                            "mode_tv": metrics.mode_occupancy_tv(x, exact, q),
                            "score_evals_per_sample": st.n_score_evals / n_samples, "wall_s": st.wall_time})
                if seed == seeds[0]:
                    panels[(case, name)] = x
            rows.append(_summarise(case, name, per))
        # importance resampling of exact base samples: the classical baseline, with its ESS
        per = []
        for seed in seeds:
            base = p.sample(n_samples, torch.Generator().manual_seed(seed))
            log_w = log_l(base)
            idx = torch.multinomial(self_normalised_weights(log_w), n_samples, replacement=True,
                                    generator=torch.Generator().manual_seed(seed))
            x = base[idx]
            per.append({"sliced_w2": metrics.sliced_w2(x, exact), "mode_tv": metrics.mode_occupancy_tv(x, exact, q),
                        "ess_fraction": effective_sample_size(log_w) / n_samples})
        rows.append(_summarise(case, "SNIR of exact base samples", per))
    if png:
        _plot(panels, cases(p), n_samples, png)
    return {"config": {"n_samples": n_samples, "n_steps": n_steps, "seeds": list(seeds)}, "rows": rows}


def _summarise(case, name, per):
    return {"case": case, "method": name, **summarise_seeds(per)}


def format_table(report) -> str:
    lines = [f"{'case':20s} {'method':28s} {'sliced W2':>13s} {'mode TV':>13s}"]
    for r in report["rows"]:
        extra = f"  ESS/n {r['ess_fraction']:.3f}" if "ess_fraction" in r else ""
        lines.append(f"{r['case']:20s} {r['method']:28s} {mean_sd(r['sliced_w2'], r['sliced_w2_sd']):>13s} "
                     f"{mean_sd(r['mode_tv'], r['mode_tv_sd']):>13s}{extra}")
    return "\n".join(lines)


def _plot(panels, case_defs, n, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m for m, _ in methods()]
    fig, axes = plt.subplots(len(case_defs), len(names) + 1, figsize=(3 * (len(names) + 1), 3 * len(case_defs)),
                             squeeze=False)
    for r, (case, (_, q)) in enumerate(case_defs.items()):
        cols = [("exact q", q.sample(n, torch.Generator().manual_seed(99)))] + [(m, panels[(case, m)]) for m in names]
        for c, (title, x) in enumerate(cols):
            x = x.double()[:2000]
            axes[r, c].scatter(x[:, 0], x[:, 1], s=1, alpha=0.5)
            axes[r, c].set_title(f"{case}\n{title}", fontsize=8)
            axes[r, c].set_xlim(-5, 6)
            axes[r, c].set_ylim(-3, 5)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def add_arguments(m):
    """The options of `fastsamp importance`."""
    two_d_experiment_options(m)
    m.add_argument("--steps", type=count(1), default=200, help="reverse SDE steps")


def main(args) -> int:
    """`fastsamp importance`: the table, and the JSON report with --json."""
    report = run(args.samples, args.steps, tuple(range(args.seeds)), args.png)
    print(format_table(report))
    if args.json:
        write_json(args.json, report)
    return 0
