"""fastsamp command line: `fastsamp sample` (the main job), `bench`, `compose`, `importance`, `train`,
`outsourced`, `product2d`, `guided-digits`, `info`. Every bad argument is an argparse error (exit status 2);
every JSON result is strict JSON (NaN and ±inf written as null) and records the thread count."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

import torch

from .distributed import resolved_world_size
from .experiments.options import unwritable

HELP = argparse.ArgumentDefaultsHelpFormatter

# verb -> the module of fastsamp.experiments that holds it: SUMMARY, DESCRIPTION, add_arguments(parser),
# an optional check(args) (argument errors that need more than one option), an optional process_setup() (run only
# when the command line owns the process: `main` without argv) and main(args) -> exit status
VERBS = {
    "sample": "annealed_mixture",
    "bench": "bench",
    "compose": "composition",
    "importance": "tilting",
    "train": "offpolicy",
    "outsourced": "outsourced",
    "product2d": "product2d",
    "guided-digits": "guided_digits.command",
}


def info(args) -> int:
    """What is built (compiled, or importable for Triton) and what can run on this machine."""
    from . import __version__, backends

    gpu = torch.cuda.is_available()
    report = {"fastsamp": __version__, "torch": torch.__version__, "torch_cuda": torch.version.cuda,
              "cuda_gpu": torch.cuda.get_device_name() if gpu else None, "threads": torch.get_num_threads(),
              "backends": {}}
    runs_on = {"torch": (True, "the PyTorch reference, on any device"),
               "cpp": (True, "CPU tensors"),
               "cuda": (gpu, "CUDA tensors" if gpu else "no CUDA GPU visible to torch here"),
               "triton": (gpu or backends.triton_interpreted(),
                          "CUDA tensors" if gpu else "CPU tensors under TRITON_INTERPRET=1 (slow interpreter)"
                          if backends.triton_interpreted() else "no CUDA GPU visible to torch here")}
    for name in backends.BACKENDS:
        module, reason = backends._load(name)
        runs, where = runs_on[name]
        report["backends"][name] = {"built": module is not None, "runs_here": module is not None and runs,
                                    "note": where if module is not None else reason}
    try:
        from . import _C
        report["build"] = _C.build_info()
    except ImportError:
        pass
    print(json.dumps(report, indent=2))
    return 0


def parser() -> argparse.ArgumentParser:
    """The `fastsamp` parser: one subcommand per verb, its options from its experiment module."""
    p = argparse.ArgumentParser(prog="fastsamp", description=__doc__, formatter_class=HELP)
    sub = p.add_subparsers(dest="cmd", required=True)
    for verb, name in VERBS.items():
        module = importlib.import_module(f"fastsamp.experiments.{name}")
        v = sub.add_parser(verb, help=module.SUMMARY, description=module.DESCRIPTION, formatter_class=HELP)
        module.add_arguments(v)
        v.set_defaults(fn=module.main, parser=v, check=getattr(module, "check", None),
                       process_setup=getattr(module, "process_setup", None))
    v = sub.add_parser("info", help="what is built and what can run here", formatter_class=HELP,
                       description="The fastsamp and torch versions, the thread count, and for each backend "
                                   "whether it is built (compiled, or importable for Triton) and whether it can "
                                   "run on this machine.")
    v.set_defaults(fn=info, parser=v, check=None, process_setup=None)
    return p


def main(argv=None) -> int:
    """Run `fastsamp ARGV` (sys.argv[1:] by default) and return its exit status. Without argv (the command line:
    this process is the command's own) the verb's process_setup runs first."""
    args = parser().parse_args(argv)
    for flag in ("json", "png", "trace", "save"):  # outputs are checked before any work
        path = getattr(args, flag, None)
        why = path and unwritable(path)
        if why:
            args.parser.error(f"--{flag} {path}: {why}")
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    chains, ranks = getattr(args, "chains", None), resolved_world_size()
    if chains is not None and chains < ranks:  # Comm.shard's rule (every rank runs a chain), named by the option
        args.parser.error(f"--chains {chains}: must be >= the number of ranks ({ranks})")
    if args.check is not None:
        args.check(args)
    if argv is None and args.process_setup is not None:
        args.process_setup()
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
