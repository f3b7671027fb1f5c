"""argparse building blocks of the command line: typed values that fail as argparse errors (exit
status 2) before any work, and the options shared by the 2-D experiments."""
from __future__ import annotations

import argparse
import math
import os

from ..ops._checks import device as resolve_device  # torch.device of a cpu/cuda[:N] name, ValueError otherwise

MAX_COUNT = 2**31 - 1  # counts (chains, moves, levels, ...) must fit the kernels' 32-bit counters
MAX_SEED = 2**63 - 1


def count(minimum: int, maximum: int = MAX_COUNT):
    """argparse type: an integer in [minimum, maximum]."""
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {v}")
        if v > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}, got {v}")
        return v
    return parse


def positive_float(text):
    """argparse type: a finite real number > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be finite and > 0, got {text}")
    return v


def device_arg(text):
    """argparse type: a torch device that exists here (cpu, or cuda[:N] with a GPU), as a string."""
    try:
        return str(resolve_device(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def choice_list(choices):
    """argparse type: a comma-separated list of names from `choices`."""
    def parse(text):
        names = [n.strip() for n in text.split(",") if n.strip()]
        bad = [n for n in names if n not in choices]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(choices)}, got {text!r}")
        return ",".join(names)
    return parse


def unwritable(path: str) -> str | None:
    """Why a file cannot be written at `path` (missing directories can be created), or None."""
    p = os.path.abspath(path)
    if os.path.isdir(p):
        return "is a directory"
    if os.path.exists(p):
        return None if os.access(p, os.W_OK) else "is not writable"
    parent = os.path.dirname(p)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"{parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create files in {parent}"
    return None


def two_d_experiment_options(parser):
    """The options shared by the 2-D experiments (compose, importance)."""
    parser.add_argument("--samples", type=count(2), default=4000, help="samples per method and seed")
    parser.add_argument("--seeds", type=count(1), default=3, help="number of seeds (0, 1, ...)")
    parser.add_argument("--json", default=None, help="write the report as JSON here")
    parser.add_argument("--png", default=None, help="write a scatter plot of the samples here")
