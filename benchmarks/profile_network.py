"""Where the generic annealed_mcmc spends its time with a user's own network score (issue 10's benchmark
"with validation off, annealed_mcmc on a small network score model spends at most 10% of its wall time
outside the network calls"): fastsamp.profiling's breakdown of one run and, without the profiler's own
cost, the share of unprofiled runs outside the network's forward (timed around each call).

    python benchmarks/profile_network.py [--chains 2048 --levels 20 --moves 5 --hidden 64 --trace t.json]
                                         [--clock wall|cpu] [--pieces] [--device cpu|cuda[:N]] [--json out.json]

--clock cpu times the unprofiled runs and the network calls by the process's CPU time (steadier on a loaded
CPU machine, where the wall time also counts waiting for a core). --pieces also prints, from one more run with a
timer around each piece of the generic path (the network's forward, each kernel, the dispatch choice, the model
wrappers, the corrector's and the sampler's own Python; about 1 us per timed call), each piece's self time per
move: where the time outside the network goes, without the profiler's cost per torch op.

--device cuda runs the model and the sampler on a GPU (wall clock only). The unprofiled runs then synchronise the
device before and after each network call and at the run's end, so the network's share counts its kernels' time
and not only their launches (the synchronisation removes the overlap of launches with running kernels: the share
outside the network is that of a serialised run, as the printed line and the JSON say, with the GPU's name). The
profiler's breakdown and --pieces time the host side.

The network is _user_mlp.UserMLP on [x, t] (torch's default initialisation after torch.manual_seed(0)).
"""
from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter

import torch
from _timing import CLOCKS, CLOCKS_NS, device_sync, network_split
from _user_mlp import UserMLP

import fastsamp
from fastsamp import models, protocol
from fastsamp.ops import _dispatch
from fastsamp.samplers import annealed, kernels


class PieceTimer:
    """Self time (the timed callees' excluded) and calls of each wrapped function, by `clock` (ns)."""

    def __init__(self, clock):
        self.clock, self.self_ns, self.calls, self._stack, self._undo = clock, Counter(), Counter(), [], []

    def timed(self, label, fn):
        def call(*args, **kwargs):
            self._stack.append(0)
            t0 = self.clock()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed, inner = self.clock() - t0, self._stack.pop()
                self.self_ns[label] += elapsed - inner
                self.calls[label] += 1
                if self._stack:
                    self._stack[-1] += elapsed
        return call

    def wrap(self, owner, name, label, fn=None):
        """owner.name timed as `label` (fn: what to time instead of owner.name) until `restore`."""
        self._undo.append((owner, name, owner.__dict__.get(name)))
        setattr(owner, name, self.timed(label, fn or getattr(owner, name)))

    def restore(self):
        for owner, name, old in reversed(self._undo):
            if old is None:
                delattr(owner, name)
            else:
                setattr(owner, name, old)


PIECES = [(protocol.CountingModel, "score", "CountingModel.score (count, output check)"),
          (models.ScoreModel, "score", "ScoreModel.score (no_grad, the module's call)"),
          (kernels.ScoreMH, "langevin", "MH piece: the points' batch, slices"),
          (kernels.Langevin, "step", "Langevin.step"), (kernels.Langevin, "init", "Langevin.init (per level)"),
          (kernels, "checked_kernel", "checked_kernel (per level)"),
          (annealed, "run_corrector", "run_corrector: loop (per level; counts accepts only unchunked)"),
          (annealed, "nonfinite_rows", "non-finite rows (per level)"),
          (annealed, "chunk_values", "level statistics (per chunk of levels)"),
          (annealed, "annealed_mcmc", "annealed_mcmc: setup, per-level work, end")]


def pieces(model, run, clock):
    """{piece: (self seconds, calls)} of one run() of the generic path with each piece timed around its calls."""
    timer = PieceTimer(clock)
    route = _dispatch.route
    timer.wrap(model, "forward", "network forward")
    timer.wrap(_dispatch, "route", "dispatch choice (route)",
               lambda backend, op, *t: timer.timed(f"kernel {op}", route(backend, op, *t)))
    for owner, name, label in PIECES:
        timer.wrap(owner, name, label)
    try:
        run()
    finally:
        timer.restore()
    return {k: (timer.self_ns[k] * 1e-9, timer.calls[k]) for k in timer.self_ns}


def print_pieces(split, n_moves):
    total = sum(s for s, _ in split.values())
    outside = total - split["network forward"][0]
    print(f"pieces of one more run (timed around each call, self time): {total * 1e3:.1f} ms, outside the network "
          f"{outside * 1e3:.1f} ms = {outside / n_moves * 1e6:.0f} us per move ({n_moves} moves; per-level pieces "
          f"spread over the moves)")
    for k, (s, n) in sorted(split.items(), key=lambda kv: -kv[1][0]):
        print(f"  {k:48s} {s / n_moves * 1e6:7.1f} us/move {n:5d} calls {s / n * 1e6:8.1f} us/call")


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
    p.add_argument("--pieces", action="store_true")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type not in ("cpu", "cuda"):
        p.error(f"--device must be cpu or cuda[:N], got {args.device}")
    if device.type == "cuda" and args.clock == "cpu":
        p.error("--clock cpu would not count a GPU's kernels: use --clock wall with --device cuda")
    on_gpu = device.type == "cuda"
    sync, clock = device_sync(device), CLOCKS[args.clock]
    device_name = f"{args.device} ({torch.cuda.get_device_name(device)})" if on_gpu else args.device
    torch.set_num_threads(1)
    fastsamp.set_validation(False)
    torch.manual_seed(0)
    model = UserMLP(args.dim, args.hidden).to(device)

    def run():  # its GPU work is left queued: sync() after it where a time ends (network_split syncs itself)
        return annealed.annealed_mcmc(model, args.chains, n_levels=args.levels, corrector="mala", mh="score",
                                      n_corrector_steps=args.moves, n_trapezoid=args.n_trapezoid, step_size=0.05,
                                      seed=0, on_nonfinite="ignore", device=device)

    _, stats = run()  # warm-up
    sync()
    walls, outside, outside_s = [], [], []
    for _ in range(args.repeats):  # the network's own time, without a profiler
        total, network_s, _ = network_split(model, run, clock, sync)
        walls.append(total)
        outside.append(1 - network_s / total)
        outside_s.append(total - network_s)
    wall, outside, outside_s = statistics.median(walls), statistics.median(outside), statistics.median(outside_s)
    n_moves = args.levels * args.moves
    with fastsamp.profiling.breakdown(trace=args.trace) as b:
        run()
        sync()
    print(f"annealed_mcmc, MALA + score-MH (n_trapezoid={args.n_trapezoid}), {args.chains} chains, D={args.dim}, "
          f"MLP hidden {args.hidden}x2, {args.levels} levels x {args.moves} moves, {device_name}, 1 thread, "
          f"validation off, {stats.n_score_evals} score evaluations")
    serialised = ("; a serialised run: the GPU synchronised before and after each network call, no launch overlaps a "
                  "running kernel there" if on_gpu else "")
    print(f"unprofiled: {args.clock} time {wall:.3f} s, outside the network calls {outside:.1%} (medians of "
          f"{args.repeats} runs, the network timed around each call{serialised}); outside the network "
          f"{outside_s * 1e3:.1f} ms = {outside_s / n_moves * 1e6:.0f} us per move (per-level work spread over the "
          f"moves; the network's own run-to-run spread moves this absolute time less than the share)")
    print(f"profiled wall {b.wall_s:.3f} s" + (f" ({b.wall_s / wall:.2f}x the unprofiled run)" if args.clock == "wall"
                                                else ""))
    print(b)
    if args.pieces:
        print_pieces(pieces(model, run, CLOCKS_NS[args.clock]), n_moves)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "device": device_name, "unprofiled_runs_serialised": on_gpu,
                       f"{args.clock}_s": wall, "outside_network_share_unprofiled": outside,
                       "outside_network_s_unprofiled": outside_s, "profile": b.as_dict()}, f, indent=1)


if __name__ == "__main__":
    main()
