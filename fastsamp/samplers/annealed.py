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
from typing import NamedTuple

import torch

from .. import ops
from ..distributed import Comm
from ..ops import _checks
from ..ops.sde import em_coefficients
from ..profiling import phase
from ..protocol import CountingModel, fused_corrector, has_energy, model_name, resolve_model, with_backend
from .kernels import CorrectorSpec, PhiloxKey, mh_test, routed, run_corrector

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
    time in seconds, and whether a fused whole-move kernel (mixture or score network) was used.
    Distributed: the statistics are over the chains of every rank, and (chain_offset, n_local) are this
    rank's chains."""

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


def default_mh(corrector) -> str:
    """The MH test a corrector takes by default: "score" for MALA and HMC, "none" for ULA and U-HMC."""
    return "none" if corrector in ("ula", "uhmc") else "score"


def default_damping(corrector: str) -> float:
    """The momentum damping γ when none is given: 0.8 for U-HMC, 0 (a full refresh) for HMC. An explicit
    γ applies to both: with MH, the momentum flip on rejection keeps a partial refresh exact."""
    return 0.8 if corrector == "uhmc" else 0.0


def corrector_spec(model, *, corrector, mh, n_steps, n_trapezoid, n_leapfrog, damping, backend="auto",
                   steps_name="n_steps") -> CorrectorSpec:
    """One validation for the fused and the generic corrector paths (the same error whichever path the
    model takes); mh None takes the corrector's default (`default_mh`)."""
    if corrector not in CORRECTORS:
        raise ValueError(f"corrector must be one of {CORRECTORS}, got {corrector!r}")
    mh = default_mh(corrector) if mh is None else mh
    if mh not in MH_MODES:
        raise ValueError(f"mh must be one of {MH_MODES}, got {mh!r}")
    if corrector in ("ula", "uhmc") and mh != "none":
        raise ValueError(f"corrector={corrector!r} has no MH step: use mh='none' (or leave mh unset)")
    if mh == "energy" and not has_energy(model):
        raise ValueError(f"mh='energy' needs a model with an energy (log_prob); {model_name(model)} has "
                         f"only a score: use mh='score'")
    damping = _checks.damping(default_damping(corrector) if damping is None else damping)  # γ = 1 never refreshes p
    return CorrectorSpec(corrector, mh, n_steps=count_arg(steps_name, n_steps, 0),
                         n_trapezoid=count_arg("n_trapezoid", n_trapezoid, 1),
                         n_leapfrog=count_arg("n_leapfrog", n_leapfrog, 1), damping=damping, backend=backend)


def reverse_em_steps(schedule, ts, dtype) -> list:
    """[None, (a, c_s, c_n) of the reverse Euler–Maruyama step ts[0] → ts[1], ts[1] → ts[2], ...], checked as
    `ops.reverse_sde_step` checks them (`ops.sde.em_coefficients`): once per run, not per level."""
    return [None] + [em_coefficients(schedule, t_prev, t_prev - t, dtype) for t_prev, t in zip(ts, ts[1:])]


def nonfinite_rows(x):
    """(B,) per chain of x (B, D): Σ_d (x − x)_d, exactly +0 in a finite row and NaN in a row with a NaN or ±inf
    (inf − inf), a per-row reduction (no BLAS, whose matrix-vector products need not keep rows apart); 0.4x the
    time of isfinite(x).all(1) on the CPU (B = 2048, D = 8, loaded)."""
    return (x - x).sum(1)


class NonFiniteMonitor:
    """Counts the chains with a non-finite coordinate after each level on the chains' device (no host
    synchronisation per level); `report` reads the counts once, at the end, and warns or raises."""

    def __init__(self, n_levels, device, on_nonfinite):
        if on_nonfinite not in NONFINITE_ACTIONS:
            raise ValueError(f"on_nonfinite must be one of {NONFINITE_ACTIONS}, got {on_nonfinite!r}")
        self.action = on_nonfinite
        zero = torch.zeros((), dtype=torch.int64, device=device)
        self.counts = [zero] * n_levels  # per level a 0-dim tensor (a list: no indexing op per level)

    def record(self, level, x, was_finite=None):
        """Count the non-finite chains of x (B, D) at `level` (only those finite in `was_finite`, if
        given) into counts[level]; returns the (B,) mask of finite chains."""
        row = nonfinite_rows(x)
        finite = row == 0
        # without was_finite the count is of the NaN rows (count_nonzero: one op where ~finite, sum are two)
        self.counts[level] = torch.count_nonzero(row) if was_finite is None else (was_finite & ~finite).sum()
        return finite

    def record_levels(self, first, rows):
        """`record` of the levels first, first + 1, ... from their chains' `nonfinite_rows` (L, B) (all counted, no
        was_finite), in one op per statistic; returns the (L, B) mask of finite chains."""
        self.counts[first:first + rows.shape[0]] = torch.count_nonzero(rows, dim=1).unbind()
        return rows == 0

    def report(self, sampler, describe, counts=None):
        """(counts per level, first level with non-finite chains or None); warns or raises naming
        that level, `describe(level)` giving (where it is, the likely cause). `counts`: a tensor of
        the per-level counts to report instead of those recorded here (a sampler's, summed over the ranks)."""
        counts = (torch.stack(self.counts) if counts is None else counts).to(torch.int64).tolist()
        first = next((i for i, c in enumerate(counts) if c), None)
        if first is not None and self.action != "ignore":
            where, cause = describe(first)
            self.alert(f"{sampler}: {counts[first]} chain(s) became non-finite (NaN/inf) at level {first}{where} "
                       f"({counts[-1]} non-finite at the end). Likely cause: {cause}", stacklevel=4)
        return counts, first

    def alert(self, msg, stacklevel=3):
        """Warn (NonFiniteChainsWarning) or raise (NonFiniteChainsError) with `msg` as on_nonfinite says; nothing for
        "ignore". stacklevel: warnings.warn's, counted from this method (3: the caller's caller)."""
        if self.action == "raise":
            raise NonFiniteChainsError(msg)
        if self.action == "warn":
            warnings.warn(msg, NonFiniteChainsWarning, stacklevel=stacklevel)


LEVEL_CHUNK = 16  # levels whose statistics annealed_mcmc computes together
LEVEL_CHUNK_BYTES = 2**24  # at most this much waiting: per level and chain three values and one bool per move


def level_chunk(n_local, n_steps, dtype) -> int:
    """The levels whose statistics annealed_mcmc computes together, for n_local chains of n_steps moves a level."""
    return max(1, min(LEVEL_CHUNK, LEVEL_CHUNK_BYTES // (max(n_local, 1) * (3 * dtype.itemsize + n_steps))))


class LevelOutcome(NamedTuple):
    """What annealed_mcmc keeps of one level until its chunk's statistics (`chunk_values`)."""

    level: int
    nonfinite_rows: torch.Tensor     # its chains' `nonfinite_rows` (B,)
    rate: torch.Tensor | None        # the per-chain acceptance rate; None: no moves, or generic moves (`accepted`)
    accepted: list                   # the generic moves' (B,) accept masks, to count over n_steps moves
    step_size: torch.Tensor          # the step sizes ε_t (B,)
    score_evals: int


def chunk_values(monitor, levels, n_steps):
    """(per level [Σ acceptance rate, Σ step size, non-finite chains, score evaluations], the last level's rate (B,)
    with the non-finite chains' 0, or None without corrector moves) of annealed_mcmc's `levels` (`LevelOutcome`s).
    One op per statistic for all the levels; the counts go into `monitor` too. Each level's
    values are those of the level alone for float32 chains, and for float64 up to 32,768 chains per rank: the
    float64 sums of a (B,) row run serially, as the (L, B) stack's rows do, but torch splits a longer 1-D sum
    across threads, so beyond that the float64 sums' last bits may differ (the reported statistics only)."""
    first, L = levels[0].level, len(levels)
    finite = monitor.record_levels(first, torch.stack([lv.nonfinite_rows for lv in levels]))  # (L, B)
    accepted = [mask for lv in levels for mask in lv.accepted]
    rate = rate_sums = None
    if accepted:  # the same int32 counts as kernels.count_accepted's, in one sum
        counts = torch.stack(accepted).view(L, n_steps, -1).sum(1, dtype=torch.int32)
        rate = counts.to(levels[0].nonfinite_rows.dtype) / n_steps  # the rows' dtype: the chains'
    elif levels[0].rate is not None:
        rate = torch.stack([lv.rate for lv in levels])
    if rate is not None:
        rate = rate * finite  # a non-finite chain is not accepted
        rate_sums = rate.sum(1, dtype=torch.float64).unbind()
    eps_sums = torch.stack([lv.step_size for lv in levels]).sum(1, dtype=torch.float64).unbind()
    values = [[0.0 if rate_sums is None else rate_sums[j], eps_sums[j], monitor.counts[first + j], lv.score_evals]
              for j, lv in enumerate(levels)]
    return values, None if rate is None else rate[-1]


def annealed_mcmc(model, n_samples, *, n_levels=100, corrector="mala", mh=None, n_corrector_steps=5,
                  step_size=0.1, n_trapezoid=1, n_leapfrog=3, damping=None, data_scale=1.0, t_min=1e-3,
                  adapt=False, target_accept=None, seed=0, backend="auto", dtype=torch.float32, device="cpu",
                  fused=True, progress=False, on_nonfinite="warn", group=None, gather=True, predictor=True):
    """Sample `model` at t = 0 by annealing over `n_levels` noise levels from t = 1 to `t_min`.

    At each level t: one reverse Euler–Maruyama step from the previous level (predictor; with
    `predictor=False` none: pure annealed MCMC, the chains reach each level by the corrector alone). After
    generic corrector moves the predictor takes the score at the previous level's t that the last move holds
    instead of calling the model again (the same x and t, so the same value). Then
    `n_corrector_steps` corrector moves targeting p_t with step ε_t = step_size·(α_t² data_scale² + σ_t²)
    (proportional to the marginal variance), times a per-chain factor adapted towards
    `target_accept` ∈ (0, 1) when `adapt` is set (default targets: MALA 0.57, HMC 0.65).
    `model` follows `fastsamp.protocol` (a plain callable / nn.Module f(x, t) with a `dim` is wrapped
    with the VP schedule); `mh` defaults to "score" for MALA/HMC and "none" for ULA/U-HMC.
    Models with a fused-kernel hook (mixtures: `ops.gmm_mala`, `ops.gmm_hmc`) run it (`fused=False`
    forces the generic kernels of `fastsamp.samplers.kernels`: one batched score call for all
    trapezoid points); both paths validate their arguments the same way.
    `on_nonfinite` ("warn", "raise" or "ignore"): what to do, at the end of the run, if chains went
    non-finite (see the module docstring).
    The generic moves reuse buffers within a run (the trapezoid points' batch, and two pairs for the chains' state,
    each overwritten two moves later: `kernels.ScoreMH`), some of which the model is called on (the batch; without
    the predictor, a level's first state): a model must not keep its input tensors past its call (copy what it
    keeps). What the run returns is not a buffer of any later run.

    Distributed (under torchrun, or with `group=` a torch.distributed group): each rank runs its
    share of the n_samples chains (`fastsamp.distributed.shard`) with noise keyed by the global
    chain index, so the samples equal the one-process run's bit for bit; the per-level statistics
    are one all_reduce. gather=True: rank 0 returns all samples in chain order and the other ranks
    None; gather=False: every rank returns its own chains (stats.chain_offset, stats.n_local).

    Returns (samples (n_samples, D), AnnealedStats).
    """
    dtype = _checks.float_dtype("dtype", dtype)
    model = resolve_model(model, dtype=dtype)
    spec = corrector_spec(model, corrector=corrector, mh=mh, n_steps=n_corrector_steps, n_trapezoid=n_trapezoid,
                          n_leapfrog=n_leapfrog, damping=damping, backend=backend, steps_name="n_corrector_steps")
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
    device = _checks.device(device)
    comm = Comm.resolve(group)
    chain0, n_local = comm.shard(n_samples)
    if isinstance(step_size, torch.Tensor):  # per chain: this process's chains (shape, device and values checked)
        step_size = _checks.step_size(step_size, torch.empty(n_local, 0, dtype=dtype, device=device))
    monitor = NonFiniteMonitor(n_levels, device, on_nonfinite)
    sched = model.schedule
    ts = torch.linspace(1.0, t_min, n_levels, dtype=torch.float64).tolist()
    # the predictor calls the sde_step kernel as ops.reverse_sde_step would, with the run's constants checked here
    # once: x is the normal draw's or a kernel's output, its score the counting model's or the last move's
    steps = reverse_em_steps(sched, ts, dtype) if predictor else None
    chain0 = _checks.chain_offset(chain0, n_local, device)
    f = CountingModel(with_backend(model, backend))
    stats = AnnealedStats(fused=fused and fused_corrector(model) is not None, chain_offset=chain0,
                          n_local=n_local)
    start = time.perf_counter()
    scale0 = (sched.alpha(1.0) ** 2 * data_scale**2 + sched.sigma2(1.0)) ** 0.5
    x = scale0 * ops.normal(seed, 0, n_local, model.dim, dtype=dtype, device=device, chain_offset=chain0)
    factor = torch.ones(n_local, dtype=dtype, device=device)
    # per-level statistics stay on the device until the end: nothing per level in one process
    # (distributed: one all_reduce per level, whose failure flag is read on the host)
    level_sums = comm.level_sums(4)  # Σ acceptance, Σ step size, non-finite chains, score evaluations
    p = torch.zeros_like(x)
    s_held = None  # the score of x at the last level's t that the generic corrector's last move holds
    # one for every level's generic moves (it keeps the trapezoid points' batch and the accept's two output pairs:
    # no level keeps a state past its next move, and the run's last x is handed out with the piece's end)
    mh_piece = mh_test(spec, reuse_outputs=True)
    routes = {}  # the ops' functions, chosen once per run (`kernels.routed`)
    offset = 1
    # the levels whose statistics (the generic moves' accept masks counted among them) wait to be computed together
    # (`chunk_values`), up to `chunk` levels: their ops run back to back, with warm caches, instead of after each
    # level's moves (benchmarks/RESULTS.md, eighth session); one level at a time where the next level needs them
    # (adapt: the rate; several ranks: each level's all_reduce). The samples' bits do not change; the statistics'
    # are those of one level at a time except the float64 sums' last bits past 32,768 chains (`chunk_values`).
    adapt = adapt and corrector in ("mala", "hmc")
    chunk = 1 if adapt or comm.distributed else level_chunk(n_local, spec.n_steps, dtype)
    pending = []
    levels = range(n_levels)
    if progress:
        try:
            from tqdm import tqdm
            levels = tqdm(levels, desc=f"annealed {corrector}/{spec.mh}")
        except ImportError:
            pass
    for i in levels:
        t = ts[i]
        with level_sums.level() as values:
            n_before = f.calls
            if i > 0 and predictor:
                with phase("predictor"):
                    s = f.score(x, ts[i - 1]) if s_held is None else s_held  # the same x and t: the same value
                    sde_step = routed(routes, "sde_step", backend, (x, s, None, None))
                    x = sde_step(x, s, None, None, *_checks.seed_offset(seed, offset, device=device), chain0, *steps[i])
                offset += 1
            eps = step_size * (sched.alpha(t) ** 2 * data_scale**2 + sched.sigma2(t)) * factor
            rate, accepted = None, []
            if spec.n_steps > 0:
                with phase("corrector"):
                    x, p, rate, offset, s_held = run_corrector(f, x, momentum=p, t=t, step_size=eps, spec=spec,
                                                               key=PhiloxKey(seed, offset, chain0), fused=stats.fused,
                                                               mh=mh_piece, routes=routes,
                                                               accepted=accepted if chunk > 1 else None)
            pending.append((values, LevelOutcome(i, nonfinite_rows(x), rate, accepted, eps, f.calls - n_before)))
            if len(pending) == chunk or i == n_levels - 1:
                chunk_lists, rate = chunk_values(monitor, [level for _, level in pending], spec.n_steps)
                for (level_list, _), level_values in zip(pending, chunk_lists):
                    level_list[:] = level_values
                pending.clear()
                if adapt and rate is not None:  # chunk 1: this level's rate
                    factor = factor * torch.exp(rate - target_accept)  # Robbins-Monro on log ε, gain 1
    totals = level_sums.totals().to(device)
    stats.n_score_evals = int(totals[:, 3].sum())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    stats.wall_time = time.perf_counter() - start
    stats.step_size = (totals[:, 1] / n_samples).tolist()
    stats.accept_rate = (totals[:, 0] / n_samples).tolist() if spec.n_steps > 0 else []
    stats.n_nonfinite, stats.first_nonfinite_level = monitor.report("annealed_mcmc", lambda i: (
        f" of {n_levels} (t = {ts[i]:.4g}, mean step size ε_t = {stats.step_size[i]:.3g})",
        "the step size is too large for this model (lower step_size, or adapt=True), or the score model's "
        "output is too large or non-finite at this t"), counts=totals[:, 2])  # over all ranks
    if gather:
        x = comm.gather(x)
    return x, stats


def mcmc(model, x, *, t=0.0, corrector="mala", mh=None, n_steps=100, step_size=0.1, n_trapezoid=1,
         n_leapfrog=3, damping=None, seed=0, offset=0, chain_offset=None, backend="auto", fused=True,
         on_nonfinite="warn", group=None):
    """Run `n_steps` corrector moves targeting the model's marginal p_t from the chains `x` (B, D).

    `model` follows `fastsamp.protocol` (no schedule needed; a plain callable f(x, t) takes its dim
    from x); `mh` defaults to the corrector's ("score" for MALA/HMC, "none" for ULA/U-HMC).
    Returns (x, per-chain acceptance rate (B,), 0 for chains that went non-finite). Noise uses
    Philox draws (seed, offset + m) of the global chains chain_offset + b. Chains finite on entry
    and non-finite on exit are reported as `on_nonfinite` says ("warn", "raise" or "ignore").
    Distributed (torchrun or `group=`), x holds this rank's chains and chain_offset defaults to the
    number of chains on the lower ranks (else to 0). `x` itself is never written; the model must not keep its
    input tensors past its call (the generic moves reuse buffers, see `annealed_mcmc`).
    """
    chains_dim = x.shape[1] if isinstance(x, torch.Tensor) and x.dim() == 2 else None
    model = resolve_model(model, needs_schedule=False, dim=chains_dim)
    spec = corrector_spec(model, corrector=corrector, mh=mh, n_steps=n_steps, n_trapezoid=n_trapezoid,
                          n_leapfrog=n_leapfrog, damping=damping, backend=backend)
    x = _checks.state("x", x)
    t = _checks.finite_float("t", t)
    if x.shape[1] != model.dim:
        raise ValueError(f"x must have shape (B, {model.dim}) for this model, got {tuple(x.shape)}")
    resolve_model(model, needs_schedule=False, dtype=x.dtype)
    eps = _checks.step_size(step_size, x)
    monitor = NonFiniteMonitor(1, x.device, on_nonfinite)
    was_finite = torch.isfinite(x).all(1)
    f = CountingModel(with_backend(model, backend))
    if chain_offset is None:
        chain_offset = Comm.resolve(group).chain_offset(x.shape[0])
    with phase("corrector"):
        res = run_corrector(f, x, momentum=torch.zeros_like(x), t=t, step_size=eps, spec=spec,
                            key=PhiloxKey(seed, offset, chain_offset), mh=mh_test(spec, reuse_outputs=True),
                            fused=fused and fused_corrector(model) is not None)
    x, rate = res.x, res.rate
    rate = rate * monitor.record(0, x, was_finite)
    monitor.report("mcmc", lambda i: (
        f" (t = {t}, {spec.n_steps} {corrector} moves)",
        "the step size is too large for this model, or the score model's output is too large or non-finite"))
    return x, rate
