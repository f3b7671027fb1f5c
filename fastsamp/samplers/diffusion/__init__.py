"""Diffusion samplers trained off-policy to sample an unnormalised density R(x) = exp(−E(x)).

The sampler is the Euler–Maruyama chain x_{i+1} = x_i + h f_θ(x_i, t_i) + σ√h ξ, x_0 = 0,
t_i = i h, h = 1/T, whose backward process is the Brownian bridge of the reference process
dX = σ dW pinned at 0 (Zhang & Chen's PIS set-up, as benchmarked by Sendera et al. 2024).
Every transition's log p_F and log p_B comes from the fused op `ops.em_step_logprob`.

Objectives (on trajectories τ, log w(τ) = log R(x_T) + Σ log p_B − Σ log p_F):
  pis      E[−log w] / D with the trajectory reparameterised (KL through the simulation)
  tb       ½ (log Z_θ − log w)²                       (trajectory balance, learned log Z)
  vargrad  ½ (log w − mean_batch log w)²              (log-variance, batch log Z)
  subtb    Σ_{i<j} λ^{j−i} (log F_i + Σ_{i..j} log p_F − log p_B − log F_j)² / Σλ^{j−i}
           with F_i = F_θ(x_i, t_i) + (1 − t_i) log N(x_i; 0, σ² t_i) + t_i log R(x_i), F_T = R
           (forward-looking SubTB with a conditional flow)
Off-policy exploration: extra sampling noise (`explore`, decayed linearly to 0 at half of
training), backward trajectories from a reward-ranked replay buffer, and local search by MALA
on the buffer's terminal states. Langevin parametrisation ("LP"):
f = NN₁(x, t) + NN₂(t)·clip(∇log R(x)).
"""
from .networks import DriftNet, FourierTime
from .replay import ReplayBuffer, local_search
from .sampler import OBJECTIVES, DiffusionSampler, Trajectories
from .training import CHECKPOINT_FORMAT, TrainConfig, TrainLog, atomic_write, read_checkpoint_iteration, train
from .training import TrainingDiverged as TrainingDiverged

__all__ = ["DiffusionSampler", "Trajectories", "DriftNet", "FourierTime", "ReplayBuffer", "local_search",
           "TrainConfig", "TrainLog", "TrainingDiverged", "train", "atomic_write", "read_checkpoint_iteration",
           "CHECKPOINT_FORMAT", "OBJECTIVES"]
