"""Classifier-guided composition p_t(x)·p_t(y|x)^λ on scikit-learn's 8×8 digits (issue 15, part 2), from
scratch: the same as `fastsamp guided-digits` (fastsamp/experiments/guided_digits/command.py), with the
results folder benchmarks/results/guided_digits as the default --out.

    python benchmarks/guided_digits.py --per-class 10 --seeds 3 --candidates 6 --val-per-class 2   # recorded
    python benchmarks/guided_digits.py --size tiny --per-class 1 --seeds 2 --candidates 2 --out /tmp/gd
"""
import argparse
import os
import sys

from fastsamp.experiments.guided_digits import command

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "guided_digits")


def parser():
    p = argparse.ArgumentParser(description=command.DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    command.add_arguments(p, out=RESULTS)
    return p


def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    args.parser = p
    command.check(args)
    return command.main(args, program="python benchmarks/guided_digits.py")


if __name__ == "__main__":
    sys.exit(main())
