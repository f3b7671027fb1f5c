"""The generic annealed_mcmc against the loops a user would write by hand (issue 10, item 7): in plain PyTorch, and
over fastsamp's public ops.

The setting: a user's own score network (an 8-D MLP `torch.nn.Module`, not a fastsamp model: _user_mlp.UserMLP
on [x, t] minus x, its weights from a seeded generator),
2048 chains, annealed MALA with the score-based MH test (trapezoid with n_trapezoid sub-intervals,
default 1), one thread. The hand loop is written as one would write it well: no autograd, noise from
torch.randn / torch.rand into preallocated buffers, the MH test in a handful of tensor ops, and per level
one score call at the level's start and one per corrector move (on x' and the n_trapezoid - 1 interior
points as one batch); its predictor step reuses the score the last move kept in sync with x, and so does
annealed_mcmc's: both make n_levels * (moves + 1) network calls.

The ops loop (`ops_loop`) is the same annealed MALA written over fastsamp's public ops, as the README's examples
compose them: `reverse_sde_step`, `mala_propose` into the first plane of one (n_trapezoid, B, D) batch,
`line_points` into the others, one network call on the batch, `score_mh_accept` drawing its uniforms inside the
kernel into two output pairs used in turn. It draws the same Philox noise as annealed_mcmc, so its chains equal
the generic path's bit for bit (tests/test_bench.py): the two differ only in their Python around the same kernels
(the public ops check their arguments on every call; annealed_mcmc checks a level's constants once).

    python benchmarks/generic_vs_hand.py [--chains 2048] [--levels 50] [--moves 5] [--hidden 64]
                                         [--n-trapezoid 1] [--repeats 7] [--threads 1] [--device cpu]
                                         [--clock wall|cpu] [--validation off|on] [--json out.json]

fastsamp's value checks are off by default here (`--validation on` to time them too), as in issue 10's
goals: its 10 % bound on the time outside the network is stated with validation off, and the hand loop
checks nothing (with validation on, annealed_mcmc's per-level step-size check reads the device once per
level). The setting is printed.

The repeats are interleaved rounds of the three sides (round i starts with side i mod 3: a loaded machine slows
the sides of a round alike, and no side always runs first), and every run times the network's forward around
each call. Printed: the median of the per-round ratios generic / hand (the goal is <= 0.9) and generic / ops loop,
which the network's run-to-run spread moves less than a ratio of the sides' medians; each side's median total, in
the network and outside it; and the median per-round ratios of the time outside the network. All sides make
the same calls on the same rows, so the ratio can only come from the time outside the network, and the larger
the network's share (n_trapezoid 3 triples the rows of each move's call), the closer the ratio is to 1 for the
same savings outside. --clock cpu times the process's CPU time instead of the wall time (on the CPU: steadier
on a loaded machine, where the wall time also counts the time the process waits for a core; not for GPU runs,
whose kernels run off the process's CPU time).

--device cuda[:N]: the device is synchronised before and after each network call (and at each run's end), so the
network's time counts its kernels and not only their launches; the split into network and outside is then that of
serialised runs (no launch overlaps a running kernel at a network call), as the printed line says.
"""
import argparse
import json
import math
import statistics

import torch
from _timing import CLOCKS, device_sync, network_split
from _user_mlp import UserMLP

import fastsamp
from fastsamp import ops
from fastsamp.samplers.annealed import annealed_mcmc
from fastsamp.schedules import VP


def hand_loop(net, n, *, n_levels, n_moves, step_size, n_trapezoid=1, t_min=1e-3, seed=0, device="cpu"):
    """Annealed MALA with the trapezoid MH test, as plain PyTorch. Returns (x, accept rate)."""
    sched = VP()
    D = net.dim
    g = torch.Generator(device=device).manual_seed(seed)
    ts = torch.linspace(1.0, t_min, n_levels, dtype=torch.float64).tolist()
    x = math.sqrt(sched.alpha(1.0) ** 2 + sched.sigma2(1.0)) * torch.randn(n, D, generator=g, device=device)
    noise = torch.empty(n, D, device=device)
    u = torch.empty(n, device=device)
    n_acc = torch.zeros(n, device=device)
    frac = torch.arange(1, n_trapezoid, device=device)[:, None, None] / n_trapezoid  # interior points i/n
    s = None  # the score of x at the current level's time, kept in sync by every move
    with torch.no_grad():
        for i, t in enumerate(ts):
            if i > 0:  # reverse Euler-Maruyama from ts[i-1] to t
                tp = ts[i - 1]
                h, beta = tp - t, sched.beta(tp)
                # s: net(x, tp), kept in sync with x by the last move of the previous level
                torch.randn(n, D, generator=g, out=noise)
                x = (1 + 0.5 * h * beta) * x + (h * beta) * s + math.sqrt(h * beta) * noise
            eps = step_size * (sched.alpha(t) ** 2 + sched.sigma2(t))
            s = net(x, t)
            for _ in range(n_moves):
                torch.randn(n, D, generator=g, out=noise)
                x_prop = (x + eps * s).add_(noise, alpha=math.sqrt(2 * eps))
                d = x_prop - x
                if n_trapezoid == 1:
                    s_prop = net(x_prop, t)
                    path = 0.5 * ((s + s_prop) * d).sum(1)
                else:  # x' and the interior points x + (i/n) d in one call
                    scores = net(torch.cat([x_prop[None], x + frac * d]).reshape(-1, D), t).reshape(n_trapezoid, n, D)
                    s_prop = scores[0]
                    path = (0.5 * ((s + s_prop) * d).sum(1) + (scores[1:] * d).sum((0, 2))) / n_trapezoid
                fwd, bwd = d - eps * s, d + eps * s_prop
                log_alpha = path + ((fwd * fwd).sum(1) - (bwd * bwd).sum(1)) / (4 * eps)
                torch.rand(n, generator=g, out=u)
                acc = u.log_() < log_alpha
                x = torch.where(acc[:, None], x_prop, x)
                s = torch.where(acc[:, None], s_prop, s)
                n_acc += acc
    return x, n_acc / (n_levels * n_moves)


def ops_loop(net, n, *, n_levels, n_moves, step_size, n_trapezoid=1, t_min=1e-3, seed=0, device="cpu", backend="auto"):
    """annealed_mcmc's generic MALA + score-MH (predictor on, data_scale 1) as a user's loop over fastsamp's public ops,
    with annealed_mcmc's Philox offsets: x₀ draws (seed, 0), the predictor into level i > 0 one offset, each move the
    next. Returns (x, accept rate)."""
    sched, D = VP(), net.dim
    ts = torch.linspace(1.0, t_min, n_levels, dtype=torch.float64).tolist()
    x = (sched.alpha(1.0) ** 2 + sched.sigma2(1.0)) ** 0.5 * ops.normal(seed, 0, n, D, dtype=torch.float32,
                                                                        device=device)
    batch = x.new_empty(n_trapezoid, n, D)  # [x'; interior points]: one network call per move
    pairs = [(torch.empty_like(x), torch.empty_like(x)) for _ in range(2)]  # the accepted (x, s), in turn
    n_acc = torch.zeros(n, dtype=torch.int32, device=device)
    s, offset = None, 1
    with torch.no_grad():
        for i, t in enumerate(ts):
            if i > 0:  # s: net(x, ts[i - 1]), kept in sync with x by the last move of the previous level
                x = ops.reverse_sde_step(x, s, t=ts[i - 1], h=ts[i - 1] - t, schedule=sched, seed=seed, offset=offset,
                                         backend=backend)
                offset += 1
            eps = step_size * (sched.alpha(t) ** 2 + sched.sigma2(t))
            s = net(x, t)
            for m in range(n_moves):
                ops.mala_propose(x, s, eps, seed=seed, offset=offset + m, out=batch[0], backend=backend)
                if n_trapezoid > 1:
                    ops.line_points(x, batch[0], n_trapezoid, out=batch[1:], backend=backend)
                scores = net(batch.view(-1, D), t).view(n_trapezoid, n, D)
                x_out, s_out = pairs[m % 2]  # neither holds the current x or s
                x, s, acc, _ = ops.score_mh_accept(x, batch[0], s, scores, eps, seed=seed, offset=offset + m,
                                                   x_out=x_out, score_out=s_out, backend=backend)
                n_acc += acc
            offset += n_moves
    return x, n_acc / (n_levels * n_moves)


def generic(net, n, *, n_levels, n_moves, step_size, n_trapezoid=1, seed=0, device="cpu"):
    x, stats = annealed_mcmc(net, n, n_levels=n_levels, corrector="mala", mh="score", n_corrector_steps=n_moves,
                             n_trapezoid=n_trapezoid, step_size=step_size, seed=seed, device=device)
    return x, stats


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chains", type=int, default=2048)
    p.add_argument("--levels", type=int, default=50)
    p.add_argument("--moves", type=int, default=5)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--n-trapezoid", type=int, default=1)
    p.add_argument("--step-size", type=float, default=0.05)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    p.add_argument("--validation", choices=("off", "on"), default="off",
                   help="fastsamp's value checks in annealed_mcmc (default off, as in issue 10's goals)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    clock = CLOCKS[a.clock]
    torch.set_num_threads(a.threads)
    with fastsamp.validation(a.validation == "on"):
        return compare(a, clock)


def compare(a, clock):
    """Time the three sides in interleaved rounds and print the comparison (see the module docstring); returns the
    median per-round ratio generic / hand."""
    net = UserMLP(8, a.hidden, minus_x=True, init_seed=0).to(a.device)
    device = torch.device(a.device)
    sync = device_sync(device)
    kw = dict(n_levels=a.levels, n_moves=a.moves, step_size=a.step_size, n_trapezoid=a.n_trapezoid, device=a.device)
    runs = {"generic": lambda: generic(net, a.chains, **kw), "hand": lambda: hand_loop(net, a.chains, **kw),
            "ops loop": lambda: ops_loop(net, a.chains, **kw)}
    calls, evals = a.levels * (a.moves + 1), a.levels * (a.moves * a.n_trapezoid + 1)  # calls per run, rows per chain
    results = {}
    for k in runs:  # warm-up runs, which also check that every side makes the same network calls
        _, _, n_calls = network_split(net, lambda k=k: results.__setitem__(k, runs[k]()), clock, sync)
        if n_calls != calls:
            raise RuntimeError(f"{k} made {n_calls} network calls, expected {calls}")
    stats = results["generic"][1]
    if stats.n_score_evals != evals * a.chains:
        raise RuntimeError(f"annealed_mcmc made {stats.n_score_evals / a.chains} score evaluations per chain, "
                           f"the hand loop {evals}")
    rates = {"generic": sum(stats.accept_rate) / a.levels,
             **{k: float(results[k][1].mean()) for k in ("hand", "ops loop")}}
    split = {k: [] for k in runs}  # per side: (total, in the network) of each repeat
    order = list(runs)
    for i in range(a.repeats):  # round i starts with side i mod 3: no side always first
        for k in order[i % 3:] + order[:i % 3]:
            split[k].append(network_split(net, runs[k], clock, sync)[:2])
    total = {k: [tot for tot, _ in v] for k, v in split.items()}
    outside = {k: [tot - inside for tot, inside in v] for k, v in split.items()}

    def per_round(v, other):
        return statistics.median(g / h for g, h in zip(v["generic"], v[other]))
    ratio, outside_ratio = per_round(total, "hand"), per_round(outside, "hand")
    ops_ratio, ops_outside_ratio = per_round(total, "ops loop"), per_round(outside, "ops loop")
    print(f"{a.chains} chains, {a.levels} levels x {a.moves} MALA moves (n_trapezoid {a.n_trapezoid}), score calls of "
          f"an 8-D MLP (hidden {a.hidden}): {calls} on each side; {a.threads} thread(s), {a.device}; validation "
          f"{a.validation}; {a.clock} time, {a.repeats} interleaved rounds, the network timed around each call"
          + ("; serialised runs: the GPU synchronised before and after each network call" if device.type == "cuda"
             else ""))
    for k in runs:
        med_total, med_net = statistics.median(total[k]), statistics.median(inside for _, inside in split[k])
        runs_ms = ", ".join(f"{t * 1e3:.0f}" for t in total[k])
        print(f"  {k:9s} {med_total * 1e3:8.1f} ms = network {med_net * 1e3:.1f} + outside "
              f"{statistics.median(outside[k]) * 1e3:.1f} (medians; acceptance {rates[k]:.3f}; runs {runs_ms})")
    print(f"  generic / hand = {ratio:.3f} (median of the per-round ratios; goal <= 0.9), outside the network "
          f"{outside_ratio:.3f}")
    print(f"  generic / ops loop = {ops_ratio:.3f} (median of the per-round ratios), outside the network "
          f"{ops_outside_ratio:.3f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "times_s": total, "network_split_s": split, "outside_s": outside,
                       "ratio": ratio, "outside_ratio": outside_ratio, "ops_loop_ratio": ops_ratio,
                       "ops_loop_outside_ratio": ops_outside_ratio}, f, indent=1)
    return ratio


if __name__ == "__main__":
    main()
