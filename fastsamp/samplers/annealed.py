"""Annealed MCMC: reverse diffusion (predictor) with MCMC correctors at each noise
level, where the MH test of a score-only model uses the trapezoidal line integral
of the score (Sjöberg et al.); built on fastsamp.ops only.

Correctors: "ula" (unadjusted Langevin), "mala", "hmc" (L leapfrog steps, trapezoid
along the leapfrog path), "uhmc" (partial momentum refresh, no MH).
MH: "score" (trapezoid), "energy" (exact log-density difference, models with an energy),
"none" (unadjusted).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .. import ops
from ..distributed import Comm
from ..models import GaussianMixture
from ..ops import reference as _ref

CORRECTORS = ("ula", "mala", "hmc", "uhmc")
MH_MODES = ("score", "energy", "none")


@dataclass
class AnnealedStats:
    """Per-level mean acceptance rate and step size, total score evaluations (all chains, all
    ranks), wall time in seconds, whether the fused mixture kernel was used, and this rank's
    global chains (chain_offset, n_local)."""

    accept_rate: list = field(default_factory=list)
    step_size: list = field(default_factory=list)
    n_score_evals: int = 0
    wall_time: float = 0.0
    fused: bool = False
    chain_offset: int = 0
    n_local: int = 0


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
                  fused=True, progress=False, group=None, gather=True):
    """Sample `model` at t = 0 by annealing over `n_levels` noise levels from t = 1 to `t_min`.

    At each level t: one reverse Euler–Maruyama step from the previous level (predictor), then
    `n_corrector_steps` corrector moves targeting p_t with step ε_t = step_size·(α_t² data_scale² + σ_t²)
    (proportional to the marginal variance), times a per-chain factor adapted towards
    `target_accept` when `adapt` is set (default targets: MALA 0.57, HMC 0.65).
    Mixture models run the fused whole-move kernels `ops.gmm_mala` (ULA/MALA) and `ops.gmm_hmc`
    (HMC/U-HMC) (`fused=False` forces the generic path: one batched score call for all trapezoid
    points).

    Distributed (under torchrun, or with `group=` a torch.distributed group): each rank runs its
    share of the n_samples chains (`fastsamp.distributed.shard`) with noise keyed by the global
    chain index, so the samples equal the one-process run's bit for bit; the per-level statistics
    are one all_reduce. gather=True: rank 0 returns all samples in chain order and the other ranks
    None; gather=False: every rank returns its own chains (stats.chain_offset, stats.n_local).

    Returns (samples (n_samples, D), AnnealedStats).
    """
    if corrector not in CORRECTORS:
        raise ValueError(f"corrector must be one of {CORRECTORS}, got {corrector!r}")
    if mh not in MH_MODES:
        raise ValueError(f"mh must be one of {MH_MODES}, got {mh!r}")
    if corrector in ("ula", "uhmc") and mh != "none":
        raise ValueError(f"corrector={corrector!r} has no MH step: use mh='none'")
    if mh == "energy" and not getattr(model, "has_energy", False):
        raise ValueError("mh='energy' needs a model with an energy (log_prob)")
    if n_levels < 2 or n_corrector_steps < 0 or n_samples < 1:
        raise ValueError("need n_levels >= 2, n_corrector_steps >= 0, n_samples >= 1")
    device = torch.device(device)
    comm = Comm.resolve(group)
    if n_samples < comm.world_size:
        raise ValueError(f"n_samples ({n_samples}) must be >= the number of ranks ({comm.world_size})")
    chain0, n_local = comm.shard(n_samples)
    target_accept = target_accept or (0.65 if corrector in ("hmc", "uhmc") else 0.57)
    sched = model.schedule
    ts = torch.linspace(1.0, t_min, n_levels, dtype=torch.float64).tolist()
    f = _Counter(model, backend)
    stats = AnnealedStats(fused=fused and isinstance(model, GaussianMixture), chain_offset=chain0, n_local=n_local)
    start = time.perf_counter()
    scale0 = (sched.alpha(1.0) ** 2 * data_scale**2 + sched.sigma2(1.0)) ** 0.5
    x = scale0 * ops.normal(seed, 0, n_local, model.dim, dtype, device, chain_offset=chain0)
    factor = torch.ones(n_local, dtype=dtype, device=device)
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
        with comm.level(3) as lv:  # [Σ acceptance rate, Σ step size, score evaluations] over all chains
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
                if adapt and corrector in ("mala", "hmc"):
                    factor = factor * torch.exp(rate - target_accept)  # Robbins-Monro on log ε, gain 1
                lv.values[:2] = [float(rate.double().sum()), float(eps.double().sum())]
            lv.values[2] = f.n - n_before
        stats.n_score_evals += int(lv.result[2])
        if n_corrector_steps > 0:
            stats.accept_rate.append(float(lv.result[0]) / n_samples)
            stats.step_size.append(float(lv.result[1]) / n_samples)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    stats.wall_time = time.perf_counter() - start
    if gather:
        x = comm.gather(x)
    return x, stats


def mcmc(model, x, *, t=0.0, corrector="mala", mh="score", n_steps=100, step_size=0.1, n_trapezoid=1,
         n_leapfrog=3, damping=0.8, seed=0, offset=0, chain_offset=None, backend="auto", fused=True, group=None):
    """Run `n_steps` corrector moves targeting the model's marginal p_t from the chains `x` (B, D).

    Returns (x, per-chain acceptance rate (B,)). Noise uses Philox draws (seed, offset + m) of the
    global chains chain_offset + b. Distributed (torchrun or `group=`), x holds this rank's chains
    and chain_offset defaults to the number of chains on the lower ranks (else to 0).
    """
    if corrector not in CORRECTORS or mh not in MH_MODES:
        raise ValueError(f"corrector in {CORRECTORS} and mh in {MH_MODES} needed, got {corrector!r}, {mh!r}")
    eps = ops._checks.step_size(step_size, x)
    f = _Counter(model, backend)
    use_fused = fused and isinstance(model, GaussianMixture)
    if chain_offset is None:
        chain_offset = Comm.resolve(group).chain_offset(x.shape[0])
    x, _, rate, _ = _corrector(f, x, torch.zeros_like(x), t, eps, corrector, mh, n_steps, n_trapezoid, n_leapfrog,
                               damping, seed, offset, chain_offset, backend, use_fused)
    return x, rate


def _corrector(f, x, p, t, eps, corrector, mh, n_steps, n_trapezoid, n_leapfrog, damping, seed, offset, chain0,
               backend, fused):
    """One level's corrector moves; returns (x, p, rate, next offset) and counts score evaluations in f."""
    B = x.shape[0]
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
    return x, n_acc / max(n_moves, 1), offset


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
    return x, p, n_acc / max(n_moves, 1), offset
