"""Philox4x32-10 and the fastsamp random streams as @triton.jit helpers.

Stream layout (docs/backend-contract.md, identical bits on every backend):

* normal xi[b, d] of draw (seed, offset): j = d // 4, lane = d % 4,
  r = philox((j, b, offset_lo, offset_hi), (seed_lo, seed_hi)); the pair
  (r[2q], r[2q+1]) with q = lane // 2 gives u1 = uniform_open, u2 = uniform_closed;
  Box-Muller sqrt(-2 log u1) * (cos if lane even else sin)(2 pi u2).
* MH uniform of chain b: uniform_open(philox((0xFFFFFFFF, b, offset_lo, offset_hi), key)[0]).

b is the global chain index: local row i of a batch that starts at global chain chain0
draws with b = chain0 + i (global_chain), so chains draw the same noise in any batch.

All seed / offset halves are uint32 scalars inside the kernels. `normal` and `uniform` at the
end are the Triton backend of ops.normal / ops.uniform.
"""
import torch
import triton
import triton.language as tl

from ._launch import FLAT_WARPS, QUAD_WARPS, flat_block, launch, need_idx64, quad_grid, rng_args
from .tiles import quad_tile, sqrt_ieee

PHILOX_M0 = tl.constexpr(0xD2511F53)
PHILOX_M1 = tl.constexpr(0xCD9E8D57)
PHILOX_W0 = tl.constexpr(0x9E3779B9)
PHILOX_W1 = tl.constexpr(0xBB67AE85)
TWO_PI = tl.constexpr(6.283185307179586)
TWO_M32 = tl.constexpr(2.3283064365386963e-10)  # 2**-32
TWO_M33 = tl.constexpr(1.1641532182693481e-10)  # 2**-33


@triton.jit
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32 with 10 rounds; all arguments uint32 (tensors or scalars)."""
    c0 = tl.cast(c0, tl.uint32)
    c1 = tl.cast(c1, tl.uint32)
    c2 = tl.cast(c2, tl.uint32)
    c3 = tl.cast(c3, tl.uint32)
    k0 = tl.cast(k0, tl.uint32)
    k1 = tl.cast(k1, tl.uint32)
    m0 = tl.full([], PHILOX_M0, tl.uint32)
    m1 = tl.full([], PHILOX_M1, tl.uint32)
    for r in tl.static_range(10):
        hi0 = tl.umulhi(m0, c0)
        lo0 = m0 * c0
        hi1 = tl.umulhi(m1, c2)
        lo1 = m1 * c2
        c0 = hi1 ^ c1 ^ k0
        c1 = lo1
        c2 = hi0 ^ c3 ^ k1
        c3 = lo0
        if r < 9:
            k0 = k0 + PHILOX_W0
            k1 = k1 + PHILOX_W1
    return c0, c1, c2, c3


@triton.jit
def uniform_open(r, DTYPE: tl.constexpr):
    """T(r) * 2^-32 + 2^-33, in (0, 1]."""
    return r.to(DTYPE) * TWO_M32 + TWO_M33


@triton.jit
def uniform_closed(r, DTYPE: tl.constexpr):
    """T(r) * 2^-32, in [0, 1]."""
    return r.to(DTYPE) * TWO_M32


@triton.jit
def offset_add(o0, o1, m):
    """(o0, o1) + m as a 64-bit number in two uint32 halves (m >= 0, < 2**32)."""
    o0 = tl.cast(o0, tl.uint32)
    o1 = tl.cast(o1, tl.uint32)
    lo = o0 + tl.cast(m, tl.uint32)
    hi = o1 + (lo < o0).to(tl.uint32)
    return lo, hi


@triton.jit
def global_chain(rows, chain0):
    """The Philox chain word of local rows: chain0 + rows (< 2**32) as uint32."""
    return tl.cast(rows, tl.uint32) + tl.cast(chain0, tl.uint32)


@triton.jit
def normal4(k0, k1, o0, o1, j, b, DTYPE: tl.constexpr):
    """The four normals xi[b, 4j + lane], lane = 0..3, of draw (seed, offset) = ((k1:k0), (o1:o0)).

    j and b are integer tensors of one shape; returns four tensors of that shape."""
    r0, r1, r2, r3 = philox4x32_10(j, b, o0, o1, k0, k1)
    rad01 = sqrt_ieee(-2.0 * tl.log(uniform_open(r0, DTYPE)))
    two_pi = tl.full([], TWO_PI, DTYPE)  # rounded once to DTYPE, like 2 * math.pi * u2
    ang01 = two_pi * uniform_closed(r1, DTYPE)
    rad23 = sqrt_ieee(-2.0 * tl.log(uniform_open(r2, DTYPE)))
    ang23 = two_pi * uniform_closed(r3, DTYPE)
    z0 = rad01 * tl.cos(ang01)
    z1 = rad01 * tl.sin(ang01)
    z2 = rad23 * tl.cos(ang23)
    z3 = rad23 * tl.sin(ang23)
    return z0, z1, z2, z3


@triton.jit
def select_lane(z0, z1, z2, z3, lane):
    """[G, 4] tile of normals from four [G] vectors (lane: [4] int vector)."""
    l2 = lane[None, :]
    return tl.where(l2 == 0, z0[:, None],
                    tl.where(l2 == 1, z1[:, None], tl.where(l2 == 2, z2[:, None], z3[:, None])))


@triton.jit
def normal_rows(k0, k1, o0, o1, rows, BLOCK_J: tl.constexpr, DTYPE: tl.constexpr):
    """[BLOCK_B, 4 * BLOCK_J] tile of normals xi[rows, 0 : 4 * BLOCK_J]."""
    return normal_cols(k0, k1, o0, o1, rows, 0, BLOCK_J, DTYPE)


@triton.jit
def normal_cols(k0, k1, o0, o1, rows, j0, BLOCK_J: tl.constexpr, DTYPE: tl.constexpr):
    """[BLOCK_B, 4 * BLOCK_J] tile of normals xi[rows, 4 j0 : 4 (j0 + BLOCK_J)] (a column tile of
    a row-reduction loop over D; j0 = first group)."""
    j = j0 + tl.arange(0, BLOCK_J)[None, :]
    b = rows[:, None]
    z0, z1, z2, z3 = normal4(k0, k1, o0, o1, j, b, DTYPE)
    z = tl.join(tl.join(z0, z2), tl.join(z1, z3))  # [BB, BJ, 2, 2] -> lane = 2 * i + l
    return tl.reshape(z, [rows.shape[0], 4 * BLOCK_J])


@triton.jit
def uniform_mh(k0, k1, o0, o1, rows, DTYPE: tl.constexpr):
    """MH uniforms u[rows] in (0, 1] of draw (seed, offset)."""
    c0 = tl.full(rows.shape, 0xFFFFFFFF, tl.uint32)
    r0, r1, r2, r3 = philox4x32_10(c0, rows, o0, o1, k0, k1)
    return uniform_open(r0, DTYPE)


@triton.jit
def _u64_words(p):
    """The uint32 halves (lo, hi) of the int64 at p (a u64 in two's complement)."""
    v = tl.load(p).to(tl.uint64, bitcast=True)
    return v.to(tl.uint32), (v >> 32).to(tl.uint32)


@triton.jit
def rng_words(k0, k1, o0, o1, chain0, seed_p, offset_p, chain_p, RNG_T: tl.constexpr):
    """The Philox arguments of a kernel: the scalars, or those RNG_T marks (1 seed, 2 offset, 4 chain
    offset) loaded from their one-element int64 tensors (`_launch.rng_args`)."""
    if RNG_T & 1:
        k0, k1 = _u64_words(seed_p)
    if RNG_T & 2:
        o0, o1 = _u64_words(offset_p)
    if RNG_T & 4:
        chain0 = tl.load(chain_p)
    return k0, k1, o0, o1, chain0


# ------------------------------------------------------------------ ops.normal, ops.uniform

@triton.jit(do_not_specialize=["k0", "k1", "o0", "o1", "chain0"])
def _normal_kernel(out_ptr, k0, k1, o0, o1, chain0, seed_p, offset_p, chain_p, D, J, n_groups,
                   EVEN4: tl.constexpr, IDX64: tl.constexpr, BLOCK_G: tl.constexpr, DT: tl.constexpr,
                   RNG_T: tl.constexpr):
    """xi (B, D) over [BLOCK_G, 4] tiles of groups of 4 (one Philox call per group)."""
    k0, k1, o0, o1, chain0 = rng_words(k0, k1, o0, o1, chain0, seed_p, offset_p, chain_p, RNG_T)
    b, j, gmask, lane, offs, mask = quad_tile(tl.program_id(0), D, J, n_groups, BLOCK_G, EVEN4, IDX64)
    z0, z1, z2, z3 = normal4(k0, k1, o0, o1, j, global_chain(b, chain0), DT)
    tl.store(out_ptr + offs, select_lane(z0, z1, z2, z3, lane), mask=mask)


@triton.jit(do_not_specialize=["k0", "k1", "o0", "o1", "chain0"])
def _uniform_kernel(out_ptr, k0, k1, o0, o1, chain0, seed_p, offset_p, chain_p, B, BLOCK: tl.constexpr,
                    DT: tl.constexpr, RNG_T: tl.constexpr):
    k0, k1, o0, o1, chain0 = rng_words(k0, k1, o0, o1, chain0, seed_p, offset_p, chain_p, RNG_T)
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = rows < B
    tl.store(out_ptr + rows, uniform_mh(k0, k1, o0, o1, global_chain(rows, chain0), DT), mask=mask)


_TL_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64}


def normal(seed, offset, B, D, dtype, device, chain_offset):
    out = torch.empty(B, D, dtype=dtype, device=device)
    if out.numel() == 0:
        return out
    J, n_groups, block_g, grid = quad_grid(B, D)
    rng, rng_t = rng_args(seed, offset, chain_offset, out.device)
    launch(_normal_kernel, grid, out, *rng, D, J, n_groups, EVEN4=(D % 4 == 0),
           IDX64=need_idx64(B * J * 4), BLOCK_G=block_g, DT=_TL_DTYPES[dtype], RNG_T=rng_t, num_warps=QUAD_WARPS,
           enable_fp_fusion=False)
    return out


def uniform(seed, offset, B, dtype, device, chain_offset):
    out = torch.empty(B, dtype=dtype, device=device)
    if B == 0:
        return out
    block = flat_block(B)
    rng, rng_t = rng_args(seed, offset, chain_offset, out.device)
    launch(_uniform_kernel, (triton.cdiv(B, block),), out, *rng, B, BLOCK=block,
           DT=_TL_DTYPES[dtype], RNG_T=rng_t, num_warps=FLAT_WARPS, enable_fp_fusion=False)
    return out
