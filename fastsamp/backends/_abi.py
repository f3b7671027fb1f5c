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
    return 0 if v is None else int(v) & 0xFFFFFFFFFFFFFFFF
