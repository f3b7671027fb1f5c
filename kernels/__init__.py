"""Triton backend of fastsamp (installed as ``fastsamp.kernels``).

Every function here has exactly the backend signature of docs/backend-contract.md:
inputs arrive validated and contiguous, outputs are allocated with torch.empty on
x.device in x.dtype (``accepted`` is torch.bool). Kernels run on CUDA devices, or on
CPU tensors under ``TRITON_INTERPRET=1``.

Limits: gmm_score D <= 4096 (whole rows in registers), gmm_mala and gmm_hmc D <= 128, the network ops
(mlp_*) D <= 128 and hidden width <= 256 (above 128 by 64-column chunks: kernels/mlp_layers.py), the ops of one
MLP (mlp_net, mlp_net_backward, mlp_net_lsq, mlp_net_energy_lsq) input and output widths <= 128 (any hidden width:
kernels/mlp_train.py); all raise
ValueError above. K is unrestricted (online log-sum-exp
loop). em_step_logprob and its backward (row kernels, D tiled in a loop) take any D.
"""
from .gmm import GMM_MALA_MAX_D, GMM_SCORE_MAX_D, gmm_score
from .hmc import hmc_accept, leapfrog, leapfrog_finish, momentum_refresh
from .mh import energy_mh_accept, line_points, mala_propose, score_mh_accept
from .mlp import MLP_MAX_D, MLP_MAX_HIDDEN, mlp_energy, mlp_score
from .mlp_train import MLP_NET_MAX_IN, mlp_net, mlp_net_backward, mlp_net_energy_lsq, mlp_net_lsq
from .moves import gmm_hmc, gmm_mala, mlp_energy_hmc, mlp_energy_mala, mlp_hmc, mlp_mala
from .random import normal, uniform
from .sde import guided_sde_step, sde_step
from .trajectory import em_step_logprob, em_step_logprob_backward

__all__ = [
    "gmm_score", "gmm_mala", "gmm_hmc", "sde_step", "guided_sde_step", "mala_propose", "line_points", "score_mh_accept",
    "energy_mh_accept", "leapfrog", "leapfrog_finish", "hmc_accept", "momentum_refresh", "em_step_logprob",
    "em_step_logprob_backward",
    "normal", "uniform", "mlp_score", "mlp_mala", "mlp_hmc", "mlp_energy", "mlp_energy_mala", "mlp_energy_hmc",
    "mlp_net", "mlp_net_backward", "mlp_net_lsq", "mlp_net_energy_lsq",
    "GMM_SCORE_MAX_D", "GMM_MALA_MAX_D", "MLP_MAX_D",
    "MLP_MAX_HIDDEN", "MLP_NET_MAX_IN",
]
