"""Samplers built on fastsamp.ops."""
from .annealed import AnnealedStats, annealed_mcmc, mcmc

__all__ = ["annealed_mcmc", "AnnealedStats", "mcmc"]
