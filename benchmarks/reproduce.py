"""Reproduce a recorded result with the `fastsamp` command line, its outputs under benchmarks/results/:

    python benchmarks/reproduce.py composition        # fastsamp compose    -> composition.{json,png}
    python benchmarks/reproduce.py importance         # fastsamp importance -> importance.{json,png}
    python benchmarks/reproduce.py ops [--device cuda]  # fastsamp bench    -> ops_<device>.json

Further arguments go to the fastsamp verb (e.g. `--seeds 1`).
"""
import os
import sys

from fastsamp.cli import main

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# result -> (fastsamp verb, {output flag: file name under RESULTS}); {device} is --device's value (cpu)
RESULTS_OF = {
    "composition": ("compose", {"--json": "composition.json", "--png": "composition.png"}),
    "importance": ("importance", {"--json": "importance.json", "--png": "importance.png"}),
    "ops": ("bench", {"--json": "ops_{device}.json"}),
}


def device_of(args) -> str:
    """The value of --device in args (either form), or cpu."""
    for i, a in enumerate(args):
        if a.startswith("--device="):
            return a.split("=", 1)[1]
        if a == "--device" and i + 1 < len(args):
            return args[i + 1]
    return "cpu"


def command(result, args) -> list:
    """The fastsamp argv that writes `result` under RESULTS, with the script's further arguments."""
    verb, outputs = RESULTS_OF[result]
    files = [a for flag, name in outputs.items()
             for a in (flag, os.path.join(RESULTS, name.format(device=device_of(args))))]
    return [verb, *files, *args]


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in RESULTS_OF:
        print(f"usage: python benchmarks/reproduce.py {{{','.join(RESULTS_OF)}}} [fastsamp options]", file=sys.stderr)
        sys.exit(2)
    os.makedirs(RESULTS, exist_ok=True)
    sys.exit(main(command(sys.argv[1], sys.argv[2:])))
