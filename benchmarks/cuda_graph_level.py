"""A whole annealing level with a user's network score, captured once in a CUDA graph and replayed (issue 10's
GPU benchmark: "CUDA-graph capture of a whole corrector level for a network score model, its speed-up over eager,
and replay drawing fresh noise").

The level, written with the public ops as a user would (`level` below): n MALA moves at time t, each a proposal
(`mala_propose`) written into the first plane of one (n_trapezoid, B, D) batch, the trapezoid's interior points
(`line_points`) into the others, ONE network call on the batch, and the score-MH test (`score_mh_accept`) drawing
its uniforms inside the kernel; then one reverse-SDE predictor step t -> t - h (`reverse_sde_step`) with the score
that the last move kept in sync with x. Move m draws Philox (seed, offset + m), the predictor (seed, offset + n):
a level uses n + 1 offsets. The network: the user's own `torch.nn.Module` at the level's fixed time, s(x) = MLP(x) - x
with two hidden SiLU layers (_user_mlp.UserMLP without its time input; D = 8, hidden 64 by default; the - x makes
the target standard-normal-like, so that at the step size 0.5 the MH test rejects about a quarter of the moves).

On a GPU, for each chain count: seed and offset are one-element int64 device tensors; the level is captured once
(after two warm-up levels on a side stream) and replayed with `offset += n + 1` between replays. Checks (printed
and in the JSON): replay k's x and accept rates equal the eager level's run with the int offset offset0 + k (n + 1)
within torch.testing.assert_close's float32 tolerance (rtol 1.3e-6, atol 1e-5; whether x is bitwise equal is
recorded too), and consecutive replays draw different noise (different outputs from the same input). A failure in
the warm-up, the capture or the replay checks is recorded with its phase (the eager level is still timed). Timed
(synchronised wall time, interleaved repeats of --levels levels each, medians): the eager level (int offsets, the
natural eager form) and the replay plus the offset's increment; their ratio is the speed-up. fastsamp's value checks
are off on both sides (with them on, each op reads the device, which a capture forbids).

--device cpu runs and times the eager level only (CPU time of one thread; no CUDA graphs there): the CPU path
that tests and dry-runs exercise. It measures nothing about graphs.

Every device: the level's x must be finite and its mean accept rate in (0, 1). Exit status 1 if a check fails. Each
chain count's row is printed, and the JSON rewritten, as soon as it is measured (a run cut by a timeout keeps them).

    python benchmarks/cuda_graph_level.py [--device cuda] [--chains 2048 262144] [--moves 5] [--n-trapezoid 2]
                                          [--step-size 0.5] [--dim 8] [--hidden 64] [--levels 50] [--repeats 5]
                                          [--backend auto] [--seed 1] [--json out.json]
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys

import torch
from _timing import CLOCKS, device_sync
from _user_mlp import UserMLP

import fastsamp
from fastsamp import VP, ops

STEP_SIZE, LEVEL_TIME, PREDICTOR_STEP = 0.5, 0.5, 0.01  # the MALA step size, the level's time, the predictor's step


def user_score(dim: int, hidden: int) -> UserMLP:
    """The user's score network at the level's time: s(x) = MLP(x) - x (torch's default initialisation)."""
    return UserMLP(dim, hidden, time_input=False, minus_x=True)


def resolve_device(name: str) -> torch.device:
    """--device's value: cpu, or cuda with its index (a bare "cuda" is the current CUDA device, whose index
    torch.cuda.set_device needs). ValueError for another device type."""
    device = torch.device(name)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda[:N], got {name}")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def level(score, x, *, seed, offset, n_moves: int, n_trapezoid: int = 2, step_size: float = STEP_SIZE,
          t: float = LEVEL_TIME, h: float = PREDICTOR_STEP, backend: str = "auto"):
    """n_moves MALA moves with the score-MH test (trapezoid of n_trapezoid sub-intervals) at time t, then a
    reverse-SDE step t -> t - h. Move m draws (seed, offset + m), the predictor (seed, offset + n_moves); seed and
    offset are ints or one-element int64 tensors on x's device (read inside the kernels: a captured level replays
    with the tensors' current values). 1 + n_moves network calls. Returns (x after the level, accept rate (B,))."""
    B, D = x.shape
    batch = x.new_empty(n_trapezoid, B, D)  # [x'; interior points]: one network call per move
    s = score(x)
    n_accepted = torch.zeros(B, dtype=x.dtype, device=x.device)
    for m in range(n_moves):
        draw = dict(seed=seed, offset=offset + m, backend=backend)
        ops.mala_propose(x, s, step_size, out=batch[0], **draw)
        if n_trapezoid > 1:
            ops.line_points(x, batch[0], n_trapezoid, out=batch[1:], backend=backend)
        scores = score(batch.view(-1, D)).view(n_trapezoid, B, D)
        x, s, accepted, _ = ops.score_mh_accept(x, batch[0], s, scores, step_size, **draw)
        n_accepted += accepted
    x = ops.reverse_sde_step(x, s, t=t, h=h, schedule=VP(), seed=seed, offset=offset + n_moves, backend=backend)
    return x, n_accepted / n_moves


class CaptureError(RuntimeError):
    """capture() failed in `phase` ("warm-up" or "capture"); the error raised there is its __cause__."""

    def __init__(self, phase: str, error: BaseException):
        super().__init__(f"{phase} failed: {type(error).__name__}: {error}")
        self.phase = phase


def capture(run, x):
    """(graph, its static outputs) of run(x): two warm-up calls on a side stream (Triton's compilation, the
    allocator's pools), then one captured call. CaptureError (phase "warm-up" or "capture") if either fails."""
    phase = "warm-up"
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                run(x)
        torch.cuda.current_stream().wait_stream(side)
        phase = "capture"
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outs = run(x)
    except Exception as e:
        raise CaptureError(phase, e) from e
    return graph, outs


def within_tolerance(got, want) -> bool:
    """torch.testing.assert_close's verdict (its default tolerance for the dtype) as a bool."""
    try:
        torch.testing.assert_close(got, want)
    except AssertionError:
        return False
    return True


def replay_checks(graph, outs, offset_t, eager, offset0, per_level, n_replays=3):
    """Replay k (graph.replay() after `offset_t += per_level` k times; outs: the level's (x, accept rate)) against
    the eager level eager(offset0 + k per_level), x and accept rate, and consecutive replays' x against each other;
    offset_t is left at offset0 + n_replays per_level. {"replay_vs_eager": [per replay], "consecutive_replays_differ":
    [...], "passed": bool}."""
    replays, rows = [], []
    for k in range(n_replays):
        graph.replay()
        replays.append(outs[0].clone())
        want, want_rate = eager(offset0 + k * per_level)
        rows.append({"replay": k, "offset": offset0 + k * per_level, "bitwise_equal": torch.equal(replays[-1], want),
                     "max_abs_diff": (replays[-1] - want).abs().max().item(),
                     "within_tolerance": within_tolerance(replays[-1], want),
                     "accept_rate_max_abs_diff": (outs[1] - want_rate).abs().max().item(),
                     "accept_rate_within_tolerance": within_tolerance(outs[1], want_rate)})
        offset_t += per_level
    fresh = [not torch.equal(a, b) for a, b in zip(replays, replays[1:])]
    return {"replay_vs_eager": rows, "consecutive_replays_differ": fresh,
            "passed": all(r["within_tolerance"] and r["accept_rate_within_tolerance"] for r in rows) and all(fresh)}


def timed_levels(step, n_levels, device) -> float:
    """Seconds per level of n_levels calls of step() (synchronised wall time on a GPU, CPU time on the CPU)."""
    clock = CLOCKS["wall" if device.type == "cuda" else "cpu"]
    sync = device_sync(device)
    sync()
    t0 = clock()
    for _ in range(n_levels):
        step()
    sync()
    return (clock() - t0) / n_levels


def measure(net, n_chains, a, device) -> dict:
    """One chain count: the eager level's time, and on a GPU the graph's, the speed-up and the replay checks."""
    g = torch.Generator(device=device).manual_seed(a.seed)
    x = torch.randn(n_chains, a.dim, generator=g, device=device)
    per_level = a.moves + 1
    kw = dict(n_moves=a.moves, n_trapezoid=a.n_trapezoid, step_size=a.step_size, backend=a.backend)
    offset0 = 1000

    def eager(offset):
        return level(net, x, seed=a.seed, offset=offset, **kw)

    x_out, rate = eager(offset0)
    row = {"chains": n_chains, "accept_rate": rate.mean().item(), "finite": bool(torch.isfinite(x_out).all())}
    offsets = iter(range(offset0, 2**62, per_level))
    sides = {"eager": lambda: eager(next(offsets))}
    if device.type == "cuda":
        seed_t = torch.tensor(a.seed, dtype=torch.int64, device=device)
        offset_t = torch.tensor(offset0, dtype=torch.int64, device=device)
        try:
            graph, outs = capture(lambda x_in: level(net, x_in, seed=seed_t, offset=offset_t, **kw), x)
            row["checks"] = replay_checks(graph, outs, offset_t, eager, offset0, per_level)
        except Exception as e:  # recorded with its phase (the run fails), and the eager level is still timed
            captured = isinstance(e, CaptureError)
            row["graph_failed_in"] = e.phase if captured else "replay checks"
            cause = e.__cause__ if captured else e
            row["graph_error"] = f"{type(cause).__name__}: {cause}"[:2000]
        else:
            def replay():
                graph.replay()
                offset_t.add_(per_level)
            sides["graph"] = replay
    times = {side: [] for side in sides}
    for i in range(a.repeats):  # interleaved, neither side always first
        for side in (list(sides) if i % 2 == 0 else list(reversed(sides))):
            times[side].append(timed_levels(sides[side], a.levels, device))
    row.update({f"{side}_ms": 1e3 * statistics.median(t) for side, t in times.items()})
    if "graph_ms" in row:
        row["speedup"] = row["eager_ms"] / row["graph_ms"]
    return row


def passed(row, device) -> bool:
    """The level's x finite, its mean accept rate in (0, 1), and on a GPU the capture and its replay checks."""
    graph_ok = device.type != "cuda" or row.get("checks", {}).get("passed", False)
    return row["finite"] and 0 < row["accept_rate"] < 1 and graph_ok


def row_line(r) -> str:
    """One chain count's printed line."""
    line = f"  {r['chains']:8d} chains: eager {r['eager_ms']:.3f} ms/level"
    if "graph_ms" in r:
        c = r["checks"]
        diffs = ", ".join(f"{d['max_abs_diff']:.1e}" for d in c["replay_vs_eager"])
        line += (f", graph replay {r['graph_ms']:.3f} ms/level, speed-up {r['speedup']:.2f}x; replays = eager: x "
                 f"{all(d['within_tolerance'] for d in c['replay_vs_eager'])} (bitwise "
                 f"{all(d['bitwise_equal'] for d in c['replay_vs_eager'])}, max |diff| {diffs}), accept rates "
                 f"{all(d['accept_rate_within_tolerance'] for d in c['replay_vs_eager'])}; consecutive replays "
                 f"differ: {all(c['consecutive_replays_differ'])}")
    if "graph_error" in r:
        line += f", graph failed in {r['graph_failed_in']}: {r['graph_error'][:300]}"
    return line + f"; accept rate {r['accept_rate']:.3f}, finite {r['finite']}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--chains", type=int, nargs="+", default=[2048, 262144])
    p.add_argument("--moves", type=int, default=5, help="MALA moves per level")
    p.add_argument("--n-trapezoid", type=int, default=2, help="trapezoid sub-intervals of the score-MH test")
    p.add_argument("--step-size", type=float, default=STEP_SIZE)
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--levels", type=int, default=50, help="levels per timed repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--backend", default="auto")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    try:
        device = resolve_device(a.device)
    except ValueError as e:
        p.error(str(e))
    if device.type == "cpu":
        torch.set_num_threads(1)
    else:
        torch.cuda.set_device(device)
    torch.manual_seed(0)
    net = user_score(a.dim, a.hidden).to(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    clock = "synchronised wall time" if device.type == "cuda" else "CPU time, 1 thread, eager only"
    print(f"one level = {a.moves} MALA moves (score-MH, n_trapezoid {a.n_trapezoid}, step size {a.step_size}) + a "
          f"reverse-SDE step; score MLP {a.dim}-{a.hidden}-{a.hidden}-{a.dim} minus x; {name} ({clock}); validation "
          f"off; medians of {a.repeats} x {a.levels} levels")
    rows = []
    for n in a.chains:  # each row printed and written as soon as it is measured
        with fastsamp.validation(False), torch.no_grad():
            rows.append(measure(net, n, a, device))
        print(row_line(rows[-1]))
        ok = all(passed(r, device) for r in rows)
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"args": vars(a), "device": name, "torch": torch.__version__, "results": rows,
                           "complete": len(rows) == len(a.chains), "passed": ok,
                           "date": datetime.datetime.now(datetime.timezone.utc).isoformat()}, f, indent=1)
    if not ok:
        print("cuda_graph_level: a check failed (see above)", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
