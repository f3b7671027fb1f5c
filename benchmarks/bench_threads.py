"""The main job's kernels beside a competing CPU load: is there a thread cliff?

Runs `fastsamp sample` (annealed MALA on the main job's mixture: gmm_score, reverse_sde_step and
gmm_mala per level) at 1 and 2 threads, on an otherwise idle machine and beside one busy process
(a Python loop that never sleeps), and prints the median wall time of each. With kernel threads
that spin-wait, 2 threads beside a busy process on a 2-core machine lose their cores to it and
can be many times slower than 1 thread; with bounded waiting they are not.

    python benchmarks/bench_threads.py [--chains 500,65536] [--levels 20] [--repeats 5] [--json out.json]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from fastsamp.cli import main as cli_main
from fastsamp.experiments.options import count
from fastsamp.profiling import cpu_model


def sample_wall(chains, levels, n_threads) -> float:
    """Wall time (s) of the timed loop of `fastsamp sample` at `n_threads` torch threads."""
    torch.set_num_threads(n_threads)
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "s.json")
        with open(os.devnull, "w") as null:
            stdout, sys.stdout = sys.stdout, null
            try:
                cli_main(["sample", "--chains", str(chains), "--levels", str(levels), "--json", out])
            finally:
                sys.stdout = stdout
        with open(out) as f:
            return json.load(f)["wall_s"]


def count_list(text) -> list:
    """argparse type: comma-separated chain counts, each >= 1."""
    return [count(1)(n) for n in text.split(",")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chains", default="500,65536", type=count_list, help="comma-separated chain counts")
    p.add_argument("--levels", type=count(2), default=20)
    p.add_argument("--repeats", type=count(1), default=5)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    rows = []
    for load in (0, 1):
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(load)]
        time.sleep(0.5 if load else 0)
        try:
            for chains in args.chains:
                for n_threads in (1, 2):
                    sample_wall(chains, 2, n_threads)  # warm-up
                    walls = [sample_wall(chains, args.levels, n_threads) for _ in range(args.repeats)]
                    row = {"chains": chains, "levels": args.levels, "threads": n_threads, "busy_processes": load,
                           "median_s": statistics.median(walls), "min_s": min(walls), "max_s": max(walls)}
                    rows.append(row)
                    print(f"load {load}  chains {chains:6d}  threads {n_threads}  median {row['median_s']:.3f} s  "
                          f"(min {row['min_s']:.3f}, max {row['max_s']:.3f})", flush=True)
        finally:
            for h in hogs:
                h.kill()
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "loadavg": os.getloadavg()}
    print(json.dumps(info))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
