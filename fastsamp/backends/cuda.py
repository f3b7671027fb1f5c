"""CUDA backend: thin glue from the backend signatures of
docs/backend-contract.md to the `fastsamp._C.cuda_<op>` kernels (csrc/cuda/, by family:
gmm.cu, mh.cu, sde.cu, trajectory.cu).

Inputs arrive validated and contiguous on one CUDA device (the public ops in
`fastsamp.ops` see to that); outputs are allocated here with `torch.empty` on
x's device in x's dtype (the allocators of `_abi`, shared with the other backends). Kernels are
launched asynchronously on the current torch stream of x's device, with that device made current.
Sizes a kernel does not support (D above the limits below) raise ValueError from `_C`. Importing
this module does not touch the CUDA runtime.

Implemented ops (the starred ops of the contract): gmm_score, sde_step,
score_mh_accept, gmm_mala, em_step_logprob (and its backward), normal and uniform. The other ops
have no CUDA kernel (the dispatcher falls back to Triton / the reference for them).
"""
from __future__ import annotations

import torch

from fastsamp import _C

from ._abi import accept_outputs, em_step_grad_outputs, em_step_outputs, move_outputs, score_outputs
from ._abi import dtype_code as _dt
from ._abi import ptr as _p
from ._abi import u64 as _u64

# Largest D the mixture kernels support (csrc/cuda/launch.h); the dispatcher reads them.
GMM_SCORE_MAX_D = 4096
GMM_MALA_MAX_D = 1024


def _launch(kernel, x: torch.Tensor, *args) -> None:
    """kernel(*args, stream) with x's device current, on that device's current torch stream; nothing
    for an empty batch (B = 0)."""
    if x.shape[0] == 0:
        return
    with torch.cuda.device(x.device):
        kernel(*args, torch.cuda.current_stream(x.device).cuda_stream)


def gmm_score(x, means, log_weights, variances, alpha, sigma2):
    B, D = x.shape
    score, logp = score_outputs(x)
    _launch(_C.cuda_gmm_score, x, _dt(x), x.data_ptr(), means.data_ptr(), log_weights.data_ptr(),
            variances.data_ptr(), B, D, means.shape[0], float(alpha), float(sigma2), score.data_ptr(),
            logp.data_ptr())
    return score, logp


def sde_step(x, score, extra_drift, noise, seed, offset, chain_offset, a, c_s, c_n, out=None):
    B, D = x.shape
    out = torch.empty_like(x) if out is None else out
    _launch(_C.cuda_sde_step, x, _dt(x), x.data_ptr(), score.data_ptr(), _p(extra_drift), _p(noise), B, D,
            _u64(seed), _u64(offset), int(chain_offset), float(a), float(c_s), float(c_n), out.data_ptr())
    return out


def score_mh_accept(x, x_prop, score, score_prop, step_size, u, interior, seed=0, offset=0, chain_offset=0):
    B, D = x.shape
    x_new, score_new, accepted, log_alpha = accept_outputs(x)
    m = 0 if interior is None else interior.shape[0]
    _launch(_C.cuda_score_mh_accept, x, _dt(x), x.data_ptr(), x_prop.data_ptr(), score.data_ptr(),
            score_prop.data_ptr(), step_size.data_ptr(), _p(u), _u64(seed), _u64(offset), int(chain_offset),
            _p(interior) if m > 0 else 0, m, B, D, x_new.data_ptr(), score_new.data_ptr(), accepted.data_ptr(),
            log_alpha.data_ptr())
    return x_new, score_new, accepted, log_alpha


def normal(seed, offset, chain_offset, B, D, dtype, device):
    out = torch.empty(B, D, dtype=dtype, device=device)
    if out.numel() > 0:
        _launch(_C.cuda_normal, out, _dt(out), _u64(seed), _u64(offset), int(chain_offset), B, D, out.data_ptr())
    return out


def uniform(seed, offset, chain_offset, B, dtype, device):
    out = torch.empty(B, dtype=dtype, device=device)
    if B > 0:
        _launch(_C.cuda_uniform, out, _dt(out), _u64(seed), _u64(offset), int(chain_offset), B,
                out.data_ptr())
    return out


def gmm_mala(x, means, log_weights, variances, step_size, n_steps, n_trapezoid, alpha, sigma2, seed, offset,
             chain_offset, mh):
    B, D = x.shape
    x_new, rate = move_outputs(x)
    _launch(_C.cuda_gmm_mala, x, _dt(x), x.data_ptr(), means.data_ptr(), log_weights.data_ptr(),
            variances.data_ptr(), step_size.data_ptr(), B, D, means.shape[0], int(n_steps), int(n_trapezoid),
            float(alpha), float(sigma2), _u64(seed), _u64(offset), int(chain_offset), int(mh), x_new.data_ptr(),
            rate.data_ptr())
    return x_new, rate


def em_step_logprob(x, drift, log_var, x_next, noise, seed, offset, chain_offset, h, s2, e2, c, b2):
    B, D = x.shape
    y, log_pf, log_pb = em_step_outputs(x, x_next)
    _launch(_C.cuda_em_step_logprob, x, _dt(x), x.data_ptr(), drift.data_ptr(), _p(log_var), _p(x_next),
            _p(noise), B, D, _u64(seed), _u64(offset), int(chain_offset), float(h), float(s2), float(e2),
            float(c), float(b2), y.data_ptr(), log_pf.data_ptr(), log_pb.data_ptr())
    return y, log_pf, log_pb


def em_step_logprob_backward(x, drift, log_var, x_next, g_x_next, g_log_pf, g_log_pb, h, s2, e2, c, b2, reparam,
                             want_g_x_next):
    B, D = x.shape
    g_x, g_drift, g_log_var, g_xn = em_step_grad_outputs(x, log_var, want_g_x_next)
    _launch(_C.cuda_em_step_logprob_backward, x, _dt(x), x.data_ptr(), drift.data_ptr(), _p(log_var),
            x_next.data_ptr(), _p(g_x_next), g_log_pf.data_ptr(), g_log_pb.data_ptr(), B, D, float(h),
            float(s2), float(e2), float(c), float(b2), bool(reparam), g_x.data_ptr(), g_drift.data_ptr(),
            _p(g_log_var), _p(g_xn))
    return g_x, g_drift, g_log_var, g_xn


__all__ = ["gmm_score", "sde_step", "score_mh_accept", "gmm_mala", "em_step_logprob", "normal", "uniform",
           "em_step_logprob_backward"]
