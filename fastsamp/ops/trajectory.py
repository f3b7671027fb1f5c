"""Euler–Maruyama transitions with their forward/backward log-densities, for training
diffusion samplers (PIS, trajectory balance, VarGrad, SubTB) on unnormalised densities."""
from __future__ import annotations

import torch

from .. import backends
from . import _checks


class _EMStepLogProb(torch.autograd.Function):
    """Fused forward kernel; the backward is a second fused kernel (once differentiable)."""

    @staticmethod
    def forward(ctx, x, drift, log_var, x_next, backend, noise, seed, offset, chain_offset, h, s2, e2, c, b2, reparam):
        fwd = backends.resolve(backend, "em_step_logprob", x.device)
        sampled = x_next is None
        y, log_pf, log_pb = fwd(x, drift, log_var, x_next, noise, seed, offset, chain_offset, h, s2, e2, c, b2)
        ctx.save_for_backward(x, drift, log_var, y)
        ctx.args = (backend, h, s2, e2, c, b2, reparam and sampled, sampled)
        if sampled:
            if not reparam:
                ctx.mark_non_differentiable(y)
            return y, log_pf, log_pb
        return log_pf, log_pb

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        backend, h, s2, e2, c, b2, reparam, sampled = ctx.args
        x, drift, log_var, y = ctx.saved_tensors
        g_y, g_pf, g_pb = grads if sampled else (None,) + grads
        g_pf = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device) if g_pf is None else g_pf.contiguous()
        g_pb = torch.zeros_like(g_pf) if g_pb is None else g_pb.contiguous()
        g_y = g_y.contiguous() if (reparam and g_y is not None) else None
        bwd = backends.resolve(backend, "em_step_logprob_backward", x.device)
        want_g_y = not sampled and ctx.needs_input_grad[3]
        g_x, g_drift, g_log_var, g_x_next = bwd(x, drift, log_var, y, g_y, g_pf, g_pb, h, s2, e2, c, b2, reparam,
                                                want_g_y)
        return (g_x, g_drift, g_log_var, g_x_next) + (None,) * 11


def em_step_logprob(x, drift, *, sigma, t, h, noise=None, seed=None, offset=0, chain_offset=0, log_var=None,
                    explore=0.0, x_next=None, reparam=None, backend="auto"):
    """One Euler–Maruyama step t → t + h of dx = drift dt + σ e^{log_var/2} dW with the
    log-densities that trajectory objectives need, in one fused pass:

        x_next = x + h·drift + √(σ²h e^{log_var} + explore²) ξ
        log_pf = log N(x_next; x + h·drift, σ²h e^{log_var})          (per chain, summed over D)
        log_pb = log N(x; (t/(t+h)) x_next, σ² h t/(t+h))              (Brownian bridge; 0 at t = 0)

    ξ is `noise` if given, else the Philox draw (seed, offset) of global chains chain_offset + b.
    `explore` ≥ 0 widens the sampling noise only (off-policy exploration); log_pf stays the model's density.
    With `x_next` given, nothing is sampled: the transition x → x_next is evaluated (for
    trajectories drawn backwards from a replay buffer).

    Autograd: differentiable in x, drift, log_var (and a given x_next). `reparam` (default
    True when sampling) makes x_next a differentiable function of x, drift, log_var (the
    path-space KL of PIS); reparam=False treats the sample as a constant (trajectory balance
    and the other off-policy objectives). Returns (x_next, log_pf, log_pb).
    """
    x = _checks.state("x", x)
    drift = _checks.like("drift", drift, x)
    if log_var is not None:
        log_var = _checks.like("log_var", log_var, x)
    sigma = _checks.finite_float("sigma", sigma, positive=True, dtype=x.dtype)
    t = _checks.finite_float("t", t, nonnegative=True, dtype=x.dtype)
    h = _checks.finite_float("h", h, positive=True, dtype=x.dtype)
    explore = _checks.finite_float("explore", explore, nonnegative=True, dtype=x.dtype)
    if x_next is not None:
        x_next = _checks.like("x_next", x_next, x)
        if noise is not None or seed is not None:
            raise ValueError("give x_next (evaluate a transition) or noise/seed (sample one), not both")
        if reparam:
            raise ValueError("reparam=True needs a sampled x_next; a given x_next is a constant of the step")
        if explore != 0.0:
            raise ValueError("explore only widens sampling; it must be 0 when x_next is given")
        reparam = False
        seed, offset = _checks.seed_offset(0, offset)
    else:
        noise, seed, offset = _checks.noise_or_seed(noise, seed, offset, x)
        reparam = True if reparam is None else bool(reparam)
    chain_offset = _checks.chain_offset(chain_offset, x.shape[0])
    s2 = sigma * sigma * h
    c = t / (t + h)
    b2 = s2 * c
    _checks.in_dtype("sigma**2 * h", s2, x.dtype, positive=True)
    _checks.coefficients(x.dtype, "sigma, h or explore", explore2=explore * explore, b2=b2)
    out = _EMStepLogProb.apply(x, drift, log_var, x_next, backend, noise, seed, offset, chain_offset, h, s2,
                               explore * explore, c, b2, reparam)
    return tuple(out) if x_next is None else (x_next,) + tuple(out)
