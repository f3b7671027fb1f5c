"""sde_step, guided_sde_step and the shared "affine + noise" streaming kernel.

One template, specialised by constexprs, serves four ops:

    sde_step         out = a x + c_s (score + extra) + c_n xi        (scalars a, c_s, c_n)
    guided_sde_step  out = a x + c_s (score + c_v v + c_diff (shift - score)) + c_n xi
                                                                      (GUIDED: extra = v)
    mala_propose     out = x + eps_b score + sqrt(2 eps_b) xi        (PER_CHAIN)
    momentum_refresh out = damping p + sqrt(1 - damping^2) xi        (HAS_SCORE = False)

xi is read from `noise` (HAS_NOISE) or drawn in-kernel from the Philox stream of the
contract: the tile is [BLOCK_G, 4] groups of 4 consecutive elements of a row, so a
single Philox call (and two log/sqrt/sincos) serves 4 outputs.
"""
import torch
import triton
import triton.language as tl

from ._launch import QUAD_WARPS, f64, launch, need_idx64, quad_grid, rng_args
from .random import global_chain, normal4, rng_words, select_lane
from .tiles import quad_tile, sqrt_ieee


@triton.jit(do_not_specialize=["k0", "k1", "o0", "o1", "chain0"])
def _affine_noise_kernel(x_ptr, score_ptr, extra_ptr, shift_ptr, noise_ptr, eps_ptr, out_ptr,
                         a: tl.float64, c_s: tl.float64, c_v: tl.float64, c_diff: tl.float64, c_n: tl.float64,
                         k0, k1, o0, o1, chain0, seed_p, offset_p, chain_p, D, J, n_groups,
                         HAS_SCORE: tl.constexpr, HAS_EXTRA: tl.constexpr, GUIDED: tl.constexpr,
                         HAS_NOISE: tl.constexpr, PER_CHAIN: tl.constexpr, EVEN4: tl.constexpr,
                         IDX64: tl.constexpr, BLOCK_G: tl.constexpr, RNG_T: tl.constexpr):
    k0, k1, o0, o1, chain0 = rng_words(k0, k1, o0, o1, chain0, seed_p, offset_p, chain_p, RNG_T)
    pid = tl.program_id(0)
    b, j, gmask, lane, offs, mask = quad_tile(pid, D, J, n_groups, BLOCK_G, EVEN4, IDX64)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    DT: tl.constexpr = x.dtype
    if HAS_NOISE:
        xi = tl.load(noise_ptr + offs, mask=mask, other=0.0)
    else:
        z0, z1, z2, z3 = normal4(k0, k1, o0, o1, j, global_chain(b, chain0), DT)
        xi = select_lane(z0, z1, z2, z3, lane)
    if PER_CHAIN:
        eps = tl.load(eps_ptr + b, mask=gmask, other=0.0)
        cs = eps[:, None]
        cn = sqrt_ieee(2.0 * eps)[:, None]
        y = x
    else:
        cs = c_s.to(DT)
        cn = c_n.to(DT)
        y = a.to(DT) * x
    if HAS_SCORE:
        s = tl.load(score_ptr + offs, mask=mask, other=0.0)
        if GUIDED:
            # extra = v; the difference shift - score first (c_diff can be ~1e5)
            v = tl.load(extra_ptr + offs, mask=mask, other=0.0)
            sh = tl.load(shift_ptr + offs, mask=mask, other=0.0)
            s = s + c_v.to(DT) * v + c_diff.to(DT) * (sh - s)
        elif HAS_EXTRA:
            s = s + tl.load(extra_ptr + offs, mask=mask, other=0.0)
        y = y + cs * s
    y = y + cn * xi
    tl.store(out_ptr + offs, y, mask=mask)


def affine_noise(x, score, extra, noise, eps, a, c_s, c_n, seed, offset, chain_offset, out=None, shift=None, c_v=0.0,
                 c_diff=0.0):
    """Launch _affine_noise_kernel; `eps` (B,) selects the per-chain (MALA) form, `shift`
    the guided form (then `extra` is v: drift = score + c_v v + c_diff (shift - score))."""
    B, D = x.shape
    out = torch.empty_like(x) if out is None else out
    if x.numel() == 0:
        return out
    J, n_groups, block_g, grid = quad_grid(B, D)
    rng, rng_t = rng_args(seed, offset, chain_offset, x.device)
    launch(_affine_noise_kernel, grid,
        x, score if score is not None else x, extra if extra is not None else x,
        shift if shift is not None else x, noise if noise is not None else x, eps if eps is not None else x, out,
        f64(a), f64(c_s), f64(c_v), f64(c_diff), f64(c_n), *rng, D, J, n_groups,
        HAS_SCORE=score is not None, HAS_EXTRA=extra is not None, GUIDED=shift is not None,
        HAS_NOISE=noise is not None,
        PER_CHAIN=eps is not None, EVEN4=(D % 4 == 0), IDX64=need_idx64(B * J * 4),
        BLOCK_G=block_g, RNG_T=rng_t, num_warps=QUAD_WARPS, enable_fp_fusion=False)
    return out


def sde_step(x, score, extra_drift, noise, seed, offset, chain_offset, a, c_s, c_n, out=None):
    return affine_noise(x, score, extra_drift, noise, None, a, c_s, c_n, seed, offset, chain_offset, out)


def guided_sde_step(x, score, score_shift, v, noise, seed, offset, chain_offset, a, c_s, c_v, c_diff, c_n, out=None):
    return affine_noise(x, score, v, noise, None, a, c_s, c_n, seed, offset, chain_offset, out, shift=score_shift,
                        c_v=c_v,
                        c_diff=c_diff)
