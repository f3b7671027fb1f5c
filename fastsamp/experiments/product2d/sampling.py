"""The 2-D product experiment's samplers: pure annealed MCMC over the DDPM levels, and ancestral
("Reverse") sampling, on the product of two trained models (`fastsamp.models.Product`: scores and
energies add).

Pure annealed MCMC (Du et al. 2023; Sjöberg et al. 2026): x ~ N(0, I), then at each level
i = T..1 (time t = i/T), `n_steps` moves of one fastsamp kernel (`fastsamp.samplers.kernels`)
targeting the product's p_t, with no reverse step between levels. HMC draws a fresh momentum
p ~ N(0, I) at the start of each level and refreshes it partially (damping) before each move.

Method names follow the paper; its trapezoid rules count points (`n_trapets`), fastsamp's
`n_trapezoid` counts sub-intervals: LA-m / HMC-m use `n_trapezoid = m − 1`.

* U-LA, LA: Langevin without / with the MH test (score models: trapezoid on the segment; energy
  models: the exact energy difference).
* U-HMC, HMC: HMC (partial refresh) without / with the MH test. Score-model HMC-m: ΔlogP by the
  m-point trapezoid on the straight line x₀ → x_L (m − 2 extra score evaluations; the paper's);
  HMC-path: the trapezoid along the leapfrog path from the leapfrog's own scores (fastsamp's, no
  extra evaluation).
* Rejection: fastsamp negates the momentum on rejection (exact under partial refresh); the
  "paper-rej" variants keep the refreshed momentum unflipped, as the paper's code does.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ... import ops
from ...ops.reference import trapezoid_delta_logp
from ...protocol import CountingModel
from ...samplers.kernels import HMC, EnergyMH, KeepMomentumOnReject, Langevin, MHTest, NoMH, PhiloxKey, ScoreMH


@dataclass(frozen=True)
class Method:
    """One sampler of the table: `kind` reverse / langevin / hmc; `mh` none / score / energy;
    `points` the paper's trapezoid points (score MH; 0 on the HMC leapfrog path); `flip` the
    momentum negation on HMC rejection."""

    name: str
    kind: str
    mh: str = "none"
    points: int = 0
    flip: bool = True

    @property
    def n_trapezoid(self) -> int:
        """fastsamp's sub-interval count of the paper's `points` (n_trapets = n_trapezoid + 1)."""
        return self.points - 1


def methods(version: str) -> list[Method]:
    """The table's methods for a model version ("score" or "energy")."""
    if version == "energy":
        mhs = [Method("LA", "langevin", "energy"), Method("HMC", "hmc", "energy"),
               Method("HMC paper-rej", "hmc", "energy", flip=False)]
    else:
        mhs = ([Method(f"LA-{m}", "langevin", "score", m) for m in (3, 5, 10)]
               + [Method(f"HMC-{m}", "hmc", "score", m) for m in (3, 5, 10)]
               + [Method("HMC-path", "hmc", "score"), Method("HMC-10 paper-rej", "hmc", "score", 10, flip=False)])
    return [Method("Reverse", "reverse"), Method("U-LA", "langevin"), Method("U-HMC", "hmc")] + mhs


@dataclass(frozen=True)
class Settings:
    """Pure annealed MCMC settings (the paper's 2-D protocol)."""

    n_samples: int = 2000
    n_steps: int = 10            # MCMC moves per level
    la_step: float = 1e-3        # U-LA / LA step ε
    hmc_step: float = 0.03       # leapfrog step ε
    n_leapfrog: int = 3
    damping: float = 0.5         # momentum refresh p ← γ p + √(1−γ²) ξ (mass 1)


class LineScoreMH(ScoreMH):
    """Score MH for HMC with ΔlogP by the trapezoid on the straight line x₀ → x_L (`n_trapezoid`
    sub-intervals: the interior points' scores in one batched call), the paper's score-HMC."""

    def hmc(self, kernel, start, end, delta_logp, key):
        n = self.n_trapezoid
        interior = None
        if n > 1:
            B, D = start.x.shape
            pts = ops.line_points(start.x, end.x, n, backend=kernel.backend)
            interior = kernel.model.score(pts.reshape(-1, D), kernel.t).reshape(n - 1, B, D)
        delta = trapezoid_delta_logp(start.x, end.x, start.score, end.score, interior)
        return super().hmc(kernel, start, end, delta, key)


def mh_test(method: Method) -> MHTest:
    if method.mh == "none":
        return NoMH()
    if method.mh == "energy":
        test = EnergyMH()
    elif method.kind == "hmc" and method.points:
        test = LineScoreMH(method.n_trapezoid)
    else:
        test = ScoreMH(max(method.n_trapezoid, 1))
    return test if method.flip or method.kind != "hmc" else KeepMomentumOnReject(test)


def annealed(model, method: Method, settings: Settings, *, seed: int, dtype=torch.float32):
    """Pure annealed MCMC of `method` on `model` (a product of two DDPM networks).
    Returns (samples (n, 2), acceptance rate per level (T,) or None, score evaluations per chain)."""
    sched = model.schedule
    g = torch.Generator().manual_seed(seed)
    n = settings.n_samples
    f = CountingModel(model)
    x = torch.randn(n, 2, generator=g, dtype=dtype)
    if method.kind == "reverse":
        return reverse(f, x, g), None, f.calls / n
    hmc = method.kind == "hmc"
    eps = torch.full((n,), settings.hmc_step if hmc else settings.la_step, dtype=dtype)
    mh = mh_test(method)
    offset, rates = 0, []
    for t in reversed(sched.times()):
        if hmc:
            kernel = HMC(f, t, eps, mh, n_leapfrog=settings.n_leapfrog, damping=settings.damping, backend="torch")
            momentum = torch.randn(n, 2, generator=g, dtype=dtype)
        else:
            kernel, momentum = Langevin(f, t, eps, mh, backend="torch"), None
        state = kernel.init(x, momentum)
        acc = torch.zeros(n, dtype=dtype)
        for m in range(settings.n_steps):
            state, info = kernel.step(state, PhiloxKey(seed, offset + m, 0))
            acc += info.accepted.to(dtype)
        offset += settings.n_steps
        x = state.x
        rates.append(float(acc.mean()) / settings.n_steps)
    return x, rates[::-1], f.calls / n


def reverse(model, x, g):
    """Ancestral DDPM sampling with the summed ε = −σ_t Σ s_k (the product's score):
    x ← (x − β_i/σ_i ε)/√(1 − β_i) + √β_i z, no noise at the last step."""
    sched = model.schedule
    for t in reversed(sched.times()):
        beta, sigma = sched.beta(t), sched.sigma(t)
        eps = -sigma * model.score(x, t)
        x = (x - beta / sigma * eps) / (1 - beta) ** 0.5
        if t > 1 / sched.n_steps + 1e-9:
            x = x + beta**0.5 * torch.randn(x.shape, generator=g, dtype=x.dtype)
    return x


def run_method(model, method, settings, *, seed):
    """(samples, result dict: acceptance per level, score evaluations per chain, wall time)."""
    t0 = time.perf_counter()
    x, rates, evals = annealed(model, method, settings, seed=seed)
    return x, {"accept_rate_per_level": rates, "mean_accept_rate": None if rates is None else sum(rates) / len(rates),
               "score_evals_per_chain": evals, "wall_time_s": time.perf_counter() - t0}
