"""Reproduce the 2-D composition experiment (issue: annealed MCMC with score-based MH).

    python benchmarks/composition.py   # writes benchmarks/results/composition.{json,png}
"""
import os
import sys

from fastsamp.cli import main

if __name__ == "__main__":
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(out, exist_ok=True)
    sys.exit(main(["compose", "--json", os.path.join(out, "composition.json"),
                   "--png", os.path.join(out, "composition.png")] + sys.argv[1:]))
