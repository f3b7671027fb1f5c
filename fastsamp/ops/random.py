"""Philox4x32-10 in PyTorch: the reference of the random stream every backend draws.

Stream layout (docs/backend-contract.md): the normal ξ[b, d] of draw
(seed, offset) comes from counter (d // 4, b, offset_lo, offset_hi) and key
(seed_lo, seed_hi), Box–Muller on words (2q, 2q + 1), q = (d % 4) // 2, cos for
even d and sin for odd d; the MH uniform of chain b from word 0 of counter
(0xFFFFFFFF, b, offset_lo, offset_hi). b is the global chain index: local row i of a
batch whose first chain is global chain `chain_offset` draws with b = chain_offset + i,
so a chain gets the same noise whichever process and batch it runs in.
Words are held in int64 tensors. `philox_normal` / `philox_uniform` are the reference
(unchecked, backend signatures); `normal` / `uniform` the public ops, on every backend.
"""
from __future__ import annotations

import math

import torch

from . import _checks, _dispatch

_MASK = 0xFFFFFFFF
_U64 = 2**64 - 1
_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_TWO_M32 = 2.0**-32
_TWO_M33 = 2.0**-33


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of a * m for 32-bit a and m, without int64 overflow."""
    m_lo, m_hi = m & 0xFFFF, m >> 16
    p_lo = a * m_lo  # < 2^48
    p_hi = a * m_hi  # < 2^48
    mid = p_lo + ((p_hi & 0xFFFF) << 16)  # < 2^49
    lo = mid & _MASK
    hi = (p_hi >> 16) + (mid >> 32)
    return hi & _MASK, lo


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Ten Philox rounds on int64 tensors holding 32-bit counter words; the key words ints or 0-d int64 tensors."""
    for _ in range(10):
        hi0, lo0 = _mulhilo(c0, _M0)
        hi1, lo1 = _mulhilo(c2, _M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + _W0) & _MASK
        k1 = (k1 + _W1) & _MASK
    return c0, c1, c2, c3


def _check_draw(seed, offset, dtype, device, chain_offset, **sizes):
    """(seed, offset, chain_offset) checked: ints in [0, 2**64) or one-element int64 tensors on `device`
    (`_checks.seed_offset`), float32/float64 (the uniform's 2^-33 is 0 in float16, and integer dtypes
    truncate), sizes in [0, 2**31), chain_offset + B <= 2**32."""
    seed, offset = _checks.seed_offset(seed, offset, device=device)
    if dtype not in _checks.FLOAT_DTYPES:
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    for name, v in sizes.items():
        _checks.integer(name, v, minimum=0)
    return seed, offset, _checks.chain_offset(chain_offset, sizes["B"], device)


def u64_words(v) -> tuple:
    """(lo, hi): the 32-bit words of a seed / offset / chain offset v in [0, 2**64): python ints for an int; for a
    one-element int64 tensor (two's complement) 0-d int64 tensors, computed where it lies (no host read: a graph
    that takes the offset as an input, under torch.compile or torch.export, draws the noise of each call's value)."""
    if isinstance(v, torch.Tensor):
        v = v.reshape(())
        return v & _MASK, (v >> 32) & _MASK  # the arithmetic shift's sign bits masked off: the u64's high word
    v = int(v) & _U64
    return v & _MASK, v >> 32


def chain_words(chain_offset, B: int, device) -> torch.Tensor:
    """The Philox chain word (chain_offset + b) mod 2**32 of local chains b < B (int64 (B,)), as the kernels' 32-bit
    arithmetic wraps it: a chain offset past its range (a tensor, unchecked with validation off) draws what the
    compiled backends draw."""
    return (torch.arange(B, dtype=torch.int64, device=device) + u64_words(chain_offset)[0]) & _MASK


def _offset_words(offset, like: torch.Tensor) -> tuple:
    """The counter words (offset_lo, offset_hi) of a draw, shaped like `like` (an int's filled, a tensor's expanded)."""
    lo, hi = u64_words(offset)
    if isinstance(lo, torch.Tensor):
        return lo.expand_as(like), hi.expand_as(like)
    return torch.full_like(like, lo), torch.full_like(like, hi)


def uniform_open(words: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """T(r)·2^-32 + 2^-33 in (0, 1] (computed in `dtype`)."""
    return words.to(dtype) * _TWO_M32 + _TWO_M33


def uniform_closed(words: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return words.to(dtype) * _TWO_M32


def philox_normal(seed, offset, B: int, D: int, dtype, device, chain_offset) -> torch.Tensor:
    """The reference of the standard normals ξ (B, D) of draw (seed, offset) for global chains
    chain_offset .. chain_offset + B − 1 (arguments unchecked: the public `normal` checks them; seed, offset and
    chain_offset ints or one-element int64 tensors on `device`, `u64_words`)."""
    J = (D + 3) // 4
    j = torch.arange(J, dtype=torch.int64, device=device).expand(B, J)
    b = chain_words(chain_offset, B, device)[:, None].expand(B, J)
    r = philox4x32_10(j, b, *_offset_words(offset, j), *u64_words(seed))
    out = torch.empty(B, J, 4, dtype=dtype, device=device)
    for q in range(2):
        u1 = uniform_open(r[2 * q], dtype)
        u2 = uniform_closed(r[2 * q + 1], dtype)
        rad = torch.sqrt(-2.0 * torch.log(u1))
        ang = (2.0 * math.pi) * u2
        out[:, :, 2 * q] = rad * torch.cos(ang)
        out[:, :, 2 * q + 1] = rad * torch.sin(ang)
    return out.reshape(B, 4 * J)[:, :D].contiguous()


def philox_uniform(seed, offset, B: int, dtype, device, chain_offset) -> torch.Tensor:
    """The reference of the MH uniforms u (B,) in (0, 1] of draw (seed, offset) for global chains
    chain_offset .. chain_offset + B − 1 (arguments unchecked, as `philox_normal`'s)."""
    b = chain_words(chain_offset, B, device)
    r = philox4x32_10(torch.full_like(b, _MASK), b, *_offset_words(offset, b), *u64_words(seed))
    return uniform_open(r[0], dtype)


def normal(seed: int, offset: int, B: int, D: int, dtype=torch.float64, device="cpu", *,
           chain_offset: int = 0, backend: str = "auto") -> torch.Tensor:
    """Standard normals ξ (B, D) of draw (seed, offset) for global chains chain_offset .. chain_offset + B − 1:
    the normals every kernel draws in-kernel (the compiled backends equal the reference up to the
    rounding of log/cos/sin in Box–Muller)."""
    device = _checks.device(device)
    seed, offset, chain_offset = _check_draw(seed, offset, dtype, device, chain_offset, B=B, D=D)
    return _dispatch.route_factory(backend, "normal", device)(seed, offset, int(B), int(D), dtype, device,
                                                              chain_offset)


def uniform(seed: int, offset: int, B: int, dtype=torch.float64, device="cpu", *,
            chain_offset: int = 0, backend: str = "auto") -> torch.Tensor:
    """MH uniforms u (B,) in (0, 1] of draw (seed, offset) for global chains chain_offset .. chain_offset + B − 1
    (the same bits on every backend: integer Philox and one rounding)."""
    device = _checks.device(device)
    seed, offset, chain_offset = _check_draw(seed, offset, dtype, device, chain_offset, B=B)
    return _dispatch.route_factory(backend, "uniform", device)(seed, offset, int(B), dtype, device, chain_offset)
