"""Training-free importance sampling with a score model (Kim, Lee, Kim, de Veciana):
sample q(x) ∝ l(x) p(x) from a score model of p and a differentiable weight l by a
reverse SDE whose score gains the guidance term

    g(x, t) = w(t) [ v/α_t + σ_t²/(ε α_t) (s_p(x + ε v, t) − s_p(x, t)) ],  v = ∇log l(x̂₀),
    x̂₀ = (x + σ_t² s_p(x, t))/α_t   (Tweedie; VP: σ_t² = 1 − ᾱ, α_t = √ᾱ),

two score calls and one backward pass through l per step; the guided Euler–Maruyama
update is the fused op `ops.guided_sde_step`. The method is biased (Tweedie/Jensen);
`corrector="mala"` adds score-based MH MALA moves at t_min, where the target's score
s_p + ∇log l is exact, to remove bias.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .. import ops
from .annealed import mcmc


def guidance_strength(schedule, t: float, c: float) -> float:
    """The paper's guidance time scheduler ᾱ²/(ᾱ² + c(1 − ᾱ)²), ᾱ = α_t²."""
    abar = schedule.alpha(t) ** 2
    return abar**2 / (abar**2 + c * (1 - abar) ** 2)


def grad_log_weight(log_weight, x):
    """∇ log l(x) by one backward pass through l."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        lw = log_weight(xg)
        if not lw.requires_grad:  # a constant weight
            return torch.zeros_like(x)
        (g,) = torch.autograd.grad(lw.sum(), xg)
    return g.detach()


class Tilted:
    """q_t proxy with score s_p(x, t) + ∇log l(x): exact at t = 0, where q_0 ∝ l·p_0."""

    def __init__(self, model, log_weight):
        self.model, self.log_weight = model, log_weight
        self.dim, self.schedule = model.dim, model.schedule
        self.has_energy = getattr(model, "has_energy", False)

    def score(self, x, t, backend="auto"):
        return self.model.score(x, t, backend=backend) + grad_log_weight(self.log_weight, x)

    def log_prob(self, x, t, backend="auto"):
        with torch.no_grad():
            return self.model.log_prob(x, t, backend=backend) + self.log_weight(x)


@dataclass
class ImportanceStats:
    n_score_evals: int = 0
    n_weight_grads: int = 0
    wall_time: float = 0.0
    corrector_accept: float = float("nan")


def importance_sde(model, log_weight, n_samples, *, n_steps=200, fd_eps=1e-3, guidance_schedule=None,
                   corrector=None, n_corrector_steps=20, corrector_step_size=0.05, n_trapezoid=3, t_min=1e-3,
                   seed=0, backend="auto", dtype=torch.float32, device="cpu"):
    """Samples of q ∝ l·p: `log_weight(x) -> (B,)` is log l (differentiable, torch).

    guidance_schedule: None (w = 1), a float c (the scheduler ᾱ²/(ᾱ² + c(1−ᾱ)²)) or a callable
    t -> w. corrector: None or "mala" (score-based MH on q at t_min). Returns (x, ImportanceStats).
    """
    if corrector not in (None, "mala"):
        raise ValueError(f"corrector must be None or 'mala', got {corrector!r}")
    if n_steps < 1 or n_samples < 1:
        raise ValueError("n_steps and n_samples must be >= 1")
    if guidance_schedule is None:
        def weight_of(t):
            return 1.0
    elif callable(guidance_schedule):
        weight_of = guidance_schedule
    else:
        def weight_of(t):
            return guidance_strength(model.schedule, t, float(guidance_schedule))
    device = torch.device(device)
    sched = model.schedule
    stats = ImportanceStats()
    start = time.perf_counter()
    ts = torch.linspace(1.0, t_min, n_steps + 1, dtype=torch.float64).tolist()
    scale0 = (sched.alpha(1.0) ** 2 + sched.sigma2(1.0)) ** 0.5
    x = scale0 * ops.normal(seed, 0, n_samples, model.dim, dtype, device)
    for i in range(n_steps):
        t, h = ts[i], ts[i] - ts[i + 1]
        alpha, sigma2 = sched.alpha(t), sched.sigma2(t)
        s = model.score(x, t, backend=backend)
        x0_hat = (x + sigma2 * s) / alpha
        v = grad_log_weight(log_weight, x0_hat)
        s_shift = model.score(x + fd_eps * v, t, backend=backend)
        x = ops.guided_sde_step(x, s, s_shift, v, t=t, h=h, schedule=sched, fd_eps=fd_eps, guidance=weight_of(t),
                                seed=seed, offset=i + 1, out=x, backend=backend)
        stats.n_score_evals += 2 * n_samples
        stats.n_weight_grads += n_samples
    if corrector == "mala":
        x, rate = mcmc(Tilted(model, log_weight), x, t=t_min, corrector="mala", mh="score",
                       n_steps=n_corrector_steps, step_size=corrector_step_size, n_trapezoid=n_trapezoid, seed=seed,
                       offset=n_steps + 1, backend=backend)
        stats.corrector_accept = float(rate.mean())
        stats.n_score_evals += n_samples * (n_corrector_steps * n_trapezoid + 1)
        stats.n_weight_grads += n_samples * (n_corrector_steps * n_trapezoid + 1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    stats.wall_time = time.perf_counter() - start
    return x, stats


def self_normalised_weights(log_w):
    """w_i = exp(log_w_i) / Σ exp(log_w) (stable)."""
    return torch.softmax(log_w.double(), 0)


def effective_sample_size(log_w) -> float:
    """(Σ w)² / Σ w² of the importance weights."""
    w = self_normalised_weights(log_w)
    return float(1.0 / (w * w).sum())
