"""Classifier-guided sampling of p_t(x)·p_t(y | x)^λ with MCMC correction at every DDPM level.

The target at level t is π_t(x) ∝ p_t(x) p_t(y | x)^λ: score s_t(x) + λ ∇log p_t(y | x), log-density
log p_t(x) + λ log p_t(y | x) (`GuidedModel`; an energy model gives log p_t = −E_θ). Its MH test is the
library's: `ScoreMH` integrates the whole guided score along the segment (the λ-scaled classifier term is
inside the integral), `EnergyMH` takes the log-density difference, classifier term λ Δlog p(y | x).
The paper's code (Sjöberg et al. 2026) scales the classifier gradient by λ in the proposal but adds the
*unscaled* Δlog p(y | x) in the acceptance; `GuidedModel(lam_mh=1)` reproduces that (an ablation). Its image
samplers' MALA (`transition_factor` in src/samplers/mcmc.py) also sums the proposal log-ratio
log q(x|x′) − log q(x′|x) over the whole batch and adds that one number to every chain's Δlog p:
`BatchSummedProposalRatio` reproduces that for energy-LA and score-LA-10, over the whole run or over each
replicate's chains (ablations; not a per-chain MH kernel).

Each of the T = 1000 steps (`guided_sample`): one guided ancestral step from level i to i − 1,
x ← (x + β_i s_i(x))/√(1 − β_i) + √β_i ξ (no noise at the last step), then, for i − 1 ≥ 1, the corrector
moves at level i − 1 with step ε = a β_{i−1}^b (`Method`):

    ULA / LA    6 Langevin moves (LA: MH; score-LA: the paper's "LA-10", 10 trapezoid points = n_trapezoid 9);
    U-HMC / HMC 2 HMC moves of 3 leapfrog steps, partial refresh p ← 0.9 p + √(1 − 0.81) ξ, momentum drawn
                afresh N(0, M) at each level and carried between its moves, mass M = β_{i−1}² I. With a
                scalar mass, HMC with step ε and mass m is HMC with unit mass and step ε/√m, so the kernels run
                unit mass with step ε/β_{i−1}. Score-HMC adds one trapezoid point per leapfrog segment
                (`MidpointHMC`). Rejection flips the momentum (fastsamp's rule; exact with partial refresh).

The corrector's last score is reused by the next ancestral step, so Reverse costs T evaluations and a
corrector run one evaluation per proposal point. A "score evaluation" is one row of the guided target
(the diffusion network and the classifier with its gradient).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch

from ... import ops
from ...models import value_and_grad
from ...ops.reference import mala_log_q_ratio, trapezoid_delta_logp
from ...profiling import phase
from ...protocol import CountingModel, has_energy
from ...samplers.kernels import (
    HMC,
    ChainState,
    EnergyMH,
    Info,
    KeepMomentumOnReject,
    Langevin,
    MHTest,
    NoMH,
    PhiloxKey,
    ScoreMH,
)

LAMBDA = 20.0


class GuidedModel:
    """π_t(x) ∝ p_t(x) p_t(y | x)^λ for a prior (`fastsamp.models.ScoreModel` or `EnergyModel` of the
    diffusion network) and a noise-aware classifier `classifier.log_prob(x, t, y)`; `y` (B,) labels of the
    chains (inputs of k·B rows, as the kernels batch proposal points, take y repeated k times).
    score = s_t + λ ∇log p_t(y | x); log_prob = log p_t + lam_mh·log p_t(y | x), lam_mh = λ unless given
    (lam_mh = 1 is the paper's acceptance)."""

    def __init__(self, prior, classifier, y, lam=LAMBDA, lam_mh=None):
        self.prior, self.classifier, self.y = prior, classifier, torch.as_tensor(y).long()
        self.lam = float(lam)
        self.lam_mh = self.lam if lam_mh is None else float(lam_mh)
        self.dim, self.schedule = prior.dim, prior.schedule
        self.has_energy = has_energy(prior)

    def labels(self, x):
        B = self.y.shape[0]
        if x.shape[0] % B:
            raise ValueError(f"x has {x.shape[0]} rows, not a multiple of the {B} chains' labels")
        return self.y.to(x.device).repeat(x.shape[0] // B)

    def classifier_term(self, x, t):
        """(log p_t(y | x), ∇ log p_t(y | x)) per row."""
        y = self.labels(x)
        return value_and_grad(lambda z: self.classifier.log_prob(z, t, y), x)

    def score(self, x, t):
        return self.prior.score(x, t) + self.lam * self.classifier_term(x, t)[1]

    def log_prob(self, x, t):
        return self.score_and_log_prob(x, t)[1]

    def score_and_log_prob(self, x, t):
        s, logp = self.prior.score_and_log_prob(x, t)
        c, g = self.classifier_term(x, t)
        return s + self.lam * g, logp + self.lam_mh * c


def segment_trapezoid(score, t, x, x_prop, score_x, n, backend):
    """(s(x′), T_n[s](x → x′)) with T_n[s] = (1/n) [½ s(x) + Σ_{i=1}^{n−1} s(x + (i/n) d) + ½ s(x′)]·d, d = x′ − x:
    x′ and the n − 1 interior points in one call of `score` (n·B rows), s(x) = `score_x` given."""
    points = x_prop[None] if n == 1 else torch.cat([x_prop[None], ops.line_points(x, x_prop, n, backend=backend)])
    scores = score(points.reshape(-1, x.shape[1]), t).reshape(n, *x.shape)
    return scores[0], trapezoid_delta_logp(x, x_prop, score_x, scores[0], scores[1:])


class MidpointHMC(HMC):
    """HMC whose ΔlogP trapezoid has one more point, the midpoint of each leapfrog segment x → x':
    ¼ (s(x) + 2 s(½(x + x')) + s(x'))·(x' − x), i.e. half the library's segment plus ½ s_mid·(x' − x).
    One extra score evaluation per leapfrog step (the paper's score-HMC, n_intermediate_steps = 1)."""

    def trajectory(self, start: ChainState):
        x, s, logp, p = start
        B = x.shape[0]
        delta = torch.zeros(B, dtype=x.dtype, device=x.device)
        for _ in range(self.n_leapfrog):
            x_next, p_half = ops.leapfrog(x, p, s, self.step_size, backend=self.backend)
            scores = self.model.score(torch.cat([x_next, 0.5 * (x + x_next)]), self.t)
            s_next, s_mid = scores[:B], scores[B:]
            p, segment = ops.leapfrog_finish(x, x_next, p_half=p_half, score=s, score_next=s_next,
                                             step_size=self.step_size, delta_logp=torch.zeros_like(delta),
                                             backend=self.backend)
            delta = delta + 0.5 * segment + 0.5 * (s_mid * (x_next - x)).sum(1)
            x, s = x_next, s_next
        return ChainState(x, s, logp, p), delta


class HybridState(NamedTuple):
    """A `HybridLangevin` chain: x, the guided score s_t + λ∇log p_t(y | x), the prior's score s_t and
    log p_t(y | x), all at x."""

    x: torch.Tensor
    score: torch.Tensor
    prior_score: torch.Tensor
    log_class: torch.Tensor


@dataclass(frozen=True)
class HybridLangevin:
    """MALA on π_t ∝ p_t(x) p_t(y | x)^λ for a score-only prior (no log p_t), with a hybrid MH test:

        log π(x') − log π(x) ≈ T_n[s_t](x → x') + λ_mh [log p_t(y | x') − log p_t(y | x)],

    T_n[s](x → x') = (1/n) [½ s(x) + Σ_{i=1}^{n−1} s(x + (i/n) d) + ½ s(x')]·d, d = x' − x, the trapezoid
    rule (n sub-intervals, the paper's LA-(n+1)) on the prior's score only; the classifier term is exact.
    log α adds log q(x | x') − log q(x' | x) of the guided proposal x' = x + ε(s_t + λ∇log p_t(y | x)) +
    √(2ε) ξ. λ_mh = λ (`model.lam_mh`) targets π exactly up to the trapezoid's error; λ_mh = 1 is the paper's
    code. Per move: the classifier (value and gradient) at x', the prior's score at x' and the n − 1 interior
    points in one call of `prior` (a `CountingModel` of `model.prior`, so its evaluations are counted)."""

    model: GuidedModel
    prior: CountingModel
    t: float
    step_size: torch.Tensor
    n_trapezoid: int
    backend: str = "auto"

    def _evaluate(self, x, prior_score):
        log_class, grad = self.model.classifier_term(x, self.t)
        return prior_score + self.model.lam * grad, log_class

    def init(self, x, momentum=None) -> HybridState:
        prior_score = self.prior.score(x, self.t)
        score, log_class = self._evaluate(x, prior_score)
        return HybridState(x, score, prior_score, log_class)

    def step(self, state: HybridState, key: PhiloxKey) -> tuple[HybridState, Info]:
        x, n = state.x, self.n_trapezoid
        x_prop = ops.mala_propose(x, state.score, self.step_size, seed=key.seed, offset=key.offset,
                                  chain_offset=key.chain_offset, backend=self.backend)
        prior_prop, trapezoid = segment_trapezoid(self.prior.score, self.t, x, x_prop, state.prior_score, n,
                                                  self.backend)
        score_prop, log_class_prop = self._evaluate(x_prop, prior_prop)
        delta_logp = trapezoid + self.model.lam_mh * (log_class_prop - state.log_class)
        with phase("mh"):
            x_new, s_new, _, accepted, log_alpha = ops.energy_mh_accept(
                x, x_prop, score=state.score, score_prop=score_prop, logp=torch.zeros_like(delta_logp),
                logp_prop=delta_logp, step_size=self.step_size, backend=EnergyMH.accept_backend(self),
                seed=key.seed, offset=key.offset, chain_offset=key.chain_offset)
        keep = accepted[:, None]
        return (HybridState(x_new, s_new, torch.where(keep, prior_prop, state.prior_score),
                            torch.where(accepted, log_class_prop, state.log_class)), Info(accepted, log_alpha))


class BatchSummedProposalRatio(MHTest):
    """The paper's image MALA: log α_b = Δlog π_b + Σ_c r_c, with r_c = log q(x_c|x′_c) − log q(x′_c|x_c) summed
    over every chain c of the batch (the per-chain MH test has r_b). Δlog π_b: log π(x′_b) − log π(x_b) for an
    energy model (`n_trapezoid` None, the paper's energy LA), else the trapezoid T_n of the guided score along
    x_b → x′_b (n sub-intervals; the paper's score LA-10 is n = 9; x′ and the n − 1 interior points in one call of
    the model). Each chain's acceptance then depends on the others' proposals, so it is no MH kernel of its own
    chain (and a non-finite r anywhere reaches every chain of its batch); kept only as the ablation rows of that
    code. Same uniform as `EnergyMH` (the library's accept op, given log π′ − log π = Δlog π_b − r_b + `ratio_term`).
    `groups` > 1: the chains are that many consecutive equal batches (a run's replicates), each with its own sum."""

    def __init__(self, n_trapezoid: int | None = None, groups: int = 1):
        if not isinstance(groups, int) or groups < 1:
            raise ValueError(f"groups must be an int >= 1, got {groups!r}")
        self.n_trapezoid, self.groups = n_trapezoid, groups

    def evaluate(self, model, x, t):
        return model.score_and_log_prob(x, t) if self.n_trapezoid is None else (model.score(x, t), None)

    def ratio_term(self, r):
        """What log α adds to every chain's Δlog π: the sum Σ_c r_c over its batch (the whole, or its group's)."""
        if self.groups == 1:
            return r.sum()
        if r.shape[0] % self.groups:
            raise ValueError(f"{r.shape[0]} chains do not split into {self.groups} equal batches")
        return r.reshape(self.groups, -1).sum(1).repeat_interleave(r.shape[0] // self.groups)

    def log_densities(self, kernel, state, x_prop):
        """(s(x′), a, a′) with a′ − a = Δlog π per chain: (log π(x), log π(x′)) or (0, T_n[s](x → x′))."""
        x, n = state.x, self.n_trapezoid
        if n is None:
            s_prop, logp_prop = kernel.model.score_and_log_prob(x_prop, kernel.t)
            return s_prop, state.logp, logp_prop
        s_prop, delta = segment_trapezoid(kernel.model.score, kernel.t, x, x_prop, state.score, n, kernel.backend)
        return s_prop, torch.zeros_like(delta), delta

    def langevin(self, kernel, state, x_prop, key):
        s_prop, logp, logp_prop = self.log_densities(kernel, state, x_prop)
        r = mala_log_q_ratio(state.x, x_prop, state.score, s_prop, kernel.step_size)
        with phase("mh"):
            x, s, _, accepted, log_alpha = ops.energy_mh_accept(
                state.x, x_prop, score=state.score, score_prop=s_prop, logp=logp,
                logp_prop=logp_prop - r + self.ratio_term(r), step_size=kernel.step_size,
                backend=EnergyMH.accept_backend(kernel), seed=key.seed, offset=key.offset,
                chain_offset=key.chain_offset)
        kept = None if state.logp is None else torch.where(accepted, logp_prop, state.logp)
        return ChainState(x, s, kept), Info(accepted, log_alpha)


@dataclass(frozen=True)
class Method:
    """One row of the table: a sampler `name` on the `model` ("score" or "energy") with its corrector
    ("ula", "mala", "uhmc", "hmc"; None for Reverse) and the paper's settings; `lam_mh` the classifier
    scale in the MH test (None: λ, the right one; 1: the paper's code); `hybrid`: score-LA with
    `HybridLangevin`'s MH test (trapezoid on the prior's score, exact classifier term); `step_from`: the
    label of the row whose searched step size this ablation row reuses; `keep_momentum`: HMC with the
    paper's rejection (a rejected chain keeps its refreshed momentum, no flip; exact only with a full
    refresh, and the refresh here is partial, damping 0.9); `batch_ratio`: LA with the paper's batch-summed
    proposal ratio (`BatchSummedProposalRatio`; score: its trapezoid with `n_trapezoid`), summed over the whole run's
    chains, or over each replicate's alone (`batch_per_replicate`: one batch per replicate)."""

    name: str
    model: str
    corrector: str | None = None
    n_steps: int = 0
    n_trapezoid: int = 1
    n_leapfrog: int = 3
    damping: float = 0.9
    midpoint: bool = False
    lam_mh: float | None = None
    hybrid: bool = False
    step_from: str | None = None
    keep_momentum: bool = False
    batch_ratio: bool = False
    batch_per_replicate: bool = False

    @property
    def label(self):
        return f"{self.name} ({self.model})"

    @property
    def is_hmc(self):
        return self.corrector in ("hmc", "uhmc")

    @property
    def mh(self):
        return self.mh_test()

    def mh_test(self, replicates: int = 1):
        """The MH test for a run whose chains are `replicates` consecutive equal blocks (the batch-summed test sums
        within each with `batch_per_replicate`)."""
        if self.corrector in (None, "ula", "uhmc"):
            return NoMH()
        if self.batch_ratio:
            return BatchSummedProposalRatio(None if self.model == "energy" else self.n_trapezoid,
                                            groups=replicates if self.batch_per_replicate else 1)
        test = EnergyMH() if self.model == "energy" else ScoreMH(self.n_trapezoid)
        return KeepMomentumOnReject(test) if self.keep_momentum else test


def methods() -> list[Method]:
    """The table's rows: Reverse, ULA, LA, U-HMC, HMC for the score and the energy model; the ablations of
    the classifier term in the MH test: the energy MH samplers with the paper's unscaled term, and score-LA-10
    with the hybrid test (`HybridLangevin`) at λ_mh = λ and at the paper's λ_mh = 1; HMC with the paper's
    rejection (momentum kept, no flip) for both models; energy-LA and score-LA-10 with the paper's batch-summed
    proposal ratio, over all the run's chains and over each replicate's alone."""
    rows = []
    for model in ("score", "energy"):
        score = model == "score"
        rows += [Method("Reverse", model),
                 Method("ULA", model, "ula", 6),
                 Method("LA-10" if score else "LA", model, "mala", 6, n_trapezoid=9 if score else 1),
                 Method("U-HMC", model, "uhmc", 2),
                 Method("HMC", model, "hmc", 2, midpoint=score)]
    rows += [Method("LA, paper's MH (λ_mh=1)", "energy", "mala", 6, lam_mh=1.0, step_from="LA (energy)"),
             Method("HMC, paper's MH (λ_mh=1)", "energy", "hmc", 2, lam_mh=1.0, step_from="HMC (energy)")]
    rows += [Method(name, "score", "mala", 6, n_trapezoid=9, lam_mh=lam_mh, hybrid=True, step_from="LA-10 (score)")
             for name, lam_mh in (("LA-10, hybrid MH (λ_mh=λ)", None), ("LA-10, paper's MH (λ_mh=1)", 1.0))]
    rows += [Method("HMC, paper's rejection (no flip)", model, "hmc", 2, midpoint=model == "score",
                    keep_momentum=True, step_from=f"HMC ({model})") for model in ("score", "energy")]
    batch_summed = [Method("LA, paper's batch-summed proposal ratio", "energy", "mala", 6, batch_ratio=True,
                           step_from="LA (energy)"),
                    Method("LA-10, paper's batch-summed proposal ratio", "score", "mala", 6, n_trapezoid=9,
                           batch_ratio=True, step_from="LA-10 (score)")]
    rows += batch_summed + [replace(m, name=f"{m.name}, one batch per replicate", batch_per_replicate=True)
                            for m in batch_summed]
    return rows


def step_size(a, b, beta, hmc):
    """ε = a β^b (float64; a, b floats or per-chain (B,) tensors); HMC with mass β² I runs unit mass at ε/β."""
    eps = torch.as_tensor(a, dtype=torch.float64) * beta ** torch.as_tensor(b, dtype=torch.float64)
    return eps / beta if hmc else eps


def _kernel(method, model, prior, t, eps, replicates):
    if method.hybrid:
        return HybridLangevin(model.model, prior, t, eps, method.n_trapezoid)
    mh = method.mh_test(replicates)
    if method.is_hmc:
        cls = MidpointHMC if method.midpoint else HMC
        return cls(model, t, eps, mh, n_leapfrog=method.n_leapfrog, damping=method.damping)
    return Langevin(model, t, eps, mh)


def guided_sample(model: GuidedModel, method: Method, *, a=1.0, b=1.0, seed=0, replicates=1, dtype=torch.float32):
    """Samples x₀ (B, 64) of the guided target, B = len(model.y), in the diffusion's [−1, 1] scale, and
    stats: score evaluations (rows of the diffusion network), classifier evaluations (rows of its value and
    gradient; the same count except for the hybrid test, which scores interior points with the network
    alone), wall seconds, mean acceptance over the corrector moves (None for unadjusted ones), the number of
    non-finite chains. (a, b): the step-size rule ε_t = a β_t^b, floats or per-chain (B,) tensors; `replicates`: the
    consecutive equal blocks of chains that are the run's replicates (`Method.mh_test`)."""
    sched = model.schedule
    T, betas = sched.n_steps, sched.betas.tolist()
    B, D = model.y.shape[0], model.dim
    if not isinstance(replicates, int) or replicates < 1 or B % replicates:
        raise ValueError(f"replicates must be an int >= 1 that divides the {B} chains, got {replicates!r}")
    f, prior = CountingModel(model), CountingModel(model.prior)
    hybrid_class_rows = 0
    start = time.perf_counter()
    x = ops.normal(seed, 0, B, D, dtype=dtype)
    offset, s = 1, None
    acc, n_moves = torch.zeros(B, dtype=torch.float64), 0
    for i in range(T, 0, -1):
        beta = betas[i - 1]
        if s is None:
            s = f.score(x, i / T)
        x = (x + beta * s) / math.sqrt(1.0 - beta)
        if i > 1:
            x = x + math.sqrt(beta) * ops.normal(seed, offset, B, D, dtype=dtype)
        offset, s = offset + 1, None
        if i == 1 or method.corrector is None:
            continue
        eps = step_size(a, b, betas[i - 2], method.is_hmc).expand(B).to(dtype)
        kernel = _kernel(method, f, prior, (i - 1) / T, eps, replicates)
        p0 = ops.normal(seed, offset, B, D, dtype=dtype) if method.is_hmc else None
        state = kernel.init(x, p0)
        offset += 1
        for m in range(method.n_steps):
            state, info = kernel.step(state, PhiloxKey(seed, offset + m, 0))
            acc += info.accepted.double()
        offset += method.n_steps
        n_moves += method.n_steps
        hybrid_class_rows += B * (1 + method.n_steps) if method.hybrid else 0
        x, s = state.x, state.score
    adjusted = not isinstance(method.mh, NoMH)
    return x, {"score_evals": f.calls + prior.calls, "classifier_evals": f.calls + hybrid_class_rows,
               "wall_s": time.perf_counter() - start,
               "accept": float(acc.mean() / n_moves) if adjusted and n_moves else None,
               "n_nonfinite": int((~torch.isfinite(x).all(1)).sum())}
