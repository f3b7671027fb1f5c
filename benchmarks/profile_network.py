"""Where the generic annealed_mcmc spends its time with a user's own network score (issue 10's benchmark
"with validation off, annealed_mcmc on a small network score model spends at most 10% of its wall time
outside the network calls"): fastsamp.profiling's breakdown of one run and, without the profiler's own
cost, the share of unprofiled runs outside the network's forward (timed around each call).

    python benchmarks/profile_network.py [--chains 2048 --levels 20 --moves 5 --hidden 64 --trace t.json]
                                         [--clock wall|cpu]

--clock cpu times the unprofiled runs and the network calls by the process's CPU time (steadier on a loaded
CPU machine, where the wall time also counts waiting for a core).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import fastsamp
from fastsamp.samplers import annealed_mcmc


class MLPScore(torch.nn.Module):
    """s(x, t) = MLP([x, t]): two hidden SiLU layers, the user's own score network."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.dim = dim
        self.net = torch.nn.Sequential(torch.nn.Linear(dim + 1, hidden), torch.nn.SiLU(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, dim))

    def forward(self, x, t):
        return self.net(torch.cat([x, torch.full_like(x[:, :1], t)], 1))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chains", type=int, default=2048)
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--levels", type=int, default=20)
    p.add_argument("--moves", type=int, default=5)
    p.add_argument("--n-trapezoid", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--trace", default=None)
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    torch.set_num_threads(1)
    fastsamp.set_validation(False)
    torch.manual_seed(0)
    model = MLPScore(args.dim, args.hidden)

    def run():
        return annealed_mcmc(model, args.chains, n_levels=args.levels, corrector="mala", mh="score",
                             n_corrector_steps=args.moves, n_trapezoid=args.n_trapezoid, step_size=0.05, seed=0,
                             on_nonfinite="ignore")

    network_s = [0.0]

    def timed_forward(x, t, forward=model.forward):  # the network's own time, without a profiler
        t0 = clock()
        out = forward(x, t)
        network_s[0] += clock() - t0
        return out

    run()  # warm-up
    model.forward = timed_forward
    walls, outside = [], []
    for _ in range(args.repeats):
        network_s[0] = 0.0
        t0 = clock()
        _, stats = run()
        walls.append(clock() - t0)
        outside.append(1 - network_s[0] / walls[-1])
    del model.forward
    wall, outside = statistics.median(walls), statistics.median(outside)
    with fastsamp.profiling.breakdown(trace=args.trace) as b:
        run()
    print(f"annealed_mcmc, MALA + score-MH (n_trapezoid={args.n_trapezoid}), {args.chains} chains, D={args.dim}, "
          f"MLP hidden {args.hidden}x2, {args.levels} levels x {args.moves} moves, 1 thread, validation off, "
          f"{stats.n_score_evals} score evaluations")
    print(f"unprofiled: {args.clock} time {wall:.3f} s, outside the network calls {outside:.1%} (medians of "
          f"{args.repeats} runs, the network timed around each call)")
    print(f"profiled wall {b.wall_s:.3f} s" + (f" ({b.wall_s / wall:.2f}x the unprofiled run)" if args.clock == "wall"
                                                else ""))
    print(b)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), f"{args.clock}_s": wall, "outside_network_share_unprofiled": outside,
                       "profile": b.as_dict()}, f, indent=1)


if __name__ == "__main__":
    main()
