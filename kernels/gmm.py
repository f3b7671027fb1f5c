"""Gaussian-mixture score kernels: gmm_score and the whole-move gmm_mala and gmm_hmc.

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
import math

import torch
import triton
import triton.language as tl

from fastsamp.backends._abi import move_outputs, score_outputs

from ._launch import INTERPRET, f64, launch, need_idx64, next_pow2, rng_args, rows_block, warps_for
from .random import TWO_PI, global_chain, normal_rows, offset_add, rng_words, uniform_mh
from .tiles import div_ieee, row_index, sqrt_ieee

GMM_SCORE_MAX_D = 4096      # whole rows in registers: BLOCK_D = next_pow2(D) <= 4096
GMM_MALA_MAX_D = 128        # state x, s(x), x', s(x'), ... of BLOCK_B chains stay in registers (also gmm_hmc)
LSE_BLOCK_K = 256
# fp32 elements of one program's [BLOCK_B, BLOCK_D] tile (halved for fp64). Measured on
# an H100 (fp32): gmm_mala 1024 is best for small D, 2048 for D >= 64 (~15% faster);
# gmm_score 4096 is within noise of 2048 / 8192. Under the interpreter, where a program costs
# a python-level loop over the moves and components, the whole-move tiles are 4x larger.
GMM_SCORE_TILE = 4096
GMM_MALA_TILE = 4096 if INTERPRET else 1024
GMM_MALA_TILE_WIDE = 8192 if INTERPRET else 2048   # BLOCK_D >= 64


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
def _whole_rows(x_ptr, B, D, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, IDX64: tl.constexpr):
    """The BLOCK_B chains of this program as whole rows (BLOCK_D >= D): row indices / mask, column
    indices / mask ([1, BLOCK_D]), the [BLOCK_B, BLOCK_D] element mask and offsets, and x (zeros
    in the padding)."""
    rows, rmask = row_index(tl.program_id(0), B, BLOCK_B, IDX64)
    cols = tl.arange(0, BLOCK_D)[None, :]
    cmask = cols < D
    m2 = rmask[:, None] & cmask
    offs = rows[:, None] * D + cols
    x = tl.load(x_ptr + offs, mask=m2, other=0.0)
    return rows, rmask, cols, cmask, m2, offs, x


@triton.jit
def _gmm_score_kernel(x_ptr, mu_ptr, tab_ptr, score_ptr, logp_ptr, alpha_: tl.float64, B, D, K,
                      BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, IDX64: tl.constexpr):
    rows, rmask, cols, cmask, m2, offs, x = _whole_rows(x_ptr, B, D, BLOCK_B, BLOCK_D, IDX64)
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


@triton.jit
def _chain_tile(x_ptr, eps_ptr, B, D, BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr, IDX64: tl.constexpr):
    """_whole_rows of the whole-move kernels (BLOCK_D = 4 BLOCK_J: whole Philox draws) and the
    step sizes (1 in the padding rows)."""
    rows, rmask, cols, cmask, m2, offs, x = _whole_rows(x_ptr, B, D, BLOCK_B, 4 * BLOCK_J, IDX64)
    eps = tl.load(eps_ptr + rows, mask=rmask, other=1.0)
    return rows, rmask, cols, cmask, m2, offs, x, eps


@triton.jit
def _store_moves(xo_ptr, rate_ptr, x, offs, m2, rows, rmask, n_acc, n_steps):
    """Final state and acceptance rate n_acc / n_steps of a whole-move kernel."""
    DT: tl.constexpr = x.dtype
    tl.store(xo_ptr + offs, x, mask=m2)
    rate = div_ieee(n_acc.to(DT), tl.cast(n_steps, DT))
    tl.store(rate_ptr + rows, rate, mask=rmask)


@triton.jit
def _move_normals(k0, k1, o0, o1, mv, rows, cmask, BLOCK_J: tl.constexpr, DT: tl.constexpr):
    """Offset of move mv (offset + mv as two words) and its normals ξ (zeros in the padding)."""
    om0, om1 = offset_add(o0, o1, mv)
    xi = normal_rows(k0, k1, om0, om1, rows, BLOCK_J, DT)
    return om0, om1, tl.where(cmask, xi, 0.0)


@triton.jit
def _mh_accepts(la, k0, k1, o0, o1, chains, rmask, DT: tl.constexpr):
    """The MH decision of a move: log u < log α, u the move's uniform of draw (seed, offset) =
    ((k1:k0), (o1:o0)) (NaN: reject); never for the padding rows."""
    u = uniform_mh(k0, k1, o0, o1, chains, DT)
    return (tl.log(u) < la) & rmask


@triton.jit
def _keep_accepted(acc, x, s, logp, xp, sp, logpp):
    """The state (x, s(x), logp(x)) after a move: the proposal's where accepted."""
    a2 = acc[:, None]
    return tl.where(a2, xp, x), tl.where(a2, sp, s), tl.where(acc, logpp, logp)


@triton.jit(do_not_specialize=["k0", "k1", "o0", "o1", "chain0"])
def _gmm_mala_kernel(x_ptr, mu_ptr, tab_ptr, eps_ptr, xo_ptr, rate_ptr, alpha_: tl.float64,
                     k0, k1, o0, o1, chain0, seed_p, offset_p, chain_p, B, D, K, n_steps, n_trap,
                     MH_MODE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr,
                     IDX64: tl.constexpr, RNG_T: tl.constexpr):
    """n_steps MALA moves of BLOCK_B chains; x, s(x), logp(x) stay in registers.

    MH_MODE 0: trapezoid score test with n_trap sub-intervals, 1: exact energy test,
    2: no test (ULA). Move m draws xi and u from (seed, offset + m)."""
    k0, k1, o0, o1, chain0 = rng_words(k0, k1, o0, o1, chain0, seed_p, offset_p, chain_p, RNG_T)
    rows, rmask, cols, cmask, m2, offs, x, eps = _chain_tile(x_ptr, eps_ptr, B, D, BLOCK_B, BLOCK_J, IDX64)
    chains = global_chain(rows, chain0)
    DT: tl.constexpr = x.dtype
    alpha = alpha_.to(DT)
    e2 = eps[:, None]
    c_n = sqrt_ieee(2.0 * eps)[:, None]
    e4 = 4.0 * eps
    nf = tl.cast(n_trap, DT)
    s, logp = gmm_eval(x, mu_ptr, tab_ptr, K, D, cols, cmask, alpha, BLOCK_B)
    n_acc = tl.zeros([BLOCK_B], tl.int32)
    for mv in range(n_steps):
        om0, om1, xi = _move_normals(k0, k1, o0, o1, mv, chains, cmask, BLOCK_J, DT)
        xp = x + e2 * s + c_n * xi
        sp, logpp = gmm_eval(xp, mu_ptr, tab_ptr, K, D, cols, cmask, alpha, BLOCK_B)
        if MH_MODE == 2:
            acc = rmask
        else:
            d = xp - x
            if MH_MODE == 0:
                si = tl.zeros([BLOCK_B], DT)
                for i in range(1, n_trap):
                    t = div_ieee(tl.cast(i, DT), nf)
                    si_s, si_l = gmm_eval(x + t * d, mu_ptr, tab_ptr, K, D, cols, cmask, alpha, BLOCK_B)
                    si += tl.sum(si_s * d, axis=1)
                dlogp = div_ieee(0.5 * (tl.sum(s * d, axis=1) + tl.sum(sp * d, axis=1)) + si, nf)
            else:
                dlogp = logpp - logp
            f = d - e2 * s
            bk = d + e2 * sp
            la = dlogp + div_ieee(tl.sum(f * f, axis=1) - tl.sum(bk * bk, axis=1), e4)
            acc = _mh_accepts(la, k0, k1, om0, om1, chains, rmask, DT)
        x, s, logp = _keep_accepted(acc, x, s, logp, xp, sp, logpp)
        n_acc += acc.to(tl.int32)
    _store_moves(xo_ptr, rate_ptr, x, offs, m2, rows, rmask, n_acc, n_steps)


@triton.jit(do_not_specialize=["k0", "k1", "o0", "o1", "chain0"])
def _gmm_hmc_kernel(x_ptr, mu_ptr, tab_ptr, eps_ptr, xo_ptr, rate_ptr, alpha_: tl.float64,
                    k0, k1, o0, o1, chain0, seed_p, offset_p, chain_p, B, D, K, n_steps, n_lf, damping_: tl.float64,
                    c_n_: tl.float64,
                    MH_MODE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr,
                    IDX64: tl.constexpr, RNG_T: tl.constexpr):
    """n_steps HMC moves of BLOCK_B chains; x, s(x), logp(x) and the momentum p stay in
    registers. Move m: p0 = damping p + c_n xi, n_lf leapfrog steps, then the trapezoid
    (MH_MODE 0), energy (1) or no (2) test; on rejection p = −p0."""
    k0, k1, o0, o1, chain0 = rng_words(k0, k1, o0, o1, chain0, seed_p, offset_p, chain_p, RNG_T)
    rows, rmask, cols, cmask, m2, offs, x, eps = _chain_tile(x_ptr, eps_ptr, B, D, BLOCK_B, BLOCK_J, IDX64)
    chains = global_chain(rows, chain0)
    DT: tl.constexpr = x.dtype
    alpha = alpha_.to(DT)
    damping = damping_.to(DT)
    c_n = c_n_.to(DT)
    e2 = eps[:, None]
    he = (0.5 * eps)[:, None]
    s, logp = gmm_eval(x, mu_ptr, tab_ptr, K, D, cols, cmask, alpha, BLOCK_B)
    p = tl.zeros(x.shape, DT)
    n_acc = tl.zeros([BLOCK_B], tl.int32)
    for mv in range(n_steps):
        om0, om1, xi = _move_normals(k0, k1, o0, o1, mv, chains, cmask, BLOCK_J, DT)
        p0 = damping * p + c_n * xi
        xl = x
        sl = s
        pl = p0
        logpl = logp
        dlogp = tl.zeros([BLOCK_B], DT)
        for _j in range(n_lf):
            ph = pl + he * sl
            xn = xl + e2 * ph
            sn, logpl = gmm_eval(xn, mu_ptr, tab_ptr, K, D, cols, cmask, alpha, BLOCK_B)
            pl = ph + he * sn
            dlogp += 0.5 * tl.sum((sl + sn) * (xn - xl), axis=1)
            xl = xn
            sl = sn
        if MH_MODE == 2:
            acc = rmask
        else:
            if MH_MODE == 1:
                dlogp = logpl - logp
            la = (dlogp - 0.5 * tl.sum(pl * pl, axis=1)) + 0.5 * tl.sum(p0 * p0, axis=1)
            acc = _mh_accepts(la, k0, k1, om0, om1, chains, rmask, DT)
        x, s, logp = _keep_accepted(acc, x, s, logp, xl, sl, logpl)
        p = tl.where(acc[:, None], pl, -p0)  # rejected: momentum flip keeps partial refresh exact
        n_acc += acc.to(tl.int32)
    _store_moves(xo_ptr, rate_ptr, x, offs, m2, rows, rmask, n_acc, n_steps)


def _whole_move(kernel, name, x, means, log_weights, variances, step_size, n_steps, n_inner, alpha, sigma2,
                seed, offset, chain_offset, mh, *extra):
    """Shared host side of the whole-move kernels: checks, outputs, the n_steps <= 0 copy, the
    block shape, the component table and the launch with (..., n_steps, n_inner, *extra)."""
    B, D = x.shape
    K = means.shape[0]
    if D > GMM_MALA_MAX_D:
        raise ValueError(f"triton {name} supports D <= {GMM_MALA_MAX_D}, got D={D}")
    mh = int(mh)
    if mh not in (0, 1, 2):
        raise ValueError(f"mh must be 0, 1 or 2, got {mh}")
    x_new, rate = move_outputs(x)
    if B == 0:
        return x_new, rate
    n_steps = int(n_steps)
    if n_steps <= 0:
        x_new.copy_(x)
        rate.zero_()
        return x_new, rate
    block_j = next_pow2((D + 3) // 4)
    block_d = 4 * block_j
    block_b, warps = _gmm_blocks(B, block_d, x.dtype, GMM_MALA_TILE_WIDE if block_d >= 64 else GMM_MALA_TILE)
    grid = (triton.cdiv(B, block_b),)
    rng, rng_t = rng_args(seed, offset, chain_offset, x.device)
    alpha = float(alpha)
    tab = _gmm_table(log_weights, variances, D, alpha, sigma2)
    launch(kernel, grid, x, means, tab, step_size, x_new, rate, f64(alpha), *rng,
           B, D, K, n_steps, int(n_inner), *extra, MH_MODE=mh, BLOCK_B=block_b, BLOCK_J=block_j,
           IDX64=need_idx64(B * D), RNG_T=rng_t, num_warps=warps)
    return x_new, rate


def gmm_mala(x, means, log_weights, variances, step_size, n_steps, n_trapezoid, alpha, sigma2,
             seed, offset, chain_offset, mh):
    return _whole_move(_gmm_mala_kernel, "gmm_mala", x, means, log_weights, variances, step_size, n_steps,
                       n_trapezoid, alpha, sigma2, seed, offset, chain_offset, mh)


def gmm_hmc(x, means, log_weights, variances, step_size, n_steps, n_leapfrog, alpha, sigma2,
            seed, offset, chain_offset, mh, damping):
    damping = float(damping)
    return _whole_move(_gmm_hmc_kernel, "gmm_hmc", x, means, log_weights, variances, step_size, n_steps,
                       n_leapfrog, alpha, sigma2, seed, offset, chain_offset, mh, f64(damping),
                       f64(math.sqrt(1.0 - damping * damping)))
