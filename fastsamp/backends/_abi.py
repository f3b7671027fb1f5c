"""Argument conversion for the pointer-based ABI of fastsamp._C (docs/backend-contract.md)."""
from __future__ import annotations

import torch

_DTYPES = {torch.float32: 0, torch.float64: 1}


def dtype_code(x: torch.Tensor) -> int:
    """0 for float32, 1 for float64."""
    try:
        return _DTYPES[x.dtype]
    except KeyError:
        raise TypeError(f"compiled kernels support float32 and float64, got {x.dtype}") from None


def ptr(t) -> int:
    """Data pointer of a tensor, 0 for an absent optional tensor."""
    return 0 if t is None else t.data_ptr()


def u64(v) -> int:
    """A seed / offset / chain offset as a C uint64 read on the host: an int, or a one-element int64 CPU tensor
    (two's complement)."""
    return 0 if v is None else int(v) & 0xFFFFFFFFFFFFFFFF


def check_u64_tensor(v: torch.Tensor, name: str, device) -> None:
    """A seed / offset / chain offset tensor handed to a kernel: one int64 element on the kernel's device."""
    if v.dtype != torch.int64 or v.numel() != 1 or v.device != torch.device(device):
        raise ValueError(f"{name} as a tensor must be one int64 element on {device}, got {v.dtype} "
                         f"{tuple(v.shape)} on {v.device}")


def rng(v, name: str, like: torch.Tensor) -> tuple[int, int]:
    """A seed / offset / chain offset as the (value, pointer) pair of a CUDA entry point: (the int, 0), or for a
    one-element int64 tensor on like's device (0, its data pointer), read by the kernel when it runs."""
    if not isinstance(v, torch.Tensor):
        return u64(v), 0
    check_u64_tensor(v, name, like.device)
    return 0, v.data_ptr()


def em_step_outputs(x, x_next):
    """Outputs of em_step_logprob: (x_next, or a fresh one to sample into; log_pf (B,); log_pb (B,))."""
    B = x.shape[0]
    y = torch.empty_like(x) if x_next is None else x_next
    return y, torch.empty(B, dtype=x.dtype, device=x.device), torch.empty(B, dtype=x.dtype, device=x.device)


def em_step_grad_outputs(x, log_var, want_g_x_next):
    """Outputs of em_step_logprob_backward: g_x, g_drift, g_log_var (None without log_var), g_x_next (if wanted)."""
    return (torch.empty_like(x), torch.empty_like(x), None if log_var is None else torch.empty_like(x),
            torch.empty_like(x) if want_g_x_next else None)


# Outputs of the other ops for the Triton backend and the list-of-layers cpp glue (the table-generated cpp/cuda
# glue allocates from the op table); on x's device in x's dtype.

def score_outputs(x):
    """Outputs of gmm_score: score (B, D), logp (B,)."""
    return torch.empty_like(x), torch.empty(x.shape[0], dtype=x.dtype, device=x.device)


def move_outputs(x):
    """Outputs of the whole-move kernels (gmm_mala, gmm_hmc): x_new (B, D), accept_rate (B,)."""
    return score_outputs(x)


def proposal_scores(score_prop, interior, B):
    """(s(x') (B, D), the interior score sets (m, B, D) or None) of score_mh_accept's `score_prop` and `interior`:
    with interior None, score_prop may hold (m + 1)·B rows, s(x') then the m sets (the scores of one batch
    [x'; line_points]); its first B rows and the rest are views, no copy."""
    if interior is not None or score_prop.shape[0] == B:
        return score_prop, interior
    return score_prop[:B], score_prop[B:].view(-1, B, score_prop.shape[1])


def accept_outputs(x, x_out=None, score_out=None):
    """Outputs of score_mh_accept and hmc_accept: x_new, score_new (B, D) (x_out / score_out when given),
    accepted (B,) bool, log_alpha (B,)."""
    B = x.shape[0]
    return (torch.empty_like(x) if x_out is None else x_out, torch.empty_like(x) if score_out is None else score_out,
            torch.empty(B, dtype=torch.bool, device=x.device), torch.empty(B, dtype=x.dtype, device=x.device))
