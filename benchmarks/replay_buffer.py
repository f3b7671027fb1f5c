"""The off-policy replay buffer's cost per training iteration at full size: `add` of one batch and
`sample` of one batch (fastsamp.samplers.diffusion.ReplayBuffer, which keeps its slots in rank order),
against drawing by an argsort of all N log R per draw (what it did before, and the obvious way to write
P(i) ∝ 1 / (k·N + rank_i)), whose add is the same FIFO slot write without the merge. Interleaved rounds,
medians; the last column is the argsort draw over the ranked buffer's add plus draw.

    python benchmarks/replay_buffer.py --capacity 600000 --dim 2 32 --threads 1
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from fastsamp.samplers.diffusion import ReplayBuffer


def sample_by_argsort(buf: ReplayBuffer, n: int, generator):
    """The baseline: rank all N log R by an argsort at every draw."""
    log_r = buf.log_r[:buf.size]
    rank = torch.empty(buf.size, dtype=torch.float64)
    rank[torch.argsort(log_r, descending=True)] = torch.arange(buf.size, dtype=torch.float64)
    idx = torch.multinomial(1.0 / (buf.rank_weight * buf.size + rank), n, replacement=True, generator=generator)
    return buf.x[idx], buf.log_r[idx]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--capacity", type=int, default=600_000)
    p.add_argument("--dim", type=int, nargs="+", default=[2, 32])
    p.add_argument("--batch", type=int, default=300)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    print(f"capacity {a.capacity:,}, batch {a.batch}, {a.threads} thread(s); median ms over {a.rounds} rounds")
    print("| D | add (ranked) | sample (ranked) | sample by argsort | argsort / ranked, add + sample |")
    print("|---|---|---|---|---|")
    for dim in a.dim:
        buf = ReplayBuffer(a.capacity, dim)
        buf.add(torch.randn(a.capacity, dim, generator=g), torch.randn(a.capacity, generator=g))
        t = {"add": [], "sample": [], "argsort": []}
        for _ in range(a.rounds):
            x, log_r = torch.randn(a.batch, dim, generator=g), torch.randn(a.batch, generator=g)
            t0 = time.perf_counter()
            buf.add(x, log_r)
            t1 = time.perf_counter()
            buf.sample(a.batch, g)
            t2 = time.perf_counter()
            sample_by_argsort(buf, a.batch, g)
            t3 = time.perf_counter()
            t["add"].append(t1 - t0), t["sample"].append(t2 - t1), t["argsort"].append(t3 - t2)
        m = {k: statistics.median(v) * 1e3 for k, v in t.items()}
        ratio = m["argsort"] / (m["add"] + m["sample"])
        print(f"| {dim} | {m['add']:.2f} | {m['sample']:.2f} | {m['argsort']:.2f} | {ratio:.1f}× |")


if __name__ == "__main__":
    main()
