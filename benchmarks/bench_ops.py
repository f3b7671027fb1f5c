"""Time every op on every available backend against eager PyTorch and torch.compile.

    python benchmarks/bench_ops.py [--device cuda]   # writes benchmarks/results/ops_<device>.json
"""
import os
import sys

from fastsamp.cli import main

if __name__ == "__main__":
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(out, exist_ok=True)
    device = sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "cpu"
    sys.exit(main(["bench", "--json", os.path.join(out, f"ops_{device}.json")] + sys.argv[1:]))
