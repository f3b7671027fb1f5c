"""Reproduce the importance-sampling test bed (issue: training-free importance sampling).

    python benchmarks/importance.py   # writes benchmarks/results/importance.{json,png}
"""
import os
import sys

from fastsamp.cli import main

if __name__ == "__main__":
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(out, exist_ok=True)
    sys.exit(main(["importance", "--json", os.path.join(out, "importance.json"),
                   "--png", os.path.join(out, "importance.png")] + sys.argv[1:]))
