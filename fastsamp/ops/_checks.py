"""Input validation shared by the public ops: clear exceptions naming the argument."""
from __future__ import annotations

import math
import numbers

import torch

FLOAT_DTYPES = (torch.float32, torch.float64)


def state(name: str, x) -> torch.Tensor:
    """A (B, D) float32/float64 tensor with B, D >= 1, made contiguous."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (B, D), got {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must have B >= 1 chains and D >= 1 dims, got shape {tuple(x.shape)}")
    if x.shape[0] >= 2**31 or x.numel() >= 2**62:
        raise ValueError(f"{name} is too large: shape {tuple(x.shape)}")
    return x.contiguous()


def like(name: str, t, x: torch.Tensor, shape=None) -> torch.Tensor:
    """A tensor with x's dtype and device and the given shape (default x's)."""
    shape = tuple(x.shape) if shape is None else tuple(shape)
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != x.dtype:
        raise TypeError(f"{name} must have dtype {x.dtype} like x, got {t.dtype}")
    if t.device != x.device:
        raise ValueError(f"{name} must be on {x.device} like x, got {t.device}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    return t.contiguous()


def output(out, x: torch.Tensor):
    """None, or a contiguous tensor like x that receives a result (it may alias x)."""
    if out is None:
        return None
    if not isinstance(out, torch.Tensor) or not out.is_contiguous():
        raise ValueError("out must be a contiguous tensor")
    return like("out", out, x)


def finite_float(name: str, v, *, positive=False, nonnegative=False, lo=None, hi=None) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if positive and v <= 0:
        raise ValueError(f"{name} must be > 0, got {v}")
    if nonnegative and v < 0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    if lo is not None and v < lo or hi is not None and v >= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}), got {v}")
    return v


def integer(name: str, v, *, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return int(v)


def step_size(v, x: torch.Tensor, name: str = "step_size") -> torch.Tensor:
    """A positive finite float or (B,) tensor -> (B,) tensor in x's dtype and device."""
    B = x.shape[0]
    if isinstance(v, torch.Tensor):
        if not v.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {v.dtype}")
        if v.device != x.device:
            raise ValueError(f"{name} must be on {x.device} like x, got {v.device}")
        if v.dim() == 0:
            v = v.expand(B)
        if tuple(v.shape) != (B,):
            raise ValueError(f"{name} must be a float or have shape ({B},) (one per chain), got {tuple(v.shape)}")
        v = v.to(x.dtype).contiguous()
        if not bool(torch.all(torch.isfinite(v) & (v > 0))):
            raise ValueError(f"{name} must be finite and > 0 for every chain")
        return v
    return torch.full((B,), finite_float(name, v, positive=True), dtype=x.dtype, device=x.device)


def uniforms(name: str, u, x: torch.Tensor) -> torch.Tensor:
    return like(name, u, x, (x.shape[0],))


def noise_or_seed(noise, seed, offset, x: torch.Tensor):
    """(noise tensor or None, seed, offset); a seed is drawn from torch's generator if neither is given."""
    offset = integer("offset", offset, minimum=0)
    if offset >= 2**64:
        raise ValueError(f"offset must be < 2**64, got {offset}")
    if noise is not None:
        if seed is not None:
            raise ValueError("give either noise or seed, not both")
        return like("noise", noise, x), 0, offset
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    seed = integer("seed", seed, minimum=0)
    if seed >= 2**64:
        raise ValueError(f"seed must be < 2**64, got {seed}")
    return None, seed, offset


def chain_offset(v, B: int) -> int:
    """The global index of the first of B local chains: an int >= 0 with v + B <= 2**32
    (the chain index is one 32-bit word of the Philox counter)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"chain_offset must be an int, got {type(v).__name__}")
    if v < 0 or v + B > 2**32:
        raise ValueError(f"chain_offset must be >= 0 with chain_offset + B <= 2**32, got chain_offset = {v}, B = {B}")
    return int(v)


def mixture(x: torch.Tensor, means, log_weights, variances, alpha, sigma2):
    """Validated mixture parameters (means (K, D), log_weights (K,), variances (K,) > 0)."""
    if not isinstance(means, torch.Tensor) or means.dim() != 2:
        raise ValueError(f"means must be a (K, D) tensor, got {getattr(means, 'shape', type(means).__name__)}")
    K = means.shape[0]
    if K == 0:
        raise ValueError("means must have K >= 1 components")
    means = like("means", means, x, (K, x.shape[1]))
    log_weights = like("log_weights", log_weights, x, (K,))
    variances = like("variances", variances, x, (K,))
    alpha = finite_float("alpha", alpha)
    sigma2 = finite_float("sigma2", sigma2, nonnegative=True)
    if not bool(torch.all(variances > 0)) or not bool(torch.all(torch.isfinite(variances))):
        raise ValueError("variances must be finite and > 0")
    if alpha == 0.0 and sigma2 == 0.0:
        raise ValueError("alpha = 0 and sigma2 = 0 give a degenerate mixture (zero variance)")
    if not bool(torch.all(log_weights < math.inf)) or bool(torch.all(log_weights == -math.inf)) \
            or bool(torch.any(torch.isnan(log_weights))):
        raise ValueError("log_weights must be < inf, not NaN, and not all -inf")
    return means, log_weights, variances, alpha, sigma2
