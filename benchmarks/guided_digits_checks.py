"""Why the paper's batch-summed proposal ratio (`BatchSummedProposalRatio`) scores better on guided digits.

Chain b's test is log α_b = Δlog π_b + Σ_c r_c = [Δlog π_b + r_b] + S₋b: its own exact MH log-ratio plus the
others' sum S₋b = Σ_{c≠b} r_c, which does not depend on chain b's proposal. With S₋b ≡ c fixed the chain accepts
with min(1, e^c R_b): c = 0 is exact MH (π), c → +∞ accepts all (ULA: ν, the proposal's own law), c → −∞
accepts ∝ R_b, which balances π²/ν (sharper than π where ν is broader).

    toy     1-D π = N(0, 1), MALA step ε: the stationary variance on a grid for a fixed offset c, the test with
            the proposal treated as symmetric (Δlog π + c) and the real one (Δlog π + r_b + c), against the closed
            forms; a random c ~ N(−s²/2, s²) (the penalty method: exact); Monte Carlo of the batch-summed test.
    digits  the recorded energy-LA run (cached networks, the LA (energy) row's step size, the table's batch of
            3 × 100 chains) with the per-chain and the batch-summed test, recorded per band of levels: r_c, S,
            S₋b, acceptance, the effective exponent κ of the acceptance (π^κ ν^(1−κ); 1 exact, 0 ULA, 2 π²/ν);
            then the final samples of both, ULA and Reverse: log π, classifier log p(y|x), held-out metrics and
            pixel statistics (contrast, saturation, distance to the nearest training digit, within-class spread).
            `--runs` also splits the levels: the per-chain test with no moves at levels 1-9 (where the batch-summed
            run accepts none), and the batch-summed test only at levels >= 10, 10-249 or 250-999 (per-chain elsewhere).
    frechet the Fréchet distance's mean and covariance terms of the rows recorded in OUT/guided_digits_samples.pt.

    OUT=benchmarks/results/guided_digits/batch_ratio
    python benchmarks/guided_digits_checks.py toy --json $OUT/toy_checks.json
    python benchmarks/guided_digits_checks.py digits --json $OUT/digits_checks.json
    python benchmarks/guided_digits_checks.py digits --json $OUT/digits_split.json \
        --runs "per-chain MH, no moves at levels 1-9" "batch-summed at levels >= 10, per-chain MH at 1-9"
    python benchmarks/guided_digits_checks.py digits --json $OUT/digits_bands.json \
        --runs "batch-summed at levels 10-249 only" "batch-summed at levels 250-999 only"
    python benchmarks/guided_digits_checks.py frechet --json $OUT/frechet_terms.json
    python benchmarks/guided_digits_checks.py digits --json $OUT/digits_all_or_none.json \
        --runs "per-chain MH" "batch-summed"
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import torch

from fastsamp.experiments.digits import load_digits_data
from fastsamp.experiments.guided_digits import experiment
from fastsamp.experiments.guided_digits.sampling import (
    BatchSummedProposalRatio,
    GuidedModel,
    Method,
    guided_sample,
    methods,
)
from fastsamp.experiments.guided_digits.training import to_pixels

BANDS = ((1, 9), (10, 49), (50, 99), (100, 249), (250, 499), (500, 749), (750, 999))
# recorded energy-LA runs: (the levels (lo, hi) with the batch sum, the per-chain test elsewhere; every move
# rejected below this level)
RUNS = {"per-chain MH": ((1, 0), 0), "batch-summed": ((1, 999), 0),
        "per-chain MH, no moves at levels 1-9": ((1, 0), 10),
        "batch-summed at levels >= 10, per-chain MH at 1-9": ((10, 999), 0),
        "batch-summed at levels 10-249 only": ((10, 249), 0), "batch-summed at levels 250-999 only": ((250, 999), 0)}
DEFAULT_RUNS = ("per-chain MH", "batch-summed", "ULA (energy)", "Reverse (energy)")
OUT = Path(__file__).resolve().parent / "results/guided_digits/batch_ratio"
RECORDED = OUT / "guided_digits.json"


# ---------------------------------------------------------------- toy: 1-D Gaussian
def stationary_variance(log_alpha, eps, lo=-7.0, hi=7.0, n=1401):
    """Variance of the stationary law of MALA on N(0, 1) with acceptance min(1, exp(log_alpha(x, x′))) on a grid
    (the jump chain's law divided by the acceptance rate: well conditioned however small the acceptance)."""
    x = torch.linspace(lo, hi, n, dtype=torch.float64)
    xs, xp = x[:, None], x[None, :]
    log_q = -((xp - (1 - eps) * xs) ** 2) / (4 * eps)
    accept = torch.exp(torch.clamp(log_alpha(xs, xp), max=0.0))
    jump = torch.exp(log_q - log_q.max(1, keepdim=True).values) * accept
    jump.fill_diagonal_(0.0)
    rate = jump.sum(1) / torch.exp(log_q - log_q.max(1, keepdim=True).values).sum(1)
    jump = jump / jump.sum(1, keepdim=True)
    w, v = np.linalg.eig(jump.numpy().T)
    mu = np.abs(np.real(v[:, np.argmin(np.abs(w - 1))])) / rate.numpy()
    mu /= mu.sum()
    return float((mu * x.numpy() ** 2).sum() - (mu * x.numpy()).sum() ** 2)


def toy(eps=0.5, batches=(1, 3, 10, 30, 100, 300, 1000, 3000), n_moves=600, seed=0):
    """Grid variances for fixed offsets and the penalty method, closed forms, and Monte Carlo of the batch sum."""
    def delta(xs, xp):
        return -0.5 * (xp**2 - xs**2)

    def r(xs, xp):  # log q(x|x′) − log q(x′|x), exactly log ν(x) − log ν(x′)
        return (-((xs - (1 - eps) * xp) ** 2) + (xp - (1 - eps) * xs) ** 2) / (4 * eps)

    closed = {"pi": 1.0, "nu (ULA)": 1 / (1 - eps / 2), "pi*nu": 1 / (2 - eps / 2), "pi^2/nu": 1 / (1 + eps / 2),
              "pi^2*nu": 1 / (3 - eps / 2)}
    offsets = (-40.0, -3.0, -1.0, 0.0, 1.0, 3.0, 40.0)
    fixed = {"symmetric: dlogpi + c": {c: stationary_variance(lambda a, b, c=c: delta(a, b) + c, eps) for c in offsets},
             "real: dlogpi + r_b + c": {c: stationary_variance(lambda a, b, c=c: delta(a, b) + r(a, b) + c, eps)
                                        for c in offsets}}
    nodes, weights = np.polynomial.hermite_e.hermegauss(60)
    weights = torch.as_tensor(weights / weights.sum())
    penalty = {}
    for s, m in ((1.0, -0.5), (3.0, -4.5), (3.0, 0.0), (3.0, -9.0)):
        def mean_accept(a, b, s=s, m=m):  # E_c min(1, e^{log R + c}), c ~ N(m, s²), returned as a log
            log_r = delta(a, b) + r(a, b) + m
            return torch.log(sum(w * torch.exp(torch.clamp(log_r + s * z, max=0.0)) for z, w in zip(nodes, weights)))
        penalty[f"c ~ N({m:g}, {s:g}^2)"] = stationary_variance(mean_accept, eps)
    mc = {}
    g = torch.Generator().manual_seed(seed)
    for B in batches:
        n_batch = max(1, 30000 // B)
        x = torch.randn(n_batch, B, generator=g, dtype=torch.float64)
        var, acc, S_all = [], [], []
        for m in range(n_moves):
            xp = (1 - eps) * x + math.sqrt(2 * eps) * torch.randn(x.shape, generator=g, dtype=torch.float64)
            rb = r(x, xp)
            S = rb.sum(1, keepdim=True)
            keep = torch.rand(x.shape, generator=g, dtype=torch.float64).log() < delta(x, xp) + S
            x = torch.where(keep, xp, x)
            if m >= n_moves // 2:
                var.append(float(x.var()))
                acc.append(float(keep.double().mean()))
                S_all.append(S[:, 0])
        S_all = torch.cat(S_all)
        mc[B] = {"variance": float(np.mean(var)), "accept": float(np.mean(acc)), "S_mean": float(S_all.mean()),
                 "S_sd": float(S_all.std()), "frac_S_pos": float((S_all > 0).double().mean())}
    return {"eps": eps, "closed_forms": closed, "fixed_offset": fixed, "penalty": penalty, "batch_summed_mc": mc}


# ---------------------------------------------------------------- digits
class RecordingRatio(BatchSummedProposalRatio):
    """Energy-LA with log α_b = Δlog π_b + the batch sum Σ_c r_c at the levels in `batch_levels` (lo, hi), r_b (the
    per-chain MH test, as `EnergyMH`) elsewhere, every move rejected at levels < `frozen_below`; records per move
    the level, r (B,), Δlog π (B,) and the accepted mask."""

    def __init__(self, n_levels, batch_levels=(1, 0), frozen_below=0):
        super().__init__(None)
        self.n_levels, self.batch_levels, self.frozen_below, self.moves = n_levels, batch_levels, frozen_below, []

    def ratio_term(self, r):
        self._r = r
        if self._level < self.frozen_below:
            return torch.full_like(r, -1e30)
        return r.sum() if self.batch_levels[0] <= self._level <= self.batch_levels[1] else r

    def langevin(self, kernel, state, x_prop, key):
        self._level = round(kernel.t * self.n_levels)
        new, info = super().langevin(kernel, state, x_prop, key)
        r = self._r.double()
        delta = info.log_alpha.double() - self.ratio_term(self._r).double()
        self.moves.append((self._level, r, delta, info.accepted))
        return new, info


@dataclasses.dataclass(frozen=True)
class RecordedMethod(Method):
    recorder: RecordingRatio | None = dataclasses.field(default=None, compare=False)

    def mh_test(self, replicates=1):
        return self.recorder


def kappa(c, delta0):
    """log[a(Δ)/a(−Δ)]/Δ at Δ = delta0 for a(Δ) = E_c min(1, e^{Δ+c}) over the recorded offsets c (1: exact MH)."""
    def a(d):
        return torch.exp(torch.clamp(d + c, max=0.0)).mean()
    return float(torch.log(a(delta0) / a(-delta0)) / delta0)


def bands(moves):
    """Per band of levels: r_c, S, S₋b, the chain's own log R_b = Δlog π_b + r_b, acceptance, κ, the fraction of
    moves that every chain or none accepted (all_or_none) and the mean share of the batch's majority decision."""
    out = []
    for lo, hi in BANDS:
        sel = [m for m in moves if lo <= m[0] <= hi]
        r = torch.stack([m[1] for m in sel])  # (moves, B)
        delta = torch.stack([m[2] for m in sel])
        acc = torch.stack([m[3] for m in sel]).double()
        S = r.sum(1)
        c = S[:, None] - r
        log_r = delta + r
        d0 = float(log_r.abs().median())
        shared = acc.mean(1)  # per move, the fraction of the batch that accepted
        out.append({"levels": [lo, hi], "r_mean": float(r.mean()), "r_sd": float(r.std()), "S_mean": float(S.mean()),
                    "S_sd": float(S.std()), "frac_S_pos": float((S > 0).double().mean()),
                    "S_minus_b_mean_plus_half_var": float(c.mean() + 0.5 * c.var()),
                    "delta_logpi_mean": float(delta.mean()), "own_log_R_median_abs": d0,
                    "accept": float(acc.mean()), "kappa": kappa(c.flatten(), d0),
                    "all_or_none": float(((shared == 0) | (shared == 1)).double().mean()),
                    "majority_share": float(torch.maximum(shared, 1 - shared).mean())})
    return out


def final_stats(models, x, y, T, lam, n_replicates):
    """Log-densities at the last corrector level t = 1/T, held-out metrics per replicate, pixel statistics."""
    px = to_pixels(x)
    guided = GuidedModel(models["energy"], models["classifier"], y, lam=lam)
    logp_prior = models["energy"].log_prob(x, 1 / T)
    log_class = guided.classifier_term(x, 1 / T)[0]
    test = load_digits_data("test")[0]
    per = len(y) // n_replicates
    heldout = [experiment.sample_metrics(px[s * per:(s + 1) * per], y[s * per:(s + 1) * per], models["heldout"], test)
               for s in range(n_replicates)]
    with torch.no_grad():
        held_logp = models["heldout"].log_probs(px).gather(1, y[:, None])[:, 0]
    return {"log_pi": float((logp_prior + lam * log_class).mean()), "log_p_prior": float(logp_prior.mean()),
            "log_p_y_noise_aware": float(log_class.mean()), "log_p_y_heldout": float(held_logp.mean()),
            "accuracy": float(np.mean([h["accuracy"] for h in heldout])),
            "frechet": float(np.mean([h["frechet"] for h in heldout])), **pixel_stats(px, y)}


def pixel_stats(px, y):
    train = load_digits_data("prior")[0]
    spread = [torch.pdist(px[y == k]).mean() for k in range(10)]
    return {"pixel_sd": float(px.std(1).mean()), "saturated": float(((px < 0.02) | (px > 0.98)).double().mean()),
            "nearest_train": float(torch.cdist(px, train).min(1).values.mean()),
            "within_class_distance": float(torch.stack(spread).mean())}


def digits(runs=DEFAULT_RUNS):
    """The `runs` with the recorded table's settings (size, seed, chains per class, replicates, λ) and the LA (energy)
    row's step size."""
    torch.set_num_threads(1)
    recorded = json.loads(RECORDED.read_text())
    row = next(r for r in recorded["methods"] if r["label"] == "LA (energy)")
    a, b, settings = row["a"], row["b"], recorded["settings"]
    seed = settings["seed"]
    models = experiment.load_models(settings["size"], seed)
    y = experiment.class_labels(settings["n_per_class"], settings["n_seeds"])
    T, lam = models["energy"].schedule.n_steps, settings["lambda"]
    la = {m.label: m for m in methods()}
    out = {"a": a, "b": b, "batch": len(y), "bands": {}, "final": {}}
    for name in runs:
        if name in RUNS:
            rec = RecordingRatio(T, *RUNS[name])
            method = RecordedMethod("LA", "energy", "mala", 6, recorder=rec)
        else:
            method = la[name]
        x, stats = guided_sample(GuidedModel(models["energy"], models["classifier"], y, lam=lam), method, a=a, b=b,
                                 seed=seed)
        if name in RUNS and not RUNS[name][1]:
            out["bands"][name] = bands(rec.moves)
        out["final"][name] = {"accept": stats["accept"], "wall_s": stats["wall_s"],
                              **final_stats(models, x, y, T, lam, settings["n_seeds"])}
        print(name, json.dumps(out["final"][name]), flush=True)
    out["final"]["real test digits"] = pixel_stats(load_digits_data("test")[0], load_digits_data("test")[1])
    return out


def frechet_terms(out=OUT):
    """Per row of the recorded samples (`guided_digits_samples.pt`) and replicate: the Fréchet distance's mean term
    |μ − μ_test|², its covariance term tr(C + C_test − 2 (C C_test)^½) and tr C, held-out features."""
    from scipy import linalg
    saved = torch.load(Path(out) / "guided_digits_samples.pt", weights_only=True)
    settings = json.loads((Path(out) / "guided_digits.json").read_text())["settings"]
    heldout = experiment.load_models(settings["size"], settings["seed"])["heldout"]
    with torch.no_grad():
        ref = heldout.features(load_digits_data("test")[0]).double().numpy()
    c_ref = np.cov(ref, rowvar=False)
    result = {"test_trace": float(np.trace(c_ref))}
    for label, px in saved["samples"].items():
        per = len(px) // settings["n_seeds"]
        rows = []
        for s in range(settings["n_seeds"]):
            with torch.no_grad():
                f = heldout.features(px[s * per:(s + 1) * per]).double().numpy()
            c = np.cov(f, rowvar=False)
            cov_term = np.trace(c) + np.trace(c_ref) - 2 * np.trace(np.real(linalg.sqrtm(c @ c_ref)))
            rows.append({"mean_term": float(((f.mean(0) - ref.mean(0)) ** 2).sum()), "cov_term": float(cov_term),
                         "trace": float(np.trace(c))})
        result[label] = rows
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("toy", "digits", "frechet"))
    p.add_argument("--json", required=True, help="output file")
    p.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, choices=[*RUNS, "ULA (energy)", "Reverse (energy)"],
                   help="digits: the runs")
    args = p.parse_args(argv)
    result = {"toy": toy, "frechet": frechet_terms}.get(args.what, lambda: digits(args.runs))()
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
