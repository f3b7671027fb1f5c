"""C++ CPU backend: thin glue from the backend signatures of
docs/backend-contract.md to the `fastsamp._C.cpu_<op>` kernels.

Inputs arrive validated and contiguous (the public ops in `fastsamp.ops` see to
that); outputs are allocated here with `torch.empty` on x's device in x's dtype.
The glue of every op with a C order in the op table is generated from it
(`fastsamp/ops/_table.py`: `_table.glue_source(op, "cpu")` shows the source), the policy ops' included;
the score-network ops are written out below.
"""
from __future__ import annotations

import torch

from fastsamp import _C

from ..ops import _table
from ._abi import dtype_code as _dt
from ._abi import move_outputs
from ._abi import ptr as _p
from ._abi import u64 as _u64


def _threads(n_threads=0) -> int:
    """The threads of a kernel call: n_threads, or torch's intra-op count (torch.set_num_threads /
    OMP_NUM_THREADS) when it is 0 (the policy ops' default, so that torch.compile never traces
    torch.get_num_threads()). Small calls run on the calling thread alone (csrc/cpu/runtime.h)."""
    return int(n_threads) or torch.get_num_threads()


_GENERATED = _table.install_glue(globals(), "cpu", "cpp")


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


__all__ = _GENERATED + ["mlp_score", "mlp_mala", "mlp_hmc", "mlp_energy", "mlp_energy_mala", "mlp_energy_hmc"]
