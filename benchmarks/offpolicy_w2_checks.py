"""The checks behind the off-policy table's W2 gaps (issue 13), on the saved final models.

    python benchmarks/offpolicy_w2_checks.py [--out DIR] [--repeats 5] [--json PATH]

W2 between 2000 samples and 2000 exact ones mixes the sampler's error with the finite-sample
distance of two exact sets, which is large here: this prints, per target,
1. the floor: W2 of exact samples against exact samples (i.i.d.), and on 25GMM also against the
   paper's reference set (80 draws per mode, `equal_count_reference`);
2. per saved LP + LS model (OUT/<target>_tb+expl+lp+ls_seed<s>.pt, and any other .pt of a finished
   run): W2 over `--repeats` evaluation seeds against both references, the 25GMM mode weights
   (20,000 samples, ×25: 1 = exact), the Manywell right-well fraction (exact 0.844) and spreads;
3. synthetic samplers that keep the exact within-mode shape and change only what the models get
   wrong: 25GMM with a model's mode weights, Manywell with a model's right-well fraction and b spread
   (and the collapse to the dominant orthant, P(a > 0) = 1, which scores like the TB/PIS rows).
One thread; about 5 minutes on the loaded 2-core machine.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import statistics
import sys

import torch

from fastsamp.experiments.offpolicy_eval import equal_count_reference
from fastsamp.metrics import nearest_mode_weights, wasserstein2
from fastsamp.samplers.diffusion import DiffusionSampler
from fastsamp.targets import get_target

HERE = os.path.dirname(os.path.abspath(__file__))
N = 2000


def _ms(values):
    return {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def _line(name, stats):
    print(f"  {name:44s} {stats['mean']:7.3f} ± {stats['sd']:.3f}", flush=True)


def floors(repeats):
    """W2 of exact samples against exact ones, per target (and the 25GMM reference sets)."""
    out = {}
    for name in ("25gmm", "funnel", "manywell"):
        t, g = get_target(name), torch.Generator().manual_seed(100)
        out[name] = {"iid_vs_iid": _ms([wasserstein2(t.sample(N, g), t.sample(N, g)) for _ in range(repeats)])}
        if name == "25gmm":
            out[name]["iid_vs_80_per_mode"] = _ms([wasserstein2(t.sample(N, g), equal_count_reference(t, N, g))
                                                   for _ in range(repeats)])
        for k, v in out[name].items():
            _line(f"{name} exact: {k}", v)
    return out


def manywell_like(t, n, g, p_right, b_scale):
    """Exact Manywell samples whose double-well coordinates sit on the right (a > 0) with probability
    p_right (each |a| from the exact conditional of its side), b scaled by b_scale."""
    pool = t.sample(4 * n, g)[:, 0::2].flatten()
    right, left = pool[pool > 0], pool[pool < 0]
    x = t.sample(n, g)
    shape = x[:, 0::2].shape
    side = torch.rand(shape, generator=g, dtype=torch.float64) < p_right
    x[:, 0::2] = torch.where(side, right[torch.randint(len(right), shape, generator=g)],
                             left[torch.randint(len(left), shape, generator=g)])
    x[:, 1::2] *= b_scale
    return x


def model_checks(path, repeats):
    smp = DiffusionSampler.load(path, map_location="cpu")
    t = smp.target
    res = {"w2_iid": [], "w2_80_per_mode": []}
    for s in range(repeats):
        x, _ = smp.sample(N, seed=20_000 + s)
        g = torch.Generator().manual_seed(30_000 + s)
        res["w2_iid"].append(wasserstein2(x, t.sample(N, g)))
        if t.name == "25gmm":
            res["w2_80_per_mode"].append(wasserstein2(x, equal_count_reference(t, N, g)))
    res = {k: _ms(v) for k, v in res.items() if v}
    for k, v in res.items():
        _line(f"{os.path.basename(path)}: {k}", v)
    x, _ = smp.sample(20_000, seed=777)
    x = x.double()
    g = torch.Generator().manual_seed(40_000)
    if t.name == "25gmm":
        w = nearest_mode_weights(x, t.means) * 25
        res["mode_weights_20000"] = w.tolist()
        res["mode_chi2_20000"] = float(((w - 1) ** 2 * 800).sum())  # Σ (c − 800)² / 800, df 24
        print(f"  mode weights ×25 (20,000 samples; rows a = −10..10, columns b = −10..10), χ² "
              f"{res['mode_chi2_20000']:.0f} on 24 df:\n" + "\n".join(
                  "    " + " ".join(f"{v:.2f}" for v in row) for row in w.view(5, 5).tolist()))
        k = torch.multinomial(w, N * repeats, replacement=True, generator=g).view(repeats, N)
        same = [wasserstein2(t._draw(kk, g, torch.device("cpu")), ref)
                for kk, ref in zip(k, [equal_count_reference(t, N, g) for _ in range(repeats)])]
        res["synthetic_model_weights_exact_modes_w2_80_per_mode"] = _ms(same)
        _line("synthetic: its mode weights, exact modes, vs 80/mode", res[
            "synthetic_model_weights_exact_modes_w2_80_per_mode"])
    if t.name == "manywell":
        a, b = x[:, 0::2], x[:, 1::2]
        res.update(right_well_fraction=float((a > 0).double().mean()), b_var=float(b.var()),
                   abs_a_sd=float(a.abs().std()), b_mean_max_abs=float(b.mean(0).abs().max()))
        print(f"  right-well fraction {res['right_well_fraction']:.3f} (exact 0.844), var b {res['b_var']:.3f} "
              f"(exact 1), sd |a| {res['abs_a_sd']:.3f} (exact 0.216), max |mean b_j| {res['b_mean_max_abs']:.3f}")
        syn = [wasserstein2(manywell_like(t, N, g, res["right_well_fraction"], math.sqrt(res["b_var"])),
                            t.sample(N, g)) for _ in range(repeats)]
        res["synthetic_same_well_fraction_and_b_var_w2"] = _ms(syn)
        _line("synthetic: its well fraction and var b", res["synthetic_same_well_fraction_and_b_var_w2"])
    return res


def manywell_synthetic(repeats):
    t, g = get_target("manywell"), torch.Generator().manual_seed(50_000)
    out = {}
    for p, b in ((0.8443, 1.0), (0.95, 1.0), (1.0, 1.0), (0.8443, 0.9), (0.8443, 0.8), (1.0, 0.8)):
        key = f"P(a>0)={p}, b x {b}"
        out[key] = _ms([wasserstein2(manywell_like(t, N, g, p, b), t.sample(N, g)) for _ in range(repeats)])
        _line(f"manywell synthetic {key}", out[key])
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(HERE, "results", "offpolicy_full"), help="the table's run directory")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=None, help="write the numbers here (default: OUT/checks/w2_checks.json)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print("floors: W2 of 2000 exact samples against 2000 exact ones", flush=True)
    res = {"n": N, "repeats": args.repeats, "floors": floors(args.repeats), "models": {}}
    print("models", flush=True)
    for path in sorted(glob.glob(os.path.join(args.out, "*.pt"))):
        if os.path.basename(path).split("_")[0] in ("25gmm", "manywell"):
            res["models"][os.path.basename(path)] = model_checks(path, args.repeats)
    print("synthetic Manywell samplers", flush=True)
    res["manywell_synthetic"] = manywell_synthetic(args.repeats)
    path = args.json or os.path.join(args.out, "checks", "w2_checks.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
