"""C++ CPU backend: thin glue from the backend signatures of
docs/backend-contract.md to the `fastsamp._C.cpu_<op>` kernels.

Inputs arrive validated and contiguous (the public ops in `fastsamp.ops` see to
that); outputs are allocated here with `torch.empty` on x's device in x's dtype.
The glue of every op with a plain C entry point is generated from the op table
(`fastsamp/ops/_table.py`: `_table.glue_source(op, "cpu")` shows the source); the policy ops,
and the score-network ops, which pass lists of layer pointers, are written out below.
"""
from __future__ import annotations

import torch

from fastsamp import _C

from ..ops import _table
from ._abi import dtype_code as _dt
from ._abi import move_outputs
from ._abi import ptr as _p
from ._abi import u64 as _u64

# Every kernel call uses up to torch's intra-op thread count (torch.set_num_threads / OMP_NUM_THREADS);
# small calls run on the calling thread alone (csrc/cpu/runtime.h).
_threads = torch.get_num_threads


def _policy_threads(n_threads) -> int:
    """The policy kernels' thread count: n_threads, or torch's when it is 0 (the public ops' default, so that
    torch.compile never traces torch.get_num_threads())."""
    return int(n_threads) or _threads()


_GENERATED = _table.install_glue(globals(), "cpu", "cpp")


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
                              float(h), float(explore), float(clip), _u64(seed), int(chain_offset),
                              _policy_threads(n_threads), states.data_ptr(), log_pf.data_ptr(), log_pb.data_ptr())
    return states, log_pf, log_pb


def policy_log_pf(states, temb, params, sigma, h, clip, n_threads):
    (T, H), (B, D) = temb.shape, states.shape[1:]
    log_pf = torch.empty(B, T, dtype=states.dtype, device=states.device)
    if B > 0:
        _C.cpu_policy_log_pf(_dt(states), states.data_ptr(), *_net_ptrs(temb, params), B, D, H, T, float(sigma),
                             float(h), float(clip), _policy_threads(n_threads), log_pf.data_ptr())
    return log_pf


def policy_log_pf_backward(states, temb, params, g_log_pf, sigma, h, clip, n_threads):
    (T, H), (B, D) = temb.shape, states.shape[1:]
    g_temb, g_params = torch.empty_like(temb), [torch.empty_like(t) for t in params]
    if B > 0:
        _, g_ws, g_bs, g_hw, g_hb, g_wo, g_bo = _net_ptrs(g_temb, g_params)
        _C.cpu_policy_log_pf_backward(_dt(states), states.data_ptr(), *_net_ptrs(temb, params), g_log_pf.data_ptr(),
                                      B, D, H, T, float(sigma), float(h), float(clip), _policy_threads(n_threads),
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


def mlp_hmc(x, params, dims, scalars, means, log_weights, variances, mix_alpha, mix_sigma2, step_size, n_steps,
            n_leapfrog, seed, offset, chain_offset, mh, damping):
    B, D = x.shape
    x_new, rate = move_outputs(x)
    if B > 0:
        _C.cpu_mlp_hmc(_dt(x), x.data_ptr(), B, D,
                       *_score_sum(params, dims, scalars, means, log_weights, variances, mix_alpha, mix_sigma2),
                       step_size.data_ptr(), int(n_steps), int(n_leapfrog), _u64(seed), _u64(offset),
                       int(chain_offset), int(mh), float(damping), x_new.data_ptr(), rate.data_ptr(), _threads())
    return x_new, rate


def _energy_sum(params, dims, scalars, energy, means, log_weights, variances, mix_alpha, mix_sigma2):
    """The network and mixture arguments of the cpu_mlp_energy* kernels: _score_sum's with the energy flags."""
    ptrs, dims, scalars, *mix = _score_sum(params, dims, scalars, means, log_weights, variances, mix_alpha,
                                           mix_sigma2)
    return (ptrs, dims, scalars, [int(e) for e in energy], *mix)


def mlp_energy(x, params, dims, scalars, energy, means, log_weights, variances, mix_alpha, mix_sigma2):
    B, D = x.shape
    score = torch.empty_like(x)
    logp = torch.empty(B, dtype=x.dtype, device=x.device)
    if B > 0:
        _C.cpu_mlp_energy(_dt(x), x.data_ptr(), B, D,
                          *_energy_sum(params, dims, scalars, energy, means, log_weights, variances, mix_alpha,
                                       mix_sigma2), score.data_ptr(), logp.data_ptr(), _threads())
    return score, logp


def mlp_energy_mala(x, params, dims, scalars, energy, means, log_weights, variances, mix_alpha, mix_sigma2, step_size,
                    n_steps, n_trapezoid, seed, offset, chain_offset, mh):
    B, D = x.shape
    x_new, rate = move_outputs(x)
    if B > 0:
        _C.cpu_mlp_energy_mala(_dt(x), x.data_ptr(), B, D,
                               *_energy_sum(params, dims, scalars, energy, means, log_weights, variances, mix_alpha,
                                            mix_sigma2), step_size.data_ptr(), int(n_steps), int(n_trapezoid),
                               _u64(seed), _u64(offset), int(chain_offset), int(mh), x_new.data_ptr(),
                               rate.data_ptr(), _threads())
    return x_new, rate


def mlp_energy_hmc(x, params, dims, scalars, energy, means, log_weights, variances, mix_alpha, mix_sigma2, step_size,
                   n_steps, n_leapfrog, seed, offset, chain_offset, mh, damping):
    B, D = x.shape
    x_new, rate = move_outputs(x)
    if B > 0:
        _C.cpu_mlp_energy_hmc(_dt(x), x.data_ptr(), B, D,
                              *_energy_sum(params, dims, scalars, energy, means, log_weights, variances, mix_alpha,
                                           mix_sigma2), step_size.data_ptr(), int(n_steps), int(n_leapfrog),
                              _u64(seed), _u64(offset), int(chain_offset), int(mh), float(damping), x_new.data_ptr(),
                              rate.data_ptr(), _threads())
    return x_new, rate


__all__ = _GENERATED + ["policy_rollout", "policy_log_pf", "policy_log_pf_backward", "mlp_score", "mlp_mala",
                        "mlp_hmc", "mlp_energy", "mlp_energy_mala", "mlp_energy_hmc"]
