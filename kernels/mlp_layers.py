"""The layers of the Triton network evaluators (kernels/mlp.py): a network's forward o = W_o h_L + b_o
(`forward_layers`) and the backward J_fᵀ r of an energy network (`backward_layers`) at a [BLOCK_B, BLOCK_D] tile of
rows, h_0 = act(W_0[:, :D] x + c), h_k = act(W_k h_{k−1} + b_k). Two paths, by the hidden tile HP (a constexpr):

* HP <= MLP_REG_HIDDEN (128): the [BLOCK_B, HP] activations stay in registers, one tl.dot per layer with the
  layer's whole [HP, HP] weight tile (`_reg_forward`, `_reg_backward`);
* wider (HP up to kernels.mlp.MLP_MAX_HIDDEN): the tiled path. A layer's output is computed CHUNK (64) columns at a
  time, each the sum over the input's CHUNK-column chunks of a tl.dot with a [CHUNK, CHUNK] weight tile, so that
  the tiles on chip do not grow with H; the activations h_k (backward: g_k) live in two [BLOCK_B, HP] tiles of the
  program's scratch in global memory (layer k reads tile k % 2 and writes the other; a barrier between layers),
  act'(z_k) of an energy network in tile 2 + k (`_tiled_forward`, `_tiled_backward`). Never run on a GPU: checked
  by the interpreter tests and by compiling for sm_90.

The training op mlp_net_energy_lsq (kernels/mlp_train.py) runs the tiled path at every width, with its own scratch
layout (`_tiled_forward`'s KEEP = TRAIN, then TANGENT): tiles 0, 1 the VJP's g_k (`_tiled_backward`), 2 + k
act'(z_k), 3 + L + k act''(z_k) (after the tangent forward act''(z_k) ⊙ ż_k), 4 + 2L + 2k and the next h_k and ḣ_k
(one [2 BLOCK_B, HP] double tile: the primal rows, then the tangent rows). The first-order gradient ops
mlp_net_backward and mlp_net_lsq use the same layout with KEEP = BACKPROP (no act'', no tangent rows).

Dots in ieee precision (no TF32); zero weights and biases beyond a network's H (act(0) = 0: the padding is exact).
"""
import triton
import triton.language as tl

from .tiles import div_ieee

MLP_REG_HIDDEN = tl.constexpr(128)
CHUNK = tl.constexpr(64)
# What `_tiled_forward` keeps in the scratch (its KEEP): h_k only (0 / False), act'(z_k) too (KEEP_GRAD, an energy
# network's evaluation), the training layout (TRAIN: h_k, act'(z_k), act''(z_k) of every layer), or the tangent
# forward on top of TRAIN's (TANGENT: ḣ_k; act''(z_k) becomes act''(z_k) ⊙ ż_k); BACKPROP: TRAIN's layout
# without act''(z_k) (a first-order backward, kernels/mlp_train.py's mlp_net_backward and mlp_net_lsq)
KEEP_GRAD = tl.constexpr(1)
TRAIN = tl.constexpr(2)
TANGENT = tl.constexpr(3)
BACKPROP = tl.constexpr(4)


@triton.jit
def _act(z, act):
    """SiLU z / (1 + e^−z) (act 1) or exact GELU z (1 + erf(z / √2)) / 2 (act 0): the codes of
    fastsamp.ops.mlp.ACTIVATIONS."""
    if act == 1:
        y = div_ieee(z, 1.0 + tl.exp(-z))
    else:
        y = 0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))
    return y


@triton.jit
def _act_grad(z, act):
    """(act(z), act'(z)): `_act` (the same bits) and its derivative, SiLU σ (1 + z (1 − σ)) with
    σ = 1 / (1 + e^−z), GELU Φ(z) + z φ(z)."""
    if act == 1:
        q = 1.0 + tl.exp(-z)
        y = div_ieee(z, q)
        sig = div_ieee(tl.full(z.shape, 1.0, z.dtype), q)
        dy = sig * (1.0 + z * (1.0 - sig))
    else:
        cdf = 0.5 * (1.0 + tl.math.erf(z * 0.7071067811865476))
        y = 0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))
        dy = cdf + z * (0.3989422804014327 * tl.exp(-0.5 * z * z))
    return y, dy


@triton.jit
def _act_grads(z, act):
    """(act(z), act'(z), act''(z)): `_act_grad` and SiLU's σ (1 − σ) (2 + z (1 − 2σ)), GELU's φ(z) (2 − z²)."""
    y, dy = _act_grad(z, act)
    if act == 1:
        sig = div_ieee(tl.full(z.shape, 1.0, z.dtype), 1.0 + tl.exp(-z))
        d2y = sig * (1.0 - sig) * (2.0 + z * (1.0 - 2.0 * sig))
    else:
        d2y = 0.3989422804014327 * tl.exp(-0.5 * z * z) * (2.0 - z * z)
    return y, dy, d2y


@triton.jit
def _net_lanes(x, H, D, HP: tl.constexpr):
    """The lanes of a network's layers at the rows of x: hidden units j (mask jm, of H), input/output columns d
    (mask dm, of D), the hidden-by-hidden mask hm and a layer's [BLOCK_B, HP] slot in the scratch."""
    j = tl.arange(0, HP)
    jm = j < H
    d = tl.arange(0, x.shape[1])
    dm = d < D
    slot = tl.arange(0, x.shape[0])[:, None] * HP + j[None, :]
    return j, jm, d, dm, jm[:, None] & jm[None, :], slot


@triton.jit
def _reg_forward(x, w_ptr, base, row, zs, D, O, cols, cmask, HP: tl.constexpr, KEEP: tl.constexpr):
    """`forward_layers`'s o at HP <= MLP_REG_HIDDEN: the activations in registers, one tl.dot per layer."""
    off_w0, ld0, off_wo, off_bo, off_h, H, L, act = row
    BB: tl.constexpr = x.shape[0]
    j, jm, d, dm, hm, slot = _net_lanes(x, H, D, HP)
    w0t = tl.load(w_ptr + off_w0 + j[None, :] * ld0 + d[:, None], mask=dm[:, None] & jm[None, :], other=0.0)
    c = tl.load(base + j, mask=jm, other=0.0)
    z = tl.dot(x, w0t, input_precision="ieee") + c[None, :]
    if KEEP:
        h, dh = _act_grad(z, act)
        tl.store(zs + slot, dh)
    else:
        h = _act(z, act)
    for k in range(L):
        off = off_h + k * (H * H + H)
        wt = tl.load(w_ptr + off + j[None, :] * H + j[:, None], mask=hm, other=0.0)  # wt[i, o] = W_k[o, i]
        b = tl.load(w_ptr + off + H * H + j, mask=jm, other=0.0)
        z = tl.dot(h, wt, input_precision="ieee") + b[None, :]
        if KEEP:
            h, dh = _act_grad(z, act)
            tl.store(zs + (k + 1) * (BB * HP) + slot, dh)
        else:
            h = _act(z, act)
    wot = tl.load(w_ptr + off_wo + d[None, :] * H + j[:, None], mask=jm[:, None] & (d < O)[None, :], other=0.0)
    return tl.dot(h, wot, input_precision="ieee") + tl.load(w_ptr + off_bo + cols, mask=cmask, other=0.0)


@triton.jit
def _tile(w_ptr, off, i, im, o, om, s_in, s_out):
    """The weight tile M[i, o] = w[off + i s_in + o s_out] of lanes i (mask im) by o (mask om), zeros outside."""
    return tl.load(w_ptr + off + i[:, None] * s_in + o[None, :] * s_out, mask=im[:, None] & om[None, :], other=0.0)


@triton.jit
def _chunk_dot(acc, src, slot, w_ptr, off, s_in, s_out, o, om, H):
    """acc + Σ_i src[:, i] M[i, o] over the H hidden units i of the scratch tile src, CHUNK of them per tl.dot
    (slot: the [BLOCK_B, CHUNK] offsets of a chunk's first column), M as `_tile`."""
    c = tl.arange(0, CHUNK)
    for i0 in range(0, H, CHUNK):
        i = i0 + c
        acc = tl.dot(tl.load(src + i0 + slot), _tile(w_ptr, off, i, i < H, o, om, s_in, s_out), acc,
                     input_precision="ieee")
    return acc


@triton.jit
def _chunk_lanes(x, HP: tl.constexpr):
    """The tiled path's lanes at the rows of x: a chunk's columns c, their [BLOCK_B, CHUNK] offsets in a scratch tile
    ([BLOCK_B, HP]), the tile size and the zeros of a chunk."""
    BB: tl.constexpr = x.shape[0]
    c = tl.arange(0, CHUNK)
    return c, tl.arange(0, BB)[:, None] * HP + c[None, :], BB * HP, tl.zeros([BB, CHUNK], x.dtype)


@triton.jit
def _h_tile(k, L, KEEP: tl.constexpr):
    """The scratch tile of h_k in `_tiled_forward` (of ḣ_k with KEEP == TANGENT): k % 2 when evaluating, in the
    training layout (`TRAIN`, `BACKPROP`) the double tile 4 + 2L + 2k (h_k, then ḣ_k)."""
    if KEEP == TRAIN or KEEP == BACKPROP:
        t = 4 + 2 * L + 2 * k
    elif KEEP == TANGENT:
        t = 5 + 2 * L + 2 * k
    else:
        t = k % 2
    return t


@triton.jit
def _act_grad_at(zs, k, at, T):
    """The address of act'(z_k) (scratch tile 2 + k) at the chunk `at` (offsets in a scratch tile of T elements)."""
    return zs + (2 + k) * T + at


@triton.jit
def _act_tiles(zs, k, L, at, T):
    """The addresses of act'(z_k) (`_act_grad_at`) and act''(z_k) (tile 3 + L + k, the training layout) at the
    chunk `at` (offsets in a scratch tile of T elements)."""
    return _act_grad_at(zs, k, at, T), zs + (3 + L + k) * T + at


@triton.jit
def _chunk_act(z, zs, k, L, at, T, act, KEEP: tl.constexpr):
    """The epilogue of layer k at the chunk `at` (offsets in a scratch tile of T elements) of its pre-activation z:
    stores h_k = act(z) in tile `_h_tile`, and act'(z) in tile 2 + k (KEEP >= 1), act''(z) in tile 3 + L + k
    (TRAIN; `_act_tiles`); TANGENT: z is ż_k, stores ḣ_k = act'(z_k) ⊙ ż_k and turns act''(z_k) into
    act''(z_k) ⊙ ż_k; BACKPROP: act'(z) only, h_k in TRAIN's tile."""
    a1_at, a2_at = _act_tiles(zs, k, L, at, T)
    if KEEP == TANGENT:
        h = z * tl.load(a1_at)
        tl.store(a2_at, tl.load(a2_at) * z)
    elif KEEP == TRAIN:
        h, dh, d2h = _act_grads(z, act)
        tl.store(a1_at, dh)
        tl.store(a2_at, d2h)
    elif KEEP == KEEP_GRAD or KEEP == BACKPROP:
        h, dh = _act_grad(z, act)
        tl.store(a1_at, dh)
    else:
        h = _act(z, act)
    tl.store(zs + _h_tile(k, L, KEEP) * T + at, h)


@triton.jit
def _tiled_forward(x, w_ptr, base, row, zs, D, O, cols, cmask, HP: tl.constexpr, KEEP: tl.constexpr):
    """`forward_layers`'s o (O outputs) at HP > MLP_REG_HIDDEN, CHUNK output columns of a layer at a time (the weight
    tiles on chip are [CHUNK, CHUNK]), the layer epilogues `_chunk_act` (KEEP: what the scratch keeps; TANGENT: the
    tangent forward along x, no biases). The training op (kernels/mlp_train.py) runs it at every HP."""
    off_w0, ld0, off_wo, off_bo, off_h, H, L, act = row
    c, slot, T, zero = _chunk_lanes(x, HP)
    d = tl.arange(0, x.shape[1])
    tl.debug_barrier()  # every thread has read the scratch of the previous evaluation
    for o0 in range(0, H, CHUNK):
        o = o0 + c
        om = o < H
        z = tl.dot(x, _tile(w_ptr, off_w0, d, d < D, o, om, 1, ld0), input_precision="ieee")
        if KEEP != TANGENT:
            z += tl.load(base + o, mask=om, other=0.0)[None, :]
        _chunk_act(z, zs, 0, L, o0 + slot, T, act, KEEP)
    for k in range(L):
        tl.debug_barrier()  # h_k written by every thread
        off = off_h + k * (H * H + H)
        for o0 in range(0, H, CHUNK):
            o = o0 + c
            om = o < H
            z = _chunk_dot(zero, zs + _h_tile(k, L, KEEP) * T, slot, w_ptr, off, 1, H, o, om, H)
            if KEEP != TANGENT:
                z += tl.load(w_ptr + off + H * H + o, mask=om, other=0.0)[None, :]
            _chunk_act(z, zs, k + 1, L, o0 + slot, T, act, KEEP)
    tl.debug_barrier()
    o = _chunk_dot(tl.zeros(x.shape, x.dtype), zs + _h_tile(L, L, KEEP) * T, slot, w_ptr, off_wo, 1, H, d, d < O, H)
    if KEEP != TANGENT:
        o += tl.load(w_ptr + off_bo + cols, mask=cmask, other=0.0)
    return o


@triton.jit
def _reg_backward(r, w_ptr, row, zs, D, HP: tl.constexpr):
    """`_net_energy`'s J_fᵀ r at HP <= MLP_REG_HIDDEN: g in registers, act'(z_k) in scratch tile k."""
    off_w0, ld0, off_wo, _, off_h, H, L, _ = row
    BB: tl.constexpr = r.shape[0]
    j, jm, d, dm, hm, slot = _net_lanes(r, H, D, HP)
    wo = tl.load(w_ptr + off_wo + d[:, None] * H + j[None, :], mask=dm[:, None] & jm[None, :], other=0.0)
    g = tl.dot(r, wo, input_precision="ieee") * tl.load(zs + L * (BB * HP) + slot)
    for kk in range(L):
        k = L - 1 - kk  # hidden layer k: h_k -> z_{k+1}
        off = off_h + k * (H * H + H)
        wk = tl.load(w_ptr + off + j[:, None] * H + j[None, :], mask=hm, other=0.0)  # wk[o, i] = W_k[o, i]
        g = tl.dot(g, wk, input_precision="ieee") * tl.load(zs + k * (BB * HP) + slot)
    w0x = tl.load(w_ptr + off_w0 + j[:, None] * ld0 + d[None, :], mask=jm[:, None] & dm[None, :], other=0.0)
    return tl.dot(g, w0x, input_precision="ieee")


@triton.jit
def _tiled_backward(r, w_ptr, row, zs, D, HP: tl.constexpr):
    """`_net_energy`'s J_fᵀ r at HP > MLP_REG_HIDDEN by CHUNK-column chunks: g_k in scratch tile k % 2,
    act'(z_k) where `_tiled_forward` stored it (`_act_grad_at`)."""
    off_w0, ld0, off_wo, _, off_h, H, L, _ = row
    c, slot, T, zero = _chunk_lanes(r, HP)
    d = tl.arange(0, r.shape[1])
    dm = d < D
    for o0 in range(0, H, CHUNK):
        o = o0 + c
        g = tl.dot(r, _tile(w_ptr, off_wo, d, dm, o, o < H, H, 1), input_precision="ieee")
        tl.store(zs + (L % 2) * T + o0 + slot, g * tl.load(_act_grad_at(zs, L, o0 + slot, T)))
    for kk in range(L):
        k = L - 1 - kk  # hidden layer k: h_k -> z_{k+1}
        tl.debug_barrier()  # g_{k+1} written by every thread
        off = off_h + k * (H * H + H)
        for o0 in range(0, H, CHUNK):
            o = o0 + c
            g = _chunk_dot(zero, zs + ((k + 1) % 2) * T, slot, w_ptr, off, H, 1, o, o < H, H)
            tl.store(zs + (k % 2) * T + o0 + slot, g * tl.load(_act_grad_at(zs, k, o0 + slot, T)))
    tl.debug_barrier()
    return _chunk_dot(tl.zeros(r.shape, r.dtype), zs, slot, w_ptr, off_w0, ld0, 1, d, dm, H)


@triton.jit
def forward_layers(x, w_ptr, base, row, zs, D, O, cols, cmask, HP: tl.constexpr, KEEP: tl.constexpr):
    """o = W_o h_L + b_o [BLOCK_B, BLOCK_D] (O outputs, cmask = cols < O) of the network of table row `row`
    (kernels/mlp.py `_net_row`) at the rows of x (D inputs); base: its per-call constants (c at base); with KEEP,
    act'(z_k) of every layer k = 0 .. L stored in the program's scratch zs for `backward_layers` (tile k; the tiled
    path: tile 2 + k)."""
    if HP > MLP_REG_HIDDEN:
        o = _tiled_forward(x, w_ptr, base, row, zs, D, O, cols, cmask, HP, KEEP)
    else:
        o = _reg_forward(x, w_ptr, base, row, zs, D, O, cols, cmask, HP, KEEP)
    return o


@triton.jit
def backward_layers(r, w_ptr, row, zs, D, HP: tl.constexpr):
    """J_fᵀ r = g_0 W_0[:, :D] [BLOCK_B, BLOCK_D] with g_L = (r W_o) ⊙ act'(z_L), g_{k−1} = (g_k W_k) ⊙ act'(z_{k−1}),
    act' from the scratch zs (`forward_layers` with KEEP, after a barrier)."""
    if HP > MLP_REG_HIDDEN:
        gx = _tiled_backward(r, w_ptr, row, zs, D, HP)
    else:
        gx = _reg_backward(r, w_ptr, row, zs, D, HP)
    return gx
