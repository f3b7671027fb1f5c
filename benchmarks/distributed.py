"""Main job (`fastsamp sample`) on one machine: 1 process x T threads against N processes x T/N threads
(torchrun, Gloo), same chains and seed, alternating runs; medians of the throughput.

    python benchmarks/distributed.py --repeats 5 --json benchmarks/results/distributed_cpu.json

Each run's wall time is the sampling loop's (the slowest rank's, with the per-level all_reduce),
not the process start-up. The 1-minute load average is recorded before and after: the machine may
be shared. The samples of both runs are also compared (they must be bit-identical).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile

import torch

from fastsamp.experiments.options import count


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_job(processes, threads, job_args, workdir, tag):
    out_json, out_pt = os.path.join(workdir, f"{tag}.json"), os.path.join(workdir, f"{tag}.pt")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "fastsamp", "sample", *job_args, "--json", out_json, "--save", out_pt]
    if processes > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--master_port",
               str(_free_port()), "-m", "fastsamp", *cmd[3:]]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    with open(out_json) as f:
        return json.load(f), torch.load(out_pt)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--processes", type=count(1), default=2)
    p.add_argument("--threads", type=count(1), default=2, help="threads in total (per process: threads / processes)")
    p.add_argument("--repeats", type=count(1), default=5)
    p.add_argument("--chains", type=count(1), default=65536)
    p.add_argument("--levels", type=count(2), default=100)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    job = ["--chains", str(args.chains), "--levels", str(args.levels)]
    single, multi, identical = [], [], True
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            s, xs = run_job(1, args.threads, job, tmp, f"single{r}")
            m, xm = run_job(args.processes, max(1, args.threads // args.processes), job, tmp, f"multi{r}")
            single.append(s["chain_moves_per_s"])
            multi.append(m["chain_moves_per_s"])
            identical &= bool(torch.equal(xs, xm))
            print(f"run {r}: 1 x {args.threads} threads {s['chain_moves_per_s'] / 1e6:.2f} M chain-moves/s | "
                  f"{args.processes} x {max(1, args.threads // args.processes)} {m['chain_moves_per_s'] / 1e6:.2f} M",
                  flush=True)
    load_after = os.getloadavg()[0]
    res = {
        "job": "fastsamp sample " + " ".join(job), "repeats": args.repeats,
        "single": {"processes": 1, "threads": args.threads, "chain_moves_per_s": single,
                   "median": statistics.median(single)},
        "multi": {"processes": args.processes, "threads_per_process": max(1, args.threads // args.processes),
                  "chain_moves_per_s": multi, "median": statistics.median(multi)},
        "ratio_of_medians": statistics.median(multi) / statistics.median(single),
        "samples_bit_identical": identical, "load_1min_before": load_before, "load_1min_after": load_after,
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(res, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
