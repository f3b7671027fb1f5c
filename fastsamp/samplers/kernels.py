"""MCMC correctors in the BlackJAX shape: a kernel is an `init` and a `step` over a plain state.

    kernel = Langevin(model, t, step_size, ScoreMH(n_trapezoid), backend)   # or HMC(...)
    state = kernel.init(x)                                  # ChainState(x, score, logp, momentum)
    state, info = kernel.step(state, PhiloxKey(seed, offset, chain_offset))   # Info(accepted, log_alpha)

`model` is a `fastsamp.protocol.CountingModel`. The MH test is a shared piece: `ScoreMH` (the
trapezoidal line integral of the score, `ops.score_mh_accept`; for HMC along the leapfrog path),
`EnergyMH` (the exact log-density difference, `ops.energy_mh_accept` / `ops.hmc_accept`) or
`NoMH` (unadjusted: ULA, U-HMC). Move m of a run uses the Philox draws (seed, offset + m) of the
global chains chain_offset + b: the proposal noise ξ (or the momentum refresh) and the uniform u.
The MH tests' accept ops run inside the profiler range `fastsamp.mh` (`fastsamp.profiling`).

HMC rejection keeps the position and flips the momentum, p ← −p₀ (as the fused kernel does): with a
full refresh (damping 0) the flip is invisible, with a partial refresh it makes the move exact;
`KeepMomentumOnReject(test)` is the MCMC-correction paper's rule instead (the refreshed momentum kept).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.autograd.forward_ad as _fwad

from .. import ops
from ..ops import _checks, _dispatch
from ..ops._table import OPS
from ..ops.mh import line_points_count
from ..profiling import phase
from ..protocol import fused_corrector


class ChainState(NamedTuple):
    """Chains x (B, D), their score, their log-density (energy MH only, else None) and momentum (HMC)."""

    x: torch.Tensor
    score: torch.Tensor
    logp: torch.Tensor | None = None
    momentum: torch.Tensor | None = None


class Info(NamedTuple):
    """Per-chain result of one move: accepted (B,) bool; log α (B,), None for unadjusted moves."""

    accepted: torch.Tensor
    log_alpha: torch.Tensor | None


class PhiloxKey(NamedTuple):
    """The Philox counter of one move: (seed, offset) and the global index of the first local chain."""

    seed: int
    offset: int
    chain_offset: int

    def move(self, m: int) -> PhiloxKey:
        # tuple.__new__: a third of PhiloxKey(...)'s time (the generated __new__ is a Python call), _replace 4x it
        return _new_tuple(PhiloxKey, (self.seed, self.offset + m, self.chain_offset))


_new_tuple = tuple.__new__


@dataclass(frozen=True)
class CorrectorSpec:
    """One corrector run's settings (built and validated by `annealed.corrector_spec`)."""

    corrector: str       # "ula", "mala", "hmc", "uhmc"
    mh: str              # "score", "energy", "none"
    n_steps: int
    n_trapezoid: int = 1
    n_leapfrog: int = 1
    damping: float = 0.0
    backend: str = "auto"

    @property
    def is_hmc(self) -> bool:
        return self.corrector in ("hmc", "uhmc")

    def score_evals_per_chain(self) -> int:
        """Score evaluations per chain of one run (the first state, then each move's)."""
        per_move = self.n_leapfrog if self.is_hmc else (self.n_trapezoid if self.mh == "score" else 1)
        return self.n_steps * per_move + 1


def _public(name):
    """The public op of backend op `name` called with the backend signature's arguments in order."""
    op = OPS[name]
    names = tuple(op.renames.get(a.name, a.name) for a in op.args)
    public = getattr(ops, op.public)

    def call(backend, *args, **out):
        return public(**dict(zip(names, args)), **out, backend=backend)
    return call


_PUBLIC = {name: _public(name) for name in ("mala_propose", "line_points", "score_mh_accept", "energy_mh_accept",
                                            "leapfrog", "leapfrog_finish", "hmc_accept", "momentum_refresh")}


def _op(kernel, name, tensors, rest=(), backend=None, **outs):
    """Op `name` with the backend signature's arguments `tensors` + `rest` (`tensors`: those the backend
    choice looks at, `_dispatch.route`; a move's PhiloxKey as `rest` is its seed, offset, chain_offset),
    writing into the `outs` given (the op's `out` arguments: `out=`; score_mh_accept's x_out=, score_out=, which
    only a checked kernel's moves pass: `ScoreMH.accept_outputs` gives a hand-built kernel none).
    A checked kernel's run has checked its constants once and passes the ops the kernels' own outputs and
    the counting model's (contiguous) outputs (`checked_kernel`): the routed function directly, with no
    per-call check; a hand-built kernel: the public op, which checks every argument."""
    backend = kernel.backend if backend is None else backend
    if kernel.checked:
        return routed(kernel.routes, name, backend, tensors)(*tensors, *rest, **outs)
    return _PUBLIC[name](backend, *tensors, *rest, **outs)


def routed(routes: dict, name, backend, tensors):
    """`_dispatch.route(backend, name, *tensors)` in a sampler's run, chosen once per run for plain tensors that
    need no grad (kept in `routes`: a checked kernel's, which a sampler passes to every level's run): within a run
    the device and dtype, tracing and what watches the dispatcher do not change, so only an input that requires
    grad, carries a forward-mode tangent or is a tensor subclass (a model's output can be any of these) changes the
    choice, and such calls go through `route` each time. The cache is keyed by the op name alone: a per-call
    `backend` override (`_op`'s) that varied within a run would need the backend in the key."""
    x = tensors[0]
    if (_dispatch._needs_grad(x, tensors) or (_fwad._current_level >= 0 and _dispatch._has_tangent(x, tensors))
            or not _dispatch._plain(x, tensors)):
        return _dispatch.route(backend, name, *tensors)
    fn = routes.get(name)
    if fn is None:
        fn = routes[name] = _dispatch.route(backend, name, *tensors)
    return fn


def _all_accepted(x):
    return Info(torch.ones(x.shape[0], dtype=torch.bool, device=x.device), None)


class MHTest:
    """The MH piece of a kernel: `evaluate` a state (score, log-density or None), then accept a
    Langevin proposal (`langevin`) or the end of an HMC trajectory (`hmc`)."""

    def evaluate(self, model, x, t):
        return model.score(x, t), None

    def check_langevin_run(self, x):
        """The per-run checks of what a checked Langevin kernel's moves pass this MH piece's ops unchecked (and
        the per-run buffers the piece writes into, if any: `ScoreMH`)."""

    def proposal_out(self, x):
        """Where a Langevin move from the chains x writes its proposal x' (None: a fresh tensor). A piece that
        gives a buffer must not keep x' past its `langevin` call: the next move overwrites it."""
        return None


class NoMH(MHTest):
    """Unadjusted moves: every proposal is kept."""

    def langevin(self, kernel, state, x_prop, key):
        return ChainState(x_prop, kernel.model.score(x_prop, kernel.t)), _all_accepted(x_prop)

    def hmc(self, kernel, start, end, delta_logp, key):
        return end, _all_accepted(end.x)


_FRESH = {}  # `ScoreMH.accept_outputs`: no out arguments (read only)


class ScoreMH(MHTest):
    """MH with ΔlogP by the trapezoidal rule on the score: n_trapezoid sub-intervals of the MALA
    segment (one batched score call for x' and the interior points), the leapfrog path for HMC."""

    def __init__(self, n_trapezoid: int = 1, reuse_outputs: bool = False):
        self.n_trapezoid = n_trapezoid
        self._batch = None  # n > 1: (batch (n·B, D), its proposal rows (B, D), its points (n − 1, B, D))
        self.reuse_outputs = reuse_outputs
        self._pairs = ()  # reuse_outputs: two {x_out, score_out} buffer pairs (`accept_outputs`), made per run's shape

    def accept_outputs(self, kernel, state, tensors) -> dict:
        """The x_out / score_out of a checked kernel's accept with `reuse_outputs`: the buffer pair that holds neither
        the current x nor its score, so a move's state overwrites the one two moves before (for a caller that keeps
        no state past the next move and hands the last one out with the piece's end, as annealed_mcmc and mcmc do).
        Else ({}) fresh outputs: a hand-built kernel, or an input that requires grad (the accept's graph must not see
        its saved tensors overwritten). Per move only identity tests: the pairs are made by `check_langevin_run`.
        Safe for annealed_mcmc and mcmc (tests/test_annealed.py compares every returned and model-seen tensor with
        fresh outputs): what they keep of a state past the next move is computed from it at once (the non-finite
        rows, the accept masks), the predictor reads x and the held score into a fresh x, the run's last state is
        handed out with the piece (one per sampler call); the model sees a pair's x only as a level's first state
        (no predictor) and must not keep it (as it must not keep the trapezoid batch)."""
        if not kernel.checked or _dispatch._needs_grad(state.x, tensors):
            return _FRESH
        x, score = state.x, state.score
        for pair in self._pairs:
            if pair["x_out"] is not x and pair["score_out"] is not score:
                return pair
        return _FRESH

    def check_langevin_run(self, x):
        if self.n_trapezoid > 1:
            line_points_count(self.n_trapezoid, x)
        if self.reuse_outputs:
            held = self._pairs[0]["x_out"] if self._pairs else None
            if held is None or held.shape != x.shape or held.dtype != x.dtype or held.device != x.device:
                self._pairs = tuple({"x_out": torch.empty_like(x), "score_out": torch.empty_like(x)} for _ in range(2))

    def proposal_out(self, x):
        """n > 1: the first B rows of the (n·B, D) batch the model scores, allocated once per shape, dtype and
        device (one kernel's moves reuse it: the accepted x and score are the accept op's own outputs, never
        views of it; one ScoreMH is not for concurrent runs)."""
        if self.n_trapezoid == 1:
            return None
        batch = self._batch
        if batch is None or batch[1].shape != x.shape or batch[1].dtype != x.dtype or batch[1].device != x.device:
            (B, D), n = x.shape, self.n_trapezoid
            whole = torch.empty(n * B, D, dtype=x.dtype, device=x.device)
            batch = self._batch = (whole, whole[:B], whole[B:].view(n - 1, B, D))
        return batch[1]

    def langevin(self, kernel, state, x_prop, key):
        x, n = state.x, self.n_trapezoid
        if n == 1:  # no interior points: score x' alone
            scores = kernel.model.score(x_prop, kernel.t)
        else:  # x' and the n - 1 interior points in one batched call (n checked once: `check_langevin_run`)
            if self._batch is None or x_prop is not self._batch[1]:  # a proposal made elsewhere (another kernel's
                self.proposal_out(x).copy_(x_prop)  # step); `Langevin.step` wrote it into the batch already
            batch, _, points = self._batch
            _op(kernel, "line_points", (x, x_prop), (n,), out=points)
            scores = kernel.model.score(batch, kernel.t)
            # the model's whole (n·B, D) output: s(x') then the n − 1 interior sets, read by the accept op in place
            # (slicing it cost ~25 us per move after the network): a checked kernel's routed backend takes these
            # rows as they come (the counting model's, contiguous, of the batch's shape: `CountingModel.score`
            # checks it), the public op an (n, B, D) stack
            if not kernel.checked:
                scores = model_rows_stack(scores, batch, n)
        with phase("mh"):
            tensors = (x, x_prop, state.score, scores, kernel.step_size, None, None)
            x, s, accepted, log_alpha = _op(kernel, "score_mh_accept", tensors, key,
                                            **self.accept_outputs(kernel, state, tensors))
        return ChainState(x, s), Info(accepted, log_alpha)

    def hmc(self, kernel, start, end, delta_logp, key):
        with phase("mh"):
            x, s, accepted, log_alpha = _op(kernel, "hmc_accept", (start.x, end.x, start.score, end.score,
                                                                   start.momentum, end.momentum, delta_logp, None), key)
        momentum = torch.where(accepted[:, None], end.momentum, -start.momentum)  # rejected: flip
        logp = None if start.logp is None else torch.where(accepted, end.logp, start.logp)
        return ChainState(x, s, logp, momentum), Info(accepted, log_alpha)


def model_rows_stack(scores, batch, n):
    """A hand-built kernel's model output on the (n·B, D) batch [x'; line_points] as the public op's (n, B, D)
    stack, or a clear error when it is not a tensor of the batch's shape (e.g. (B, D): one score set)."""
    if not isinstance(scores, torch.Tensor) or scores.shape != batch.shape:
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"the model's score of the (n·B, D) = {tuple(batch.shape)} batch of x' and the n - 1 = "
                         f"{n - 1} interior points must have that shape, got {shape}")
    return scores.reshape(n, -1, batch.shape[1])


class EnergyMH(ScoreMH):
    """MH with the exact log-density difference log p(x') − log p(x) (models with an energy)."""

    def evaluate(self, model, x, t):
        return model.score_and_log_prob(x, t)

    @staticmethod
    def accept_backend(kernel):
        """The backend for `energy_mh_accept`: the kernel's when the op has it (the reference or a compiled backend of
        its op table entry), else "auto" (a CUDA C++ kernel's: on a GPU the Triton one)."""
        return kernel.backend if kernel.backend in ("auto", "torch", *OPS["energy_mh_accept"].backends) else "auto"

    def langevin(self, kernel, state, x_prop, key):
        s_prop, logp_prop = kernel.model.score_and_log_prob(x_prop, kernel.t)
        with phase("mh"):
            x, s, logp, accepted, log_alpha = _op(kernel, "energy_mh_accept", (
                state.x, x_prop, state.score, s_prop, state.logp, logp_prop, kernel.step_size, None), key,
                self.accept_backend(kernel))
        return ChainState(x, s, logp), Info(accepted, log_alpha)

    def hmc(self, kernel, start, end, delta_logp, key):
        return super().hmc(kernel, start, end, end.logp - start.logp, key)


class KeepMomentumOnReject(MHTest):
    """The MCMC-correction paper's HMC rejection: the wrapped test's result, but a rejected chain keeps
    the refreshed momentum p₀ instead of −p₀ (exact only with a full refresh)."""

    def __init__(self, inner: MHTest):
        self.inner = inner

    def evaluate(self, model, x, t):
        return self.inner.evaluate(model, x, t)

    def hmc(self, kernel, start, end, delta_logp, key):
        new, info = self.inner.hmc(kernel, start, end, delta_logp, key)
        return new._replace(momentum=torch.where(info.accepted[:, None], end.momentum, start.momentum)), info


def mh_test(spec: CorrectorSpec, reuse_outputs: bool = False):
    """The MH piece of a corrector run (ULA and U-HMC have none); `reuse_outputs`: `ScoreMH.accept_outputs`."""
    if spec.corrector in ("ula", "uhmc") or spec.mh == "none":
        return NoMH()
    return EnergyMH() if spec.mh == "energy" else ScoreMH(spec.n_trapezoid, reuse_outputs)


@dataclass(frozen=True)
class Langevin:
    """MALA (ULA with NoMH): x' = x + ε s(x) + √(2ε) ξ, then the MH test."""

    model: object
    t: float
    step_size: torch.Tensor
    mh: MHTest
    backend: str = "auto"
    checked: bool = False  # set by `run_corrector` only: see `checked_kernel`
    routes: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)  # a checked run's `routed`
    proposal: torch.Tensor | None = dataclasses.field(default=None, repr=False, compare=False)  # a checked run's
    # `mh.proposal_out` (its chains' shape, dtype and device do not change within the run)

    def init(self, x, momentum=None) -> ChainState:
        s, logp = self.mh.evaluate(self.model, x, self.t)
        return ChainState(x, s, logp, momentum)

    def step(self, state: ChainState, key: PhiloxKey) -> tuple[ChainState, Info]:
        # state.score: resolved by init or the last move (a kernel's output or a resolved model's)
        out = self.proposal if self.checked else self.mh.proposal_out(state.x)
        x_prop = _op(self, "mala_propose", (state.x, state.score, self.step_size, None), key, out=out)
        new, info = self.mh.langevin(self, state, x_prop, key)
        return ChainState(new.x, new.score, new.logp, state.momentum), info


@dataclass(frozen=True)
class HMC:
    """HMC: momentum refresh p = damping·p + √(1 − damping²) ξ (damping 0: a full refresh), then
    n_leapfrog leapfrog steps, then the MH test (ΔlogP by the trapezoid along the leapfrog path)."""

    model: object
    t: float
    step_size: torch.Tensor
    mh: MHTest
    n_leapfrog: int = 1
    damping: float = 0.0
    backend: str = "auto"
    checked: bool = False  # set by `run_corrector` only: see `checked_kernel`
    routes: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)  # a checked run's `routed`

    def init(self, x, momentum=None) -> ChainState:
        s, logp = self.mh.evaluate(self.model, x, self.t)
        return ChainState(x, s, logp, torch.zeros_like(x) if momentum is None else momentum)

    def trajectory(self, start: ChainState):
        """(end state, ΔlogP by the trapezoid along the path) of n_leapfrog leapfrog steps."""
        x, s, logp, p = start
        delta = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        eps = self.step_size
        for _ in range(self.n_leapfrog):
            # checked: x, p, delta are the kernels' outputs; s the counting model's or hmc_accept's
            x_next, p_half = _op(self, "leapfrog", (x, p, s, eps))
            s_next, logp = self.mh.evaluate(self.model, x_next, self.t)
            p, delta = _op(self, "leapfrog_finish", (x, x_next, p_half, s, s_next, eps, delta))
            x, s = x_next, s_next
        return ChainState(x, s, logp, p), delta

    def step(self, state: ChainState, key: PhiloxKey) -> tuple[ChainState, Info]:
        # checked: the momentum is checked_kernel's, zeros like x or the last move's (contiguous)
        p = _op(self, "momentum_refresh", (state.momentum,), (self.damping, None) + key)
        start = ChainState(state.x, state.score, state.logp, p)
        end, delta = self.trajectory(start)
        return self.mh.hmc(self, start, end, delta, key)


class CorrectorResult(NamedTuple):
    x: torch.Tensor
    momentum: torch.Tensor
    rate: torch.Tensor       # per-chain acceptance rate over the run's moves
    offset: int              # the Philox offset after the run
    score: torch.Tensor | None = None  # the model's score of x at the run's t (generic moves), else None


def make_kernel(model, t, step_size, spec: CorrectorSpec, mh: MHTest | None = None):
    """The Langevin or HMC kernel of a corrector run on the (counting) model at time t, with the MH piece `mh`
    (None: a new `mh_test(spec)`; a sampler passes the same piece to each level's run, which keeps its buffers)."""
    mh = mh_test(spec) if mh is None else mh
    if spec.is_hmc:
        return HMC(model, t, step_size, mh, n_leapfrog=spec.n_leapfrog,
                   damping=spec.damping, backend=spec.backend)
    return Langevin(model, t, step_size, mh, backend=spec.backend)


def checked_kernel(kernel, x, momentum, key: PhiloxKey, n_steps: int, routes: dict | None = None):
    """(kernel, x, momentum, key) of a run of n_steps moves of a Langevin or HMC kernel from x, with the
    run's constants checked once as the public ops check them (x and the momentum as states, the step
    size, the HMC damping, the seed and chain offset, the offsets of every move, the MALA trapezoid's n): the
    kernel's moves then call the ops' kernels with no per-move check of those (the tensors that change per move
    are the kernels' own outputs, or the model's, which the counting model checks and returns contiguous).
    `routes`: the ops' functions chosen so far in this sampler's run (`routed`; None: a new choice)."""
    is_hmc = isinstance(kernel, HMC)
    if is_hmc:  # an HMC move's first op checks the momentum (zeros like x when none is carried), then x
        p = _checks.state("p", x if momentum is None else momentum)
    x = _checks.state("x", x)
    eps, _, seed, _, chain_offset = _checks.whole_moves(x, kernel.step_size, n_steps, key.seed, key.offset,
                                                        key.chain_offset)
    changes = {"step_size": eps, "checked": True, "routes": {} if routes is None else routes}
    if is_hmc:
        changes["damping"] = _checks.damping(kernel.damping)
        if momentum is not None:
            momentum = _checks.like("p", p, x)
    else:
        kernel.mh.check_langevin_run(x)
        changes["proposal"] = kernel.mh.proposal_out(x)
    return dataclasses.replace(kernel, **changes), x, momentum, PhiloxKey(seed, key.offset, chain_offset)


def run_corrector(model, x, *, momentum, t, step_size, spec: CorrectorSpec, key: PhiloxKey,
                  fused: bool, mh: MHTest | None = None, routes: dict | None = None,
                  accepted: list | None = None) -> CorrectorResult:
    """spec.n_steps corrector moves at time t from x: the model's fused whole-move kernel when `fused`
    (the HMC momentum then starts at 0 inside the kernel), else the generic kernel's steps with the
    momentum carried in. Counts the score evaluations in the counting model. The generic moves also
    return the score of the final x at t, which the last move holds (the proposal's score when it was
    accepted, the kept state's when not): a reverse-SDE step from (x, t) reuses it instead of calling
    the model again; the fused kernels and a run of no moves return None. `mh`: the generic moves' MH piece
    (`make_kernel`); `routes`: the ops' functions chosen so far in the sampler's run (`checked_kernel`);
    `accepted`: a list the generic moves append their (B,) accept masks to, left for the caller to count
    (annealed_mcmc's `chunk_values`; the result's rate is then None), else they are counted here, by chunks of
    ACCEPT_CHUNK moves (`count_accepted`)."""
    B = x.shape[0]
    if spec.n_steps == 0:
        return CorrectorResult(x, momentum, torch.zeros(B, dtype=x.dtype, device=x.device), key.offset)
    if fused:
        x, rate = fused_corrector(model.model)(x, t, step_size, spec, key)
        model.calls += B * spec.score_evals_per_chain()
        return CorrectorResult(x, momentum, rate, key.offset + spec.n_steps)
    kernel, x, momentum, key = checked_kernel(make_kernel(model, t, step_size, spec, mh), x, momentum, key,
                                              spec.n_steps, routes)
    state = kernel.init(x, momentum)
    n_acc, masks = None, [] if accepted is None else accepted
    for m in range(spec.n_steps):
        state, info = kernel.step(state, key.move(m))
        masks.append(info.accepted)
        if accepted is None and len(masks) == ACCEPT_CHUNK:
            n_acc = count_accepted(masks, n_acc)
            masks.clear()
    rate = None
    if accepted is None:  # the per-chain acceptance rate over the run's moves
        if masks:
            n_acc = count_accepted(masks, n_acc)
        rate = n_acc.to(x.dtype) / spec.n_steps
    return CorrectorResult(state.x, state.momentum, rate, key.offset + spec.n_steps, state.score)


ACCEPT_CHUNK = 16  # moves whose accept masks (B bools each) run_corrector keeps before counting them (a caller's
# accepted= list keeps all of its run's, for the caller to count)


def count_accepted(accepted: list, n_acc: torch.Tensor | None) -> torch.Tensor:
    """n_acc + the number of True per chain in the (B,) bool masks `accepted` (n_acc None: 0), as int32: two
    torch ops per chunk of moves instead of one mixed-dtype add per move (each op after a network call costs
    ~20 us on a loaded CPU, benchmarks/RESULTS.md)."""
    counts = torch.stack(accepted).sum(0, dtype=torch.int32)
    return counts if n_acc is None else n_acc.add_(counts)
