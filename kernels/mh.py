"""Metropolis-Hastings pieces: mala_propose, line_points, score_mh_accept, energy_mh_accept.

`_accept_kernel` is the per-chain reduction + select template shared with
hmc_accept (MODE 0: score-trapezoid MALA test, MODE 1: HMC energy test, MODE 2: exact-energy MALA test).
"""
import torch
import triton
import triton.language as tl

from fastsamp.backends._abi import accept_outputs, proposal_scores

from ._launch import FLAT_WARPS, flat_block, launch, need_idx64, rng_args, row_grid, warps_for
from .random import global_chain, rng_words, uniform_mh
from .sde import affine_noise
from .tiles import col_tile, div_ieee, row_tile

ACCEPT_MAX_BLOCK_D = 256
ACCEPT_TILE = 2048


def mala_propose(x, score, step_size, noise, seed, offset, chain_offset, out=None):
    return affine_noise(x, score, None, noise, step_size, 1.0, 0.0, 0.0, seed, offset, chain_offset, out)


@triton.jit
def _line_points_kernel(x_ptr, xp_ptr, out_ptr, numel, n, BLOCK: tl.constexpr, IDX64: tl.constexpr):
    pid = tl.program_id(0)
    if IDX64:
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    else:
        offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    d = tl.load(xp_ptr + offs, mask=mask, other=0.0) - x
    nf = tl.cast(n, x.dtype)
    out = out_ptr + offs
    for i in range(1, n):
        t = div_ieee(tl.cast(i, x.dtype), nf)
        tl.store(out, x + t * d, mask=mask)
        out += numel


def line_points(x, x_prop, n, out=None):
    B, D = x.shape
    n = int(n)
    if out is None:
        out = torch.empty((max(n - 1, 0), B, D), dtype=x.dtype, device=x.device)
    numel = x.numel()
    if numel == 0 or n <= 1:
        return out
    block = flat_block(numel)
    grid = (triton.cdiv(numel, block),)
    launch(_line_points_kernel, grid, x, x_prop, out, numel, n, BLOCK=block, IDX64=need_idx64(numel * n),
           num_warps=FLAT_WARPS, enable_fp_fusion=False)
    return out


@triton.jit(do_not_specialize=["k0", "k1", "o0", "o1", "chain0"])
def _accept_kernel(x_ptr, xp_ptr, s_ptr, sp_ptr, eps_ptr, int_ptr, p_ptr, pp_ptr, dlp_ptr, u_ptr, lp_ptr, lpp_ptr,
                   xo_ptr, so_ptr, lpo_ptr, acc_ptr, la_ptr, B, D, M, plane, k0, k1, o0, o1, chain0, seed_p, offset_p,
                   chain_p, MODE: tl.constexpr, DRAW: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
                   IDX64: tl.constexpr, RNG_T: tl.constexpr):
    """Per-chain log_alpha, accept test and select, for BLOCK_B chains, looping over D; u read from
    u_ptr, or (DRAW) the MH uniforms of draw ((k1:k0), (o1:o0)) of chains chain0 + row.

    MODE 0 (score_mh_accept): n = M + 1, d = x' - x,
        dlogp = (0.5 (s.d + s'.d) + sum_i int_i.d) / n,
        log_alpha = dlogp + (|d - eps s|^2 - |d + eps s'|^2) / (4 eps).
    MODE 1 (hmc_accept): log_alpha = delta_logp - 0.5 |p'|^2 + 0.5 |p|^2.
    MODE 2 (energy_mh_accept): log_alpha = (logp' - logp) + (|d - eps s|^2 - |d + eps s'|^2) / (4 eps); the kept
        logp is written too.
    """
    k0, k1, o0, o1, chain0 = rng_words(k0, k1, o0, o1, chain0, seed_p, offset_p, chain_p, RNG_T)
    rows, rmask, base, cols0 = row_tile(B, D, BLOCK_B, BLOCK_D, IDX64)
    DT: tl.constexpr = x_ptr.dtype.element_ty
    zero = tl.zeros([BLOCK_B], DT)
    if MODE != 1:  # the MALA proposal's densities (and for MODE 0 the trapezoid's dot products)
        eps = tl.load(eps_ptr + rows, mask=rmask, other=1.0)
        sd = zero
        spd = zero
        si = zero
        qf = zero
        qb = zero
        for d0 in range(0, D, BLOCK_D):
            m2, offs = col_tile(rmask, base, cols0, d0, D)
            x = tl.load(x_ptr + offs, mask=m2, other=0.0)
            dd = tl.load(xp_ptr + offs, mask=m2, other=0.0) - x
            s = tl.load(s_ptr + offs, mask=m2, other=0.0)
            sp = tl.load(sp_ptr + offs, mask=m2, other=0.0)
            if MODE == 0:
                sd += tl.sum(s * dd, axis=1)
                spd += tl.sum(sp * dd, axis=1)
                for i in range(M):
                    it = tl.load(int_ptr + i * plane + offs, mask=m2, other=0.0)
                    si += tl.sum(it * dd, axis=1)
            f = dd - eps[:, None] * s
            qf += tl.sum(f * f, axis=1)
            bk = dd + eps[:, None] * sp
            qb += tl.sum(bk * bk, axis=1)
        if MODE == 0:
            nf = tl.cast(M + 1, DT)
            dlogp = div_ieee(0.5 * (sd + spd) + si, nf)
        else:
            lp = tl.load(lp_ptr + rows, mask=rmask, other=0.0)
            lpp = tl.load(lpp_ptr + rows, mask=rmask, other=0.0)
            dlogp = lpp - lp
        la = dlogp + div_ieee(qf - qb, 4.0 * eps)
    else:
        kp = zero
        k = zero
        for d0 in range(0, D, BLOCK_D):
            m2, offs = col_tile(rmask, base, cols0, d0, D)
            pp = tl.load(pp_ptr + offs, mask=m2, other=0.0)
            p = tl.load(p_ptr + offs, mask=m2, other=0.0)
            kp += tl.sum(pp * pp, axis=1)
            k += tl.sum(p * p, axis=1)
        dlp = tl.load(dlp_ptr + rows, mask=rmask, other=0.0)
        la = dlp - 0.5 * kp + 0.5 * k
    if DRAW:
        u = uniform_mh(k0, k1, o0, o1, global_chain(rows, chain0), DT)
    else:
        u = tl.load(u_ptr + rows, mask=rmask, other=1.0)
    acc = tl.log(u) < la  # NaN -> False
    tl.store(la_ptr + rows, la, mask=rmask)
    tl.store(acc_ptr + rows, acc, mask=rmask)
    if MODE == 2:
        tl.store(lpo_ptr + rows, tl.where(acc, lpp, lp), mask=rmask)
    # select: read only the side that is kept
    a2 = acc[:, None]
    for d0 in range(0, D, BLOCK_D):
        m2, offs = col_tile(rmask, base, cols0, d0, D)
        xn = tl.where(a2, tl.load(xp_ptr + offs, mask=m2 & a2, other=0.0),
                      tl.load(x_ptr + offs, mask=m2 & ~a2, other=0.0))
        sn = tl.where(a2, tl.load(sp_ptr + offs, mask=m2 & a2, other=0.0),
                      tl.load(s_ptr + offs, mask=m2 & ~a2, other=0.0))
        tl.store(xo_ptr + offs, xn, mask=m2)
        tl.store(so_ptr + offs, sn, mask=m2)


def launch_accept(mode, x, x_prop, score, score_prop, step_size=None, interior=None,
                  p=None, p_prop=None, delta_logp=None, logp=None, logp_prop=None, u=None, seed=0, offset=0,
                  chain_offset=0, x_out=None, score_out=None):
    """_accept_kernel in MODE 0 (score_mh_accept: step_size, interior), 1 (hmc_accept: p, p_prop, delta_logp) or 2
    (energy_mh_accept: step_size, logp, logp_prop; logp_new is returned after score_new); u None: drawn in-kernel
    from (seed, offset, chain_offset); x_new / score_new written into x_out / score_out when given."""
    B, D = x.shape
    x_new, score_new, accepted, log_alpha = accept_outputs(x, x_out, score_out)
    logp_new = torch.empty(B, dtype=x.dtype, device=x.device) if mode == 2 else None
    outputs = (x_new, score_new) + ((logp_new,) if mode == 2 else ()) + (accepted, log_alpha)
    if B == 0:
        return outputs
    M = 0 if interior is None else int(interior.shape[0])
    block_b, block_d, grid = row_grid(B, D, ACCEPT_MAX_BLOCK_D, ACCEPT_TILE)
    rng, rng_t = rng_args(seed, offset, chain_offset, x.device)
    launch(_accept_kernel, grid, x, x_prop, score, score_prop, step_size, interior, p, p_prop, delta_logp, u, logp,
           logp_prop, x_new, score_new, logp_new, accepted, log_alpha, B, D, M, B * D, *rng, MODE=mode,
           DRAW=u is None, BLOCK_B=block_b, BLOCK_D=block_d,
           IDX64=need_idx64(B * D * max(M, 1)), RNG_T=rng_t, num_warps=warps_for(block_b * block_d),
           enable_fp_fusion=False)
    return outputs


def score_mh_accept(x, x_prop, score, score_prop, step_size, u, interior, seed, offset, chain_offset, x_out=None,
                    score_out=None):
    score_prop, interior = proposal_scores(score_prop, interior, x.shape[0])
    if interior is not None and interior.shape[0] == 0:
        interior = None
    return launch_accept(0, x, x_prop, score, score_prop, step_size=step_size, interior=interior, u=u, seed=seed,
                         offset=offset, chain_offset=chain_offset, x_out=x_out, score_out=score_out)


def energy_mh_accept(x, x_prop, score, score_prop, logp, logp_prop, step_size, u, seed, offset, chain_offset):
    return launch_accept(2, x, x_prop, score, score_prop, step_size=step_size, logp=logp, logp_prop=logp_prop, u=u,
                         seed=seed, offset=offset, chain_offset=chain_offset)
