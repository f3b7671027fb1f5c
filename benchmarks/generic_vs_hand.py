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

The compiled sides (on by default; --no-compile leaves them out): "hand compiled", the hand loop with its move (the
network inlined) and its predictor step under torch.compile and the level's first network call through
torch.compile(net), and "generic, compiled net", annealed_mcmc given ScoreModel(torch.compile(net), D,
time_as_tensor=True) (the README's way to compile a network for a sampler): the best plain PyTorch a user could
write against fastsamp with the same compiled network. t (a float in the hand loop, which the user network takes
in tensor arithmetic; a 0-d tensor in annealed_mcmc) and eps are graph inputs, so the graphs serve every level;
they compile in the warm-up runs, and the compiled sides are timed whole (their network calls sit inside compiled
code).

    python benchmarks/generic_vs_hand.py [--chains 2048] [--levels 50] [--moves 5] [--hidden 64]
                                         [--n-trapezoid 1] [--repeats 7] [--threads 1] [--device cpu]
                                         [--clock wall|cpu] [--validation off|on] [--no-compile] [--json out.json]

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
from fastsamp.models import ScoreModel
from fastsamp.samplers.annealed import annealed_mcmc
from fastsamp.schedules import VP


def hand_move(net, x, s, noise, u, eps, t, frac):
    """One MALA move with the trapezoid MH test (n_trapezoid = len(frac) + 1 sub-intervals) from the drawn noise and
    uniforms u (overwritten by log u): returns (x, s, accepted)."""
    n, D = x.shape
    if torch.compiler.is_compiling():  # a float `alpha=` would be a graph constant: one graph per step size
        x_prop = x + eps * s + (2 * eps) ** 0.5 * noise
    else:
        x_prop = (x + eps * s).add_(noise, alpha=(2 * eps) ** 0.5)
    d = x_prop - x
    if len(frac) == 0:
        s_prop = net(x_prop, t)
        path = 0.5 * ((s + s_prop) * d).sum(1)
    else:  # x' and the interior points x + (i/n) d in one call
        scores = net(torch.cat([x_prop[None], x + frac * d]).reshape(-1, D), t).reshape(len(frac) + 1, n, D)
        s_prop = scores[0]
        path = (0.5 * ((s + s_prop) * d).sum(1) + (scores[1:] * d).sum((0, 2))) / (len(frac) + 1)
    fwd, bwd = d - eps * s, d + eps * s_prop
    log_alpha = path + ((fwd * fwd).sum(1) - (bwd * bwd).sum(1)) / (4 * eps)
    acc = u.log_() < log_alpha
    return torch.where(acc[:, None], x_prop, x), torch.where(acc[:, None], s_prop, s), acc


def hand_predict(x, s, noise, a, b, c):
    """The reverse Euler–Maruyama step a·x + b·s + c·noise."""
    return a * x + b * s + c * noise


# The hand loop compiled: its move and predictor step under torch.compile (the network inlined into the move's
# graph; pass a torch.compile'd network for the level's first call). Floats t and eps are graph inputs: one graph
# for every level.
compiled_move, compiled_predict = torch.compile(hand_move), torch.compile(hand_predict)


def hand_loop(net, n, *, n_levels, n_moves, step_size, n_trapezoid=1, t_min=1e-3, seed=0, device="cpu",
              compiled=False):
    """Annealed MALA with the trapezoid MH test, as plain PyTorch (compiled: the move and the predictor step under
    torch.compile). Returns (x, accept rate)."""
    move, predict = (compiled_move, compiled_predict) if compiled else (hand_move, hand_predict)
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
                x = predict(x, s, noise, 1 + 0.5 * h * beta, h * beta, math.sqrt(h * beta))
            eps = step_size * (sched.alpha(t) ** 2 + sched.sigma2(t))
            s = net(x, t)
            for _ in range(n_moves):
                torch.randn(n, D, generator=g, out=noise)
                torch.rand(n, generator=g, out=u)
                x, s, acc = move(net, x, s, noise, u, eps, t, frac)
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
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the hand loop compiled and annealed_mcmc with the network compiled (default on)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    clock = CLOCKS[a.clock]
    torch.set_num_threads(a.threads)
    with fastsamp.validation(a.validation == "on"):
        return compare(a, clock)


def compare(a, clock):
    """Time the sides in interleaved rounds and print the comparison (see the module docstring); returns the median
    per-round ratio generic / hand."""
    net = UserMLP(8, a.hidden, minus_x=True, init_seed=0).to(a.device)
    device = torch.device(a.device)
    sync = device_sync(device)
    kw = dict(n_levels=a.levels, n_moves=a.moves, step_size=a.step_size, n_trapezoid=a.n_trapezoid, device=a.device)
    runs = {"generic": lambda: generic(net, a.chains, **kw), "hand": lambda: hand_loop(net, a.chains, **kw),
            "ops loop": lambda: ops_loop(net, a.chains, **kw)}
    if a.compile:  # the network inside compiled graphs: these sides are timed whole, not split at its calls
        cnet = torch.compile(net)
        runs |= {"hand compiled": lambda: hand_loop(cnet, a.chains, compiled=True, **kw),
                 "generic, compiled net": lambda: generic(ScoreModel(cnet, net.dim, time_as_tensor=True), a.chains,
                                                          **kw)}
    split_sides = ("generic", "hand", "ops loop")
    calls, evals = a.levels * (a.moves + 1), a.levels * (a.moves * a.n_trapezoid + 1)  # calls per run, rows per chain
    results = {}

    def run(k):
        """(total, in the network) seconds of one run of side k (in the network: None for the compiled sides)."""
        if k in split_sides:
            total, inside, n_calls = network_split(net, lambda: results.__setitem__(k, runs[k]()), clock, sync)
            if n_calls != calls:
                raise RuntimeError(f"{k} made {n_calls} network calls, expected {calls}")
            return total, inside
        t0 = clock()
        results[k] = runs[k]()
        sync()
        return clock() - t0, None
    for k in runs:  # warm-up runs (the compiled sides compile here), which also check every side's network calls
        run(k)
    stats = results["generic"][1]
    if stats.n_score_evals != evals * a.chains:
        raise RuntimeError(f"annealed_mcmc made {stats.n_score_evals / a.chains} score evaluations per chain, "
                           f"the hand loop {evals}")
    rates = {k: sum(r[1].accept_rate) / a.levels if k.startswith("generic") else float(r[1].mean())
             for k, r in results.items()}
    split = {k: [] for k in runs}  # per side: (total, in the network) of each repeat
    order = list(runs)
    for i in range(a.repeats):  # round i starts with side i mod (sides): no side always first
        for k in order[i % len(order):] + order[:i % len(order)]:
            split[k].append(run(k))
    total = {k: [tot for tot, _ in v] for k, v in split.items()}
    outside = {k: [tot - inside for tot, inside in v] for k, v in split.items() if k in split_sides}

    def per_round(v, num, den):
        return statistics.median(g / h for g, h in zip(v[num], v[den]))
    ratio, outside_ratio = per_round(total, "generic", "hand"), per_round(outside, "generic", "hand")
    ops_ratio, ops_outside_ratio = per_round(total, "generic", "ops loop"), per_round(outside, "generic", "ops loop")
    print(f"{a.chains} chains, {a.levels} levels x {a.moves} MALA moves (n_trapezoid {a.n_trapezoid}), score calls of "
          f"an 8-D MLP (hidden {a.hidden}): {calls} on each side; {a.threads} thread(s), {a.device}; validation "
          f"{a.validation}; {a.clock} time, {a.repeats} interleaved rounds, the network timed around each call"
          + ("; serialised runs: the GPU synchronised before and after each network call" if device.type == "cuda"
             else ""))
    for k in runs:
        runs_ms = ", ".join(f"{t * 1e3:.0f}" for t in total[k])
        split_ms = (f" = network {statistics.median(inside for _, inside in split[k]) * 1e3:.1f} + outside "
                    f"{statistics.median(outside[k]) * 1e3:.1f}" if k in split_sides else "")
        print(f"  {k:21s} {statistics.median(total[k]) * 1e3:8.1f} ms{split_ms} (medians; acceptance {rates[k]:.3f}; "
              f"runs {runs_ms})")
    print(f"  generic / hand = {ratio:.3f} (median of the per-round ratios; goal <= 0.9), outside the network "
          f"{outside_ratio:.3f}")
    print(f"  generic / ops loop = {ops_ratio:.3f} (median of the per-round ratios), outside the network "
          f"{ops_outside_ratio:.3f}")
    compiled = {}
    if a.compile:
        compiled = {"generic / hand compiled": per_round(total, "generic", "hand compiled"),
                    "generic, compiled net / hand compiled": per_round(total, "generic, compiled net",
                                                                        "hand compiled")}
        print("  " + ", ".join(f"{k} = {v:.3f}" for k, v in compiled.items()) + " (medians of the per-round ratios)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "times_s": total, "network_split_s": split, "outside_s": outside,
                       "ratio": ratio, "outside_ratio": outside_ratio, "ops_loop_ratio": ops_ratio,
                       "ops_loop_outside_ratio": ops_outside_ratio, "compiled_ratios": compiled}, f, indent=1)
    return ratio


if __name__ == "__main__":
    main()
