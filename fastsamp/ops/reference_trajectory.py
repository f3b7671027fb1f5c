"""The PyTorch reference of the trajectory family (docs/backend-contract.md, op 9 and the policy ops): the
Euler–Maruyama transition with its log-densities and their gradients, and the DriftNet policy's rollout and log p_F.
Backend signatures as in `reference` (which re-exports these: the "torch" backend is that module)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import _ieee
from . import random as _rng


def em_step_logprob(x, drift, log_var, x_next, noise, seed, offset, chain_offset, h, s2, e2, c, b2):
    """Euler–Maruyama transition and its log-densities (docs/backend-contract.md, op 9).

    s² = s2·e^{log_var} (model step variance), q² = s² + e2 (sampling variance):
    x_next = x + h·drift + q ξ unless given; v = x_next − x − h·drift, u = x − c·x_next;
    log_pf = Σ −½(v²/s² + log 2π s²), log_pb = Σ −½(u²/b2 + log 2π b2) (0 when b2 = 0).
    """
    var = torch.full_like(x, _ieee.rounded(s2, x.dtype)) if log_var is None else s2 * torch.exp(log_var)
    mean = x + h * drift
    if x_next is None:
        if noise is None:
            noise = _rng.philox_normal(seed, offset, x.shape[0], x.shape[1], x.dtype, x.device, chain_offset)
        x_next = mean + torch.sqrt(var + e2) * noise
    v = x_next - mean
    log_pf = -0.5 * (v * v / var + torch.log(2 * math.pi * var)).sum(-1)
    if b2 == 0.0:
        log_pb = torch.zeros_like(log_pf)
    else:
        u = x - c * x_next
        log_pb = -0.5 * (u * u / b2 + _ieee.log(2 * math.pi * b2)).sum(-1)
    return x_next, log_pf, log_pb


def em_step_logprob_backward(x, drift, log_var, x_next, g_x_next, g_log_pf, g_log_pb, h, s2, e2, c, b2, reparam,
                             want_g_x_next):
    """Gradients of em_step_logprob w.r.t. (x, drift, log_var, x_next).

    With G = g_x_next − g_pf·v/s² + g_pb·c·u/b2 (the total gradient reaching x_next):
    g_x = g_pf·v/s² − g_pb·u/b2 + R·G,  g_drift = h·(g_pf·v/s² + R·G),
    g_log_var = g_pf·(½v²/s² − ½) + R·G·½ s² v/q², where R = 1 when x_next was sampled by
    reparameterisation (x_next = x + h·drift + qξ) and 0 when it is a constant; g_x_next = G.
    """
    var = s2 if log_var is None else s2 * torch.exp(log_var)
    v = x_next - x - h * drift
    gpf, gpb = g_log_pf[:, None], g_log_pb[:, None]
    a = gpf * v / var
    total = -a if g_x_next is None else g_x_next - a
    g_x = a
    if b2 != 0.0:
        w = gpb * (x - c * x_next) / b2
        g_x = g_x - w
        total = total + c * w
    if reparam:
        g_x = g_x + total
        a = a + total
    g_drift = h * a
    g_log_var = None
    if log_var is not None:
        g_log_var = gpf * (0.5 * v * v / var - 0.5)
        if reparam:
            g_log_var = g_log_var + total * 0.5 * var * v / (var + e2)
    return g_x, g_drift, g_log_var, (total if want_g_x_next else None)


# ---------------------------------------------------------------- the DriftNet policy (trajectory family)
def gelu_deriv(z):
    """gelu'(z) = Φ(z) + z φ(z) (exact GELU), the kept act'(z_k) of the policy and of mlp_net_train."""
    return 0.5 * (1 + torch.erf(z * math.sqrt(0.5))) + z * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _policy_drift(x, temb_rows, params, clip, kept=None):
    """clamp((W_o u_L + b_o)[:, :D], ±clip) with u_0 = gelu(W_s x + b_s + temb), u_k = gelu(W_k u_{k−1} + b_k);
    params = [W_s, b_s, W_o, b_o, W_1, b_1, ..., W_L, b_L] (the DriftNet layers, exact GELU). `kept` (a list):
    appended the activations the rollout keeps, (2(L+1), B, H): u_0 .. u_L, gelu'(z_0) .. gelu'(z_L)."""
    ws, bs, wo, bo, *hidden = params
    zs = [F.linear(x, ws, bs) + temb_rows]
    us = [F.gelu(zs[0])]
    for w, b in zip(hidden[0::2], hidden[1::2]):
        zs.append(F.linear(us[-1], w, b))
        us.append(F.gelu(zs[-1]))
    if kept is not None:
        kept.append(torch.stack(us + [gelu_deriv(z) for z in zs]))
    return F.linear(us[-1], wo, bo)[:, :x.shape[1]].clamp(-clip, clip)


def policy_rollout(x0, temb, params, ts, batch_size, sigma, h, explore, clip, seed, chain_offset, n_threads,
                   keep_activations):
    """T = len(temb) steps of em_step_logprob (log_var = None) with the policy's drift at (x_i, temb[i]),
    t_i = ts[i], ξ_i the Philox draw (seed, offset = i); x_0 = x0 or 0. Returns states (T+1, B, D),
    log_pf, log_pb (B, T) and with keep_activations the hidden activations of every step (act_hidden
    (T, 2(L+1), B, H): u_k, then gelu'(z_k)), else None. (n_threads: the compiled kernels' thread count, unused
    here.)"""
    D = params[0].shape[1]
    x = torch.zeros(batch_size, D, dtype=temb.dtype, device=temb.device) if x0 is None else x0
    s2 = sigma * sigma * h
    states, log_pf, log_pb, kept = [x], [], [], [] if keep_activations else None
    for i in range(temb.shape[0]):
        t = float(ts[i])
        c = _ieee.div(t, t + h)
        x, lpf, lpb = em_step_logprob(x, _policy_drift(x, temb[i:i + 1], params, clip, kept), None, None, None, seed,
                                      i, chain_offset, h, s2, explore * explore, c, s2 * c)
        states.append(x)
        log_pf.append(lpf)
        log_pb.append(lpb)
    act_hidden = torch.stack(kept) if keep_activations else None
    return torch.stack(states), torch.stack(log_pf, 1), torch.stack(log_pb, 1), act_hidden


def policy_log_pf(states, temb, params, sigma, h, clip, n_threads):
    """log p_F (B, T) of the transitions states[i] → states[i+1] (one batched network call; differentiable):
    −½ Σ_d (v²/s² + log 2π s²), v = x_{i+1} − x_i − h·drift(x_i, temb[i]), s² = σ²h."""
    T, B, D = states.shape[0] - 1, states.shape[1], states.shape[2]
    x = states[:-1].reshape(T * B, D)
    drift = _policy_drift(x, temb[:, None].expand(T, B, temb.shape[1]).reshape(T * B, temb.shape[1]), params, clip)
    s2 = sigma * sigma * h
    v = states[1:].reshape(T * B, D) - x - h * drift
    return (-0.5 * (v * v / s2 + _ieee.log(2 * math.pi * s2)).sum(-1)).view(T, B).T
