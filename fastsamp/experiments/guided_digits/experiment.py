"""The guided-digits table: every `sampling.methods()` row on the trained score and energy networks,
step sizes from a random search, metrics under the held-out classifier next to their real-data floor.

Chains: one batched run per method and phase; class y_b = b mod 10 for chain b. The replicates ("seeds")
are disjoint groups of chains of one run (Philox noise is keyed by the global chain index, so the groups
are independent, except in the whole-run batch-summed rows, whose one proposal-ratio sum couples them; the
"one batch per replicate" rows sum per group), each with `n_per_class` chains per class.

Step-size search (per MCMC method, as the paper): `n_candidates` random (a, b) of ε_t = a β_t^b, drawn as
the step at the last level β_T = 0.02 and at the first β_1 = 1e-4 (log-uniform in `SEARCH_RANGES`; HMC on
its unit-mass scale ε/β), all candidates in one batched run (the step size is per chain) with
`n_val_per_class` chains per class, sampler seed `seed + 1` (not the evaluation's; the candidates are the run's
groups, so a searched per-replicate batch-summed row sums over each candidate's 10·`n_val_per_class` chains).
Validation metric: the Fréchet distance to the "prior" split (training data) among the candidates whose held-out
accuracy is within `ACC_SLACK` of the best candidate's; candidates with non-finite chains are out.

Metrics (`sample_metrics`, on pixels): top-1 accuracy of the held-out classifier, the rate of
p_heldout(y | x) > 0.5, and the Fréchet distance of held-out features to the "test" split. Floor: the same
metrics for real "prior"-split digits drawn with the same counts per class (one draw per replicate).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ...models import EnergyModel, ScoreModel
from .. import digits
from .sampling import LAMBDA, GuidedModel, Method, guided_sample, methods
from .training import load_or_train, to_pixels

SEARCH_RANGES = {"langevin": {"last": (1e-2, 1.0), "first": (1e-5, 1e-2)},
                 "hmc": {"last": (0.1, 2.0), "first": (5e-3, 0.5)}}
ACC_SLACK = 0.05
METRICS = ("accuracy", "confident", "frechet")


def load_models(size="full", seed=0, verbose=False):
    """{"score": ScoreModel, "energy": EnergyModel, "classifier": TimeClassifier, "heldout": DigitClassifier,
    "info": training info} (trained once, then cached)."""
    eps = load_or_train("eps", size=size, seed=seed, verbose=verbose)
    energy = load_or_train("energy", size=size, seed=seed, verbose=verbose)
    clf = load_or_train("classifier", size=size, seed=seed, verbose=verbose)
    heldout = digits.load_or_train("heldout_classifier", size=size, seed=seed, verbose=verbose)
    return {"score": ScoreModel(eps.score, digits.DIM, schedule=eps.schedule),
            "energy": EnergyModel(energy, digits.DIM, schedule=energy.schedule),
            "classifier": clf, "heldout": heldout,
            "info": {k: dict(n.info) for k, n in (("eps", eps), ("energy", energy), ("classifier", clf),
                                                  ("heldout_classifier", heldout))}}


def class_labels(n_per_class, n_groups=1):
    """Labels b mod 10 for n_groups · 10 · n_per_class chains (group g holds chains g·10·n .. (g+1)·10·n − 1)."""
    return torch.arange(n_groups * digits.N_CLASSES * n_per_class) % digits.N_CLASSES


def sample_metrics(pixels, y, heldout, reference):
    """accuracy, confident (p(y|x) > 0.5) and frechet (held-out features vs `reference` pixels) of finite rows."""
    ok = torch.isfinite(pixels).all(1)
    pixels, y = pixels[ok], y[ok]
    with torch.no_grad():
        logp = heldout.log_probs(pixels)
        feats, ref = heldout.features(pixels), heldout.features(reference)
    p_y = logp.exp().gather(1, y[:, None])[:, 0]
    fd = digits.frechet_distance(feats, ref) if len(pixels) >= 2 else math.inf
    return {"accuracy": float((logp.argmax(1) == y).double().mean()), "confident": float((p_y > 0.5).double().mean()),
            "frechet": fd, "n": int(len(pixels))}


def real_floor(y, heldout, reference, seed):
    """The metrics of real "prior"-split digits drawn with the class counts of y (without replacement)."""
    x, labels = digits.load_digits_data("prior")
    g = torch.Generator().manual_seed(seed)
    idx = torch.cat([torch.nonzero(labels == c)[:, 0][torch.randperm(int((labels == c).sum()), generator=g)
                                                       [:int((y == c).sum())]] for c in range(digits.N_CLASSES)])
    return sample_metrics(x[idx], labels[idx], heldout, reference)


def _guided(models, method: Method, y, lam):
    return GuidedModel(models[method.model], models["classifier"], y, lam=lam, lam_mh=method.lam_mh)


def candidates(method: Method, n, seed, beta_first, beta_last):
    """n random (a, b): the steps at the first and last level log-uniform in SEARCH_RANGES (HMC: unit-mass
    steps ε/β), converted to ε_t = a β_t^b."""
    rng = np.random.default_rng(seed)
    ranges = SEARCH_RANGES["hmc" if method.is_hmc else "langevin"]
    out = []
    for _ in range(n):
        last, first = (math.exp(rng.uniform(math.log(lo), math.log(hi)))
                       for lo, hi in (ranges["last"], ranges["first"]))
        if method.is_hmc:
            last, first = last * beta_last, first * beta_first
        b = math.log(last / first) / math.log(beta_last / beta_first)
        out.append((last / beta_last**b, b))
    return out


def search_step_size(models, method: Method, *, n_candidates, n_val_per_class, seed, lam=LAMBDA):
    """The random search of (a, b) for one method (module docstring): (chosen (a, b), the records)."""
    betas = models[method.model].schedule.betas
    cands = candidates(method, n_candidates, seed, float(betas[0]), float(betas[-1]))
    y = class_labels(n_val_per_class, n_candidates)
    per = len(y) // n_candidates
    a = torch.tensor([c[0] for c in cands], dtype=torch.float64).repeat_interleave(per)
    b = torch.tensor([c[1] for c in cands], dtype=torch.float64).repeat_interleave(per)
    x, stats = guided_sample(_guided(models, method, y, lam), method, a=a, b=b, seed=seed + 1, replicates=n_candidates)
    px = to_pixels(x)
    reference = digits.load_digits_data("prior")[0]
    records = []
    for k, (ak, bk) in enumerate(cands):
        rows = slice(k * per, (k + 1) * per)
        finite = bool(torch.isfinite(x[rows]).all())
        m = sample_metrics(px[rows], y[rows], models["heldout"], reference) if finite else {}
        records.append({"a": ak, "b": bk, "finite": finite, **m})
    valid = [r for r in records if r["finite"]]
    if not valid:
        raise RuntimeError(f"{method.label}: every step-size candidate went non-finite")
    best_acc = max(r["accuracy"] for r in valid)
    chosen = min((r for r in valid if r["accuracy"] >= best_acc - ACC_SLACK), key=lambda r: r["frechet"])
    return (chosen["a"], chosen["b"]), {"candidates": records, "chosen": {"a": chosen["a"], "b": chosen["b"]},
                                        "wall_s": stats["wall_s"], "score_evals": stats["score_evals"]}


def summarise(per_seed):
    out = {}
    for k in METRICS:
        v = np.array([r[k] for r in per_seed], dtype=float)
        out[k] = float(v.mean())
        out[k + "_sd"] = float(v.std(ddof=1)) if len(v) > 1 else None
    return out


def run_table(*, size="full", n_per_class=4, n_seeds=3, n_candidates=6, n_val_per_class=2, seed=0,
              lam=LAMBDA, only=None, step_sizes=None, log=print):
    """The whole table (module docstring): a dict with the settings, training info, floors, and per method
    the step-size search, per-replicate metrics, their mean ± sd, score evaluations and wall time.
    `only`: method labels to run (default all). `step_sizes`: {label: (a, b)} chosen before (a recorded
    table's); a row whose label, or whose `step_from` row's label, is there or was searched in this run
    reuses that step size instead of searching. Returns (result, samples {label: pixels (N, 64)}, labels)."""
    models = load_models(size, seed, verbose=True)
    heldout = models["heldout"]
    test = digits.load_digits_data("test")[0]
    y = class_labels(n_per_class, n_seeds)
    per = len(y) // n_seeds
    floors = [real_floor(y[:per], heldout, test, seed + 100 + s) for s in range(n_seeds)]
    result = {"settings": {"size": size, "lambda": lam, "n_levels": models["score"].schedule.n_steps,
                           "beta": [1e-4, 0.02], "n_per_class": n_per_class, "n_seeds": n_seeds,
                           "n_candidates": n_candidates, "n_val_per_class": n_val_per_class, "seed": seed,
                           "search_ranges": SEARCH_RANGES, "acc_slack": ACC_SLACK},
              "training": models["info"], "floor": {"per_seed": floors, **summarise(floors)}, "methods": []}
    samples, chosen = {}, dict(step_sizes or {})
    for method in methods():
        if only and method.label not in only:
            continue
        row = {"label": method.label, "name": method.name, "model": method.model, "corrector": method.corrector,
               "n_steps": method.n_steps, "n_trapezoid": method.n_trapezoid,
               "n_trapezoid_points": method.n_trapezoid + 1,
               "midpoint": method.midpoint, "hybrid_mh": method.hybrid,
               "lam_mh": lam if method.lam_mh is None else method.lam_mh}
        a, b = 1.0, 1.0
        if method.corrector is not None:
            reused = next((label for label in (method.label, method.step_from) if label in chosen), None)
            if reused is not None:
                (a, b), row["search"] = chosen[reused], f"the step size of the {reused} row"
            else:
                (a, b), row["search"] = search_step_size(models, method, n_candidates=n_candidates,
                                                         n_val_per_class=n_val_per_class, seed=seed + 1000, lam=lam)
                chosen[method.label] = (a, b)
            row["a"], row["b"] = a, b
        x, stats = guided_sample(_guided(models, method, y, lam), method, a=a, b=b, seed=seed, replicates=n_seeds)
        px = to_pixels(x)
        per_seed = [sample_metrics(px[s * per:(s + 1) * per], y[s * per:(s + 1) * per], heldout, test)
                    for s in range(n_seeds)]
        row.update(stats, per_seed=per_seed, **summarise(per_seed),
                   score_evals_per_sample=stats["score_evals"] / len(y))
        result["methods"].append(row)
        samples[method.label] = px
        log(f"{method.label}: " + ", ".join(f"{k} {row[k]:.3f}" for k in METRICS)
            + f", {row['score_evals_per_sample']:.0f} evals/sample, {row['wall_s']:.0f} s")
    return result, samples, y
