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
from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from .. import backends, ops
from ..distributed import Comm
from ..ops import policy
from .annealed import mcmc

OBJECTIVES = ("pis", "tb", "vargrad", "subtb")
LOG_2PI = math.log(2 * math.pi)


class FourierTime(nn.Module):
    """t ↦ MLP([sin(ω t + φ), cos(ω t + φ)]), ω = linspace(0.1, 100, n_harmonics), φ learned."""

    def __init__(self, n_harmonics: int, hidden: int, out: int, n_layers: int = 1):
        super().__init__()
        self.register_buffer("omega", torch.linspace(0.1, 100.0, n_harmonics)[None])
        self.phase = nn.Parameter(torch.randn(1, n_harmonics))
        layers = [nn.Linear(2 * n_harmonics, hidden)]
        for _ in range(n_layers - 1):
            layers += [nn.GELU(), nn.Linear(hidden, hidden)]
        self.mlp = nn.Sequential(*layers, nn.GELU(), nn.Linear(hidden, out))

    def forward(self, t):
        arg = t[:, None] * self.omega + self.phase
        return self.mlp(torch.cat([arg.sin(), arg.cos()], -1))


def _head(hidden: int, out: int, n_layers: int, zero_init: bool) -> nn.Sequential:
    layers = [nn.GELU()]
    for _ in range(n_layers):
        layers += [nn.Linear(hidden, hidden), nn.GELU()]
    last = nn.Linear(hidden, out)
    if zero_init:
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    return nn.Sequential(*layers, last)


class DriftNet(nn.Module):
    """The PIS architecture: state embedding + Fourier time embedding → MLP → (drift, log-variance).

    Optional pieces: the Langevin parametrisation (a time-only scale NN₂(t), zero-initialised
    to 0.01, times the clipped target score), a learned per-dimension variance
    (log_var = log_var_range·tanh(raw)), a conditional flow F_θ(x, t) for SubTB, and a scalar
    log Z for TB.
    """

    def __init__(self, dim: int, *, hidden: int = 64, n_harmonics: int = 64, n_layers: int = 2,
                 langevin: bool = False, lgv_layers: int = 3, lgv_per_dim: bool = False,
                 learned_variance: bool = False, log_var_range: float = 4.0, flow: bool = False,
                 lgv_clip: float = 1e2, clip: float = 1e4):
        super().__init__()
        self.dim, self.langevin, self.learned_variance = dim, langevin, learned_variance
        self.log_var_range, self.lgv_clip, self.clip = log_var_range, lgv_clip, clip
        self.time = FourierTime(n_harmonics, hidden, hidden)
        self.state = nn.Linear(dim, hidden)
        self.joint = _head(hidden, 2 * dim, n_layers, zero_init=True)
        self.log_Z = nn.Parameter(torch.zeros(()))
        self.lgv_scale = None
        if langevin:
            self.lgv_scale = FourierTime(n_harmonics, hidden, dim if lgv_per_dim else 1, n_layers=lgv_layers)
            nn.init.zeros_(self.lgv_scale.mlp[-1].weight)
            nn.init.constant_(self.lgv_scale.mlp[-1].bias, 0.01)
        self.flow = _head(hidden, 1, n_layers, zero_init=True) if flow else None

    def time_features(self, ts):
        """Per-time quantities shared by every chain: (embedding (T, H), Langevin scale (T, 1|D) or None)."""
        return self.time(ts), (self.lgv_scale(ts) if self.langevin else None)

    def forward(self, x, temb, lgv, score=None):
        """x (N, D), temb (N|1, H), lgv (N|1, ·) → drift (N, D), log_var (N, D) or None, hidden (N, H)."""
        hid = self.state(x) + temb
        out = self.joint(hid)
        drift, raw = out[:, :self.dim], out[:, self.dim:]
        if self.langevin:
            drift = drift + lgv * score.clamp(-self.lgv_clip, self.lgv_clip)
        drift = drift.clamp(-self.clip, self.clip)
        log_var = self.log_var_range * torch.tanh(raw.clamp(-self.clip, self.clip)) if self.learned_variance else None
        return drift, log_var, hid


@dataclass
class Trajectories:
    """A batch of trajectories: states (T+1, B, D), log p_F and log p_B (B, T), log R(x_T) (B,),
    and for SubTB the flows log F (B, T+1)."""
    states: torch.Tensor
    log_pf: torch.Tensor
    log_pb: torch.Tensor
    log_r: torch.Tensor
    log_f: torch.Tensor | None = None

    def log_weights(self):
        """log w = log R(x_T) + Σ log p_B − Σ log p_F: E[w] = Z, E[log w] ≤ log Z."""
        return self.log_r + self.log_pb.sum(-1) - self.log_pf.sum(-1)


class ReplayBuffer:
    """FIFO buffer of terminal states with reward-rank prioritised sampling:
    P(i) ∝ 1 / (k·N + rank_i), rank 0 = highest log R."""

    def __init__(self, capacity: int, dim: int, *, rank_weight: float = 1e-2, dtype=torch.float32, device="cpu"):
        self.capacity, self.rank_weight = int(capacity), rank_weight
        self.x = torch.empty(self.capacity, dim, dtype=dtype, device=device)
        self.log_r = torch.empty(self.capacity, dtype=dtype, device=device)
        self.size, self.head = 0, 0

    def __len__(self):
        return self.size

    def add(self, x, log_r):
        keep = torch.isfinite(log_r) & torch.isfinite(x).all(-1)
        x, log_r = x[keep].detach(), log_r[keep].detach()
        n = x.shape[0]
        if n > self.capacity:
            x, log_r, n = x[-self.capacity:], log_r[-self.capacity:], self.capacity
        idx = (self.head + torch.arange(n, device=self.x.device)) % self.capacity
        self.x[idx] = x.to(self.x.device, self.x.dtype)
        self.log_r[idx] = log_r.to(self.log_r.device, self.log_r.dtype)
        self.head = (self.head + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def state_dict(self):
        """The filled slots (always the first `size`), the FIFO head and the size."""
        return {"x": self.x[:self.size].clone(), "log_r": self.log_r[:self.size].clone(),
                "head": self.head, "size": self.size}

    def load_state_dict(self, state):
        n = int(state["size"])
        if n > self.capacity or state["x"].shape[1:] != self.x.shape[1:]:
            raise ValueError(f"buffer state of {n} x {tuple(state['x'].shape[1:])} does not fit a buffer of "
                             f"{self.capacity} x {tuple(self.x.shape[1:])}")
        self.x[:n] = state["x"].to(self.x.device, self.x.dtype)
        self.log_r[:n] = state["log_r"].to(self.log_r.device, self.log_r.dtype)
        self.head, self.size = int(state["head"]), n

    def sample(self, n: int, generator=None):
        if self.size == 0:
            raise RuntimeError("the replay buffer is empty")
        log_r = self.log_r[:self.size]
        rank = torch.empty(self.size, dtype=torch.float64, device=log_r.device)
        rank[torch.argsort(log_r, descending=True)] = torch.arange(self.size, dtype=torch.float64,
                                                                     device=log_r.device)
        weights = 1.0 / (self.rank_weight * self.size + rank)
        idx = torch.multinomial(weights, n, replacement=True, generator=generator)
        return self.x[idx], self.log_r[idx]


def local_search(target, x, *, n_steps=200, burn_in=100, step_size=0.01, target_acceptance=0.574,
                 adapt_every=5, adapt_factor=0.01, seed=0):
    """MALA (energy MH) from the states x; the global step size is multiplied by 1 ± adapt_factor
    every `adapt_every` moves towards the target acceptance rate. Returns (states after each
    block past burn-in, stacked (n_blocks·B, D), their log R, final step size). The target is the
    MCMC model itself (fastsamp.protocol: its score and log_prob ignore the time)."""
    kept, eps, offset = [], float(step_size), 0
    for block in range(-(-n_steps // adapt_every)):
        x, rate = mcmc(target, x, mh="energy", n_steps=adapt_every, step_size=eps, seed=seed, offset=offset)
        offset += adapt_every
        eps *= 1 + adapt_factor if float(rate.mean()) > target_acceptance else 1 - adapt_factor
        if (block + 1) * adapt_every > burn_in:
            kept.append(x)
    x_all = torch.cat(kept) if kept else x
    return x_all, target.log_prob(x_all), eps


@dataclass
class TrainConfig:
    """Training hyper-parameters; the defaults are those of Sendera et al. (2024)."""
    objective: str = "tb"
    iterations: int = 25000
    batch_size: int = 300
    lr_policy: float = 1e-3
    lr_flow: float = 1e-1            # log Z (TB) or the flow network (SubTB: 1e-2 in the paper)
    explore: float = 0.0             # extra sampling std per step, decayed linearly to 0 at half of training
    local_search: bool = False       # alternate forward and buffer (backward) trajectories with MALA local search
    replay: bool = False             # alternate forward and backward trajectories from the buffer (no local search)
    prior_every: int = 0             # every k-th iteration: backward trajectories from x_T ~ N(0, σ² I), the
                                     # reference process's marginal (prior-trajectory exploration)
    buffer_size: int = 600_000
    rank_weight: float = 1e-2
    ls_every: int = 100
    ls_steps: int = 200
    ls_burn_in: int = 100
    ls_step_size: float = 0.01
    ls_target_acceptance: float = 0.574
    subtb_lambda: float = 2.0
    grad_clip: float | None = None
    seed: int = 0
    eval_every: int = 0              # 0: no periodic evaluation
    eval_samples: int = 2000


@dataclass
class TrainLog:
    """Per-iteration losses, wall and process-CPU seconds of training (checkpoint writes excluded,
    summed over resumed calls), periodic evaluations, and the iterations the run was resumed from."""
    loss: list = field(default_factory=list)
    seconds: float = 0.0
    evals: list = field(default_factory=list)
    cpu_seconds: float = 0.0
    resumed_from: list = field(default_factory=list)

    @property
    def seconds_per_iteration(self):
        return self.seconds / max(len(self.loss), 1)

    @property
    def cpu_seconds_per_iteration(self):
        """Process CPU time per iteration: unaffected by pauses and, for a one-thread run, by other jobs."""
        return self.cpu_seconds / max(len(self.loss), 1)


class DiffusionSampler(nn.Module):
    """Drift network + the pinned-Brownian reference process (σ, T). `fused=True` runs the
    fast path: no-grad simulation, then one batched network evaluation of every visited state
    for the off-policy objectives; `fused=False` is the eager per-step autograd loop with the
    PyTorch reference of the op (the baseline it is timed against)."""

    def __init__(self, target, *, sigma: float = 1.0, n_steps: int = 100, fused: bool = True, **net_kw):
        super().__init__()
        self.target, self.sigma, self.n_steps, self.fused = target, float(sigma), int(n_steps), fused
        self.net = DriftNet(target.dim, **net_kw)
        self.backend = "auto" if fused else "torch"

    @property
    def h(self):
        return 1.0 / self.n_steps

    @property
    def device(self):
        """Where the network lives; trajectories are simulated there (`sampler.to(device)` moves it)."""
        return self.net.log_Z.device

    def _grid(self, like):
        return torch.arange(self.n_steps + 1, dtype=like.dtype, device=like.device) * self.h

    def _score(self, x):
        return self.target.score(x).detach() if self.net.langevin else None

    # -- trajectories -------------------------------------------------------------------------
    def forward_trajectories(self, batch_size, *, explore=0.0, reparam=False, seed=0, chain_offset=0,
                             with_flows=False, dtype=torch.float32, device=None):
        """Simulate from x_0 = 0 on `device` (default: the network's). reparam=True keeps the whole
        path differentiable (PIS). The chains are the global chains chain_offset .. chain_offset +
        batch_size − 1 of the Philox draws."""
        T, D = self.n_steps, self.target.dim
        x = torch.zeros(batch_size, D, dtype=dtype, device=self.device if device is None else device)
        ts = self._grid(x)
        offline = self.fused and not reparam
        if offline and not with_flows and self._whole_trajectory_kernel(x):
            return self._fused_forward(batch_size, explore, seed, chain_offset, x)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not offline):
            temb, lgv = self.net.time_features(ts[:-1])
            states, log_pf, log_pb, log_f = [x], [], [], []
            for i in range(T):
                drift, log_var, hid = self.net(x, temb[i:i + 1], None if lgv is None else lgv[i:i + 1], self._score(x))
                if with_flows and not offline:
                    log_f.append(self._flow(x, hid, ts[i]))
                x, lpf, lpb = ops.em_step_logprob(x, drift, sigma=self.sigma, t=float(ts[i]), h=self.h, seed=seed,
                                                  offset=i, chain_offset=chain_offset, log_var=log_var,
                                                  explore=explore, reparam=reparam, backend=self.backend)
                states.append(x)
                log_pf.append(lpf)
                log_pb.append(lpb)
        states = torch.stack(states)
        log_pb = torch.stack(log_pb, 1)
        if offline:
            log_pf, log_f = self._evaluate(states, with_flows)
        else:
            log_pf = torch.stack(log_pf, 1)
            if with_flows:
                log_f = torch.stack(log_f, 1)
        log_r = self.target.log_prob(states[-1]) if reparam else self.target.log_prob(states[-1].detach()).detach()
        return self._finish(states, log_pf, log_pb, log_r, log_f if with_flows else None)

    def backward_trajectories(self, x_T, *, seed=0, with_flows=False):
        """Brownian-bridge trajectories from the terminal states x_T back to x_0 = 0:
        X_t = t x_T + σ (W_t − t W_1) on the grid, drawn in one shot."""
        T, (B, D) = self.n_steps, x_T.shape
        ts = self._grid(x_T)
        g = torch.Generator(device=x_T.device).manual_seed(seed)
        dw = torch.randn(T, B, D, generator=g, dtype=x_T.dtype, device=x_T.device) * math.sqrt(self.h)
        w = torch.cat([torch.zeros(1, B, D, dtype=x_T.dtype, device=x_T.device), dw.cumsum(0)])
        states = ts[:, None, None] * x_T[None] + self.sigma * (w - ts[:, None, None] * w[-1:])
        states[-1] = x_T
        log_pf, log_f = self._evaluate(states, with_flows)
        return self._finish(states, log_pf, self._bridge_log_pb(states), self.target.log_prob(x_T).detach(),
                            log_f if with_flows else None)

    def _whole_trajectory_kernel(self, x) -> bool:
        """Whether the C++ whole-trajectory policy kernels (ops.policy) serve this network: CPU,
        the plain architecture (no Langevin term, fixed variance)."""
        return (x.device.type == "cpu" and not self.net.langevin and not self.net.learned_variance
                and backends.is_available("cpp"))

    def _fused_forward(self, batch_size, explore, seed, chain_offset, like):
        """Forward trajectories by one rollout kernel (no grad) and log p_F through one kernel
        whose backward is one kernel (the rollout's log p_F is reused, not recomputed)."""
        ts = self._grid(like)
        temb = self.net.time_features(ts[:-1])[0]
        with torch.no_grad():
            states, lpf, lpb = policy.policy_rollout(self.net, temb.detach(), batch_size, sigma=self.sigma,
                                                     h=self.h, explore=explore, seed=seed,
                                                     chain_offset=chain_offset, dtype=like.dtype)
        log_pf = policy.policy_log_pf(self.net, states, temb, sigma=self.sigma, h=self.h, log_pf=lpf)
        return self._finish(states, log_pf, lpb, self.target.log_prob(states[-1]).detach(), None)

    def _evaluate(self, states, with_flows):
        """log p_F of every transition of fixed trajectories (and the flows): one batched network
        call over all T·B states and one fused op call (uniform h, so one variance); for the plain
        network on the CPU, one whole-trajectory kernel."""
        T, B, D = states.shape[0] - 1, states.shape[1], states.shape[2]
        ts = self._grid(states)
        if self.fused and not with_flows and self._whole_trajectory_kernel(states):
            temb = self.net.time_features(ts[:-1])[0]
            return policy.policy_log_pf(self.net, states, temb, sigma=self.sigma, h=self.h), None
        temb, lgv = self.net.time_features(ts[:-1])
        x = states[:-1].reshape(T * B, D)
        def per_row(a):  # (T, ·) per-time features -> (T·B, ·)
            return a[:, None].expand(T, B, a.shape[-1]).reshape(T * B, -1)
        drift, log_var, hid = self.net(x, per_row(temb), None if lgv is None else per_row(lgv), self._score(x))
        _, log_pf, _ = ops.em_step_logprob(x, drift, sigma=self.sigma, t=0.0, h=self.h, log_var=log_var,
                                           x_next=states[1:].reshape(T * B, D), backend=self.backend)
        log_f = self._flow(x, hid, ts[:-1].repeat_interleave(B)).view(T, B).T if with_flows else None
        return log_pf.view(T, B).T, log_f

    def _bridge_log_pb(self, states):
        """log p_B(x_i | x_{i+1}) = log N(x_i; (t_i/t_{i+1}) x_{i+1}, σ² h t_i/t_{i+1}); 0 for i = 0."""
        ts = self._grid(states)
        c = (ts[1:-1] / ts[2:])[:, None, None]
        var = self.sigma ** 2 * self.h * c
        u = states[1:-1] - c * states[2:]
        lpb = -0.5 * (u * u / var + torch.log(2 * math.pi * var)).sum(-1)  # (T−1, B)
        return torch.cat([torch.zeros_like(lpb[:1]), lpb]).T

    def _flow(self, x, hid, t):
        """Forward-looking flow log F(x, t) = F_θ(x, t) + (1 − t) log N(x; 0, σ² max(t, h)) + t log R(x)."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        var = self.sigma ** 2 * torch.clamp(t, min=self.h)
        log_ref = -0.5 * ((x * x).sum(-1) / var + x.shape[1] * torch.log(2 * math.pi * var))
        return self.net.flow(hid).squeeze(-1) + (1 - t) * log_ref + t * self.target.log_prob(x).detach()

    def _finish(self, states, log_pf, log_pb, log_r, log_f):
        if log_f is not None:
            log_f = torch.cat([log_f, log_r[:, None]], 1)
        return Trajectories(states, log_pf, log_pb, log_r, log_f)

    # -- objectives ---------------------------------------------------------------------------
    def loss(self, traj: Trajectories, objective: str, subtb_lambda: float = 2.0, comm: Comm | None = None):
        """The objective's loss on a batch of trajectories. Distributed (`comm` of N ranks), VarGrad's
        batch log Z (the mean log w) is the mean over the trajectories of every rank (one all_reduce),
        so that N ranks with batch b give the gradient of one process with batch N·b."""
        if objective == "pis":
            return (-traj.log_weights()).mean() / self.target.dim
        if objective == "tb":
            return 0.5 * ((self.net.log_Z - traj.log_weights()) ** 2).mean()
        if objective == "vargrad":
            log_w = traj.log_weights()
            if comm is not None and comm.distributed:
                total, count = comm.all_reduce([float(log_w.detach().double().sum()), log_w.shape[0]])
                baseline = float(total / count)  # Σ (log w − mean) = 0: no gradient through the mean
            else:
                baseline = log_w.mean()
            return 0.5 * ((log_w - baseline) ** 2).mean()
        if objective == "subtb":
            T = traj.log_pf.shape[1]
            cum = torch.cat([torch.zeros_like(traj.log_pf[:, :1]), (traj.log_pf - traj.log_pb).cumsum(1)], 1)
            # residual (i, j) = log F_i + Σ_{i..j} (log p_F − log p_B) − log F_j
            res = (traj.log_f[:, :, None] - cum[:, :, None]) - (traj.log_f[:, None, :] - cum[:, None, :])
            span = torch.arange(T + 1, device=cum.device)
            span = (span[None, :] - span[:, None]).to(cum.dtype)
            w = torch.where(span > 0, subtb_lambda ** span, torch.zeros_like(span))
            return ((res ** 2) * (w / w.sum())).sum((1, 2)).mean()
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")

    # -- sampling and evaluation ----------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n, *, seed=0, dtype=torch.float32, device=None, group=None, gather=True):
        """n samples and their log weights log w (E[w] = Z).

        Distributed (torchrun or `group=`): each rank simulates its share of the n chains with noise
        keyed by the global chain index; gather=True returns all of them on rank 0 ((None, None)
        elsewhere), gather=False each rank's own."""
        comm = Comm.resolve(group)
        chain0, n_local = comm.shard(n)
        traj = self.forward_trajectories(n_local, seed=seed, chain_offset=chain0, dtype=dtype, device=device)
        x, log_w = traj.states[-1], traj.log_weights()
        if not (gather and comm.distributed):
            return x, log_w
        both = comm.gather(torch.cat([x, log_w[:, None]], 1))
        return (None, None) if both is None else (both[:, :-1], both[:, -1])

    @torch.no_grad()
    def evaluate(self, n=2000, *, seed=10**6, exact_samples=None, n_eubo_repeats=1):
        """log Z estimates (ELBO = mean log w, importance-weighted log-mean-exp), ESS/n, learned log Z,
        and with exact samples the EUBO and the 2-Wasserstein distance."""
        from .. import metrics
        x, log_w = self.sample(n, seed=seed, group=Comm(None))
        out = metrics.log_z_estimates(log_w)
        out["log_Z_learned"] = float(self.net.log_Z)
        if exact_samples is not None:
            exact_samples = exact_samples.to(self.device)
            out["w2"] = metrics.wasserstein2(x, exact_samples)
            lw = torch.cat([self.backward_trajectories(exact_samples, seed=seed + r).log_weights()
                            for r in range(n_eubo_repeats)])
            out["eubo"] = float(lw.mean())
        return out


class _Iteration(nn.Module):
    """One training iteration's loss as a module forward, so that DistributedDataParallel sees the
    forward and all-reduces (averages) the gradients of the sampler's parameters in the backward."""

    def __init__(self, sampler, step):
        super().__init__()
        self.sampler, self.step = sampler, step

    def forward(self, it):
        return self.step(it)


def train(sampler: DiffusionSampler, config: TrainConfig, *, progress=True, callback=None,
          on_iteration=None, checkpoint=None, checkpoint_every=0, until=None, on_checkpoint=None,
          group=None) -> TrainLog:
    """Train `sampler` with config.objective on forward (on-policy + exploration) trajectories; with
    local_search or replay every other iteration uses backward trajectories from the buffer, and
    prior_every = k makes every k-th iteration use backward trajectories from the reference marginal.
    `on_iteration(it)` runs before each iteration (e.g. to anneal the target); `callback(it)` every
    eval_every iterations, its results collected in the log.

    Resumable: with `checkpoint` (a path) the whole training state — model, optimizer, replay
    buffers, every RNG state, the iteration count, the loss history and the elapsed time — is
    written there (atomically) every `checkpoint_every` iterations and when the call returns, and
    a call that finds the file resumes from it: a run stopped and resumed follows the same path as
    an uninterrupted one. `until` stops before that iteration (default: config.iterations);
    `on_checkpoint(iteration, log)` runs after each checkpoint write.
    Trajectories are simulated on `sampler.device`; the replay buffers stay in CPU memory.

    Distributed (torchrun or `group=` with N ranks): DistributedDataParallel, each rank simulating
    config.batch_size forward trajectories as the global chains rank·b .. (rank + 1)·b − 1, so that
    N ranks with batch b train like one process with batch N·b (VarGrad's batch log Z is reduced over
    all ranks). Buffer, local-search and prior trajectories are drawn per rank (generators seeded with
    the rank); each rank checkpoints to `checkpoint` + ".rank{r}". The logged loss is this rank's."""
    cfg = config
    if cfg.objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {cfg.objective!r}")
    if cfg.objective == "pis" and (cfg.local_search or cfg.replay or cfg.prior_every or cfg.explore > 0):
        raise ValueError("pis is on-policy: it takes no local_search, replay, prior_every or explore")
    if cfg.objective == "subtb" and sampler.net.flow is None:
        raise ValueError("objective 'subtb' needs a DriftNet built with flow=True")
    if checkpoint_every < 0 or (checkpoint_every and checkpoint is None):
        raise ValueError(f"checkpoint_every must be >= 0 and needs a checkpoint path, got {checkpoint_every}")
    until = cfg.iterations if until is None else min(int(until), cfg.iterations)
    comm = Comm.resolve(group)
    if comm.distributed and checkpoint is not None:
        checkpoint = f"{checkpoint}.rank{comm.rank}"
    torch.manual_seed(cfg.seed)
    flow_params = [sampler.net.log_Z] + (list(sampler.net.flow.parameters()) if sampler.net.flow is not None else [])
    flow_ids = {id(p) for p in flow_params}
    policy = [p for p in sampler.net.parameters() if id(p) not in flow_ids]
    opt = torch.optim.Adam([{"params": policy, "lr": cfg.lr_policy}, {"params": flow_params, "lr": cfg.lr_flow}])
    D, device = sampler.target.dim, sampler.device
    buffers = {}
    if cfg.local_search or cfg.replay:
        buffers["replay"] = ReplayBuffer(cfg.buffer_size, D, rank_weight=cfg.rank_weight)
    if cfg.local_search:
        buffers["local_search"] = ReplayBuffer(cfg.buffer_size, D, rank_weight=cfg.rank_weight)
    buffer, buffer_ls = buffers.get("replay"), buffers.get("local_search")
    gen = torch.Generator().manual_seed(cfg.seed + 7919 * comm.rank)
    log = TrainLog()
    first = 0
    if checkpoint is not None and os.path.exists(checkpoint):
        first = _load_checkpoint(checkpoint, sampler, opt, buffers, gen, log, cfg)
        log.resumed_from.append(first)
    bar = _progress(cfg.iterations, progress and comm.rank == 0, first)
    with_flows = cfg.objective == "subtb"
    chain0 = comm.rank * cfg.batch_size

    def iteration_loss(it):
        seed = cfg.seed * 1_000_003 + it
        bwd_seed = seed + 7919 * comm.rank  # backward trajectories: per-rank torch generator noise
        explore = cfg.explore * max(0.0, 1.0 - it / max(cfg.iterations / 2, 1))
        if cfg.prior_every and it % cfg.prior_every == cfg.prior_every - 1:
            x_T = sampler.sigma * torch.randn(cfg.batch_size, D, generator=gen)
            traj = sampler.backward_trajectories(x_T.to(device), seed=bwd_seed, with_flows=with_flows)
        elif buffer is not None and it % 2 == 1:
            if cfg.local_search:
                if it % cfg.ls_every < 2:
                    start_x, _ = buffer.sample(cfg.batch_size, gen)
                    found, found_r, _ = local_search(sampler.target, start_x.to(device), n_steps=cfg.ls_steps,
                                                     burn_in=cfg.ls_burn_in, step_size=cfg.ls_step_size,
                                                     target_acceptance=cfg.ls_target_acceptance, seed=bwd_seed)
                    buffer_ls.add(found, found_r)
                x_T, _ = buffer_ls.sample(cfg.batch_size, gen)
            else:
                x_T, _ = buffer.sample(cfg.batch_size, gen)
            traj = sampler.backward_trajectories(x_T.to(device), seed=bwd_seed, with_flows=with_flows)
        else:
            traj = sampler.forward_trajectories(cfg.batch_size, explore=explore, reparam=cfg.objective == "pis",
                                                seed=seed, chain_offset=chain0, with_flows=with_flows)
            if buffer is not None:
                buffer.add(traj.states[-1], traj.log_r)
        return sampler.loss(traj, cfg.objective, cfg.subtb_lambda, comm)

    step = _Iteration(sampler, iteration_loss)
    if comm.distributed:
        step = torch.nn.parallel.DistributedDataParallel(step, process_group=comm.group,
                                                         find_unused_parameters=True)
    prior_seconds, prior_cpu = log.seconds, log.cpu_seconds
    start, start_cpu = time.perf_counter(), time.process_time()
    saving = [0.0, 0.0]  # wall and CPU seconds spent writing checkpoints (not training time)

    def elapsed():
        log.seconds = prior_seconds + time.perf_counter() - start - saving[0]
        log.cpu_seconds = prior_cpu + time.process_time() - start_cpu - saving[1]

    def save(it):
        elapsed()
        t0, c0 = time.perf_counter(), time.process_time()
        _save_checkpoint(checkpoint, it, sampler, opt, buffers, gen, log, cfg)
        saving[0] += time.perf_counter() - t0
        saving[1] += time.process_time() - c0
        if on_checkpoint is not None:
            on_checkpoint(it, log)

    for it in range(first, until):
        if on_iteration is not None:
            on_iteration(it)
        opt.zero_grad(set_to_none=True)
        loss = step(it)
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(sampler.parameters(), cfg.grad_clip)
        opt.step()
        log.loss.append(float(loss.detach()))
        if bar is not None:
            bar.update(1)
            if it % 50 == 0:
                bar.set_postfix(loss=f"{float(loss):.3g}")
        if cfg.eval_every and (it + 1) % cfg.eval_every == 0 and callback is not None:
            elapsed()
            log.evals.append(callback(it + 1))
        if checkpoint_every and (it + 1) % checkpoint_every == 0 and it + 1 < until:
            save(it + 1)
    elapsed()
    if checkpoint is not None:
        save(max(first, until))
    if bar is not None:
        bar.close()
    return log


CHECKPOINT_FORMAT = 1


def _save_checkpoint(path, iteration, sampler, opt, buffers, gen, log, cfg):
    """Write the training state to `path` atomically (a temporary file in the same folder, then rename)."""
    state = {
        "format": CHECKPOINT_FORMAT, "iteration": iteration, "config": dataclasses.asdict(cfg),
        "model": sampler.state_dict(), "optimizer": opt.state_dict(),
        "buffers": {name: buf.state_dict() for name, buf in buffers.items()},
        "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        "loss": log.loss, "evals": log.evals, "seconds": log.seconds, "cpu_seconds": log.cpu_seconds,
        "resumed_from": log.resumed_from,
    }
    atomic_write(path, lambda f: torch.save(state, f))


def atomic_write(path, write):
    """Call write(f) on a temporary binary file beside `path`, sync it, and rename it to `path`, so
    that `path` holds either the old or the new content, never a partial one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _load_checkpoint(path, sampler, opt, buffers, gen, log, cfg) -> int:
    """Restore the state written by `_save_checkpoint`; returns the iteration to continue from."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {path} has format {state.get('format')}, expected {CHECKPOINT_FORMAT}")
    if state["config"] != dataclasses.asdict(cfg):
        diff = {k: (v, state["config"].get(k)) for k, v in dataclasses.asdict(cfg).items()
                if state["config"].get(k) != v}
        raise ValueError(f"checkpoint {path} was written with another TrainConfig (now, then): {diff}")
    if set(state["buffers"]) != set(buffers):
        raise ValueError(f"checkpoint {path} holds buffers {sorted(state['buffers'])}, expected {sorted(buffers)}")
    sampler.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    for name, buf in buffers.items():
        buf.load_state_dict(state["buffers"][name])
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    log.loss, log.evals = list(state["loss"]), list(state["evals"])
    log.seconds, log.cpu_seconds = state["seconds"], state["cpu_seconds"]
    log.resumed_from = list(state["resumed_from"])
    return int(state["iteration"])


def read_checkpoint_iteration(path) -> int:
    """The iteration count stored in a checkpoint (0 when there is none)."""
    if not os.path.exists(path):
        return 0
    return int(torch.load(path, map_location="cpu", weights_only=False)["iteration"])


def _progress(total, enabled, initial=0):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, dynamic_ncols=True, leave=False)
