"""CPU seconds (process time, one thread: a loaded machine's waiting is not counted, its shared caches are) of
the 2-D product networks' work at the published sizes (residual MLP, 4 blocks, hidden 128, batch 2000):

* a training step (Adam), eager against `--compile`: A and B alternate in blocks (eager, compiled, eager, ...)
  on their own copies of one network; medians of the per-step times, the compilation (the first compiled
  step) apart;
* the samplers' evaluations of one network at one level, medians of `repeats`: score of 2000 rows and of
  16,000 rows (HMC-10's and LA-10's batched trapezoid points); for the energy version score and log-prob
  together (its score is that call's first half), and log-prob alone, of 2000 rows.

    python -m fastsamp.experiments.product2d.timing [--repeats 10] [--steps 5] [--versions score energy]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

from ...ddpm import DDPM
from ..options import count
from . import networks, targets


def time_version(version, repeats, steps, batch_size=2000):
    """{"eager_s", "compiled_s" (medians per step), "speedup", "compile_s", and the evaluations' seconds} for one
    version."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        base = networks.build(version, DDPM(100))
    runs = {}
    for mode in ("eager", "compiled"):
        model = copy.deepcopy(base)
        runs[mode] = (model, torch.optim.Adam(model.parameters(), lr=1e-3), torch.Generator().manual_seed(0), [])
    sample = targets.FACTORS["ring"][0]
    t0 = time.process_time()
    model, opt, g, _ = runs["compiled"]
    networks.training_step(model, opt, sample, g, batch_size, compile=True)
    compile_s = time.process_time() - t0
    for _ in range(repeats):
        for mode, (model, opt, g, times) in runs.items():
            for _ in range(steps):
                t0 = time.process_time()
                networks.training_step(model, opt, sample, g, batch_size, compile=mode == "compiled")
                times.append(time.process_time() - t0)
    eager, compiled = (statistics.median(runs[m][3]) for m in ("eager", "compiled"))
    return {"eager_s": eager, "compiled_s": compiled, "speedup": eager / compiled, "compile_s": compile_s,
            "steps_each": repeats * steps, **evaluation_seconds(base.requires_grad_(False).eval(), repeats)}


def evaluation_seconds(model, repeats):
    """Median seconds of the samplers' calls of `model` at the middle level (see the module docstring)."""
    g = torch.Generator().manual_seed(1)
    if model.has_energy:  # its methods call no batched trapezoid points
        calls = {"score_and_log_prob_2000_s": (model.score_and_log_prob, 2000),
                 "log_prob_2000_s": (model.log_prob, 2000)}
    else:
        calls = {"score_2000_s": (model.score, 2000), "score_16000_s": (model.score, 16000)}
    out = {}
    for name, (fn, rows) in calls.items():
        x, times = torch.randn(rows, 2, generator=g), []
        for _ in range(repeats):
            t0 = time.process_time()
            fn(x, 0.5)
            times.append(time.process_time() - t0)
        out[name] = statistics.median(times)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=count(1), default=10, help="alternating blocks per mode")
    p.add_argument("--steps", type=count(1), default=5, help="training steps per block")
    p.add_argument("--versions", nargs="+", choices=("score", "energy"), default=["score", "energy"])
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = {"threads": 1, "torch": torch.__version__}
    for version in args.versions:
        out[version] = time_version(version, args.repeats, args.steps)
        print(version, json.dumps(out[version]), flush=True)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
