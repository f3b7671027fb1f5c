"""Milliseconds per training iteration of the off-policy diffusion sampler (issue 11: "PIS and LP
training iterations on the fused engine >= 3x eager"): the fused path (DiffusionSampler(fused=True):
the whole-trajectory C++ kernels, PIS through the reparameterised rollout's adjoint backward, the
Langevin term with the target's score in the kernel) against the eager PyTorch path (fused=False:
the per-step autograd loop on the reference op) and, with --compile, that eager path with the drift
network compiled (torch.compile of DriftNet.forward, static shapes, after warm-up: the network is
the part of a step a compiler can fuse; the loop and the op stay eager).

    python benchmarks/offpolicy_speed.py [--targets 25gmm funnel manywell] [--methods pis tb ...]
                                         [--iterations 60] [--segment 10] [--compile] [--profile]

Each path trains its own sampler of the method's preset (fastsamp.experiments.offpolicy.build:
batch 300, T = 100, hidden 64) from the same initialisation through `train()` itself, resumed from
a checkpoint every --segment iterations so that the paths run interleaved (fused, eager, compile,
fused, ...) on the same machine state; checkpoint writes are not timed. Reported: the median over
the segments of the process CPU time per iteration (one thread), and the ratio eager / fused and
best PyTorch / fused ("best PyTorch": the faster of eager and compile). A local-search method runs
its MALA search in iteration 1 and every 100 iterations; the mean over all segments ("mean") counts
it at that rate when --iterations is a multiple of 100. --profile prints where the fused
iteration's time goes (the policy kernels, the target, the rest).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

import torch

from fastsamp.experiments.offpolicy import METHODS, build
from fastsamp.experiments.options import count
from fastsamp.profiling import PREFIX
from fastsamp.samplers.diffusion import train
from fastsamp.targets import TARGETS

DEFAULT_METHODS = ("pis", "tb+expl+lp", "pis+lp", "tb", "tb+expl+lp+ls")


def time_paths(target, method, paths, *, iterations, segment, warmup, batch_size):
    """{path: [ms per iteration (CPU time) of each segment]} for the interleaved paths."""
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            sampler, cfg = build(target, method, seed=0, iterations=warmup + iterations, fused=path == "fused",
                                 batch_size=batch_size)
            if path == "compile":  # a fresh cache per cell: the cells share DriftNet.forward's code object, and
                torch._dynamo.reset()  # past dynamo's recompile limit the later cells would silently run eager
                sampler.net.forward = torch.compile(sampler.net.forward, dynamic=False)
            ckpt = os.path.join(tmp, f"{path}.ckpt")
            log = train(sampler, cfg, progress=False, checkpoint=ckpt, until=warmup)
            runs[path] = (sampler, cfg, ckpt, [log.cpu_seconds], [])
        for start in range(warmup, warmup + iterations, segment):
            stop = min(start + segment, warmup + iterations)
            for path in paths:
                sampler, cfg, ckpt, prev, per = runs[path]
                log = train(sampler, cfg, progress=False, checkpoint=ckpt, until=stop)
                per.append(1e3 * (log.cpu_seconds - prev[0]) / (stop - start))
                prev[0] = log.cpu_seconds
    return {path: run[4] for path, run in runs.items()}


def profile_fused(target, method, *, iterations, batch_size):
    """Shares of the fused iterations' wall time (under torch.profiler): the policy kernels (the
    sampler's `fastsamp.policy` ranges around the rollout / log p_F calls, and their backward
    nodes), and the rest (the target's log-density, the time-embedding MLP, Adam, Python, ...),
    with the largest torch events of the rest."""
    sampler, cfg = build(target, method, seed=0, iterations=iterations + 2, batch_size=batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "fused.ckpt")
        before = train(sampler, cfg, progress=False, checkpoint=ckpt, until=2).seconds
        with torch.profiler.profile() as prof:
            log = train(sampler, cfg, progress=False, checkpoint=ckpt)
    total = 1e6 * (log.seconds - before)
    events = prof.key_averages()
    ranges = sum(e.cpu_time_total for e in events if e.key == PREFIX + "policy")
    backward = [e for e in events if (e.key.startswith("_Policy") and "Backward" in e.key)
                or (e.key.startswith("fastsamp::policy") and e.key.endswith("_backward"))]
    backward_ids = {id(e) for e in backward}
    backward = sum(e.self_cpu_time_total for e in backward)
    rest = [e for e in events if e.key != PREFIX + "policy" and id(e) not in backward_ids
            and not e.key.startswith(("_Policy", "fastsamp::policy"))]
    return {"kernels": (ranges + backward) / total, "other": 1 - (ranges + backward) / total,
            "top_rest": [(e.key, round(e.self_cpu_time_total / total, 3))
                         for e in sorted(rest, key=lambda e: -e.self_cpu_time_total)[:5]]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", nargs="+", choices=TARGETS, default=["25gmm", "funnel", "manywell"])
    p.add_argument("--methods", nargs="+", choices=tuple(METHODS), default=list(DEFAULT_METHODS))
    p.add_argument("--iterations", type=count(1), default=60, help="timed iterations per path")
    p.add_argument("--segment", type=count(1), default=10, help="iterations per interleaved segment")
    p.add_argument("--warmup", type=count(1), default=3)
    p.add_argument("--batch-size", type=count(1), default=300)
    p.add_argument("--threads", type=count(1), default=1)
    p.add_argument("--compile", action="store_true", help="also time the eager path with a compiled DriftNet")
    p.add_argument("--profile", action="store_true", help="also profile the fused iterations")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    paths = ["fused", "eager"] + (["compile"] if args.compile else [])
    print(f"ms per training iteration (CPU time, median of {args.iterations // args.segment} interleaved segments of "
          f"{args.segment}; {args.threads} thread(s), batch {args.batch_size}, T = 100)")
    head = f"{'target':9s} {'method':14s}" + "".join(f" {p_:>8s}" for p_ in paths) + "  eager/fused"
    print(head + ("  best PyTorch/fused" if args.compile else "") + "  (mean: fused, eager)")
    results = []
    for target in args.targets:
        for method in args.methods:
            per = time_paths(target, method, paths, iterations=args.iterations, segment=args.segment,
                             warmup=args.warmup, batch_size=args.batch_size)
            med = {k: statistics.median(v) for k, v in per.items()}
            mean = {k: statistics.mean(v) for k, v in per.items()}
            row = {"target": target, "method": method, "median_ms": med, "mean_ms": mean, "segments_ms": per,
                   "eager_over_fused": med["eager"] / med["fused"]}
            line = f"{target:9s} {method:14s}" + "".join(f" {med[k]:8.1f}" for k in paths)
            line += f"  {row['eager_over_fused']:10.2f}x"
            if args.compile:
                row["best_pytorch_over_fused"] = min(med["eager"], med["compile"]) / med["fused"]
                line += f"  {row['best_pytorch_over_fused']:17.2f}x"
            line += f"  ({mean['fused']:.1f}, {mean['eager']:.1f})"
            if args.profile:
                row["fused_profile"] = prof = profile_fused(target, method, iterations=args.segment,
                                                            batch_size=args.batch_size)
                line += f"  fused: {100 * prof['kernels']:.0f}% in the policy kernels"
            print(line, flush=True)
            results.append(row)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"threads": args.threads, "iterations": args.iterations, "segment": args.segment,
                       "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
