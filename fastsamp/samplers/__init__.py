"""Samplers built on fastsamp.ops."""
from .annealed import AnnealedStats, NonFiniteChainsError, NonFiniteChainsWarning, annealed_mcmc, mcmc
from .importance import ImportanceStats, effective_sample_size, importance_sde, self_normalised_weights

__all__ = ["annealed_mcmc", "AnnealedStats", "mcmc", "importance_sde", "ImportanceStats",
           "effective_sample_size", "self_normalised_weights", "NonFiniteChainsError", "NonFiniteChainsWarning"]
