"""Gaussian-mixture score kernels: gmm_score and the mixture evaluator `gmm_eval` (the whole-move gmm_mala and
gmm_hmc run it in the move kernels of moves.py).

Mixture (docs/backend-contract.md op 1): s_k = alpha^2 v_k + sigma2,
l_k(x) = lw_k - |x - alpha mu_k|^2 / (2 s_k) - (D/2) log(2 pi s_k) with
lw = log_weights - logsumexp(log_weights); logp = logsumexp_k l_k,
score = sum_k softmax(l)_k (alpha mu_k - x) / s_k.

`_gmm_prep_kernel` computes the per-component constants once per call
(c_k = lw_k - (D/2) log(2 pi s_k) and 1/s_k). `gmm_eval` evaluates the mixture on a
[BLOCK_B, BLOCK_D] register tile holding whole rows, looping over the K components
with an online (flash-attention style) log-sum-exp: running max m, running sum
l = sum_k exp(l_k - m), acc = sum_k e_k alpha mu_k / s_k ([BLOCK_B, BLOCK_D]) and
a = sum_k e_k / s_k, all rescaled by exp(m_old - m_new) when the max grows;
score = (acc - x a) / l, logp = m + log l.
"""

import torch
import triton
import triton.language as tl

from fastsamp.backends._abi import score_outputs

from ._launch import f64, launch, need_idx64, next_pow2, rows_block, warps_for
from .random import TWO_PI
from .tiles import div_ieee, row_index

GMM_SCORE_MAX_D = 4096      # whole rows in registers: BLOCK_D = next_pow2(D) <= 4096
GMM_MALA_MAX_D = 128        # state x, s(x), x', s(x'), ... of BLOCK_B chains stay in registers (also gmm_hmc)
LSE_BLOCK_K = 256
# fp32 elements of one program's [BLOCK_B, BLOCK_D] tile of gmm_score (halved for fp64); measured on an H100:
# 4096 is within noise of 2048 / 8192 (the move kernels' tiles: moves.GMM_MALA_TILE)
GMM_SCORE_TILE = 4096


@triton.jit
def log_weight_norm(lw_ptr, K, BLOCK_K: tl.constexpr):
    """logsumexp of the K unnormalised log-weights (a scalar, in their dtype)."""
    DT: tl.constexpr = lw_ptr.dtype.element_ty
    ks = tl.arange(0, BLOCK_K)
    v = tl.load(lw_ptr + ks, mask=ks < K, other=float("-inf"))
    m = tl.max(v, axis=0)
    ssum = tl.sum(tl.exp(v - m), axis=0)
    for k0 in range(BLOCK_K, K, BLOCK_K):
        v = tl.load(lw_ptr + k0 + ks, mask=k0 + ks < K, other=float("-inf"))
        m_new = tl.maximum(m, tl.max(v, axis=0))
        ssum = ssum * tl.exp(m - m_new) + tl.sum(tl.exp(v - m_new), axis=0)
        m = m_new
    return (m + tl.log(ssum)).to(DT)


@triton.jit
def _gmm_prep_kernel(lw_ptr, var_ptr, tab_ptr, alpha2_: tl.float64, sigma2_: tl.float64, K, D,
                     BLOCK_K: tl.constexpr):
    """Per-component constants, once per call: tab[k] = lw_k - (D/2) log(2 pi s_k) (lw
    normalised), tab[K + k] = 1 / s_k, with s_k = alpha^2 v_k + sigma2."""
    DT: tl.constexpr = lw_ptr.dtype.element_ty
    lw_norm = log_weight_norm(lw_ptr, K, BLOCK_K)
    alpha2 = alpha2_.to(DT)
    sigma2 = sigma2_.to(DT)
    two_pi = tl.full([], TWO_PI, DT)
    half_d = tl.cast(D, DT) * 0.5
    ks = tl.arange(0, BLOCK_K)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + ks
        km = kk < K
        s_k = alpha2 * tl.load(var_ptr + kk, mask=km, other=1.0) + sigma2
        c_k = (tl.load(lw_ptr + kk, mask=km, other=0.0) - lw_norm) - half_d * tl.log(two_pi * s_k)
        tl.store(tab_ptr + kk, c_k, mask=km)
        tl.store(tab_ptr + K + kk, div_ieee(tl.full([BLOCK_K], 1.0, DT), s_k), mask=km)


@triton.jit
def gmm_eval(x, mu_ptr, tab_ptr, K, D, cols, cmask, alpha, BLOCK_B: tl.constexpr):
    """score [BLOCK_B, BLOCK_D] and logp [BLOCK_B] of the mixture at the rows of x.

    x: [BLOCK_B, BLOCK_D] with zeros in the padding columns; cols / cmask: [1, BLOCK_D]
    column indices / mask; tab: the per-component constants of _gmm_prep_kernel;
    alpha: scalar in x's dtype."""
    DT: tl.constexpr = x.dtype
    m = tl.full([BLOCK_B], float("-inf"), DT)
    l = tl.zeros([BLOCK_B], DT)
    a = tl.zeros([BLOCK_B], DT)
    acc = tl.zeros(x.shape, DT)
    for k in range(K):
        c_k = tl.load(tab_ptr + k)
        inv_s = tl.load(tab_ptr + K + k)
        amu = alpha * tl.load(mu_ptr + k * D + cols, mask=cmask, other=0.0)  # [1, BLOCK_D]
        diff = x - amu
        d2 = tl.sum(diff * diff, axis=1)
        lk = c_k - d2 * (0.5 * inv_s)
        m_new = tl.maximum(m, lk)
        # every l_k so far -inf (an infinite chain, or zero-weight components): shift by 0, so
        # that the terms are exp(-inf) = 0 instead of exp(-inf + inf) = NaN and logp ends -inf
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        corr = tl.exp(m - shift)
        e = tl.exp(lk - shift)
        l = l * corr + e
        a = a * corr + e * inv_s
        acc = acc * corr[:, None] + e[:, None] * (amu * inv_s)
        m = m_new
    r = div_ieee(tl.full([BLOCK_B], 1.0, DT), l)
    score = (acc - x * a[:, None]) * r[:, None]
    logp = m + tl.log(l)
    return score, logp


@triton.jit
def _whole_rows(x_ptr, blk, B, D, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, IDX64: tl.constexpr):
    """The BLOCK_B chains of row block blk as whole rows (BLOCK_D >= D): row indices / mask, column
    indices / mask ([1, BLOCK_D]), the [BLOCK_B, BLOCK_D] element mask and offsets, and x (zeros
    in the padding)."""
    rows, rmask = row_index(blk, B, BLOCK_B, IDX64)
    cols = tl.arange(0, BLOCK_D)[None, :]
    cmask = cols < D
    m2 = rmask[:, None] & cmask
    offs = rows[:, None] * D + cols
    x = tl.load(x_ptr + offs, mask=m2, other=0.0)
    return rows, rmask, cols, cmask, m2, offs, x


@triton.jit
def _gmm_score_kernel(x_ptr, mu_ptr, tab_ptr, score_ptr, logp_ptr, alpha_: tl.float64, B, D, K,
                      BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, IDX64: tl.constexpr):
    rows, rmask, cols, cmask, m2, offs, x = _whole_rows(x_ptr, tl.program_id(0), B, D, BLOCK_B, BLOCK_D, IDX64)
    score, logp = gmm_eval(x, mu_ptr, tab_ptr, K, D, cols, cmask, alpha_.to(x.dtype), BLOCK_B)
    tl.store(score_ptr + offs, score, mask=m2)
    tl.store(logp_ptr + rows, logp, mask=rmask)


def _gmm_table(log_weights, variances, D, alpha, sigma2):
    K = log_weights.shape[0]
    tab = torch.empty((2 * K,), dtype=log_weights.dtype, device=log_weights.device)
    launch(_gmm_prep_kernel, (1,), log_weights, variances, tab, f64(alpha * alpha), f64(sigma2), K, D,
           BLOCK_K=min(next_pow2(K), LSE_BLOCK_K), num_warps=4)
    return tab


def _gmm_blocks(B, block_d, dtype, fp32_tile):
    tile = fp32_tile if dtype == torch.float32 else fp32_tile // 2
    block_b = rows_block(B, block_d, tile)
    return block_b, warps_for(block_b * block_d)


def gmm_score(x, means, log_weights, variances, alpha, sigma2):
    B, D = x.shape
    K = means.shape[0]
    if D > GMM_SCORE_MAX_D:
        raise ValueError(f"triton gmm_score supports D <= {GMM_SCORE_MAX_D}, got D={D}")
    score, logp = score_outputs(x)
    if B == 0:
        return score, logp
    block_d = next_pow2(D)
    block_b, warps = _gmm_blocks(B, block_d, x.dtype, GMM_SCORE_TILE)
    grid = (triton.cdiv(B, block_b),)
    alpha = float(alpha)
    tab = _gmm_table(log_weights, variances, D, alpha, sigma2)
    launch(_gmm_score_kernel, grid, x, means, tab, score, logp, f64(alpha), B, D, K,
           BLOCK_B=block_b, BLOCK_D=block_d, IDX64=need_idx64(B * D), num_warps=warps)
    return score, logp
