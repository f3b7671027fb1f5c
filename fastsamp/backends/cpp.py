"""C++ CPU backend: thin glue from the backend signatures of
docs/backend-contract.md to the `fastsamp._C.cpu_<op>` kernels.

Inputs arrive validated and contiguous (the public ops in `fastsamp.ops` see to
that); outputs are allocated here with `torch.empty` on x's device in x's dtype.
"""
from __future__ import annotations

import torch

from fastsamp import _C

from ._abi import accept_outputs, em_step_grad_outputs, em_step_outputs, move_outputs, score_outputs
from ._abi import dtype_code as _dt
from ._abi import ptr as _p
from ._abi import u64 as _u64

# Every kernel call uses up to torch's intra-op thread count (torch.set_num_threads / OMP_NUM_THREADS);
# small calls run on the calling thread alone (csrc/cpu/runtime.h).
_threads = torch.get_num_threads


def gmm_score(x, means, log_weights, variances, alpha, sigma2):
    B, D = x.shape
    score, logp = score_outputs(x)
    if B > 0:
        _C.cpu_gmm_score(_dt(x), x.data_ptr(), means.data_ptr(), log_weights.data_ptr(), variances.data_ptr(),
                         B, D, means.shape[0], float(alpha), float(sigma2), score.data_ptr(), logp.data_ptr(),
                         _threads())
    return score, logp


def sde_step(x, score, extra_drift, noise, seed, offset, chain_offset, a, c_s, c_n, out=None):
    B, D = x.shape
    out = torch.empty_like(x) if out is None else out
    if x.numel() > 0:
        _C.cpu_sde_step(_dt(x), x.data_ptr(), score.data_ptr(), _p(extra_drift), _p(noise), B, D, _u64(seed),
                        _u64(offset), int(chain_offset), float(a), float(c_s), float(c_n), out.data_ptr(),
                        _threads())
    return out


def guided_sde_step(x, score, score_shift, v, noise, seed, offset, chain_offset, a, c_s, c_v, c_diff, c_n, out=None):
    B, D = x.shape
    out = torch.empty_like(x) if out is None else out
    if x.numel() > 0:
        _C.cpu_guided_sde_step(_dt(x), x.data_ptr(), score.data_ptr(), score_shift.data_ptr(), v.data_ptr(),
                               _p(noise), B, D, _u64(seed), _u64(offset), int(chain_offset), float(a), float(c_s),
                               float(c_v), float(c_diff), float(c_n), out.data_ptr(), _threads())
    return out


def mala_propose(x, score, step_size, noise, seed, offset, chain_offset):
    B, D = x.shape
    out = torch.empty_like(x)
    if x.numel() > 0:
        _C.cpu_mala_propose(_dt(x), x.data_ptr(), score.data_ptr(), step_size.data_ptr(), _p(noise), B, D,
                            _u64(seed), _u64(offset), int(chain_offset), out.data_ptr(), _threads())
    return out


def line_points(x, x_prop, n):
    B, D = x.shape
    out = torch.empty((max(n - 1, 0), B, D), dtype=x.dtype, device=x.device)
    if out.numel() > 0:
        _C.cpu_line_points(_dt(x), x.data_ptr(), x_prop.data_ptr(), B, D, n, out.data_ptr(), _threads())
    return out


def score_mh_accept(x, x_prop, score, score_prop, step_size, u, interior):
    B, D = x.shape
    x_new, score_new, accepted, log_alpha = accept_outputs(x)
    m = 0 if interior is None else interior.shape[0]
    if B > 0:
        _C.cpu_score_mh_accept(_dt(x), x.data_ptr(), x_prop.data_ptr(), score.data_ptr(), score_prop.data_ptr(),
                               step_size.data_ptr(), u.data_ptr(), _p(interior) if m > 0 else 0, m, B, D,
                               x_new.data_ptr(), score_new.data_ptr(), accepted.data_ptr(), log_alpha.data_ptr(),
                               _threads())
    return x_new, score_new, accepted, log_alpha


def leapfrog(x, p, score, step_size):
    B, D = x.shape
    x_next = torch.empty_like(x)
    p_half = torch.empty_like(x)
    if x.numel() > 0:
        _C.cpu_leapfrog(_dt(x), x.data_ptr(), p.data_ptr(), score.data_ptr(), step_size.data_ptr(), B, D,
                        x_next.data_ptr(), p_half.data_ptr(), _threads())
    return x_next, p_half


def leapfrog_finish(x, x_next, p_half, score, score_next, step_size, delta_logp):
    B, D = x.shape
    p_next = torch.empty_like(x)
    delta_next = torch.empty(B, dtype=x.dtype, device=x.device)
    if B > 0:
        _C.cpu_leapfrog_finish(_dt(x), x.data_ptr(), x_next.data_ptr(), p_half.data_ptr(), score.data_ptr(),
                               score_next.data_ptr(), step_size.data_ptr(), delta_logp.data_ptr(), B, D,
                               p_next.data_ptr(), delta_next.data_ptr(), _threads())
    return p_next, delta_next


def hmc_accept(x, x_prop, score, score_prop, p, p_prop, delta_logp, u):
    B, D = x.shape
    x_new, score_new, accepted, log_alpha = accept_outputs(x)
    if B > 0:
        _C.cpu_hmc_accept(_dt(x), x.data_ptr(), x_prop.data_ptr(), score.data_ptr(), score_prop.data_ptr(),
                          p.data_ptr(), p_prop.data_ptr(), delta_logp.data_ptr(), u.data_ptr(), B, D,
                          x_new.data_ptr(), score_new.data_ptr(), accepted.data_ptr(), log_alpha.data_ptr(), _threads())
    return x_new, score_new, accepted, log_alpha


def momentum_refresh(p, damping, noise, seed, offset, chain_offset):
    B, D = p.shape
    out = torch.empty_like(p)
    if p.numel() > 0:
        _C.cpu_momentum_refresh(_dt(p), p.data_ptr(), float(damping), _p(noise), B, D, _u64(seed),
                                _u64(offset), int(chain_offset), out.data_ptr(), _threads())
    return out


def gmm_mala(x, means, log_weights, variances, step_size, n_steps, n_trapezoid, alpha, sigma2, seed, offset,
             chain_offset, mh):
    B, D = x.shape
    x_new, rate = move_outputs(x)
    if B > 0:
        _C.cpu_gmm_mala(_dt(x), x.data_ptr(), means.data_ptr(), log_weights.data_ptr(), variances.data_ptr(),
                        step_size.data_ptr(), B, D, means.shape[0], int(n_steps), int(n_trapezoid), float(alpha),
                        float(sigma2), _u64(seed), _u64(offset), int(chain_offset), int(mh), x_new.data_ptr(),
                        rate.data_ptr(), _threads())
    return x_new, rate


def gmm_hmc(x, means, log_weights, variances, step_size, n_steps, n_leapfrog, alpha, sigma2, seed, offset,
            chain_offset, mh, damping):
    B, D = x.shape
    x_new, rate = move_outputs(x)
    if B > 0:
        _C.cpu_gmm_hmc(_dt(x), x.data_ptr(), means.data_ptr(), log_weights.data_ptr(), variances.data_ptr(),
                       step_size.data_ptr(), B, D, means.shape[0], int(n_steps), int(n_leapfrog), float(alpha),
                       float(sigma2), _u64(seed), _u64(offset), int(chain_offset), int(mh), float(damping),
                       x_new.data_ptr(), rate.data_ptr(), _threads())
    return x_new, rate


def em_step_logprob(x, drift, log_var, x_next, noise, seed, offset, chain_offset, h, s2, e2, c, b2):
    B, D = x.shape
    y, log_pf, log_pb = em_step_outputs(x, x_next)
    if B > 0:
        _C.cpu_em_step_logprob(_dt(x), x.data_ptr(), drift.data_ptr(), _p(log_var), _p(x_next), _p(noise), B, D,
                               _u64(seed), _u64(offset), int(chain_offset), float(h), float(s2), float(e2),
                               float(c), float(b2), y.data_ptr(), log_pf.data_ptr(), log_pb.data_ptr(), _threads())
    return y, log_pf, log_pb


def em_step_logprob_backward(x, drift, log_var, x_next, g_x_next, g_log_pf, g_log_pb, h, s2, e2, c, b2, reparam,
                             want_g_x_next):
    B, D = x.shape
    g_x, g_drift, g_log_var, g_xn = em_step_grad_outputs(x, log_var, want_g_x_next)
    if B > 0:
        _C.cpu_em_step_logprob_backward(_dt(x), x.data_ptr(), drift.data_ptr(), _p(log_var), x_next.data_ptr(),
                                        _p(g_x_next), g_log_pf.data_ptr(), g_log_pb.data_ptr(), B, D, float(h),
                                        float(s2), float(e2), float(c), float(b2), bool(reparam), g_x.data_ptr(),
                                        g_drift.data_ptr(), _p(g_log_var), _p(g_xn), _threads())
    return g_x, g_drift, g_log_var, g_xn


def _net_ptrs(temb, params):
    """temb and the DriftNet tensors params = [ws, bs, wo, bo, W_1, b_1, ..., W_L, b_L] as the kernels take
    them: temb, ws, bs, [W_k], [b_k], wo, bo."""
    ws, bs, wo, bo, *hidden = params
    return (temb.data_ptr(), ws.data_ptr(), bs.data_ptr(), [w.data_ptr() for w in hidden[0::2]],
            [b.data_ptr() for b in hidden[1::2]], wo.data_ptr(), bo.data_ptr())


def policy_rollout(x0, temb, params, ts, batch_size, sigma, h, explore, clip, seed, chain_offset, n_threads):
    (T, H), D, B = temb.shape, params[0].shape[1], batch_size
    states = torch.empty(T + 1, B, D, dtype=temb.dtype, device=temb.device)
    log_pf, log_pb = (torch.empty(B, T, dtype=temb.dtype, device=temb.device) for _ in range(2))
    if B > 0:
        _C.cpu_policy_rollout(_dt(temb), _p(x0), *_net_ptrs(temb, params), ts.data_ptr(), B, D, H, T, float(sigma),
                              float(h), float(explore), float(clip), _u64(seed), int(chain_offset), int(n_threads),
                              states.data_ptr(), log_pf.data_ptr(), log_pb.data_ptr())
    return states, log_pf, log_pb


def policy_log_pf(states, temb, params, sigma, h, clip, n_threads):
    (T, H), (B, D) = temb.shape, states.shape[1:]
    log_pf = torch.empty(B, T, dtype=states.dtype, device=states.device)
    if B > 0:
        _C.cpu_policy_log_pf(_dt(states), states.data_ptr(), *_net_ptrs(temb, params), B, D, H, T, float(sigma),
                             float(h), float(clip), int(n_threads), log_pf.data_ptr())
    return log_pf


def policy_log_pf_backward(states, temb, params, g_log_pf, sigma, h, clip, n_threads):
    (T, H), (B, D) = temb.shape, states.shape[1:]
    g_temb, g_params = torch.empty_like(temb), [torch.empty_like(t) for t in params]
    if B > 0:
        _, g_ws, g_bs, g_hw, g_hb, g_wo, g_bo = _net_ptrs(g_temb, g_params)
        _C.cpu_policy_log_pf_backward(_dt(states), states.data_ptr(), *_net_ptrs(temb, params), g_log_pf.data_ptr(),
                                      B, D, H, T, float(sigma), float(h), float(clip), int(n_threads),
                                      g_temb.data_ptr(), g_ws, g_bs, g_hw, g_hb, g_wo, g_bo)
    else:
        for t in [g_temb] + g_params:
            t.zero_()
    return g_temb, g_params


def _score_sum(params, dims, scalars, means, log_weights, variances, mix_alpha, mix_sigma2):
    """The network and mixture arguments of cpu_mlp_score / cpu_mlp_mala (no means: K = 0)."""
    return ([t.data_ptr() for t in params], [int(d) for d in dims], [float(v) for v in scalars], _p(means),
            _p(log_weights), _p(variances), 0 if means is None else means.shape[0], float(mix_alpha),
            float(mix_sigma2))


def mlp_score(x, params, dims, scalars, means, log_weights, variances, mix_alpha, mix_sigma2):
    B, D = x.shape
    score = torch.empty_like(x)
    if B > 0:
        _C.cpu_mlp_score(_dt(x), x.data_ptr(), B, D,
                         *_score_sum(params, dims, scalars, means, log_weights, variances, mix_alpha, mix_sigma2),
                         score.data_ptr(), _threads())
    return score


def mlp_mala(x, params, dims, scalars, means, log_weights, variances, mix_alpha, mix_sigma2, step_size, n_steps,
             n_trapezoid, seed, offset, chain_offset, mh):
    B, D = x.shape
    x_new, rate = move_outputs(x)
    if B > 0:
        _C.cpu_mlp_mala(_dt(x), x.data_ptr(), B, D,
                        *_score_sum(params, dims, scalars, means, log_weights, variances, mix_alpha, mix_sigma2),
                        step_size.data_ptr(), int(n_steps), int(n_trapezoid), _u64(seed), _u64(offset),
                        int(chain_offset), int(mh), x_new.data_ptr(), rate.data_ptr(), _threads())
    return x_new, rate


__all__ = ["gmm_score", "sde_step", "guided_sde_step", "mala_propose", "line_points", "score_mh_accept",
           "leapfrog", "leapfrog_finish", "hmc_accept", "momentum_refresh", "gmm_mala", "gmm_hmc",
           "em_step_logprob", "em_step_logprob_backward", "policy_rollout", "policy_log_pf", "policy_log_pf_backward",
           "mlp_score", "mlp_mala"]
