"""em_step_logprob (op 9): an Euler–Maruyama transition with its forward and Brownian-bridge
log-densities, and its backward.

Both are row kernels: one program per block of BLOCK_B chains, D tiled in a loop of
BLOCK_D columns, so any D works. One template per direction, specialised by constexprs:

    forward   HAS_LV (log_var given), GIVEN (x_next given: evaluate), HAS_NOISE (noise tensor;
              else the Philox draw (seed, offset), drawn per column tile with normal_cols),
              HAS_PB (b2 != 0)
    backward  HAS_LV, HAS_GXN (g_x_next given), HAS_PB, REPARAM, WANT_GXN

Per-call constants arrive as float64 and are rounded to the dtype once:
inv_s2 = 1/s2, inv_b2 = 1/b2, q = sqrt(s2 + e2), lpf0 = D log(2π s2), lpb0 = D log(2π b2).
With log_var, log(2π s²) = log(2π s2) + log_var: the row sum of log_var is accumulated
instead of a log per element.
"""
import math

import triton
import triton.language as tl

from fastsamp.backends._abi import em_step_grad_outputs, em_step_outputs
from fastsamp.ops import _ieee

from ._launch import INTERPRET, f64, launch, need_idx64, rng_args, row_grid, warps_for
from .random import global_chain, normal_cols, rng_words
from .tiles import col_tile, div_ieee, row_tile, sqrt_ieee

EM_MAX_BLOCK_D = 128
EM_TILE = 16384 if INTERPRET else 2048  # elements per program (fewer, larger ones under the interpreter)


@triton.jit(do_not_specialize=["k0", "k1", "o0", "o1", "chain0"])
def _em_step_logprob_kernel(x_ptr, dr_ptr, lv_ptr, xn_ptr, noise_ptr, y_ptr, pf_ptr, pb_ptr,
                            h: tl.float64, s2: tl.float64, e2: tl.float64, c: tl.float64, inv_s2: tl.float64,
                            inv_b2: tl.float64, q: tl.float64, lpf0: tl.float64, lpb0: tl.float64,
                            k0, k1, o0, o1, chain0, seed_p, offset_p, chain_p, B, D,
                            HAS_LV: tl.constexpr, GIVEN: tl.constexpr, HAS_NOISE: tl.constexpr,
                            HAS_PB: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
                            IDX64: tl.constexpr, RNG_T: tl.constexpr):
    """mean = x + h drift, s² = s2 e^{log_var}; x_next = mean + sqrt(s² + e2) xi unless GIVEN;
    v = x_next - mean, u = x - c x_next;
    log_pf = -½ (Σ v²/s² + Σ log_var + lpf0), log_pb = -½ (Σ u² / b2 + lpb0) (0 without HAS_PB)."""
    k0, k1, o0, o1, chain0 = rng_words(k0, k1, o0, o1, chain0, seed_p, offset_p, chain_p, RNG_T)
    rows, rmask, base, cols0 = row_tile(B, D, BLOCK_B, BLOCK_D, IDX64)
    DT: tl.constexpr = x_ptr.dtype.element_ty
    hh = h.to(DT)
    cc = c.to(DT)
    sv = tl.zeros([BLOCK_B], DT)
    slv = tl.zeros([BLOCK_B], DT)
    su = tl.zeros([BLOCK_B], DT)
    for d0 in range(0, D, BLOCK_D):
        m2, offs = col_tile(rmask, base, cols0, d0, D)
        x = tl.load(x_ptr + offs, mask=m2, other=0.0)
        mean = x + hh * tl.load(dr_ptr + offs, mask=m2, other=0.0)
        if HAS_LV:
            lv = tl.load(lv_ptr + offs, mask=m2, other=0.0)
            var = s2.to(DT) * tl.exp(lv)
        if GIVEN:
            y = tl.load(xn_ptr + offs, mask=m2, other=0.0)
        else:
            if HAS_NOISE:
                xi = tl.load(noise_ptr + offs, mask=m2, other=0.0)
            else:
                xi = normal_cols(k0, k1, o0, o1, global_chain(rows, chain0), d0 // 4, BLOCK_D // 4, DT)
            if HAS_LV:
                y = mean + sqrt_ieee(var + e2.to(DT)) * xi
            else:
                y = mean + q.to(DT) * xi
            tl.store(y_ptr + offs, y, mask=m2)
        v = tl.where(m2, y - mean, 0.0)
        if HAS_LV:
            sv += tl.sum(div_ieee(v * v, var), axis=1)
            slv += tl.sum(lv, axis=1)
        else:
            sv += tl.sum(v * v, axis=1)
        if HAS_PB:
            u = tl.where(m2, x - cc * y, 0.0)
            su += tl.sum(u * u, axis=1)
    if not HAS_LV:
        sv = sv * inv_s2.to(DT)
    tl.store(pf_ptr + rows, -0.5 * (sv + slv + lpf0.to(DT)), mask=rmask)
    if HAS_PB:
        tl.store(pb_ptr + rows, -0.5 * (su * inv_b2.to(DT) + lpb0.to(DT)), mask=rmask)
    else:
        tl.store(pb_ptr + rows, tl.zeros([BLOCK_B], DT), mask=rmask)


@triton.jit
def _em_step_logprob_backward_kernel(x_ptr, dr_ptr, lv_ptr, xn_ptr, gxn_ptr, gpf_ptr, gpb_ptr,
                                     gx_ptr, gdr_ptr, glv_ptr, gxno_ptr,
                                     h: tl.float64, s2: tl.float64, e2: tl.float64, c: tl.float64,
                                     inv_s2: tl.float64, inv_b2: tl.float64, B, D,
                                     HAS_LV: tl.constexpr, HAS_GXN: tl.constexpr, HAS_PB: tl.constexpr,
                                     REPARAM: tl.constexpr, WANT_GXN: tl.constexpr, BLOCK_B: tl.constexpr,
                                     BLOCK_D: tl.constexpr, IDX64: tl.constexpr):
    """v = x_next - x - h drift, u = x - c x_next, a = g_pf v / s², w = g_pb u / b2,
    G = g_x_next - a + c w; g_x = a - w + R G, g_drift = h (a + R G),
    g_log_var = g_pf (½ v²/s² - ½) + R G ½ s² v / (s² + e2), g_x_next = G."""
    rows, rmask, base, cols0 = row_tile(B, D, BLOCK_B, BLOCK_D, IDX64)
    DT: tl.constexpr = x_ptr.dtype.element_ty
    hh = h.to(DT)
    cc = c.to(DT)
    ga = tl.load(gpf_ptr + rows, mask=rmask, other=0.0)[:, None]
    gas = ga * inv_s2.to(DT)
    if HAS_PB:
        gw = (tl.load(gpb_ptr + rows, mask=rmask, other=0.0) * inv_b2.to(DT))[:, None]
    for d0 in range(0, D, BLOCK_D):
        m2, offs = col_tile(rmask, base, cols0, d0, D)
        x = tl.load(x_ptr + offs, mask=m2, other=0.0)
        y = tl.load(xn_ptr + offs, mask=m2, other=0.0)
        v = y - (x + hh * tl.load(dr_ptr + offs, mask=m2, other=0.0))
        if HAS_LV:
            var = s2.to(DT) * tl.exp(tl.load(lv_ptr + offs, mask=m2, other=0.0))
            a = div_ieee(ga * v, var)
        else:
            a = gas * v
        g = -a
        gx = a
        if HAS_PB:
            w = gw * (x - cc * y)
            g = g + cc * w
            gx = gx - w
        if HAS_GXN:
            g = g + tl.load(gxn_ptr + offs, mask=m2, other=0.0)
        if REPARAM:
            gx = gx + g
            a = a + g
        tl.store(gx_ptr + offs, gx, mask=m2)
        tl.store(gdr_ptr + offs, hh * a, mask=m2)
        if HAS_LV:
            gl = ga * (0.5 * div_ieee(v * v, var) - 0.5)
            if REPARAM:
                gl = gl + g * 0.5 * div_ieee(var * v, var + e2.to(DT))
            tl.store(glv_ptr + offs, gl, mask=m2)
        if WANT_GXN:
            tl.store(gxno_ptr + offs, g, mask=m2)


def _geometry(B, D):
    return row_grid(B, max(D, 4), EM_MAX_BLOCK_D, EM_TILE)  # BLOCK_D a multiple of 4: whole Philox groups


def em_step_logprob(x, drift, log_var, x_next, noise, seed, offset, chain_offset, h, s2, e2, c, b2):
    B, D = x.shape
    y, log_pf, log_pb = em_step_outputs(x, x_next)
    if B == 0:
        return y, log_pf, log_pb
    block_b, block_d, grid = _geometry(B, D)
    rng, rng_t = rng_args(seed, offset, chain_offset, x.device)
    has_pb = b2 != 0.0
    launch(_em_step_logprob_kernel, grid, x, drift, log_var, x_next, noise, y, log_pf, log_pb,
           f64(h), f64(s2), f64(e2), f64(c), f64(_ieee.div(1.0, s2)), f64(_ieee.div(1.0, b2) if has_pb else 0.0),
           f64(_ieee.sqrt(s2 + e2)), f64(D * _ieee.log(2 * math.pi * s2)),
           f64(D * _ieee.log(2 * math.pi * b2) if has_pb else 0.0),
           *rng, B, D,
           HAS_LV=log_var is not None, GIVEN=x_next is not None, HAS_NOISE=noise is not None, HAS_PB=has_pb,
           BLOCK_B=block_b, BLOCK_D=block_d, IDX64=need_idx64(B * D),
           RNG_T=rng_t, num_warps=warps_for(block_b * block_d), enable_fp_fusion=False)
    return y, log_pf, log_pb


def em_step_logprob_backward(x, drift, log_var, x_next, g_x_next, g_log_pf, g_log_pb, h, s2, e2, c, b2, reparam,
                             want_g_x_next):
    B, D = x.shape
    g_x, g_drift, g_log_var, g_xn = em_step_grad_outputs(x, log_var, want_g_x_next)
    if B == 0:
        return g_x, g_drift, g_log_var, g_xn
    block_b, block_d, grid = _geometry(B, D)
    has_pb = b2 != 0.0
    launch(_em_step_logprob_backward_kernel, grid, x, drift, log_var, x_next, g_x_next, g_log_pf, g_log_pb, g_x,
           g_drift, g_log_var, g_xn,
           f64(h), f64(s2), f64(e2), f64(c), f64(_ieee.div(1.0, s2)), f64(_ieee.div(1.0, b2) if has_pb else 0.0), B, D,
           HAS_LV=log_var is not None, HAS_GXN=g_x_next is not None, HAS_PB=has_pb, REPARAM=bool(reparam),
           WANT_GXN=bool(want_g_x_next), BLOCK_B=block_b, BLOCK_D=block_d, IDX64=need_idx64(B * D),
           num_warps=warps_for(block_b * block_d), enable_fp_fusion=False)
    return g_x, g_drift, g_log_var, g_xn
