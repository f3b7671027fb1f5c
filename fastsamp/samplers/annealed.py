"""Annealed MCMC: reverse diffusion (predictor) with MCMC correctors at each noise
level, where the MH test of a score-only model uses the trapezoidal line integral
of the score (Sjöberg et al.); built on fastsamp.ops only.

Correctors: "ula" (unadjusted Langevin), "mala", "hmc" (L leapfrog steps, trapezoid
along the leapfrog path), "uhmc" (partial momentum refresh, no MH).
MH: "score" (trapezoid), "energy" (exact log-density difference, models with an energy),
"none" (unadjusted).

Divergence: every sampler counts, on the chains' device, the chains with a non-finite
coordinate after each level, reads the counts once at the end and, by `on_nonfinite`,
warns ("warn", the default) or raises (`NonFiniteChainsError`) naming the first level
where chains went non-finite, or stays silent ("ignore"). Non-finite chains count as
not accepted in every acceptance rate.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import torch

from .. import ops
from ..distributed import Comm
from ..models import GaussianMixture
from ..ops import _checks
from ..ops import reference as _ref

CORRECTORS = ("ula", "mala", "hmc", "uhmc")
MH_MODES = ("score", "energy", "none")
NONFINITE_ACTIONS = ("warn", "raise", "ignore")


class NonFiniteChainsWarning(RuntimeWarning):
    """Chains of a sampler went non-finite (NaN or ±inf)."""


class NonFiniteChainsError(FloatingPointError):
    """Raised with on_nonfinite="raise" when chains of a sampler went non-finite."""


@dataclass
class AnnealedStats:
    """Per-level mean acceptance rate (non-finite chains count as rejected; empty without corrector
    moves), mean step size, and number of chains with a non-finite coordinate after the level;
    the first level with such chains (None if none); total score evaluations (all chains), wall
    time in seconds, and whether the fused mixture kernel was used. Distributed: the statistics
    are over the chains of every rank, and (chain_offset, n_local) are this rank's chains."""

    accept_rate: list = field(default_factory=list)
    step_size: list = field(default_factory=list)
    n_nonfinite: list = field(default_factory=list)
    first_nonfinite_level: int | None = None
    n_score_evals: int = 0
    wall_time: float = 0.0
    fused: bool = False
    chain_offset: int = 0
    n_local: int = 0


def count_arg(name, v, minimum):
    """An int count in [minimum, 2**31 - 1] (the kernels' loop counters are C ints)."""
    return _checks.integer(name, v, minimum=minimum)


def check_model(model, needs_schedule=True):
    """A model is an object with `dim`, `score(x, t)` and, for annealing, a `schedule`."""
    missing = [a for a in ("dim", "score") + (("schedule",) if needs_schedule else ()) if not hasattr(model, a)]
    if missing or not callable(model.score):
        raise TypeError(f"model must be a score model (an object with dim, schedule and score(x, t), such as "
                        f"GaussianMixture, Product, ScoreModel or EnergyModel), got {type(model).__name__}")


def check_corrector_args(model, corrector, mh, n_steps, n_trapezoid, n_leapfrog, damping, steps_name="n_steps",
                         needs_schedule=True):
    """One validation for the fused and the generic corrector paths: the same error whichever path the
    model takes. Returns the (int) counts."""
    check_model(model, needs_schedule)
    if corrector not in CORRECTORS:
        raise ValueError(f"corrector must be one of {CORRECTORS}, got {corrector!r}")
    if mh not in MH_MODES:
        raise ValueError(f"mh must be one of {MH_MODES}, got {mh!r}")
    if corrector in ("ula", "uhmc") and mh != "none":
        raise ValueError(f"corrector={corrector!r} has no MH step: use mh='none'")
    if mh == "energy" and not getattr(model, "has_energy", False):
        raise ValueError(f"mh='energy' needs a model with an energy (log_prob); {type(model).__name__} has "
                         f"only a score: use mh='score'")
    damping = _checks.finite_float("damping", damping)
    if not 0.0 <= damping <= 1.0:
        raise ValueError(f"damping must be in [0, 1], got {damping}")
    return (count_arg(steps_name, n_steps, 0), count_arg("n_trapezoid", n_trapezoid, 1),
            count_arg("n_leapfrog", n_leapfrog, 1))


class NonFiniteMonitor:
    """Counts the chains with a non-finite coordinate after each level on the chains' device (no host
    synchronisation per level); `report` reads the counts once, at the end, and warns or raises."""

    def __init__(self, n_levels, device, on_nonfinite):
        if on_nonfinite not in NONFINITE_ACTIONS:
            raise ValueError(f"on_nonfinite must be one of {NONFINITE_ACTIONS}, got {on_nonfinite!r}")
        self.action = on_nonfinite
        self.counts = torch.zeros(n_levels, dtype=torch.int64, device=device)

    def record(self, level, x, was_finite=None):
        """Count the non-finite chains of x (B, D) at `level` (only those finite in `was_finite`, if
        given); returns the (B,) mask of finite chains."""
        finite = torch.isfinite(x).all(1)
        bad = ~finite if was_finite is None else was_finite & ~finite
        self.counts[level] = bad.sum()
        return finite

    def report(self, sampler, describe):
        """(counts per level, first level with non-finite chains or None); warns or raises naming
        that level, `describe(level)` giving (where it is, the likely cause)."""
        counts = self.counts.tolist()
        first = next((i for i, c in enumerate(counts) if c), None)
        if first is not None and self.action != "ignore":
            where, cause = describe(first)
            msg = (f"{sampler}: {counts[first]} chain(s) became non-finite (NaN/inf) at level {first}{where} "
                   f"({counts[-1]} non-finite at the end). Likely cause: {cause}")
            if self.action == "raise":
                raise NonFiniteChainsError(msg)
            warnings.warn(msg, NonFiniteChainsWarning, stacklevel=3)
        return counts, first


class _Counter:
    """Calls the model's score (and log-density) in one batch and counts evaluations."""

    def __init__(self, model, backend):
        self.model, self.backend, self.n = model, backend, 0

    def score(self, x, t):
        self.n += x.shape[0]
        return self.model.score(x, t, backend=self.backend)

    def score_and_log_prob(self, x, t):
        self.n += x.shape[0]
        if hasattr(self.model, "score_and_log_prob"):
            return self.model.score_and_log_prob(x, t, backend=self.backend)
        return self.model.score(x, t, backend=self.backend), self.model.log_prob(x, t, backend=self.backend)


def annealed_mcmc(model, n_samples, *, n_levels=100, corrector="mala", mh="score", n_corrector_steps=5,
                  step_size=0.1, n_trapezoid=1, n_leapfrog=3, damping=0.8, data_scale=1.0, t_min=1e-3,
                  adapt=False, target_accept=None, seed=0, backend="auto", dtype=torch.float32, device="cpu",
                  fused=True, progress=False, on_nonfinite="warn", group=None, gather=True):
    """Sample `model` at t = 0 by annealing over `n_levels` noise levels from t = 1 to `t_min`.

    At each level t: one reverse Euler–Maruyama step from the previous level (predictor), then
    `n_corrector_steps` corrector moves targeting p_t with step ε_t = step_size·(α_t² data_scale² + σ_t²)
    (proportional to the marginal variance), times a per-chain factor adapted towards
    `target_accept` ∈ (0, 1) when `adapt` is set (default targets: MALA 0.57, HMC 0.65).
    Mixture models run the fused whole-move kernels `ops.gmm_mala` (ULA/MALA) and `ops.gmm_hmc`
    (HMC/U-HMC) (`fused=False` forces the generic path: one batched score call for all trapezoid
    points); both paths validate their arguments the same way.
    `on_nonfinite` ("warn", "raise" or "ignore"): what to do, at the end of the run, if chains went
    non-finite (see the module docstring).

    Distributed (under torchrun, or with `group=` a torch.distributed group): each rank runs its
    share of the n_samples chains (`fastsamp.distributed.shard`) with noise keyed by the global
    chain index, so the samples equal the one-process run's bit for bit; the per-level statistics
    are one all_reduce. gather=True: rank 0 returns all samples in chain order and the other ranks
    None; gather=False: every rank returns its own chains (stats.chain_offset, stats.n_local).

    Returns (samples (n_samples, D), AnnealedStats).
    """
    n_corrector_steps, n_trapezoid, n_leapfrog = check_corrector_args(
        model, corrector, mh, n_corrector_steps, n_trapezoid, n_leapfrog, damping, "n_corrector_steps")
    n_samples, n_levels = count_arg("n_samples", n_samples, 1), count_arg("n_levels", n_levels, 2)
    if not isinstance(step_size, torch.Tensor):
        _checks.finite_float("step_size", step_size, positive=True)
    _checks.finite_float("data_scale", data_scale, positive=True)
    t_min = _checks.finite_float("t_min", t_min)
    if not 0.0 < t_min < 1.0:
        raise ValueError(f"t_min must be in (0, 1), got {t_min}")
    if target_accept is None:
        target_accept = 0.65 if corrector in ("hmc", "uhmc") else 0.57
    target_accept = _checks.finite_float("target_accept", target_accept)
    if not 0.0 < target_accept < 1.0:
        raise ValueError(f"target_accept must be in (0, 1), got {target_accept}")
    device = torch.device(device)
    comm = Comm.resolve(group)
    if n_samples < comm.world_size:
        raise ValueError(f"n_samples ({n_samples}) must be >= the number of ranks ({comm.world_size})")
    chain0, n_local = comm.shard(n_samples)
    monitor = NonFiniteMonitor(n_levels, device, on_nonfinite)
    sched = model.schedule
    ts = torch.linspace(1.0, t_min, n_levels, dtype=torch.float64).tolist()
    f = _Counter(model, backend)
    stats = AnnealedStats(fused=fused and isinstance(model, GaussianMixture), chain_offset=chain0, n_local=n_local)
    start = time.perf_counter()
    scale0 = (sched.alpha(1.0) ** 2 * data_scale**2 + sched.sigma2(1.0)) ** 0.5
    x = scale0 * ops.normal(seed, 0, n_local, model.dim, dtype, device, chain_offset=chain0)
    factor = torch.ones(n_local, dtype=dtype, device=device)
    # per-level statistics stay on the device until the end: no host synchronisation per level in
    # one process (distributed: one all_reduce per level, whose failure flag is read on the host)
    rates = torch.zeros(n_levels, dtype=torch.float64, device=device)
    steps = torch.zeros(n_levels, dtype=torch.float64, device=device)
    n_evals = torch.zeros((), dtype=torch.float64, device=device)
    p = torch.zeros_like(x)
    offset = 1
    levels = range(n_levels)
    if progress:
        try:
            from tqdm import tqdm
            levels = tqdm(levels, desc=f"annealed {corrector}/{mh}")
        except ImportError:
            pass
    for i in levels:
        t = ts[i]
        with comm.level(4) as lv:  # Σ acceptance, Σ step size, non-finite chains, score evaluations
            n_before = f.n
            if i > 0:
                s = f.score(x, ts[i - 1])
                x = ops.reverse_sde_step(x, s, t=ts[i - 1], h=ts[i - 1] - t, schedule=sched, seed=seed,
                                         offset=offset, chain_offset=chain0, backend=backend)
                offset += 1
            eps = step_size * (sched.alpha(t) ** 2 * data_scale**2 + sched.sigma2(t)) * factor
            if n_corrector_steps > 0:
                x, p, rate, offset = _corrector(f, x, p, t, eps, corrector, mh, n_corrector_steps, n_trapezoid,
                                                n_leapfrog, damping, seed, offset, chain0, backend, stats.fused)
            finite = monitor.record(i, x)
            rate_sum = 0.0
            if n_corrector_steps > 0:
                rate = rate * finite  # a non-finite chain is not accepted
                if adapt and corrector in ("mala", "hmc"):
                    factor = factor * torch.exp(rate - target_accept)  # Robbins-Monro on log ε, gain 1
                rate_sum = rate.double().sum()
            lv.values[:] = [rate_sum, eps.double().sum(), monitor.counts[i], f.n - n_before]
        rates[i], steps[i] = lv.result[0] / n_samples, lv.result[1] / n_samples
        monitor.counts[i] = lv.result[2]  # over all ranks
        n_evals += lv.result[3]
    stats.n_score_evals = int(n_evals)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    stats.wall_time = time.perf_counter() - start
    stats.step_size = steps.tolist()
    stats.accept_rate = rates.tolist() if n_corrector_steps > 0 else []
    stats.n_nonfinite, stats.first_nonfinite_level = monitor.report("annealed_mcmc", lambda i: (
        f" of {n_levels} (t = {ts[i]:.4g}, mean step size ε_t = {stats.step_size[i]:.3g})",
        "the step size is too large for this model (lower step_size, or adapt=True), or the score model's "
        "output is too large or non-finite at this t"))
    if gather:
        x = comm.gather(x)
    return x, stats


def mcmc(model, x, *, t=0.0, corrector="mala", mh="score", n_steps=100, step_size=0.1, n_trapezoid=1,
         n_leapfrog=3, damping=0.8, seed=0, offset=0, chain_offset=None, backend="auto", fused=True,
         on_nonfinite="warn", group=None):
    """Run `n_steps` corrector moves targeting the model's marginal p_t from the chains `x` (B, D).

    Returns (x, per-chain acceptance rate (B,), 0 for chains that went non-finite). Noise uses
    Philox draws (seed, offset + m) of the global chains chain_offset + b. Chains finite on entry
    and non-finite on exit are reported as `on_nonfinite` says ("warn", "raise" or "ignore").
    Distributed (torchrun or `group=`), x holds this rank's chains and chain_offset defaults to the
    number of chains on the lower ranks (else to 0).
    """
    n_steps, n_trapezoid, n_leapfrog = check_corrector_args(model, corrector, mh, n_steps, n_trapezoid,
                                                            n_leapfrog, damping, needs_schedule=False)
    x = _checks.state("x", x)
    if x.shape[1] != model.dim:
        raise ValueError(f"x must have shape (B, {model.dim}) for this model, got {tuple(x.shape)}")
    eps = _checks.step_size(step_size, x)
    monitor = NonFiniteMonitor(1, x.device, on_nonfinite)
    was_finite = torch.isfinite(x).all(1)
    f = _Counter(model, backend)
    use_fused = fused and isinstance(model, GaussianMixture)
    if chain_offset is None:
        chain_offset = Comm.resolve(group).chain_offset(x.shape[0])
    x, _, rate, _ = _corrector(f, x, torch.zeros_like(x), t, eps, corrector, mh, n_steps, n_trapezoid, n_leapfrog,
                               damping, seed, offset, chain_offset, backend, use_fused)
    rate = rate * monitor.record(0, x, was_finite)
    monitor.report("mcmc", lambda i: (
        f" (t = {t}, {n_steps} {corrector} moves)",
        "the step size is too large for this model, or the score model's output is too large or non-finite"))
    return x, rate


def _corrector(f, x, p, t, eps, corrector, mh, n_steps, n_trapezoid, n_leapfrog, damping, seed, offset, chain0,
               backend, fused):
    """One level's corrector moves; returns (x, p, rate, next offset) and counts score evaluations in f."""
    B = x.shape[0]
    if n_steps == 0:
        return x, p, torch.zeros(B, dtype=x.dtype, device=x.device), offset
    if fused:
        model = f.model
        alpha, sigma2 = model.marginal(t)
        params = [q.to(dtype=x.dtype, device=x.device) for q in (model.means, model.log_weights, model.variances)]
        if corrector in ("hmc", "uhmc"):
            # the fused kernel carries the momentum across this level's moves (from p = 0)
            x, rate = ops.gmm_hmc(x, *params, step_size=eps, n_steps=n_steps, n_leapfrog=n_leapfrog,
                                  alpha=alpha, sigma2=sigma2, seed=seed, offset=offset, chain_offset=chain0,
                                  mh=mh, damping=damping if corrector == "uhmc" else 0.0, backend=backend)
            f.n += B * (n_steps * n_leapfrog + 1)
        else:
            x, rate = ops.gmm_mala(x, *params, step_size=eps, n_steps=n_steps, n_trapezoid=n_trapezoid,
                                   alpha=alpha, sigma2=sigma2, seed=seed, offset=offset, chain_offset=chain0,
                                   mh="none" if corrector == "ula" else mh, backend=backend)
            f.n += B * (n_steps * (n_trapezoid if mh == "score" else 1) + 1)
        return x, p, rate, offset + n_steps
    if corrector in ("ula", "mala"):
        x, rate, offset = _langevin_moves(f, x, t, eps, n_steps, mh if corrector == "mala" else "none",
                                          n_trapezoid, seed, offset, chain0, backend)
        return x, p, rate, offset
    return _hmc_moves(f, x, p, t, eps, n_steps, n_leapfrog, mh, damping if corrector == "uhmc" else 0.0, seed,
                      offset, chain0, backend)


def _langevin_moves(f, x, t, eps, n_moves, mh, n_trapezoid, seed, offset, chain0, backend):
    """Generic-path MALA/ULA: per move one batched score call for x' and the interior points."""
    B, D = x.shape
    if mh == "energy":
        s, logp = f.score_and_log_prob(x, t)
    else:
        s = f.score(x, t)
    n_acc = torch.zeros(B, dtype=x.dtype, device=x.device)
    for _ in range(n_moves):
        x_prop = ops.mala_propose(x, s, eps, seed=seed, offset=offset, chain_offset=chain0, backend=backend)
        u = ops.uniform(seed, offset, B, x.dtype, x.device, chain_offset=chain0)
        offset += 1
        if mh == "none":
            x, s = x_prop, f.score(x_prop, t)
            n_acc += 1
            continue
        if mh == "energy":
            s_prop, logp_prop = f.score_and_log_prob(x_prop, t)
            log_alpha = logp_prop - logp + _ref.mala_log_q_ratio(x, x_prop, s, s_prop, eps)
            acc = torch.log(u) < log_alpha
            x, s = torch.where(acc[:, None], x_prop, x), torch.where(acc[:, None], s_prop, s)
            logp = torch.where(acc, logp_prop, logp)
        else:
            pts = ops.line_points(x, x_prop, n_trapezoid, backend=backend)
            all_scores = f.score(torch.cat([x_prop[None], pts]).reshape(-1, D), t).reshape(n_trapezoid, B, D)
            x, s, acc, _ = ops.score_mh_accept(x, x_prop, s, all_scores[0], eps, u,
                                               interior_scores=all_scores[1:], backend=backend)
        n_acc += acc.to(x.dtype)
    return x, n_acc / n_moves, offset


def _hmc_moves(f, x, p, t, eps, n_moves, n_leapfrog, mh, damping, seed, offset, chain0, backend):
    """HMC (damping 0: full momentum refresh, MH on the leapfrog-path trapezoid or the exact
    energy) or U-HMC (partial refresh, every trajectory kept)."""
    B = x.shape[0]
    n_acc = torch.zeros(B, dtype=x.dtype, device=x.device)
    if mh == "energy":
        s, logp = f.score_and_log_prob(x, t)
    else:
        s = f.score(x, t)
    for _ in range(n_moves):
        p = ops.momentum_refresh(p, damping, seed=seed, offset=offset, chain_offset=chain0, backend=backend)
        u = ops.uniform(seed, offset, B, x.dtype, x.device, chain_offset=chain0)
        offset += 1
        x0, s0, p0 = x, s, p
        delta = torch.zeros(B, dtype=x.dtype, device=x.device)
        xc, sc, pc = x, s, p
        for _ in range(n_leapfrog):
            x_next, p_half = ops.leapfrog(xc, pc, sc, eps, backend=backend)
            if mh == "energy":
                s_next, logp_next = f.score_and_log_prob(x_next, t)
            else:
                s_next = f.score(x_next, t)
            pc, delta = ops.leapfrog_finish(xc, x_next, p_half, sc, s_next, eps, delta, backend=backend)
            xc, sc = x_next, s_next
        if mh == "none":
            x, s, p = xc, sc, pc
            n_acc += 1
            continue
        if mh == "energy":
            delta = logp_next - logp
        x, s, acc, _ = ops.hmc_accept(x0, xc, s0, sc, p0, pc, delta, u, backend=backend)
        p = torch.where(acc[:, None], pc, p0)
        if mh == "energy":
            logp = torch.where(acc, logp_next, logp)
        n_acc += acc.to(x.dtype)
    return x, p, n_acc / n_moves, offset
