"""Classifier-guided composition p_t(x)·p_t(y | x)^λ on scikit-learn's 8×8 digits, with MCMC correction at
every level (issue 15, part 2; the CIFAR-100 experiment of Sjöberg et al., Entropy 2026, 28(3):351, on
digits).

    networks    ε-prediction network, energy network, noise-aware classifier (residual MLPs);
    training    seeded, cached training on the "prior" split (`load_or_train`);
    sampling    `GuidedModel` (the target as a fastsamp model), `MidpointHMC`, `HybridLangevin` (score-LA
                with the trapezoid on the prior's score and the exact classifier term), `Method`/`methods()` (the
                rows), `guided_sample` (DDPM ancestral steps + corrector moves through fastsamp's kernels);
    experiment  step-size search, metrics and floors, `run_table`;
    report      markdown table and labelled PNG.

The runner is benchmarks/guided_digits.py. Naming: the paper's "LA-10" counts trapezoid *points*
(`n_trapets` = 10); fastsamp's `n_trapezoid` counts sub-intervals, so LA-10 is `n_trapezoid=9`.
"""
from .experiment import run_table, sample_metrics
from .networks import EnergyNet, EpsNet, ResMLP, TimeClassifier
from .sampling import LAMBDA, GuidedModel, HybridLangevin, Method, MidpointHMC, guided_sample, methods
from .training import load_or_train, to_diffusion, to_pixels

__all__ = ["run_table", "sample_metrics", "EnergyNet", "EpsNet", "ResMLP", "TimeClassifier", "LAMBDA",
           "GuidedModel", "HybridLangevin", "Method", "MidpointHMC", "guided_sample", "methods", "load_or_train",
           "to_diffusion", "to_pixels"]
