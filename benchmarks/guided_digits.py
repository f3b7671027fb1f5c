"""Classifier-guided composition p_t(x)·p_t(y|x)^λ on scikit-learn's 8×8 digits (issue 15, part 2), from
scratch: trains (or loads from the cache) the score, energy and noise-aware classifier networks, searches
the step sizes, samples every method and writes <out>/guided_digits.{json,md,png} (and the samples as
guided_digits_samples.pt).

    python benchmarks/guided_digits.py                              # the recorded table (full size)
    python benchmarks/guided_digits.py --size tiny --per-class 1 --seeds 2 --candidates 2 --out /tmp/gd

See fastsamp/experiments/guided_digits/ for the method, the search and the metrics.
"""
import argparse
import os
import sys
import time

import torch

from fastsamp.experiments.guided_digits.experiment import run_table
from fastsamp.experiments.guided_digits.report import markdown_table, save_labelled_grid
from fastsamp.experiments.guided_digits.sampling import methods
from fastsamp.experiments.reporting import write_json

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "guided_digits")


def positive(v):
    n = int(v)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {v}")
    return n


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=("tiny", "full"), default="full", help="network sizes (tiny: tests)")
    p.add_argument("--per-class", type=positive, default=4, help="samples per class per replicate")
    p.add_argument("--seeds", type=int, default=3, help="replicates (>= 2 for a spread)")
    p.add_argument("--candidates", type=positive, default=6, help="random (a, b) candidates per method")
    p.add_argument("--val-per-class", type=positive, default=2, help="search chains per class per candidate")
    p.add_argument("--seed", type=int, default=0, help="training and sampling seed")
    p.add_argument("--lam", type=float, default=20.0, help="classifier exponent λ")
    p.add_argument("--methods", nargs="*", choices=[m.label for m in methods()], help="run only these rows")
    p.add_argument("--out", default=RESULTS, help="output folder")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    if args.seeds < 1:
        parser().error(f"--seeds must be >= 1, got {args.seeds}")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    result, samples, labels = run_table(size=args.size, n_per_class=args.per_class, n_seeds=args.seeds,
                                        n_candidates=args.candidates, n_val_per_class=args.val_per_class,
                                        seed=args.seed, lam=args.lam, only=args.methods,
                                        log=lambda s: print(s, flush=True))
    result["total_wall_s"] = time.perf_counter() - t0
    result["command"] = " ".join(["python benchmarks/guided_digits.py", *(argv if argv is not None else sys.argv[1:])])
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, "guided_digits.json"), result)
    with open(os.path.join(args.out, "guided_digits.md"), "w") as f:
        f.write(markdown_table(result))
    save_labelled_grid(samples, labels, result, os.path.join(args.out, "guided_digits.png"))
    # the samples (pixels) and labels, to redraw or re-measure without sampling again (*.pt is not committed)
    torch.save({"samples": samples, "labels": labels}, os.path.join(args.out, "guided_digits_samples.pt"))
    print(markdown_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
