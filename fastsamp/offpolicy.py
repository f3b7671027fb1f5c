"""Experiments with off-policy trained diffusion samplers (`fastsamp train`): any
(target, objective, exploration) combination, the method presets of Sendera et al. (2024)'s
main table, evaluation against ground truth, JSON and saved models."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time

import torch

from .distributed import Comm
from .samplers.diffusion import DiffusionSampler, TrainConfig, train
from .targets import TARGETS, get_target

# σ² of the reference process per target (Sendera et al., §5.1 / App. D)
SIGMA2 = {"25gmm": 5.0, "funnel": 1.0, "manywell": 1.0, "40gmm": 5.0, "lgcp": 5.0}

# method name -> (TrainConfig overrides, DriftNet options, paper iterations)
METHODS = {
    "pis": (dict(objective="pis"), {}, 25000),
    "pis+lp": (dict(objective="pis"), dict(langevin=True), 10000),
    "tb": (dict(objective="tb"), {}, 25000),
    "tb+expl": (dict(objective="tb", explore=0.2), {}, 25000),
    "vargrad+expl": (dict(objective="vargrad", explore=0.2), {}, 25000),
    "subtb": (dict(objective="subtb", lr_flow=1e-2), dict(flow=True), 25000),
    "subtb+lp": (dict(objective="subtb", lr_flow=1e-2), dict(flow=True, langevin=True), 10000),
    "tb+expl+ls": (dict(objective="tb", explore=0.1, local_search=True), {}, 25000),
    "tb+expl+lp": (dict(objective="tb", explore=0.2), dict(langevin=True), 10000),
    "tb+expl+lp+ls": (dict(objective="tb", explore=0.2, local_search=True), dict(langevin=True), 10000),
    "vargrad+expl+lp+ls": (dict(objective="vargrad", explore=0.2, local_search=True), dict(langevin=True), 10000),
}


def build(target_name: str, method: str, *, seed: int = 0, iterations: int | None = None, fused: bool = True,
          n_steps: int = 100, batch_size: int = 300, hidden: int = 64, **overrides):
    """(sampler, TrainConfig) for a method preset; `overrides` replace TrainConfig fields."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {tuple(METHODS)}, got {method!r}")
    target = get_target(target_name)
    cfg_kw, net_kw, paper_iters = METHODS[method]
    cfg = TrainConfig(**{**cfg_kw, "iterations": paper_iters if iterations is None else iterations,
                         "batch_size": batch_size, "seed": seed, **overrides})
    torch.manual_seed(seed)
    sampler = DiffusionSampler(target, sigma=math.sqrt(SIGMA2.get(target_name, 1.0)), n_steps=n_steps,
                               fused=fused, hidden=hidden, n_harmonics=hidden, **net_kw)
    return sampler, cfg


def evaluate(sampler, target, *, n=2000, seed=12345):
    """log Z errors against the ground truth (where known), ELBO/EUBO, ESS, and W2 to exact samples."""
    exact = None
    try:
        exact = target.sample(n, torch.Generator().manual_seed(seed))
    except NotImplementedError:
        pass
    m = sampler.evaluate(n, seed=seed, exact_samples=exact)
    if target.log_Z is not None:
        m["log_Z_true"] = target.log_Z
        m["delta_log_Z"] = abs(m["elbo"] - target.log_Z)        # Δlog Z of the paper (from the ELBO)
        m["delta_log_Z_rw"] = abs(m["log_Z"] - target.log_Z)    # Δlog Z^RW (importance-weighted)
    return m


def run(target_name: str, method: str, *, seed=0, iterations=None, out_dir=None, progress=True, eval_samples=2000,
        **kw) -> dict:
    """Train one (target, method, seed) and evaluate; writes model + JSON into out_dir when given.
    Under torchrun every rank trains (DistributedDataParallel, batch_size per rank) and rank 0
    evaluates and writes; the other ranks return None."""
    sampler, cfg = build(target_name, method, seed=seed, iterations=iterations, **kw)
    log = train(sampler, cfg, progress=progress)
    if Comm.resolve().rank != 0:
        return None
    t0 = time.perf_counter()
    metrics = evaluate(sampler, sampler.target, n=eval_samples, seed=10_000 + seed)
    result = {
        "target": target_name, "method": method, "seed": seed, "iterations": cfg.iterations,
        "paper_iterations": METHODS[method][2], "seconds_per_iteration": log.seconds_per_iteration,
        "train_seconds": log.seconds, "eval_seconds": time.perf_counter() - t0,
        "final_loss": sum(log.loss[-100:]) / max(len(log.loss[-100:]), 1),
        "metrics": metrics, "config": dataclasses.asdict(cfg), "sigma": sampler.sigma, "fused": sampler.fused,
        "torch_threads": torch.get_num_threads(),
    }
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        stem = os.path.join(out_dir, f"{target_name}_{method}_seed{seed}")
        torch.save(sampler.state_dict(), stem + ".pt")
        with open(stem + ".json", "w") as f:
            json.dump(result, f, indent=2)
        result["model_path"] = stem + ".pt"
    return result


def time_iterations(target_name: str, method: str, *, iterations=20, warmup=3, seed=0, **kw) -> dict:
    """Seconds per training iteration of the fused path and of the eager PyTorch path of the same
    loop (per-step autograd through the reference op), measured back to back in this process."""
    out = {}
    for fused in (True, False):
        sampler, cfg = build(target_name, method, seed=seed, iterations=warmup, fused=fused, **kw)
        train(sampler, cfg, progress=False)
        cfg = dataclasses.replace(cfg, iterations=iterations)
        out["fused" if fused else "eager"] = train(sampler, cfg, progress=False).seconds_per_iteration
    out["speedup"] = out["eager"] / out["fused"]
    return out


def main(args) -> int:
    """`fastsamp train`: train, evaluate, save; prints the JSON summary."""
    if args.time:
        res = time_iterations(args.target, args.method, iterations=args.iterations or 20, seed=args.seed,
                              batch_size=args.batch_size)
        print(json.dumps(res, indent=2))
        return 0
    res = run(args.target, args.method, seed=args.seed, iterations=args.iterations, out_dir=args.out,
              progress=not args.no_progress, batch_size=args.batch_size, fused=not args.eager,
              eval_samples=args.eval_samples)
    if res is None:  # not rank 0 of a distributed run
        return 0
    m = res["metrics"]
    print(json.dumps(res if args.verbose else {k: res[k] for k in ("target", "method", "seed", "iterations",
                                                                    "seconds_per_iteration", "metrics")}, indent=2))
    if args.target in TARGETS and "delta_log_Z" in m:
        print(f"{args.target} {args.method}: Δlog Z {m['delta_log_Z']:.3f}  Δlog Z^RW {m['delta_log_Z_rw']:.3f}  "
              f"W2 {m.get('w2', float('nan')):.3f}  ({res['seconds_per_iteration'] * 1e3:.1f} ms/iteration)")
    return 0
