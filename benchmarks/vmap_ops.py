"""torch.func.vmap of fastsamp's public ops over V slices of B chains, against what the same work costs without
the batching rules (fastsamp/ops/_vmap.py).

    python benchmarks/vmap_ops.py [--V 8 64] [--B 64] [--D 8] [--repeats 21] [--calls 20] [--clock cpu]
                                  [--device cuda] [--json out.json]

Per case (one intra-op thread, float32; µs per call, median of `repeats` timings of `calls` calls each, the columns
timed in turn within each repeat; on a GPU wall time to the device's synchronisation after each timing):
  vmap   torch.func.vmap(f)(xs): the op's batching rule (folded into one call on V·B chains for the row-wise calls
         here, which draw nothing)
  map    torch.stack([f(x) for x in xs]): the V calls torch's generic per-slice fallback makes (before the rules; the
         fallback adds its own unwrapping and a warning on top: a lower bound of what vmap cost then)
  fold   f(xs.reshape(V·B, D)).reshape(V, B, ...): the fold written by hand, the best a user could write
and the ratios map / vmap (the rules' speed-up) and vmap / fold (what vmap still costs over the hand fold).
"""
from __future__ import annotations

import argparse
import json
import statistics

import torch
from _timing import CLOCKS, device_sync

from fastsamp import ops
from fastsamp.models import ScoreMLP


def cases(B, D, V, dtype=torch.float32, device="cpu"):
    """name -> (f of one slice's row arguments, those arguments stacked over V slices): the row-wise ops, every
    per-chain argument vmapped (a whole state), the others fixed."""
    g = torch.Generator().manual_seed(0)

    def rows(*shape):
        return torch.randn(V, B, *shape, generator=g, dtype=dtype).to(device)
    x, score, noise, eps = rows(D), rows(D), rows(D), 0.01 + 0.001 * rows().abs()
    means = torch.randn(16, D, generator=g, dtype=dtype).to(device)
    lw, var = torch.zeros(16, dtype=dtype, device=device), torch.full((16,), 0.5, dtype=dtype, device=device)
    torch.manual_seed(0)
    net = ScoreMLP(D, hidden=64, n_freq=4, data_mean=torch.zeros(D), data_var=1.0).to(device, dtype).requires_grad_(
        False)
    score_net = net.score_net(0.5, x[0])
    u = torch.rand(V, B, generator=g, dtype=dtype).to(device)

    def mala_step(x, s, e, n, u):
        """A whole MALA move on the mixture's score: proposal, 2 interior points, one score call, the score-MH test."""
        x_prop = ops.mala_propose(x, s, e, noise=n)
        batch = torch.cat([x_prop[None], ops.line_points(x, x_prop, 3)])
        scores = ops.gmm_score(batch.reshape(-1, D), means, lw, var, alpha=0.9, sigma2=0.1)[0].reshape(batch.shape)
        return ops.score_mh_accept(x, x_prop, s, scores[0], e, u, interior_scores=scores[1:])[0]
    return {
        "gmm_score K=16": (lambda x: ops.gmm_score(x, means, lw, var, alpha=0.9, sigma2=0.1)[0], (x,)),
        "mala_propose (noise given)": (lambda x, s, e, n: ops.mala_propose(x, s, e, noise=n), (x, score, eps, noise)),
        "leapfrog": (lambda x, p, s, e: ops.leapfrog(x, p, s, e)[0], (x, noise, score, eps)),
        "mlp_score H=64": (lambda x: ops.mlp_score(x, score_net), (x,)),
        "MALA move, gmm K=16 (5 ops)": (mala_step, (x, score, eps, noise, u)),
    }


def columns(f, args):
    V, B = args[0].shape[:2]
    flat = [a.reshape(V * B, *a.shape[2:]) for a in args]
    return {
        "vmap": lambda: torch.func.vmap(f)(*args),
        "map": lambda: torch.stack([f(*slice_) for slice_ in zip(*args)]),
        "fold": lambda: (lambda out: out.reshape(V, B, *out.shape[1:]))(f(*flat)),
    }


def measure(cols, repeats, calls, clock, sync):
    """µs per call of each column, median of `repeats` rounds (each round times every column in turn)."""
    times = {k: [] for k in cols}
    for fn in cols.values():
        fn()
    for _ in range(repeats):
        for k, fn in cols.items():
            sync()
            t0 = clock()
            for _ in range(calls):
                fn()
            sync()
            times[k].append((clock() - t0) / calls * 1e6)
    return {k: statistics.median(v) for k, v in times.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--V", type=int, nargs="+", default=[8, 64])
    p.add_argument("--B", type=int, default=64)
    p.add_argument("--D", type=int, default=8)
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="write the rows to this file")
    a = p.parse_args()
    torch.set_num_threads(1)
    if a.device != "cpu" and a.clock != "wall":
        p.error("--clock cpu says nothing of a GPU's work: use the wall clock with --device")
    print(f"B = {a.B}, D = {a.D}, float32, one thread, {a.device}, µs per call ({a.clock} clock), median of "
          f"{a.repeats} x {a.calls} calls")
    print("| op | V | vmap | map | fold | map / vmap | vmap / fold |\n|---|---|---|---|---|---|---|")
    rows, sync = [], device_sync(a.device)
    for V in a.V:
        for name, (f, args) in cases(a.B, a.D, V, device=a.device).items():
            cols = columns(f, args)
            for k, fn in cols.items():  # the three agree (the fold is exact: tests/test_vmap.py)
                torch.testing.assert_close(fn(), cols["map"](), rtol=0, atol=0, msg=f"{name}: {k}")
            t = measure(cols, a.repeats, a.calls, CLOCKS[a.clock], sync)
            rows.append({"op": name, "V": V, **t})
            print(f"| {name} | {V} | {t['vmap']:.1f} | {t['map']:.1f} | {t['fold']:.1f} | "
                  f"{t['map'] / t['vmap']:.2f} | {t['vmap'] / t['fold']:.2f} |")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"device": a.device, "B": a.B, "D": a.D, "clock": a.clock, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
