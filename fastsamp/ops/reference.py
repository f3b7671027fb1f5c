"""Pure-PyTorch reference of every op (docs/backend-contract.md), the oracle
that every compiled backend is tested against and the fallback backend.

Functions take the backend signatures: validated, contiguous tensors of one
dtype and device; `step_size` as a (B,) tensor; `noise` a (B, D) tensor or
None (then ξ is the Philox draw (seed, offset) of global chains chain_offset + b).
"""
from __future__ import annotations

import math

import torch
import torch.autograd.forward_ad as _fwad
import torch.nn.functional as F

from ..backends._abi import proposal_scores
from . import _ieee
from . import random as _rng

normal = _rng.philox_normal    # ξ (B, D) of draw (seed, offset), chains chain_offset + b
uniform = _rng.philox_uniform  # MH uniforms u (B,) of draw (seed, offset), chains chain_offset + b


def _noise(x, noise, seed, offset, chain_offset):
    if noise is not None:
        return noise
    return normal(seed, offset, x.shape[0], x.shape[1], x.dtype, x.device, chain_offset)


def _log_u(x, u, seed, offset, chain_offset):
    """log u of an MH test: of the given u (B,), else of the uniforms of draw (seed, offset)."""
    if u is None:
        u = uniform(seed, offset, x.shape[0], x.dtype, x.device, chain_offset)
    return torch.log(u)


def _dot(a, b):
    return (a * b).sum(-1)


def gmm_score(x, means, log_weights, variances, alpha, sigma2):
    """Score and log-density of Σ_k π_k N(α μ_k, (α² v_k + σ²) I) at x."""
    D = x.shape[1]
    s = alpha * alpha * variances + sigma2  # (K,)
    lw = log_weights - torch.logsumexp(log_weights, 0)
    centred = alpha * means[None, :, :] - x[:, None, :]  # (B, K, D)
    ell = lw - 0.5 * _dot(centred, centred) / s - 0.5 * D * torch.log(2 * math.pi * s)
    logp = torch.logsumexp(ell, 1)
    r = torch.softmax(ell, 1)
    score = torch.einsum("bk,bkd->bd", r / s, centred)
    return score, logp


def sde_step(x, score, extra_drift, noise, seed, offset, chain_offset, a, c_s, c_n, out=None):
    """x_new = a·x + c_s·(score + extra_drift) + c_n·ξ (written into `out` when given)."""
    drift = score if extra_drift is None else score + extra_drift
    x_new = a * x + c_s * drift + c_n * _noise(x, noise, seed, offset, chain_offset)
    return x_new if out is None else out.copy_(x_new)


def guided_sde_step(x, score, score_shift, v, noise, seed, offset, chain_offset, a, c_s, c_v, c_diff, c_n, out=None):
    """x_new = a·x + c_s·(score + c_v·v + c_diff·(score_shift − score)) + c_n·ξ."""
    drift = score + c_v * v + c_diff * (score_shift - score)
    x_new = a * x + c_s * drift + c_n * _noise(x, noise, seed, offset, chain_offset)
    return x_new if out is None else out.copy_(x_new)


def mala_propose(x, score, step_size, noise, seed, offset, chain_offset, out=None):
    """x' = x + ε score + √(2ε) ξ (written into `out` when given)."""
    eps = step_size[:, None]
    x_prop = x + eps * score + torch.sqrt(2 * eps) * _noise(x, noise, seed, offset, chain_offset)
    return x_prop if out is None else out.copy_(x_prop)


def line_points(x, x_prop, n, out=None):
    """(n−1, B, D) interior points x + (i/n)(x' − x), i = 1..n−1 (written into `out` when given)."""
    t = torch.arange(1, n, dtype=x.dtype, device=x.device) / n
    points = x + t[:, None, None] * (x_prop - x)
    return points if out is None else out.copy_(points)


def _select(accepted, a, b):
    return torch.where(accepted[:, None], a, b)


def trapezoid_delta_logp(x, x_prop, score, score_prop, interior):
    """(1/n)[½ s·d + Σ_i s_i·d + ½ s'·d], d = x' − x, n = 1 + len(interior)."""
    d = x_prop - x
    total = 0.5 * (_dot(score, d) + _dot(score_prop, d))
    n = 1
    if interior is not None and interior.shape[0] > 0:
        total = total + _dot(interior, d).sum(0)
        n += interior.shape[0]
    return total / n


def mala_log_q_ratio(x, x_prop, score, score_prop, eps):
    """log q(x|x') − log q(x'|x) for the MALA proposal with step ε (B,)."""
    d = x_prop - x
    fwd = d - eps[:, None] * score
    bwd = d + eps[:, None] * score_prop
    return (_dot(fwd, fwd) - _dot(bwd, bwd)) / (4 * eps)


def score_mh_accept(x, x_prop, score, score_prop, step_size, u, interior, seed, offset, chain_offset, x_out=None,
                    score_out=None):
    """(x_new, score_new, accepted, log_alpha); x_new and score_new written into x_out / score_out when given."""
    score_prop, interior = proposal_scores(score_prop, interior, x.shape[0])  # (m + 1)·B rows: s(x') and the sets
    log_alpha = trapezoid_delta_logp(x, x_prop, score, score_prop, interior) + mala_log_q_ratio(
        x, x_prop, score, score_prop, step_size
    )
    accepted = _log_u(x, u, seed, offset, chain_offset) < log_alpha
    x_new, score_new = _select(accepted, x_prop, x), _select(accepted, score_prop, score)
    return (x_new if x_out is None else x_out.copy_(x_new),
            score_new if score_out is None else score_out.copy_(score_new), accepted, log_alpha)


def energy_mh_accept(x, x_prop, score, score_prop, logp, logp_prop, step_size, u, seed, offset, chain_offset):
    """MALA MH with the exact log-density difference: log α = logp' − logp + log q ratio."""
    log_alpha = logp_prop - logp + mala_log_q_ratio(x, x_prop, score, score_prop, step_size)
    accepted = _log_u(x, u, seed, offset, chain_offset) < log_alpha
    return (_select(accepted, x_prop, x), _select(accepted, score_prop, score), torch.where(accepted, logp_prop, logp),
            accepted, log_alpha)


def leapfrog(x, p, score, step_size):
    """Half kick and drift: p½ = p + (ε/2) s(x), x_next = x + ε p½."""
    eps = step_size[:, None]
    p_half = p + 0.5 * eps * score
    return x + eps * p_half, p_half


def leapfrog_finish(x, x_next, p_half, score, score_next, step_size, delta_logp):
    """Second half kick and one trapezoid segment of ΔlogP along the leapfrog path."""
    p_next = p_half + 0.5 * step_size[:, None] * score_next
    return p_next, delta_logp + 0.5 * _dot(score + score_next, x_next - x)


def hmc_accept(x, x_prop, score, score_prop, p, p_prop, delta_logp, u, seed, offset, chain_offset):
    log_alpha = delta_logp - 0.5 * _dot(p_prop, p_prop) + 0.5 * _dot(p, p)
    accepted = _log_u(x, u, seed, offset, chain_offset) < log_alpha
    return _select(accepted, x_prop, x), _select(accepted, score_prop, score), accepted, log_alpha


def momentum_refresh(p, damping, noise, seed, offset, chain_offset):
    """p' = damping·p + √(1 − damping²) ξ."""
    return damping * p + math.sqrt(1.0 - damping * damping) * _noise(p, noise, seed, offset, chain_offset)


MH_SCORE, MH_ENERGY, MH_NONE = 0, 1, 2


def _philox_draws(x, seed, offset, chain_offset):
    """draw(m) -> (ξ, u) of move m: the Philox draws (seed, offset + m) of the whole-move kernels."""
    B, D = x.shape

    def draw(m):
        return (normal(seed, offset + m, B, D, x.dtype, x.device, chain_offset),
                uniform(seed, offset + m, B, x.dtype, x.device, chain_offset))
    return draw


def _mala_step(x, score, logp, xi, u, evaluate, step_size, n_trapezoid, mh):
    """One MALA move from (x, score, logp) with the draws (ξ, u) on evaluate(z) -> (score, log p or None):
    x' = x + ε s + √(2ε) ξ, log α = ΔlogP + log q(x|x') − log q(x'|x) with ΔlogP = logp' − logp (MH_ENERGY)
    or the score trapezoid with n_trapezoid sub-intervals (MH_SCORE); no test (MH_NONE).
    Returns (x, score, logp, accepted)."""
    x_prop = mala_propose(x, score, step_size, xi, 0, 0, 0)
    score_prop, logp_prop = evaluate(x_prop)
    if mh == MH_NONE:
        accepted = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    else:
        if mh == MH_ENERGY:
            delta = logp_prop - logp
        else:
            pts = line_points(x, x_prop, n_trapezoid)
            interior = evaluate(pts.reshape(-1, x.shape[1]))[0].reshape(pts.shape)
            delta = trapezoid_delta_logp(x, x_prop, score, score_prop, interior)
        accepted = torch.log(u) < delta + mala_log_q_ratio(x, x_prop, score, score_prop, step_size)
    logp = logp_prop if logp is None else torch.where(accepted, logp_prop, logp)
    return _select(accepted, x_prop, x), _select(accepted, score_prop, score), logp, accepted


def _hmc_step(x, score, logp, p, xi, u, evaluate, step_size, n_leapfrog, mh, damping):
    """One HMC move from (x, score, logp, momentum p) with the draws (ξ, u) on evaluate(z) -> (score, log p or
    None): p0 = damping·p + √(1 − damping²) ξ, n_leapfrog leapfrog steps, log α = ΔlogP − ½|p_L|² + ½|p0|² with
    ΔlogP the trapezoid along the path (MH_SCORE) or logp(end) − logp (MH_ENERGY); no test (MH_NONE);
    rejected: x stays and p = −p0. Returns (x, score, logp, p, accepted)."""
    p0 = momentum_refresh(p, damping, xi, 0, 0, 0)
    x_l, s_l, p_l, logp_l = x, score, p0, logp
    delta = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for _ in range(n_leapfrog):
        x_next, p_half = leapfrog(x_l, p_l, s_l, step_size)
        s_next, logp_l = evaluate(x_next)
        p_l, delta = leapfrog_finish(x_l, x_next, p_half, s_l, s_next, step_size, delta)
        x_l, s_l = x_next, s_next
    if mh == MH_NONE:
        accepted = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    else:
        if mh == MH_ENERGY:
            delta = logp_l - logp
        accepted = torch.log(u) < delta - 0.5 * _dot(p_l, p_l) + 0.5 * _dot(p0, p0)
    logp = logp_l if logp is None else torch.where(accepted, logp_l, logp)
    # rejected: momentum flip (exact with partial refresh)
    return _select(accepted, x_l, x), _select(accepted, s_l, score), logp, _select(accepted, p_l, -p0), accepted


def _mala_moves(x, evaluate, step_size, n_steps, n_trapezoid, mh, draw):
    """n_steps `_mala_step`s, move m with the draws draw(m) -> (ξ, u); (x, accept rate)."""
    score, logp = evaluate(x)
    n_acc = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for m in range(n_steps):
        xi, u = draw(m)
        x, score, logp, accepted = _mala_step(x, score, logp, xi, u, evaluate, step_size, n_trapezoid, mh)
        n_acc = n_acc + accepted.to(x.dtype)
    return x, n_acc / max(n_steps, 1)


def _hmc_moves(x, evaluate, step_size, n_steps, n_leapfrog, mh, damping, draw):
    """n_steps `_hmc_step`s from p = 0, move m with the draws draw(m) -> (ξ, u); (x, accept rate)."""
    score, logp = evaluate(x)
    p = torch.zeros_like(x)
    n_acc = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for m in range(n_steps):
        xi, u = draw(m)
        x, score, logp, p, accepted = _hmc_step(x, score, logp, p, xi, u, evaluate, step_size, n_leapfrog, mh,
                                                damping)
        n_acc = n_acc + accepted.to(x.dtype)
    return x, n_acc / max(n_steps, 1)


def _gmm_evaluate(means, log_weights, variances, alpha, sigma2, score_fn=None):
    """z -> score_fn(z, ...) (default gmm_score): (score, log p) of the mixture."""
    score_fn = score_fn or gmm_score
    return lambda z: score_fn(z, means, log_weights, variances, alpha, sigma2)


def mala_move(x, score, logp, xi, u, means, log_weights, variances, step_size, n_trapezoid, alpha, sigma2, mh,
              score_fn=None):
    """One MALA move of gmm_mala from (x, score, logp) with the draws (ξ, u): (x, score, logp, accepted).
    `score_fn`: another form of gmm_score (the benchmarks' baselines)."""
    return _mala_step(x, score, logp, xi, u, _gmm_evaluate(means, log_weights, variances, alpha, sigma2, score_fn),
                      step_size, n_trapezoid, mh)


def gmm_mala(x, means, log_weights, variances, step_size, n_steps, n_trapezoid, alpha, sigma2,
             seed, offset, chain_offset, mh, *, draw=None):
    """n_steps MALA moves on a Gaussian mixture with score/energy/no MH; (x, accept rate).
    `draw(m) -> (ξ, u)` replaces the Philox draws of move m (the benchmarks' torch-RNG baseline)."""
    return _mala_moves(x, _gmm_evaluate(means, log_weights, variances, alpha, sigma2), step_size, n_steps,
                       n_trapezoid, mh, draw or _philox_draws(x, seed, offset, chain_offset))


def hmc_move(x, score, logp, p, xi, u, means, log_weights, variances, step_size, n_leapfrog, alpha, sigma2, mh,
             damping, score_fn=None):
    """One HMC move of gmm_hmc from (x, score, logp, momentum p) with the draws (ξ, u):
    (x, score, logp, p, accepted). `score_fn` as in mala_move."""
    return _hmc_step(x, score, logp, p, xi, u, _gmm_evaluate(means, log_weights, variances, alpha, sigma2, score_fn),
                     step_size, n_leapfrog, mh, damping)


def gmm_hmc(x, means, log_weights, variances, step_size, n_steps, n_leapfrog, alpha, sigma2,
            seed, offset, chain_offset, mh, damping, *, draw=None):
    """n_steps HMC moves (n_leapfrog leapfrog steps each, momentum refresh with `damping`)
    on a Gaussian mixture with score/energy/no MH; (x, accept rate).
    `draw(m) -> (ξ, u)` replaces the Philox draws of move m."""
    return _hmc_moves(x, _gmm_evaluate(means, log_weights, variances, alpha, sigma2), step_size, n_steps,
                      n_leapfrog, mh, damping, draw or _philox_draws(x, seed, offset, chain_offset))


# ---------------------------------------------------------------- the Euler–Maruyama step and the DriftNet policy
# (trajectory family), in reference_trajectory.py; here too, where the backends look the ops up
from .reference_trajectory import em_step_logprob as em_step_logprob  # noqa: E402
from .reference_trajectory import em_step_logprob_backward as em_step_logprob_backward  # noqa: E402
from .reference_trajectory import gelu_deriv  # noqa: E402
from .reference_trajectory import policy_log_pf as policy_log_pf  # noqa: E402
from .reference_trajectory import policy_rollout as policy_rollout  # noqa: E402

# ---------------------------------------------------------------- score networks (mlp family)
_MLP_ACTIVATIONS = {0: F.gelu, 1: F.silu}  # the activation codes of fastsamp.ops.mlp: 0 GELU (exact), 1 SiLU


def _silu_deriv(z):
    """silu'(z) = σ(z)(1 + z(1 − σ(z)))."""
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


_MLP_DERIVATIVES = {0: gelu_deriv, 1: _silu_deriv}  # act' of each code (mlp_net_train's kept activations)


def _nets(params, dims, scalars, energy):
    """Per network of the flat backend lists: (energy flag, f: x -> the network's output, α m, v)."""
    from .mlp import _unflatten  # here: fastsamp.ops.mlp imports _dispatch, which imports this module
    for i, net in enumerate(_unflatten(params, dims, scalars)):
        freq, mean = net.tensors[:2]
        yield (bool(energy[i]) if energy else False, _fourier_mlp(freq, net.tensors[2:], net.act, net.t),
               net.alpha * mean, net.alpha * net.alpha * net.data_var + net.sigma2)


def _fourier_mlp(freq, layers, act, t):
    """f(x) = mlp_net([x, sin(t ω), cos(t ω)]) of the packed layers (W_in, b_in, W_out, b_out, W_1, b_1, ...)."""
    def f(x):
        tw = torch.full((x.shape[0], 1), t, dtype=x.dtype, device=x.device) * freq
        return mlp_net(torch.cat([x, torch.sin(tw), torch.cos(tw)], 1), layers, act)
    return f


_NO_ENERGY_JVP = ("mlp_energy (and mlp_energy_mala / mlp_energy_hmc): an energy network's score is an autograd "
                  "gradient here, which drops forward-mode tangents; forward mode (torch.func.jvp / jacfwd, "
                  "forward_ad) through it is not supported")


def _energy_net(x, f, am, v):
    """(score, log p) of an energy network: E = |x − α m − √v f(x)|²/(2v), log p = −E, score = −∇E by autograd
    (differentiable when grad is on and x or a weight requires grad)."""
    graph = torch.is_grad_enabled()
    dual = _fwad._current_level >= 0  # forward mode: the autograd score would drop a tangent of x or a weight
    if dual and _fwad.unpack_dual(x).tangent is not None:
        raise NotImplementedError(_NO_ENERGY_JVP)
    with torch.inference_mode(False), torch.enable_grad():
        xg = x if x.requires_grad else x.detach().clone().requires_grad_(True)
        energy = ((xg - am - _ieee.sqrt(v) * f(xg)) ** 2).sum(1) / (2 * v)
        if dual and _fwad.unpack_dual(energy).tangent is not None:
            raise NotImplementedError(_NO_ENERGY_JVP)
        (g,) = torch.autograd.grad(energy.sum(), xg, create_graph=graph and energy.requires_grad)
    return (-g, -energy) if graph else (-g.detach(), -energy.detach())


def _net_sum(x, params, dims, scalars, energy, means, log_weights, variances, mix_alpha, mix_sigma2, logp=False):
    """Σ_i s_i(x) (+ the mixture's score when means is given) and, with logp, Σ_i log p_i(x) (every network an
    energy network; else None): a score network's s = (α m − x)/v + f(x)/√v (ScoreMLP.forward), an energy
    network's by `_energy_net` (EnergyMLP's)."""
    total, total_lp = None, None
    for is_energy, f, am, v in _nets(params, dims, scalars, energy):
        if is_energy:
            s, lp = _energy_net(x, f, am, v)
            total_lp = lp if total_lp is None else total_lp + lp
        else:
            s = (am - x) / v + f(x) / _ieee.sqrt(v)
        total = s if total is None else total + s
    if means is not None:
        s, lp = gmm_score(x, means, log_weights, variances, mix_alpha, mix_sigma2)
        total = s if total is None else total + s
        total_lp = lp if total_lp is None else total_lp + lp
    return total, total_lp if logp else None


def mlp_score(x, params, dims, scalars, means, log_weights, variances, mix_alpha, mix_sigma2):
    """Σ_i [(α_i m_i − x)/v_i + f_i([x, sin(t_i ω_i), cos(t_i ω_i)])/√v_i] (+ the mixture's score when means is
    given), v_i = α_i² σ_d,i² + σ_i²: the ScoreMLP.forward formula per network (fastsamp.ops.mlp)."""
    return _net_sum(x, params, dims, scalars, (), means, log_weights, variances, mix_alpha, mix_sigma2)[0]


def mlp_energy(x, params, dims, scalars, energy, means, log_weights, variances, mix_alpha, mix_sigma2):
    """(Σ_i s_i, Σ_i log p_i) of energy networks (+ the mixture): EnergyMLP's energy and autograd score."""
    return _net_sum(x, params, dims, scalars, energy, means, log_weights, variances, mix_alpha, mix_sigma2, True)


def mlp_mala(x, params, dims, scalars, means, log_weights, variances, mix_alpha, mix_sigma2, step_size, n_steps,
             n_trapezoid, seed, offset, chain_offset, mh):
    """n_steps MALA moves on the score of mlp_score with score (trapezoid) or no MH; (x, accept rate)."""
    return mlp_energy_mala(x, params, dims, scalars, (), means, log_weights, variances, mix_alpha, mix_sigma2,
                           step_size, n_steps, n_trapezoid, seed, offset, chain_offset, mh)


def mlp_energy_mala(x, params, dims, scalars, energy, means, log_weights, variances, mix_alpha, mix_sigma2, step_size,
                    n_steps, n_trapezoid, seed, offset, chain_offset, mh):
    """n_steps MALA moves on a sum of score and energy networks with score, energy or no MH; (x, accept rate)."""
    evaluate = lambda z: _net_sum(z, params, dims, scalars, energy, means, log_weights, variances,  # noqa: E731
                                  mix_alpha, mix_sigma2, mh == MH_ENERGY)
    return _mala_moves(x, evaluate, step_size, n_steps, n_trapezoid, mh, _philox_draws(x, seed, offset, chain_offset))


def mlp_hmc(x, params, dims, scalars, means, log_weights, variances, mix_alpha, mix_sigma2, step_size, n_steps,
            n_leapfrog, seed, offset, chain_offset, mh, damping):
    """n_steps HMC moves (as gmm_hmc) on the score of mlp_score with score (trapezoid) or no MH; (x, accept rate)."""
    return mlp_energy_hmc(x, params, dims, scalars, (), means, log_weights, variances, mix_alpha, mix_sigma2,
                          step_size, n_steps, n_leapfrog, seed, offset, chain_offset, mh, damping)


def mlp_energy_hmc(x, params, dims, scalars, energy, means, log_weights, variances, mix_alpha, mix_sigma2, step_size,
                   n_steps, n_leapfrog, seed, offset, chain_offset, mh, damping):
    """n_steps HMC moves on a sum of score and energy networks with score, energy or no MH; (x, accept rate)."""
    evaluate = lambda z: _net_sum(z, params, dims, scalars, energy, means, log_weights, variances,  # noqa: E731
                                  mix_alpha, mix_sigma2, mh == MH_ENERGY)
    return _hmc_moves(x, evaluate, step_size, n_steps, n_leapfrog, mh, damping,
                      _philox_draws(x, seed, offset, chain_offset))


def _mlp_activation(act):
    """The activation of code `act` (fastsamp.ops.mlp.ACTIVATIONS), else a ValueError naming act."""
    a = _MLP_ACTIVATIONS.get(act)
    if a is None:
        raise ValueError(f"act must be an activation code {tuple(_MLP_ACTIVATIONS)} of fastsamp.ops.mlp.ACTIVATIONS, "
                         f"got {act!r}")
    return a


def mlp_net(x, params, act):
    """W_out u_L + b_out, u_0 = act(W_in x + b_in), u_k = act(W_k u_{k−1} + b_k); params = [W_in, b_in, W_out, b_out,
    W_1, b_1, ..., W_L, b_L] (`_layers.packed`), act a code of fastsamp.ops.mlp.ACTIVATIONS (differentiable)."""
    w_in, b_in, w_out, b_out, *hidden = params
    a = _mlp_activation(act)
    u = a(F.linear(x, w_in, b_in))
    for w, b in zip(hidden[0::2], hidden[1::2]):
        u = a(F.linear(u, w, b))
    return F.linear(u, w_out, b_out)


def mlp_net_train(x, params, act):
    """(mlp_net(x), the hidden activations act_hidden (2(L+1), B, H): u_0 .. u_L, then act'(z_0) .. act'(z_L))."""
    w_in, b_in, w_out, b_out, *hidden = params
    a = _mlp_activation(act)
    zs = [F.linear(x, w_in, b_in)]
    us = [a(zs[0])]
    for w, b in zip(hidden[0::2], hidden[1::2]):
        zs.append(F.linear(us[-1], w, b))
        us.append(a(zs[-1]))
    return F.linear(us[-1], w_out, b_out), torch.stack(us + [_MLP_DERIVATIVES[act](z) for z in zs])


def mlp_net_backward(x, params, act, g_out, want_g_x, act_hidden):
    """(∂/∂x of Σ g_out · mlp_net when want_g_x, else None; [∂/∂p of it for p in params]) by torch.func.vjp (act_hidden,
    mlp_net_train's, is not read: the compiled kernels' shortcut)."""
    _, vjp = torch.func.vjp(lambda x_, *p: mlp_net(x_, p, act), x, *params)
    g_x, *g_params = vjp(g_out)
    return (g_x if want_g_x else None), list(g_params)


def mlp_net_lsq(x, params, act, c, k):
    """(the rows' |r_b|², r_b = c_b + k_b mlp_net(x)_b; [∂/∂p of their mean for p in params]) by torch.func.vjp."""
    rows = lambda *p: ((c + k[:, None] * mlp_net(x, p, act)) ** 2).sum(1)  # noqa: E731
    loss, vjp = torch.func.vjp(rows, *params)
    return loss, list(vjp(torch.full_like(loss, 1.0 / max(loss.shape[0], 1))))


def mlp_net_energy_lsq(x, params, act, c, v, sigma, z):
    """(the rows' |σ_b s_b + z_b|², s = −r/v + J_fᵀ r/√v, r = c − √v mlp_net(x), J_f the Jacobian of mlp_net in x's
    first O columns; [∂/∂p of their mean for p in params]) by autograd's double backward (on detached inputs:
    forward mode, which would lose its tangents there, is refused)."""
    if _fwad._current_level >= 0 and any(_fwad.unpack_dual(t).tangent is not None
                                         for t in (x, *params, c, v, sigma, z)):
        raise NotImplementedError("mlp_net_energy_lsq: forward mode (torch.func.jvp / jacfwd, forward_ad) through its "
                                  "double backward is not supported")
    O = c.shape[1]
    with torch.enable_grad():
        ps = [p.detach().requires_grad_(True) for p in params]
        xg = x.detach().requires_grad_(True)
        f = mlp_net(xg, ps, act)
        sq = v.sqrt()[:, None]
        r = c - sq * f
        (jr,) = torch.autograd.grad(f, xg, r, create_graph=True)
        rows = ((sigma[:, None] * (jr[:, :O] / sq - r / v[:, None]) + z) ** 2).sum(1)
        grads = torch.autograd.grad(rows.sum() / max(rows.shape[0], 1), ps)
    return rows.detach(), list(grads)
