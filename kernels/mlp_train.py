"""The Triton training op of an energy network, mlp_net_energy_lsq (backend signature of docs/backend-contract.md,
op 19): the rows' denoising losses |σ s + z|² of the score s = −r/v + J_fᵀ r/√v, r = c − √v f(x), of one MLP
f (fastsamp.ops.mlp.mlp_net's packing: params = [W_0, b_0, W_out, b_out, W_1, b_1, ...]), and the gradients of
their mean to every weight, the algorithm of the C++ op (csrc/cpu/mlp_net.cpp) on a block of BLOCK_B rows:

1. the primal forward, keeping h_k, act'(z_k) and act''(z_k) of every layer (`_tiled_forward`, TRAIN);
2. r and the VJP J_fᵀ r (`_tiled_backward`), the loss and the score's cotangent u = (2/B) σ (σ s + z);
3. the tangent forward along the input direction (u, 0): ż_0 = W_0[:, :O] u, ż_k = W_k ḣ_{k−1},
   ḣ_k = act'(z_k) ⊙ ż_k, ṫ = W_out ḣ_L (`_tiled_forward`, TANGENT);
4. one reverse pass through both streams (`_energy_reverse`) from the cotangents ḡ = u/√v − ṫ of f and ġ = r/√v
   of ṫ: ġz_k = ġh_k ⊙ act'(z_k), ḡz_k = ḡh_k ⊙ act'(z_k) + ġh_k ⊙ act''(z_k) ⊙ ż_k, ḡh_{k−1} = W_kᵀ ḡz_k,
   ġh_{k−1} = W_kᵀ ġz_k; dW_k += ḡz_kᵀ h_{k−1} + ġz_kᵀ ḣ_{k−1}, db_k += Σ ḡz_k (the input layer's inputs x and
   (u, 0)).

Every layer runs on kernels/mlp_layers.py's tiled path (64-column chunks, HP a multiple of 64, the streams in a
per-program scratch; see its TRAIN layout), whatever the width. The programs of a persistent grid each add their
blocks' gradients to a row of their own (no atomics), summed over the programs afterwards (deterministic).
Dots in ieee precision. Never run on a GPU: checked by the interpreter tests and by compiling for sm_90.
"""
import torch
import triton
import triton.language as tl

from ._launch import INTERPRET, f64, launch, need_idx64, next_pow2
from .gmm import _whole_rows
from .mlp import _STAGES, MLP_MAX_D, persistent_programs
from .mlp_layers import (
    CHUNK,
    TANGENT,
    TRAIN,
    _act_tiles,
    _chunk_dot,
    _chunk_lanes,
    _h_tile,
    _tile,
    _tiled_backward,
    _tiled_forward,
)
from .tiles import div_ieee, sqrt_ieee

# the widest input row (x's D_in columns in registers); above it fastsamp.ops's "auto" runs the reference
MLP_NET_MAX_IN = MLP_MAX_D
_BLOCK_B = 32 if INTERPRET else 16
_RUNTIME_INTS = ["n_params", "NZ", "B", "Din", "O", "H", "L", "act", "off_wo", "off_bo", "off_h"]


@triton.jit
def _add_to(ptr, mask, value):
    """*ptr += value where mask (the program's own gradient row: no other program writes it)."""
    tl.store(ptr, tl.load(ptr, mask=mask, other=0.0) + value, mask=mask)


@triton.jit
def _bias_offset(k, row):
    """The offset of b_k (the bias of z_k: b_0, or hidden layer k − 1's) in the flat parameters."""
    off_w0, ld0, _, _, off_h, H, _, _ = row
    if k == 0:
        off = off_w0 + H * ld0
    else:
        off = off_h + (k - 1) * (H * H + H) + H * H
    return off


@triton.jit
def _stream_cotangents(gh_bar, gh_dot, zs, k, L, at, T, gp, row, o, om):
    """Stores (ḡz_k, ġz_k) of the cotangents (ḡh_k, ġh_k) of (h_k, ḣ_k) at the chunk `at` in the double tile of
    layer k's cotangents (primal rows, then tangent rows, `_g_tile`), and adds Σ_rows ḡz_k to db_k."""
    a1_at, a2_at = _act_tiles(zs, k, L, at, T)
    a1 = tl.load(a1_at)
    gz_bar = gh_bar * a1 + gh_dot * tl.load(a2_at)
    g = zs + _g_tile(k, L) * T + at
    tl.store(g, gz_bar)
    tl.store(g + T, gh_dot * a1)
    _add_to(gp + _bias_offset(k, row) + o, om, tl.sum(gz_bar, axis=0))


@triton.jit
def _g_tile(k, L):
    """The double scratch tile of layer k's cotangents (ḡz_k rows, then ġz_k rows): 0 and 6 + 4L in turn."""
    return (k % 2) * (6 + 4 * L)


@triton.jit
def _energy_reverse(x, u, g_bar, g_dot, w_ptr, gp, zs, O, row, HP: tl.constexpr):
    """Step 4 of the module's algorithm: adds the block's gradients to the program's row gp (flat, as the
    parameters), from the output cotangents g_bar = ḡ, g_dot = ġ [BLOCK_B, BLOCK_D] (zeros outside the block's
    rows and the O columns) and the scratch of the forwards (TRAIN layout, `_tiled_forward`)."""
    off_w0, ld0, off_wo, off_bo, off_h, H, L, _ = row
    BB: tl.constexpr = x.shape[0]
    c, slot, T, zero = _chunk_lanes(x, HP)
    d = tl.arange(0, x.shape[1])
    om_ = d < O
    rb = tl.arange(0, BB)
    r2 = tl.arange(0, 2 * BB)
    _add_to(gp + off_bo + d, om_, tl.sum(g_bar, axis=0))
    hs = zs + _h_tile(L, L, TRAIN) * T  # h_L, ḣ_L
    for o0 in range(0, H, CHUNK):  # the output layer: dW_out, then (ḡz_L, ġz_L)
        o = o0 + c
        jm = o < H
        at = gp + off_wo + d[:, None] * H + o[None, :]
        m = om_[:, None] & jm[None, :]
        acc = tl.dot(tl.trans(g_bar), tl.load(hs + o0 + slot), tl.load(at, mask=m, other=0.0),
                     input_precision="ieee")
        tl.store(at, tl.dot(tl.trans(g_dot), tl.load(hs + T + o0 + slot), acc, input_precision="ieee"), mask=m)
        w = _tile(w_ptr, off_wo, d, om_, o, jm, H, 1)  # W_out[d, o]
        _stream_cotangents(tl.dot(g_bar, w, input_precision="ieee"), tl.dot(g_dot, w, input_precision="ieee"), zs,
                           L, L, o0 + slot, T, gp, row, o, jm)
    for kk in range(L):
        k = L - kk  # z_k = W_k h_{k−1} + b_k, W_k hidden layer k − 1 of the flat order
        tl.debug_barrier()  # layer k's cotangents written by every thread
        off = off_h + (k - 1) * (H * H + H)
        gk = zs + _g_tile(k, L) * T
        hin = zs + _h_tile(k - 1, L, TRAIN) * T  # h_{k−1}, ḣ_{k−1}
        for o0 in range(0, H, CHUNK):  # dW_k by [CHUNK, CHUNK] tiles, both streams in one dot of 2 BLOCK_B rows
            o = o0 + c
            gzt = tl.load(gk + o[:, None] + r2[None, :] * HP)
            for i0 in range(0, H, CHUNK):
                i = i0 + c
                at = gp + off + o[:, None] * H + i[None, :]
                m = (o < H)[:, None] & (i < H)[None, :]
                acc = tl.dot(gzt, tl.load(hin + r2[:, None] * HP + i[None, :]), tl.load(at, mask=m, other=0.0),
                             input_precision="ieee")
                tl.store(at, acc, mask=m)
        for o0 in range(0, H, CHUNK):  # (ḡh_{k−1}, ġh_{k−1}) = W_kᵀ (ḡz_k, ġz_k), then (ḡz_{k−1}, ġz_{k−1})
            o = o0 + c
            om = o < H
            gh_bar = _chunk_dot(zero, gk, slot, w_ptr, off, H, 1, o, om, H)
            gh_dot = _chunk_dot(zero, gk + T, slot, w_ptr, off, H, 1, o, om, H)
            _stream_cotangents(gh_bar, gh_dot, zs, k - 1, L, o0 + slot, T, gp, row, o, om)
    tl.debug_barrier()
    g0 = zs + _g_tile(0, L) * T
    for o0 in range(0, H, CHUNK):  # the input layer: dW_0 += ḡz_0ᵀ x + ġz_0ᵀ (u, 0)
        o = o0 + c
        at = gp + off_w0 + o[:, None] * ld0 + d[None, :]
        m = (o < H)[:, None] & (d < ld0)[None, :]
        acc = tl.dot(tl.load(g0 + o[:, None] + rb[None, :] * HP), x, tl.load(at, mask=m, other=0.0),
                     input_precision="ieee")
        tl.store(at, tl.dot(tl.load(g0 + T + o[:, None] + rb[None, :] * HP), u, acc, input_precision="ieee"), mask=m)
    tl.debug_barrier()  # every thread has read the scratch (and its gradient row) before the next block


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _energy_lsq_kernel(x_ptr, w_ptr, c_ptr, v_ptr, sigma_ptr, z_ptr, loss_ptr, gp_ptr, zs_ptr, n_params, NZ, B, Din,
                       O, H, L, act, off_wo, off_bo, off_h, scale_: tl.float64, HP: tl.constexpr,
                       BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, IDX64: tl.constexpr):
    """mlp_net_energy_lsq: the programs loop over the row blocks (a persistent grid), each with NZ [BLOCK_B, HP]
    scratch tiles and a gradient row of n_params."""
    pid = tl.program_id(0).to(tl.int64)  # int64 row offsets of gp and zs whatever IDX64 (x's rows only)
    gp = gp_ptr + pid * n_params
    zs = zs_ptr + pid * NZ * (BLOCK_B * HP)
    row = (0, Din, off_wo, off_bo, off_h, H, L, act)
    for blk in range(tl.program_id(0), tl.cdiv(B, BLOCK_B), tl.num_programs(0)):
        rows, rmask, cols, _, _, _, x = _whole_rows(x_ptr, blk, B, Din, BLOCK_B, BLOCK_D, IDX64)
        omask = cols < O
        m2 = rmask[:, None] & omask
        offs = rows[:, None] * O + cols
        f = _tiled_forward(x, w_ptr, w_ptr + H * Din, row, zs, Din, O, cols, omask, HP, TRAIN)
        v = tl.load(v_ptr + rows, mask=rmask, other=1.0)[:, None]
        sv = sqrt_ieee(v)
        r = tl.where(m2, tl.load(c_ptr + offs, mask=m2, other=0.0) - sv * f, 0.0)
        tl.debug_barrier()  # the scratch rows were stored by other threads of the program
        jr = _tiled_backward(r, w_ptr, row, zs, O, HP)  # J_fᵀ r at the state's O columns (zeros beyond, unused)
        sigma = tl.load(sigma_ptr + rows, mask=rmask, other=0.0)[:, None]
        err = tl.where(m2, sigma * (div_ieee(jr, sv) - div_ieee(r, v)) + tl.load(z_ptr + offs, mask=m2, other=0.0),
                       0.0)
        tl.store(loss_ptr + rows, tl.sum(err * err, axis=1), mask=rmask)
        u = scale_.to(x.dtype) * sigma * err
        t_dot = _tiled_forward(u, w_ptr, w_ptr, row, zs, Din, O, cols, omask, HP, TANGENT)
        _energy_reverse(x, u, div_ieee(u, sv) - t_dot, div_ieee(r, sv), w_ptr, gp, zs, O, row, HP)


def mlp_net_energy_lsq(x, params, act, c, v, sigma, z):
    """(the rows' losses (B,), the gradients of their mean, shaped as params): module docstring; D_in <=
    MLP_NET_MAX_IN (ValueError above), any hidden width."""
    B, Din = x.shape
    w_in, _, w_out, _, *hidden = params
    H, O, L = w_in.shape[0], w_out.shape[0], len(hidden) // 2
    if Din > MLP_NET_MAX_IN:
        raise ValueError(f"triton mlp_net_energy_lsq supports x.shape[1] <= {MLP_NET_MAX_IN}, got {Din}")
    if O > Din:
        raise ValueError(f"triton mlp_net_energy_lsq needs O <= x.shape[1] (the state is x's first O columns), got "
                         f"O = {O}, x.shape[1] = {Din}")
    sizes = [p.numel() for p in params]
    n_params = sum(sizes)
    loss = torch.empty(B, dtype=x.dtype, device=x.device)
    if B == 0:
        return loss, [torch.zeros_like(p) for p in params]
    HP = CHUNK.value * triton.cdiv(H, CHUNK.value)
    NZ = 4 * L + 8  # the TRAIN layout (kernels/mlp_layers.py) and the two cotangent double tiles (_g_tile)
    n_blocks = triton.cdiv(B, _BLOCK_B)
    programs = persistent_programs(n_blocks, x.device)  # the evaluators' persistent-grid bound
    w = torch.cat([p.reshape(-1) for p in params])
    gp = torch.zeros((programs, n_params), dtype=x.dtype, device=x.device)
    zs = torch.empty(programs * NZ * _BLOCK_B * HP, dtype=x.dtype, device=x.device)
    off_wo = sizes[0] + sizes[1]
    launch(_energy_lsq_kernel, (programs,), x, w, c, v, sigma, z, loss, gp, zs, n_params, NZ, B, Din, O, H, L, act,
           off_wo, off_wo + sizes[2], off_wo + sizes[2] + sizes[3], f64(2.0 / B), HP=HP, BLOCK_B=_BLOCK_B,
           BLOCK_D=max(16, next_pow2(Din)), IDX64=need_idx64(B * Din), num_warps=4, num_stages=_STAGES)
    g = gp.sum(0)
    return loss, [part.view_as(p) for part, p in zip(torch.split(g, sizes), params)]

