"""CUDA backend: thin glue from the backend signatures of
docs/backend-contract.md to the `fastsamp._C.cuda_<op>` kernels (csrc/cuda/, by family:
gmm.cu, mh.cu, sde.cu, trajectory.cu).

Inputs arrive validated and contiguous on one CUDA device (the public ops in
`fastsamp.ops` see to that, and the registered ops `torch.ops.fastsamp.<op>` refuse others:
`_library._checker`); outputs are allocated here with `torch.empty` on
x's device in x's dtype (shapes and dtypes from the op table). Kernels are
launched asynchronously on the current torch stream of x's device, with that device made current.
Sizes a kernel does not support (D above the limits below) raise ValueError from `_C`. Importing
this module does not touch the CUDA runtime.

Implemented ops (the starred ops of the contract): gmm_score, sde_step,
score_mh_accept, gmm_mala, em_step_logprob (and its backward), normal and uniform (written out below:
no state tensor). The other ops
have no CUDA kernel (the dispatcher falls back to Triton / the reference for them). The glue of each op
is generated from the op table (`fastsamp/ops/_table.py`: `_table.glue_source(op, "cuda")` shows it).
"""
from __future__ import annotations

import torch

from fastsamp import _C  # noqa: F401  (the names the generated glue calls)

from ..ops import _table
from ._abi import dtype_code as _dt  # noqa: F401
from ._abi import ptr as _p  # noqa: F401
from ._abi import rng as _rng  # noqa: F401
from ._abi import u64 as _u64  # noqa: F401

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


__all__ = _table.install_glue(globals(), "cuda", "cuda")
