"""`fastsamp guided-digits` (and benchmarks/guided_digits.py, a thin wrapper): the classifier-guided digits
table from scratch, or rows added to a recorded one (`--add`).

    fastsamp guided-digits --per-class 10 --seeds 3 --candidates 6 --val-per-class 2      # the recorded table
    fastsamp guided-digits --size tiny --per-class 1 --seeds 2 --candidates 2 --out /tmp/gd
    fastsamp guided-digits --add --methods "LA-10, hybrid MH (λ_mh=λ) (score)" ...       # rows added to --out

Writes OUT/guided_digits.{json,md,png} and the samples as OUT/guided_digits_samples.pt."""
from __future__ import annotations

import json
import os
import shlex
import time

import torch

from ..options import count
from ..reporting import write_json
from .experiment import run_table
from .report import markdown_table, save_labelled_grid
from .sampling import LAMBDA, methods

SUMMARY = "the MCMC-correction paper's classifier-guided composition p_t(x)·p_t(y|x)^λ on 8×8 digits"
DESCRIPTION = ("Trains (or loads from the cache) the ε and energy networks and the noise-aware classifier on "
               "scikit-learn's digits, searches each method's step size ε_t = a·β_t^b, samples every method "
               "(Reverse, ULA, LA, U-HMC, HMC; score and energy; the ablations of the classifier term in the MH "
               "test) and reports held-out-classifier accuracy and Fréchet distance next to the real-data floor. "
               "--add runs only --methods and adds them to the table already in --out, reusing its step sizes.")
FILES = {"json": "guided_digits.json", "md": "guided_digits.md", "png": "guided_digits.png",
         "samples": "guided_digits_samples.pt"}


def add_arguments(p, out="benchmarks/results/guided_digits"):
    p.add_argument("--size", choices=("tiny", "full"), default="full", help="network sizes (tiny: tests)")
    p.add_argument("--per-class", type=count(1), default=4, help="samples per class per replicate")
    p.add_argument("--seeds", type=count(1), default=3, help="replicates (>= 2 for a spread)")
    p.add_argument("--candidates", type=count(1), default=6, help="random (a, b) candidates per method")
    p.add_argument("--val-per-class", type=count(1), default=2, help="search chains per class per candidate")
    p.add_argument("--seed", type=int, default=0, help="training and sampling seed")
    p.add_argument("--lam", type=float, default=LAMBDA, help="classifier exponent λ")
    p.add_argument("--methods", nargs="+", choices=[m.label for m in methods()], metavar="LABEL",
                   help="run only these rows: " + "; ".join(m.label for m in methods()))
    p.add_argument("--add", action="store_true",
                   help="add the --methods rows to the table in --out (same settings; its step sizes are reused)")
    p.add_argument("--out", default=out, help="output folder")


def _settings(args):
    return {"size": args.size, "lambda": args.lam, "n_per_class": args.per_class, "n_seeds": args.seeds,
            "n_candidates": args.candidates, "n_val_per_class": args.val_per_class, "seed": args.seed}


def recorded(out):
    """The table recorded in `out` (its JSON) and its samples ({} when the .pt is absent)."""
    with open(os.path.join(out, FILES["json"])) as f:
        result = json.load(f)
    path = os.path.join(out, FILES["samples"])
    samples = torch.load(path, weights_only=True)["samples"] if os.path.exists(path) else {}
    return result, samples


def check(args):
    if not args.add:
        return
    if not args.methods:
        args.parser.error("--add needs --methods (the rows to add)")
    path = os.path.join(args.out, FILES["json"])
    if not os.path.exists(path):
        args.parser.error(f"--add: {path} does not exist (no table to add to)")
    with open(path) as f:
        old = json.load(f)["settings"]
    differ = [f"{k} {v} (recorded {old.get(k)})" for k, v in _settings(args).items() if old.get(k) != v]
    if differ:
        args.parser.error("--add: the settings differ from the recorded table's: " + ", ".join(differ))


def merged(old, new):
    """The recorded result `old` with the rows of `new` added (a row of the same label replaced), rows in
    `methods()` order; the commands and wall times of both kept."""
    rows = {r["label"]: r for r in old["methods"]} | {r["label"]: r for r in new["methods"]}
    order = [m.label for m in methods()]
    out = dict(old, methods=sorted(rows.values(), key=lambda r: order.index(r["label"])
                                   if r["label"] in order else len(order)))
    out["added"] = old.get("added", []) + [{"command": new["command"], "total_wall_s": new["total_wall_s"],
                                            "labels": [r["label"] for r in new["methods"]]}]
    return out


def command_line(args, program="fastsamp guided-digits"):
    """The command that reruns `args` (every option spelled out)."""
    words = [*shlex.split(program), "--size", args.size, "--per-class", args.per_class, "--seeds", args.seeds,
             "--candidates", args.candidates, "--val-per-class", args.val_per_class, "--seed", args.seed,
             "--lam", f"{args.lam:g}"]
    words += ["--methods", *args.methods] if args.methods else []
    words += ["--add"] if args.add else []
    return shlex.join(str(w) for w in words + ["--out", args.out])


def main(args, program="fastsamp guided-digits") -> int:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    old, old_samples = recorded(args.out) if args.add else (None, {})
    step_sizes = {r["label"]: (r["a"], r["b"]) for r in old["methods"] if "a" in r} if old else None
    result, samples, labels = run_table(size=args.size, n_per_class=args.per_class, n_seeds=args.seeds,
                                        n_candidates=args.candidates, n_val_per_class=args.val_per_class,
                                        seed=args.seed, lam=args.lam, only=args.methods, step_sizes=step_sizes,
                                        log=lambda s: print(s, flush=True))
    result["total_wall_s"] = time.perf_counter() - t0
    result["command"] = command_line(args, program)
    if old is not None:
        result = merged(old, result)
        samples = old_samples | samples
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, FILES["json"]), result)
    with open(os.path.join(args.out, FILES["md"]), "w") as f:
        f.write(markdown_table(result))
    ordered = {r["label"]: samples[r["label"]] for r in result["methods"] if r["label"] in samples}
    save_labelled_grid(ordered, labels, result, os.path.join(args.out, FILES["png"]))
    # the samples (pixels) and labels, to redraw or re-measure without sampling again (*.pt is not committed)
    torch.save({"samples": samples, "labels": labels}, os.path.join(args.out, FILES["samples"]))
    print(markdown_table(result))
    return 0
