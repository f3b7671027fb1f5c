"""HMC pieces: leapfrog, leapfrog_finish, hmc_accept, momentum_refresh."""
import math

import torch
import triton
import triton.language as tl

from ._launch import QUAD_WARPS, launch, need_idx64, quad_grid, row_grid, warps_for
from .mh import launch_accept
from .sde import affine_noise
from .tiles import col_tile, quad_tile, row_tile

FINISH_MAX_BLOCK_D = 256
FINISH_TILE = 2048


@triton.jit
def _leapfrog_kernel(x_ptr, p_ptr, s_ptr, eps_ptr, xo_ptr, po_ptr, D, J, n_groups,
                     EVEN4: tl.constexpr, IDX64: tl.constexpr, BLOCK_G: tl.constexpr):
    """p_half = p + (eps/2) score ; x_next = x + eps p_half (per-chain eps)."""
    pid = tl.program_id(0)
    b, j, gmask, lane, offs, mask = quad_tile(pid, D, J, n_groups, BLOCK_G, EVEN4, IDX64)
    eps = tl.load(eps_ptr + b, mask=gmask, other=0.0)
    e = eps[:, None]
    h = (0.5 * eps)[:, None]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    p = tl.load(p_ptr + offs, mask=mask, other=0.0)
    s = tl.load(s_ptr + offs, mask=mask, other=0.0)
    ph = p + h * s
    tl.store(po_ptr + offs, ph, mask=mask)
    tl.store(xo_ptr + offs, x + e * ph, mask=mask)


def leapfrog(x, p, score, step_size):
    B, D = x.shape
    x_next = torch.empty_like(x)
    p_half = torch.empty_like(x)
    if x.numel() == 0:
        return x_next, p_half
    J, n_groups, block_g, grid = quad_grid(B, D)
    launch(_leapfrog_kernel, grid, x, p, score, step_size, x_next, p_half, D, J, n_groups, EVEN4=(D % 4 == 0),
           IDX64=need_idx64(n_groups * 4), BLOCK_G=block_g, num_warps=QUAD_WARPS, enable_fp_fusion=False)
    return x_next, p_half


@triton.jit
def _leapfrog_finish_kernel(x_ptr, xn_ptr, ph_ptr, s_ptr, sn_ptr, eps_ptr, dlp_ptr, po_ptr, dlpo_ptr,
                            B, D, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, IDX64: tl.constexpr):
    """p_next = p_half + (eps/2) score_next ;
    delta_logp_next = delta_logp + 0.5 (score + score_next).(x_next - x)."""
    rows, rmask, base, cols0 = row_tile(B, D, BLOCK_B, BLOCK_D, IDX64)
    eps = tl.load(eps_ptr + rows, mask=rmask, other=0.0)
    h = (0.5 * eps)[:, None]
    dot = tl.zeros([BLOCK_B], eps.dtype)
    for d0 in range(0, D, BLOCK_D):
        m2, offs = col_tile(rmask, base, cols0, d0, D)
        x = tl.load(x_ptr + offs, mask=m2, other=0.0)
        xn = tl.load(xn_ptr + offs, mask=m2, other=0.0)
        ph = tl.load(ph_ptr + offs, mask=m2, other=0.0)
        s = tl.load(s_ptr + offs, mask=m2, other=0.0)
        sn = tl.load(sn_ptr + offs, mask=m2, other=0.0)
        tl.store(po_ptr + offs, ph + h * sn, mask=m2)
        dot += tl.sum((s + sn) * (xn - x), axis=1)
    dlp = tl.load(dlp_ptr + rows, mask=rmask, other=0.0)
    tl.store(dlpo_ptr + rows, dlp + 0.5 * dot, mask=rmask)


def leapfrog_finish(x, x_next, p_half, score, score_next, step_size, delta_logp):
    B, D = x.shape
    p_next = torch.empty_like(x)
    dlp_next = torch.empty((B,), dtype=x.dtype, device=x.device)
    if B == 0:
        return p_next, dlp_next
    block_b, block_d, grid = row_grid(B, D, FINISH_MAX_BLOCK_D, FINISH_TILE)
    launch(_leapfrog_finish_kernel, grid, x, x_next, p_half, score, score_next, step_size, delta_logp, p_next,
           dlp_next, B, D, BLOCK_B=block_b, BLOCK_D=block_d, IDX64=need_idx64(B * D),
           num_warps=warps_for(block_b * block_d), enable_fp_fusion=False)
    return p_next, dlp_next


def hmc_accept(x, x_prop, score, score_prop, p, p_prop, delta_logp, u, seed, offset, chain_offset):
    return launch_accept(1, x, x_prop, score, score_prop, p=p, p_prop=p_prop, delta_logp=delta_logp, u=u, seed=seed,
                         offset=offset, chain_offset=chain_offset)


def momentum_refresh(p, damping, noise, seed, offset, chain_offset):
    damping = float(damping)
    c = math.sqrt(1.0 - damping * damping)
    return affine_noise(p, None, None, noise, None, damping, 0.0, c, seed, offset, chain_offset)
