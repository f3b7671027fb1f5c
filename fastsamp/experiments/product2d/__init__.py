"""`fastsamp product2d`: the MCMC-correction paper's 2-D product experiment at its published settings
(Sjöberg et al., Entropy 2026, Table 1; from Du et al. 2023).

Two factors (an 8-mode ring, a uniform bar) are each trained as a residual-MLP ε-network on a 100-step
cosine DDPM schedule, in a score and an energy version; their product is sampled by pure annealed
MCMC (100 levels × 10 moves from N(0, I), no reverse steps) and by ancestral sampling, and compared
with exact target samples (`report`). Resumable: every trained model is cached in OUT/models (one
file per version, factor and retrain; a training checkpoint every --checkpoint-every steps in between,
from which a killed run resumes to the same weights), every method's result is written to
OUT/runs/VERSION-rK.json as soon as it is done, and a rerun skips what exists; files are written
atomically. `--compile` compiles the training loss and its gradient (`networks.compiled_eps_loss`).

    fastsamp product2d [--out DIR] [--retrains 5] [--steps 15001] [--samples 2000] [--compile]
                       [--checkpoint-every 200] [--report-only]

Package layout: targets (the densities), networks (ε-nets and training), sampling (the methods),
report (metrics, markdown table, figure).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict

import torch

from ...ddpm import DDPM
from ...models import Product
from ..options import count, positive_float
from ..reporting import write_json
from . import networks, report, sampling, targets

SUMMARY = "the MCMC-correction paper's 2-D product of trained models (score and energy), its Table 1"
DESCRIPTION = ("Trains the ring and bar factors as DDPM ε-networks (score and energy versions), samples their "
               "product by pure annealed MCMC (U-LA, LA-3/5/10, U-HMC, HMC-3/5/10, HMC on the leapfrog path, the "
               "paper's HMC rejection) and ancestral sampling, and reports log-likelihood, exact W2 and GMM "
               "covariance distance against exact samples, next to the exact-vs-exact noise floor. Resumable.")

FACTOR_NAMES = ("ring", "bar")
VERSION_NAMES = ("score", "energy")


def add_arguments(p):
    p.add_argument("--out", default="benchmarks/results/product2d", help="output directory (models, runs, report)")
    p.add_argument("--retrains", type=count(1), default=5, help="independent model pairs")
    p.add_argument("--steps", type=count(1), default=15001, help="training steps per network")
    p.add_argument("--batch-size", type=count(1), default=2000, help="training batch (fresh data each step)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the trained weights")
    p.add_argument("--ddpm-steps", type=count(2), default=100, help="DDPM steps = annealing levels")
    p.add_argument("--samples", type=count(2), default=2000, help="generated and exact samples per set")
    p.add_argument("--mcmc-steps", type=count(1), default=10, help="MCMC moves per level")
    p.add_argument("--versions", nargs="+", choices=VERSION_NAMES, default=list(VERSION_NAMES))
    p.add_argument("--methods", nargs="+", default=None, help="only these method names (default: all)")
    p.add_argument("--threads", type=count(1), default=None, help="torch threads (default: torch's)")
    p.add_argument("--compile", action="store_true",
                   help="train with the loss and its gradient compiled by torch.compile (same architecture and "
                        "hyperparameters; float32 rounding differs from eager)")
    p.add_argument("--checkpoint-every", type=count(1), default=200,
                   help="training steps between checkpoints of a network (a killed run resumes from the last)")
    p.add_argument("--report-only", action="store_true", help="only write report.md and product2d.png from OUT")


def check(args):
    if not 0.0 <= args.ema < 1.0:
        args.parser.error(f"--ema must be in [0, 1), got {args.ema}")
    known = {m.name for v in args.versions for m in sampling.methods(v)}
    unknown = sorted(set(args.methods or ()) - known)
    if unknown:
        args.parser.error(f"--methods: unknown {', '.join(unknown)}; the methods of {', '.join(args.versions)} "
                          f"are {', '.join(sorted(known))}")
    if args.report_only and not (os.path.isdir(os.path.join(args.out, "runs"))
                                 and os.path.exists(os.path.join(args.out, "floor.json"))):
        args.parser.error(f"--report-only: {args.out} holds no results (runs/ and floor.json) to report")


def _config(args) -> dict:
    config = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "ema": args.ema,
              "ema_warmup": "decay min(ema, (1 + k)/(10 + k)) at step k",
              "ddpm": DDPM(args.ddpm_steps).config(),
              "sampling": asdict(sampling.Settings(n_samples=args.samples, n_steps=args.mcmc_steps))}
    if args.compile:  # only then: the runs recorded before --compile existed keep their configuration
        config["compiled_training"] = True
    return config


def reference_sets(n, retrain):
    """The exact target set of a retrain and an independent second one (for the floor)."""
    return (targets.target_sample(n, torch.Generator().manual_seed(10_000 + retrain)),
            targets.target_sample(n, torch.Generator().manual_seed(20_000 + retrain)))


def trained(args, out, version, retrain, log):
    """The version's two factor networks of a retrain: loaded from OUT/models, else trained and saved."""
    os.makedirs(os.path.join(out, "models"), exist_ok=True)
    training = {k: v for k, v in _config(args).items() if k != "sampling"}
    nets = []
    for j, factor in enumerate(FACTOR_NAMES):
        path = os.path.join(out, "models", f"{version}-{factor}-r{retrain}.pt")
        if os.path.exists(path):
            try:
                nets.append(networks.load(path, training))
            except ValueError as e:
                raise SystemExit(f"{e}: use another --out") from None
            continue
        t0 = time.perf_counter()
        seed = 1000 * retrain + 10 * VERSION_NAMES.index(version) + j
        with torch.random.fork_rng(devices=[]):  # initial weights from the seed alone (not from what ran before)
            torch.manual_seed(seed)
            model = networks.build(version, DDPM(args.ddpm_steps))
        checkpoint = path[:-3] + f".ckpt-s{args.steps}-b{args.batch_size}{'-compiled' if args.compile else ''}.pt"
        model = networks.train(model, targets.FACTORS[factor][0], steps=args.steps, batch_size=args.batch_size,
                               lr=args.lr, ema_decay=args.ema, seed=seed, checkpoint=checkpoint,
                               checkpoint_every=args.checkpoint_every, compile=args.compile,
                               log=lambda s, what=f"{version} {factor} r{retrain}": log(f"  train {what}: {s}"))
        networks.save(model, path, training)
        log(f"trained {version} {factor} r{retrain} in {time.perf_counter() - t0:.0f} s")
        nets.append(model)
    return nets


def run_version(args, out, version, retrain, log):
    path = os.path.join(out, "runs", f"{version}-r{retrain}.json")
    config = _config(args)
    result = {"version": version, "retrain": retrain, "config": config, "methods": {}}
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old["config"] != config:
            raise SystemExit(f"{path} was written with other settings ({old['config']}); use another --out")
        result["methods"] = old["methods"]
    todo = [m for m in sampling.methods(version) if (args.methods is None or m.name in args.methods)
            and m.name not in result["methods"]]
    if not todo:
        return
    nets = trained(args, out, version, retrain, log)
    result["networks"] = networks.fingerprint(nets)
    samples_path = os.path.join(out, "samples", f"{version}-r{retrain}.pt")
    os.makedirs(os.path.dirname(samples_path), exist_ok=True)
    resample = bool(result["methods"]) and old.get("networks") != result["networks"]
    if resample:
        # the recorded methods were sampled with other networks (their files lost, the networks trained again):
        # every method is sampled again, so that a retrain's methods share one model pair
        log(f"{version} r{retrain}: the networks differ from those its {len(result['methods'])} recorded methods "
            f"were sampled with ({old.get('networks', 'not recorded')} against {result['networks']}): sampling "
            "every method again")
        todo = [m for m in sampling.methods(version) if args.methods is None or m.name in args.methods
                or m.name in result["methods"]]
        result["methods"] = {}
    kept = not resample and os.path.exists(samples_path)  # the old networks' samples are not loaded to be dropped
    samples = torch.load(samples_path, weights_only=True) if kept else {}
    model = Product(*nets)
    reference, _ = reference_sets(args.samples, retrain)
    settings = sampling.Settings(n_samples=args.samples, n_steps=args.mcmc_steps)
    for method in todo:
        x, res = sampling.run_method(model, method, settings, seed=retrain)
        res.update(report.sample_metrics(x, reference), n_trapezoid=method.n_trapezoid if method.points else None,
                   points=method.points or None, flip=method.flip)
        result["methods"][method.name] = res
        samples[method.name] = x.float()
        networks.atomic_save(samples, samples_path)
        write_json(path, result)  # atomic: a run killed while writing keeps the last good file
        log(f"{version} r{retrain} {method.name}: W2 {res['w2']:.4f} LL {res['loglik']:.3f} "
            f"evals {res['score_evals_per_chain']:.0f} {res['wall_time_s']:.0f} s")


def write_report(out, log=print):
    """report.md (the table) and product2d.png (the samples of each version's first retrain whose samples are
    kept, every panel labelled) from OUT."""
    runs_dir = os.path.join(out, "runs")
    runs = {}
    for name in sorted(os.listdir(runs_dir)):
        with open(os.path.join(runs_dir, name)) as f:
            r = json.load(f)
        runs.setdefault(r["version"], []).append(r)
    with open(os.path.join(out, "floor.json")) as f:
        floor_runs = json.load(f)["retrains"]
    config = next(iter(runs.values()))[0]["config"]
    n_retrains = max(len(v) for v in runs.values())
    s = config["sampling"]
    text = (f"{n_retrains} retrain(s); training {config['steps']} steps, batch {config['batch_size']}, Adam "
            f"{config['lr']}, EMA {config['ema']}; DDPM {config['ddpm']['kind']} {config['ddpm']['n_steps']} steps; "
            f"{s['n_samples']} samples; {s['n_steps']} MCMC moves per level; LA ε {s['la_step']}, HMC ε "
            f"{s['hmc_step']}, {s['n_leapfrog']} leapfrog, damping {s['damping']}")
    published = {"retrains": (n_retrains, 5), "training steps": (config["steps"], 15001),
                 "batch": (config["batch_size"], 2000), "samples": (s["n_samples"], 2000),
                 "MCMC moves per level": (s["n_steps"], 10), "DDPM steps": (config["ddpm"]["n_steps"], 100)}
    changed = [f"{k} {v} (published {p})" for k, (v, p) in published.items() if v != p]
    if changed:
        text = "REDUCED RUN, not the published settings: " + ", ".join(changed) + ". " + text
    rows, floor = report.summarise(runs, floor_runs)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(report.markdown(rows, floor, text, runs))
    reference, _ = reference_sets(s["n_samples"], 0)
    panels = [("exact product target", reference, None)]
    for version in runs:  # the first retrain whose samples are on disk
        for r in sorted(runs[version], key=lambda r: r["retrain"]):
            sp = os.path.join(out, "samples", f"{version}-r{r['retrain']}.pt")
            if os.path.exists(sp):
                xs = torch.load(sp, weights_only=True)
                panels += [(f"{version} model r{r['retrain']} · {name}", x, r["methods"].get(name))
                           for name, x in xs.items()]
                break
    report.figure(panels, os.path.join(out, "product2d.png"), f"2-D product — {text}")
    log(f"wrote {out}/report.md and {out}/product2d.png")


def main(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out

    def log(msg):
        print(time.strftime("%H:%M:%S"), msg, flush=True)

    if not args.report_only:
        floor = []
        for k in range(args.retrains):
            a, b = reference_sets(args.samples, k)
            floor.append(report.sample_metrics(b, a))
        write_json(os.path.join(out, "floor.json"), {"n_samples": args.samples, "retrains": floor})
        for k in range(args.retrains):
            for version in args.versions:
                run_version(args, out, version, k, log)
    write_report(out, log)
    return 0
