"""Reverse-time SDE stepping."""
from __future__ import annotations

import torch

from ..schedules import VE, VP, reverse_em_coefficients
from . import _checks, _dispatch, _ieee


def _check_schedule(schedule):
    if not isinstance(schedule, (VP, VE)):
        raise TypeError(f"schedule must be a fastsamp.schedules.VP or VE, got {type(schedule).__name__}")


def _run_into(fn, out, *args):
    """fn(*args, out=out): the result written into `out` (a fresh tensor when out is None).

    A compiled kernel writes out's memory behind autograd's back, so its version counter is
    bumped as torch's in-place ops do (a graph that saved it then refuses to backpropagate);
    a neg-bit view is written through torch's copy, which honours the bit. Under torch.compile tracing fn
    is the registered op, which copies its result into `out` itself."""
    if out is None or torch.compiler.is_compiling():
        return fn(*args, out=out)
    if out.is_neg():
        return out.copy_(fn(*args, out=None))
    fn(*args, out=out)
    written(fn, out)
    return out


def written(fn, *outs):
    """Bump the version counter of the `outs` (None skipped) that backend function fn wrote in eager: a compiled
    kernel writes them behind autograd's back (the reference writes through torch's own ops; under tracing the
    registered op copies its result in)."""
    if not _dispatch.is_reference(fn) and not torch.compiler.is_compiling():
        for out in outs:
            if out is not None:
                torch.autograd.graph.increment_version(out)


def em_coefficients(schedule, t, h, dtype) -> tuple[float, float, float]:
    """(a, c_s, c_n) of the reverse Euler–Maruyama step t → t − h (`schedules.reverse_em_coefficients`), with t in
    [0, 1] and h > 0 checked and the coefficients finite in `dtype`: the checks of `reverse_sde_step`, which
    annealed_mcmc's predictor makes once per run."""
    t = _checks.finite_float("t", t)
    h = _checks.finite_float("h", h, positive=True, dtype=dtype)
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"t must be in [0, 1], got {t}")
    a, c_s, c_n = reverse_em_coefficients(schedule, t, h)
    _checks.coefficients(dtype, "h", a=a, c_s=c_s, c_n=c_n)
    return a, c_s, c_n


def reverse_sde_step(x, score, *, t, h, schedule, noise=None, seed=None, offset=0, chain_offset=0, extra_drift=None,
                     out=None, backend="auto"):
    """One reverse Euler–Maruyama step from t to t − h:

    x ← x + h[−f(t) x + g(t)² (score + extra_drift)] + g(t) √h ξ

    (VP: −f = β/2, g² = β; VE: f = 0, g² = dσ²/dt). ξ is `noise` if given, else the
    Philox draw (seed, offset) of global chains chain_offset + b; with neither, a seed is
    drawn from torch's generator. `out` (B, D) receives the result (it may be `x` itself: an
    in-place update, no allocation).
    """
    x = _checks.state("x", x)
    score = _checks.like("score", score, x)
    if extra_drift is not None:
        extra_drift = _checks.like("extra_drift", extra_drift, x)
    _check_schedule(schedule)
    a, c_s, c_n = em_coefficients(schedule, t, h, x.dtype)
    noise, seed, offset = _checks.noise_or_seed(noise, seed, offset, x)
    chain_offset = _checks.chain_offset(chain_offset, x.shape[0], x.device)
    out = _checks.output(out, x, x=x, score=score, extra_drift=extra_drift, noise=noise)
    fn = _dispatch.route(backend, "sde_step", x, score, extra_drift, noise)
    return _run_into(fn, out, x, score, extra_drift, noise, seed, offset, chain_offset, a, c_s, c_n)


def guided_sde_step(x, score, score_shift, v, *, t, h, schedule, fd_eps, guidance=1.0, noise=None, seed=None,
                    offset=0, chain_offset=0, out=None, backend="auto"):
    """Reverse Euler–Maruyama step t → t − h whose score is s + g, with the training-free
    importance-sampling guidance (Kim et al.)

        g = w [ v/α_t + σ_t²/(ε α_t) (s(x + ε v, t) − s(x, t)) ],   v = ∇log l(x̂₀),

    the chain rule through the Tweedie denoiser x̂₀ = (x + σ_t² s)/α_t with the Hessian-vector
    product by a finite difference of the score (`score_shift` = s(x + ε v, t), ε = fd_eps).
    w = `guidance` (a guidance-strength schedule value). One fused pass.
    """
    x = _checks.state("x", x)
    score = _checks.like("score", score, x)
    score_shift = _checks.like("score_shift", score_shift, x)
    v = _checks.like("v", v, x)
    _check_schedule(schedule)
    t = _checks.finite_float("t", t)
    h = _checks.finite_float("h", h, positive=True, dtype=x.dtype)
    fd_eps = _checks.finite_float("fd_eps", fd_eps, positive=True, dtype=x.dtype)
    guidance = _checks.finite_float("guidance", guidance, nonnegative=True)
    if not 0.0 < t <= 1.0:
        raise ValueError(f"t must be in (0, 1], got {t}")
    noise, seed, offset = _checks.noise_or_seed(noise, seed, offset, x)
    chain_offset = _checks.chain_offset(chain_offset, x.shape[0], x.device)
    out = _checks.output(out, x, x=x, score=score, score_shift=score_shift, v=v, noise=noise)
    a, c_s, c_n = reverse_em_coefficients(schedule, t, h)
    alpha, sigma2 = schedule.alpha(t), schedule.sigma2(t)
    if _checks.validating() and not alpha > 0.0:
        raise ValueError(f"guided_sde_step needs the schedule's alpha(t) > 0 (the denoiser divides by it), got "
                         f"alpha({t}) = {alpha}")
    c_v, c_diff = _ieee.div(guidance, alpha), _ieee.div(guidance * sigma2, fd_eps * alpha)
    _checks.coefficients(x.dtype, "h, fd_eps or guidance", a=a, c_s=c_s, c_v=c_v, c_diff=c_diff, c_n=c_n)
    fn = _dispatch.route(backend, "guided_sde_step", x, score, score_shift, v, noise)
    return _run_into(fn, out, x, score, score_shift, v, noise, seed, offset, chain_offset, a, c_s, c_v, c_diff, c_n)
