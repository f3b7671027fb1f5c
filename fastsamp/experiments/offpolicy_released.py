"""The released gfn-diffusion code's estimator, rollout and training steps (Sendera et al. 2024), written out for
the off-policy table's checks (benchmarks/offpolicy_checks.py, issue 13) on a fastsamp DiffusionSampler's network.

They are written from the formulas of gfn-diffusion's
`GFN.get_trajectory_fwd`, `fwd_tb`, `pis` and `log_partition_function` (energy_sampling/, commit 255b499),
independently of fastsamp's fused kernels and em_step op, on the same DriftNet weights:
    x_{i+1} = x_i + h μ_θ(x_i, t_i) + σ √h ε   (ε ~ N(0, I) from torch's global generator),
    log p_F = log N(x_{i+1}; x_i + h μ, σ² h) with the noise recomputed from the states,
    log p_B(x_i | x_{i+1}) = log N(x_i; x_{i+1} i/(i+1), σ² h i/(i+1)) for i ≥ 1 (0 for i = 0),
    log R: hard_funnel.py (x_0 ~ N(0, 3²), x_k | x_0 ~ N(0, e^{x_0})), twenty_five_gmm.py
           (log-mean over the 25 modes of N(μ_k, 0.3 I)) or forty_gmm.py (commit 9697e5d:
           log-mean over the 40 modes of N(μ_k, I), on our means), via torch.distributions;
           many_well.py: Σ_j a_j/2 + 6a_j² − a_j⁴ − b_j²/2, unnormalised (log Z = gt_logz),
    TB loss = ½ mean (log Z_θ + Σ log p_F − Σ log p_B − log R)², μ detached in the state update;
    PIS loss = mean (Σ log p_F − Σ log p_B − log R) / D with the state update differentiable
              (the whole simulation is back-propagated; log p_F's recomputed noise carries no gradient);
    Adam (policy 1e-3, log Z 1e-1).
"""
from __future__ import annotations

import math

import torch

from ..metrics import log_z_estimates
from ..samplers.diffusion import ReplayBuffer

N = 2000  # the paper's evaluation batch (eval_data_size)


def released_log_r(target, x):
    """The released log density of `target`: hard_funnel.py (x_0 ~ N(0, 3²), x_k | x_0 ~ N(0, e^{x_0})),
    twenty_five_gmm.py (logsumexp_k log N(x; μ_k, 0.3 I) − log 25, μ_k ∈ {−10, −5, 0, 5, 10}²) or
    forty_gmm.py (MixtureSameFamily of N(μ_k, I) with equal weights; μ_k the target's means, as the
    released data/GMM40-50d.pt is not available here) or many_well.py (unnormalised: log Z = `released_log_Z`)."""
    d, name = torch.distributions, target.name
    if name == "funnel":
        return d.Normal(0.0, 3.0).log_prob(x[:, 0]) + d.Normal(0.0, torch.exp(0.5 * x[:, :1])).log_prob(x[:, 1:]).sum(1)
    if name == "25gmm":
        modes = torch.tensor([(a, b) for a in [-10, -5, 0, 5, 10] for b in [-10, -5, 0, 5, 10]], dtype=x.dtype)
        log_p = torch.stack([d.MultivariateNormal(m, covariance_matrix=0.3 * torch.eye(2, dtype=x.dtype)).log_prob(x)
                             for m in modes])
        return torch.logsumexp(log_p, 0) - math.log(25)
    if name == "40gmm":
        loc = target.means.to(x.dtype)
        return d.MixtureSameFamily(d.Categorical(torch.ones(len(loc), dtype=x.dtype)),
                                   d.Independent(d.Normal(loc, torch.ones_like(loc)), 1)).log_prob(x)
    if name == "manywell":
        a, b = x[:, 0::2], x[:, 1::2]
        return (0.5 * a + 6 * a.pow(2) - a.pow(4) - 0.5 * b.pow(2)).sum(1)
    raise ValueError(f"no released density written out for target {name!r} (funnel, 25gmm, 40gmm, manywell)")


def released_log_Z(target):
    """log Z of `released_log_r`: 0 (normalised densities) or many_well.py's gt_logz,
    (D/2)(log 11784.50927 + ½ log 2π)."""
    if target.name == "manywell":
        return target.n_wells * (math.log(11784.50927) + 0.5 * math.log(2 * math.pi))
    return 0.0


def released_drift(sampler, x, temb, lgv, i):
    """The policy's drift at step i (temb, lgv: the network's time features); a Langevin network (LP) adds
    its scale times the target's score, ∇ log R(x), as gfn-diffusion's GFN(langevin=True) does."""
    if not sampler.net.langevin:
        return sampler.net(x, temb[i:i + 1], None)[0]
    return sampler.net(x, temb[i:i + 1], lgv[i:i + 1], sampler.target.score(x).detach())[0]


def released_noise(sampler, states, drifts=None):
    """The noise of given states (T+1, B, D), recomputed as gfn-diffusion does:
    ε_i = (x_{i+1} − x_i − h μ_θ(x_i, t_i)) / (σ√h), with `drifts` μ (T, B, D) if given, else the
    network's at each state (no grad)."""
    T, h = sampler.n_steps, sampler.h
    if drifts is None:
        with torch.no_grad():
            temb, lgv = sampler.net.time_features(torch.arange(T, dtype=states.dtype) * h)
            drifts = torch.stack([released_drift(sampler, states[i], temb, lgv, i) for i in range(T)])
    return (states[1:] - states[:-1] - h * drifts) / (sampler.sigma * math.sqrt(h))


def released_log_w(sampler, states, drifts=None):
    """log R(x_T) + Σ log p_B − Σ log p_F of given states (T+1, B, D) by the released formulas
    (the noise of log p_F by `released_noise`)."""
    T, h, s2 = sampler.n_steps, sampler.h, sampler.sigma ** 2
    noise = released_noise(sampler, states, drifts)
    log_pf = -0.5 * (noise ** 2 + math.log(2 * math.pi) + math.log(h * s2)).sum((0, 2))
    i = torch.arange(1, T, dtype=states.dtype)[:, None, None]
    back_var = s2 * h * i / (i + 1)
    u = (states[1:-1] - states[2:] * i / (i + 1)) / back_var.sqrt()
    log_pb = -0.5 * (u ** 2 + math.log(2 * math.pi) + back_var.log()).sum((0, 2))
    return released_log_r(sampler.target, states[-1]) + log_pb - log_pf


class DefaultNetwork(torch.nn.Module):
    """The network gfn-diffusion's train.py builds without --pis_architectures and --zero_init (its
    defaults): t ↦ MLP([sin 2πkt, cos 2πkt]_{k=1..64}) and x ↦ MLP(x) (Linear-GELU-Linear-GELU, 64 wide),
    concatenated into a joint MLP (Linear-GELU-Linear-GELU-Linear, default initialisation) giving
    (drift, log-variance); the variance is fixed, so only the drift is used. DriftNet's interface."""

    langevin = learned_variance = False

    def __init__(self, dim, hidden=64, harmonics=64):
        super().__init__()
        nn, self.dim = torch.nn, dim
        self.register_buffer("pe", 2 * math.pi * torch.arange(1, harmonics + 1, dtype=torch.float32)[None])
        self.time = nn.Sequential(nn.Linear(2 * harmonics, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU())
        self.state = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU())
        self.joint = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                   nn.Linear(hidden, 2 * dim))
        self.log_Z = nn.Parameter(torch.zeros(()))

    def time_features(self, ts):
        arg = ts[:, None] * self.pe
        return self.time(torch.cat([arg.sin(), arg.cos()], -1)), None

    def forward(self, x, temb, lgv=None, score=None):
        hid = torch.cat([self.state(x), temb.expand(x.shape[0], -1)], -1)
        return self.joint(hid)[:, :self.dim], None, hid


def released_rollout(sampler, batch, reparam=False, noise=None):
    """Forward trajectories as gfn-diffusion simulates them (noise from torch's global generator, or
    `noise` (T, B, D)): states (T+1, B, D) and the drifts (T, B, D) with grad. TB (reparam=False): the
    state update takes the drift detached, so the states carry no grad; PIS (reparam=True,
    get_trajectory_fwd(pis=True)): the update is differentiable, the whole path carries the gradient."""
    T, h, sigma = sampler.n_steps, sampler.h, sampler.sigma
    temb, lgv = sampler.net.time_features(torch.arange(T, dtype=torch.float32) * h)
    x = torch.zeros(batch, sampler.target.dim)
    states, drifts = [x], []
    for i in range(T):
        drift = released_drift(sampler, x, temb, lgv, i)
        eps = torch.randn_like(x) if noise is None else noise[i]
        x = x + h * (drift if reparam else drift.detach()) + math.sqrt(h) * sigma * eps
        states.append(x)
        drifts.append(drift)
    return torch.stack(states), torch.stack(drifts)


def released_draw(sampler, seed):
    """log w (float64) of 2000 released-style samples (torch's generator at `seed`)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        states, drifts = released_rollout(sampler, N)
        return released_log_w(sampler, states, drifts).double()


def released_estimates(sampler, seed):
    """Δlog Z (ELBO) and Δlog Z^RW of 2000 released-style samples (log Z = `released_log_Z`)."""
    m, log_Z = log_z_estimates(released_draw(sampler, seed)), released_log_Z(sampler.target)
    return {"delta_log_Z": abs(m["elbo"] - log_Z), "delta_log_Z_rw": abs(m["log_Z"] - log_Z), "ess": m["ess"]}


def released_loss(sampler, objective, batch=300, noise=None):
    """gfn-diffusion's forward loss on `batch` fresh trajectories: fwd_tb ("tb") or pis ("pis")."""
    states, drifts = released_rollout(sampler, batch, reparam=objective == "pis", noise=noise)
    log_w = released_log_w(sampler, states, drifts)
    if objective == "pis":
        return (-log_w).mean() / sampler.target.dim
    if objective == "tb":
        return 0.5 * ((sampler.net.log_Z - log_w) ** 2).mean()
    raise ValueError(f"objective must be 'tb' or 'pis' for the released step, got {objective!r}")


def released_train(sampler, iterations, seed, objective="tb", lr_policy=1e-3, lr_flow=1e-1, curve=0, point=None):
    """gfn-diffusion's forward training loop (train_step with fwd_tb or pis) on the sampler's network;
    with curve > 0, `point(iteration)` every `curve` iterations. Returns (losses, curve points)."""
    torch.manual_seed(seed)
    net = sampler.net
    policy = [p for name, p in net.named_parameters() if name != "log_Z"]
    opt = torch.optim.Adam([{"params": policy, "lr": lr_policy}, {"params": [net.log_Z], "lr": lr_flow}])
    losses, points = [], []
    for it in range(iterations):
        opt.zero_grad(set_to_none=True)
        loss = released_loss(sampler, objective)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if curve and (it + 1) % curve == 0:
            points.append(point(it + 1))
    return losses, points


class ReleasedReplayBuffer(ReplayBuffer):
    """fastsamp's replay buffer drawing as gfn-diffusion's `ReplayBuffer` (energy_sampling/buffer.py, 255b499) does
    through its DataLoader, for the check of how that changes training (`offpolicy_checks.py train
    --released-buffer`):
    * the first `add` that stores states stores them twice;
    * `sample(n)` serves the batches of one list of N positions drawn when the list was made (N = the buffer's
      size then; P(position) ∝ 1 / (k·N + rank) with that content's ranks; with replacement), n at a time, the
      last partial batch dropped, and makes a new list only when that one is used up: the released loader's
      iterator outlives the `add` calls, which only rebuild a loader that the live iterator does not read;
    * a position counts from the oldest state, in the content of the time of the draw (the released buffer
      concatenates then drops its oldest rows: a position made before the buffer filled up names a newer state
      once it has); the states added since the list was made are not drawn until the next list.
    Everything else (FIFO capacity, ranks, the non-finite filter, the states) is `ReplayBuffer`'s."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.positions = torch.empty(0, dtype=torch.int64)  # the live list of positions and how much of it is used
        self.used = 0

    def add(self, x, log_r):
        if self.size == 0:
            super().add(x, log_r)
        super().add(x, log_r)

    def _oldest(self):
        return self.head if self.size == self.capacity else 0

    def sample(self, n: int, generator=None):
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if self.used + n > self.positions.numel():
            if 0 < self.size < n:
                raise RuntimeError(f"the released loader drops a last partial batch: {self.size} states hold no "
                                   f"batch of {n}")
            slots = self.slots(self.size, generator)  # P(slot) by the current ranks, `size` draws
            self.positions = ((slots - self._oldest()) % self.capacity)[:self.size // n * n]
            self.used = 0
        slots = (self._oldest() + self.positions[self.used:self.used + n]) % self.capacity
        self.used += n
        return self.x[slots], self.log_r[slots]

    def state_dict(self):
        return {**super().state_dict(), "positions": self.positions.clone(), "used": self.used}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.positions, self.used = state["positions"].clone(), int(state["used"])
