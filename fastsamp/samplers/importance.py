"""Training-free importance sampling with a score model (Kim, Lee, Kim, de Veciana):
sample q(x) ∝ l(x) p(x) from a score model of p and a differentiable weight l by a
reverse SDE whose score gains the guidance term

    g(x, t) = w(t) [ v/α_t + σ_t²/(ε α_t) (s_p(x + ε v, t) − s_p(x, t)) ],  v = ∇log l(x̂₀),
    x̂₀ = (x + σ_t² s_p(x, t))/α_t   (Tweedie; VP: σ_t² = 1 − ᾱ, α_t = √ᾱ),

two score calls and one backward pass through l per step; the guided Euler–Maruyama
update is the fused op `ops.guided_sde_step`. The method is biased (Tweedie/Jensen);
`corrector="mala"` adds score-based MH MALA moves at t_min, where the target's score
s_p + ∇log l is exact, to remove bias. Chains that go non-finite are counted per step and
reported as in `annealed_mcmc` (`on_nonfinite`).

Normaliser: since q = l·p/Z, E_q[1/l] = 1/Z, so log Z = log E_p[l] is estimated from the samples
as −log mean_i exp(−log l(x_i)) (exact in expectation when the samples follow q; the sampler's
bias shows in it), with the ESS of those weights 1/l(x_i) (how well q covers p); both are
log-sum-exp reductions over every chain of every rank.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from .. import ops
from ..distributed import Comm
from ..models import value_and_grad
from ..ops import _checks
from ..profiling import phase
from ..protocol import CountingModel, has_energy, resolve_model, with_backend
from .annealed import NonFiniteMonitor, corrector_spec, count_arg, mcmc


def guidance_strength(schedule, t: float, c: float) -> float:
    """The paper's guidance time scheduler ᾱ²/(ᾱ² + c(1 − ᾱ)²), ᾱ = α_t²."""
    abar = schedule.alpha(t) ** 2
    return abar**2 / (abar**2 + c * (1 - abar) ** 2)


def _checked_log_weight(log_weight):
    """log_weight, its output checked: a floating (B,) tensor for a (B, D) x (a (B − 1,) or scalar one was taken
    and broadcast: a chain without guidance, a log Z of the wrong samples)."""
    def checked(x):
        v = log_weight(x)
        if not isinstance(v, torch.Tensor) or not v.is_floating_point() or tuple(v.shape) != (x.shape[0],):
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"log_weight(x) must return a floating tensor of shape ({x.shape[0]},) (one log l per "
                             f"row of x), got {got}" + (f" of {v.dtype}" if isinstance(v, torch.Tensor) else ""))
        return v
    return checked


def grad_log_weight(log_weight, x):
    """∇ log l(x) by one backward pass through l (0 for a constant weight)."""
    with phase("log_weight"):
        return value_and_grad(log_weight, x)[1]


class Tilted:
    """q_t proxy with score s_p(x, t) + ∇log l(x): exact at t = 0, where q_0 ∝ l·p_0."""

    def __init__(self, model, log_weight):
        self.model, self.log_weight = model, log_weight
        self.dim, self.schedule = model.dim, model.schedule
        self.has_energy = has_energy(model)

    def with_backend(self, backend):
        return Tilted(with_backend(self.model, backend), self.log_weight)

    def score(self, x, t):
        return self.model.score(x, t) + grad_log_weight(self.log_weight, x)

    def log_prob(self, x, t):
        with torch.no_grad():
            return self.model.log_prob(x, t) + self.log_weight(x)


@dataclass
class ImportanceStats:
    """Score evaluations and weight gradients (all chains, all ranks), wall time in seconds, the
    corrector's mean acceptance (non-finite chains count as rejected; NaN without corrector), the
    number of chains with a non-finite coordinate after each SDE step (and after the corrector, last,
    if there is one), with the first such step (None if none); log Z = −log mean exp(−log l(x)) and
    the ESS of the weights 1/l(x) over all samples; this rank's global chains (chain_offset, n_local)."""

    n_score_evals: int = 0
    n_weight_grads: int = 0
    wall_time: float = 0.0
    corrector_accept: float = float("nan")
    n_nonfinite: list = field(default_factory=list)
    first_nonfinite_step: int | None = None
    log_z: float = float("nan")
    ess: float = float("nan")
    chain_offset: int = 0
    n_local: int = 0


def importance_sde(model, log_weight, n_samples, *, n_steps=200, fd_eps=1e-3, guidance_schedule=None,
                   corrector=None, n_corrector_steps=20, corrector_step_size=0.05, n_trapezoid=3, t_min=1e-3,
                   seed=0, backend="auto", dtype=torch.float32, device="cpu", on_nonfinite="warn", group=None,
                   gather=True):
    """Samples of q ∝ l·p: `log_weight(x) -> (B,)` is log l (differentiable, torch).

    guidance_schedule: None (w = 1), a float c (the scheduler ᾱ²/(ᾱ² + c(1−ᾱ)²)) or a callable
    t -> w. corrector: None or "mala" (score-based MH on q at t_min). on_nonfinite: "warn", "raise" or
    "ignore" (chains gone non-finite, read once at the end). Distributed (torchrun or `group=`): the
    chains are sharded over the ranks with noise keyed by the global chain index; gather=True returns
    all samples on rank 0 (None elsewhere), gather=False each rank's own. Returns (x, ImportanceStats).
    """
    if corrector not in (None, "mala"):
        raise ValueError(f"corrector must be None or 'mala', got {corrector!r}")
    model = resolve_model(model, dtype=dtype)
    spec = corrector_spec(model, corrector="mala", mh="score", n_steps=n_corrector_steps, n_trapezoid=n_trapezoid,
                          n_leapfrog=1, damping=0.0, steps_name="n_corrector_steps")
    n_corrector_steps, n_trapezoid = spec.n_steps, spec.n_trapezoid
    n_steps, n_samples = count_arg("n_steps", n_steps, 1), count_arg("n_samples", n_samples, 1)
    if not callable(log_weight):
        raise TypeError(f"log_weight must be a callable x -> log l(x), got {type(log_weight).__name__}")
    log_weight = _checked_log_weight(log_weight)
    fd_eps = _checks.finite_float("fd_eps", fd_eps, positive=True)
    _checks.finite_float("corrector_step_size", corrector_step_size, positive=True)
    t_min = _checks.finite_float("t_min", t_min)
    if not 0.0 < t_min < 1.0:
        raise ValueError(f"t_min must be in (0, 1), got {t_min}")
    if guidance_schedule is not None and not callable(guidance_schedule):
        guidance_schedule = _checks.finite_float("guidance_schedule", guidance_schedule, nonnegative=True)
    if guidance_schedule is None:
        def weight_of(t):
            return 1.0
    elif callable(guidance_schedule):
        weight_of = guidance_schedule
    else:
        def weight_of(t):
            return guidance_strength(model.schedule, t, float(guidance_schedule))
    device = _checks.device(device)
    comm = Comm.resolve(group)
    chain0, n_local = comm.shard(n_samples)
    sched = model.schedule
    f = CountingModel(with_backend(model, backend))
    stats = ImportanceStats(chain_offset=chain0, n_local=n_local)
    monitor = NonFiniteMonitor(n_steps + (corrector is not None), device, on_nonfinite)
    start = time.perf_counter()
    ts = torch.linspace(1.0, t_min, n_steps + 1, dtype=torch.float64).tolist()
    scale0 = (sched.alpha(1.0) ** 2 + sched.sigma2(1.0)) ** 0.5
    x = scale0 * ops.normal(seed, 0, n_local, model.dim, dtype=dtype, device=device, chain_offset=chain0)
    for i in range(n_steps):
        with comm.level(1) as lv:  # the step's non-finite chains over all ranks (and the failure flag)
            t, h = ts[i], ts[i] - ts[i + 1]
            alpha, sigma2 = sched.alpha(t), sched.sigma2(t)
            with phase("predictor"):
                s = f.score(x, t)
                x0_hat = (x + sigma2 * s) / alpha
                v = grad_log_weight(log_weight, x0_hat)
                s_shift = f.score(x + fd_eps * v, t)
                x = ops.guided_sde_step(x, s, s_shift, v, t=t, h=h, schedule=sched, fd_eps=fd_eps,
                                        guidance=weight_of(t), seed=seed, offset=i + 1, chain_offset=chain0, out=x,
                                        backend=backend)
            monitor.record(i, x)
            lv.values[0] = monitor.counts[i]
        monitor.counts[i] = lv.result[0]
        stats.n_score_evals += 2 * n_samples
        stats.n_weight_grads += n_samples
    if corrector == "mala":
        with comm.level(2) as lv:
            x, rate = mcmc(Tilted(model, log_weight), x, t=t_min, corrector="mala", mh="score",
                           n_steps=n_corrector_steps, step_size=corrector_step_size, n_trapezoid=n_trapezoid,
                           seed=seed, offset=n_steps + 1, chain_offset=chain0, backend=backend, on_nonfinite="ignore")
            monitor.record(n_steps, x)
            lv.values[:] = [rate.double().sum(), monitor.counts[n_steps]]
        monitor.counts[n_steps] = lv.result[1]
        stats.corrector_accept = float(lv.result[0]) / n_samples
        stats.n_score_evals += n_samples * (n_corrector_steps * n_trapezoid + 1)
        stats.n_weight_grads += n_samples * (n_corrector_steps * n_trapezoid + 1)
    with comm.level(0), torch.no_grad():
        neg_log_l = -log_weight(x).double()
        bad = torch.count_nonzero(~torch.isfinite(neg_log_l) & torch.isfinite(x).all(1))
    n_bad = int(comm.all_reduce([bad])[0])  # (the non-finite samples themselves: the monitor's report)
    if n_bad:
        monitor.alert(f"importance_sde: log_weight is non-finite at {n_bad} finite sample(s): log Z and the ESS are "
                      f"undefined (NaN)")
    lse1, lse2 = comm.log_sum_exp(neg_log_l), comm.log_sum_exp(2 * neg_log_l)
    stats.log_z = math.log(n_samples) - lse1
    stats.ess = math.exp(2 * lse1 - lse2)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    stats.wall_time = time.perf_counter() - start
    stats.n_nonfinite, stats.first_nonfinite_step = monitor.report("importance_sde", lambda i: (
        f" of {n_steps} (t = {ts[i]:.4g})" if i < n_steps else " (the MALA corrector at t_min)",
        "the guidance: the log-weight's gradient or fd_eps too large, or the score model's output too large or "
        "non-finite" if i < n_steps else "corrector_step_size is too large"))
    if gather:
        x = comm.gather(x)
    return x, stats


def self_normalised_weights(log_w):
    """w_i = exp(log_w_i) / Σ exp(log_w) (stable)."""
    return torch.softmax(log_w.double(), 0)


def effective_sample_size(log_w) -> float:
    """(Σ w)² / Σ w² of the importance weights."""
    w = self_normalised_weights(log_w)
    return float(1.0 / (w * w).sum())
