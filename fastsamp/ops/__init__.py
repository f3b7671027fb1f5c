"""fastsamp.ops: one function per fused operation, one signature on every backend.

Every op takes `backend=` ("auto", "torch", "cpp", "triton", "cuda"); "auto" picks the
fastest compiled backend for the tensors' device and falls back to the PyTorch reference.
"""
from .gmm import gmm_hmc, gmm_mala, gmm_score
from .hmc import hmc_accept, leapfrog, leapfrog_finish, momentum_refresh
from .mh import energy_mh_accept, line_points, mala_propose, score_mh_accept

# ScoreNet, EnergyNet, MixtureScore: the argument types of the mlp ops (not ops, so not in __all__, the op
# table's list)
from .mlp import EnergyNet as EnergyNet
from .mlp import MixtureScore as MixtureScore
from .mlp import ScoreNet as ScoreNet
from .mlp import (
    mlp_energy,
    mlp_energy_hmc,
    mlp_energy_mala,
    mlp_hmc,
    mlp_mala,
    mlp_net,
    mlp_net_energy_lsq,
    mlp_net_lsq,
    mlp_score,
)
from .random import normal, uniform
from .sde import guided_sde_step, reverse_sde_step
from .trajectory import em_step_logprob, policy_log_pf, policy_rollout

__all__ = [
    "gmm_score", "gmm_mala", "gmm_hmc", "reverse_sde_step", "guided_sde_step", "mala_propose", "line_points",
    "score_mh_accept", "energy_mh_accept", "em_step_logprob", "policy_rollout", "policy_log_pf",
    "leapfrog", "leapfrog_finish", "hmc_accept", "momentum_refresh", "normal", "uniform",
    "mlp_score", "mlp_mala", "mlp_hmc", "mlp_energy", "mlp_energy_mala", "mlp_energy_hmc", "mlp_net",
    "mlp_net_lsq", "mlp_net_energy_lsq",
]
