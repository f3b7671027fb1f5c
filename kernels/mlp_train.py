"""The Triton ops of one MLP f (fastsamp.ops.mlp.mlp_net's packing: params = [W_0, b_0, W_out, b_out, W_1, b_1,
...]; backend signatures of docs/backend-contract.md, ops 17–19), each program looping over blocks of BLOCK_B rows
(a persistent grid):

* mlp_net: f(x), the layers of kernels/mlp_layers.py (`forward_layers`: in registers up to a hidden width of 128);
* mlp_net_backward and mlp_net_lsq, first order: the forward keeping h_k and act'(z_k) of every layer
  (`_tiled_forward`, BACKPROP), the output cotangent ḡ (mlp_net_backward's g_out; mlp_net_lsq's (2/B) k_b r_b of
  the rows' losses |r_b|², r_b = c_b + k_b f(x_b)), then one reverse pass (`_reverse`, one stream):
  ḡz_k = ḡh_k ⊙ act'(z_k), ḡh_{k−1} = W_kᵀ ḡz_k, dW_k += ḡz_kᵀ h_{k−1}, db_k += Σ ḡz_k, and g_x = W_0ᵀ ḡz_0 when
  asked;
* mlp_net_energy_lsq, the training op of an energy network: the rows' denoising losses |σ s + z|² of the score
  s = −r/v + J_fᵀ r/√v, r = c − √v f(x), and the gradients of their mean to every weight, the algorithm of the C++
  op (csrc/cpu/mlp_net.cpp) on a block:
  1. the primal forward, keeping h_k, act'(z_k) and act''(z_k) of every layer (`_tiled_forward`, TRAIN);
  2. r and the VJP J_fᵀ r (`_tiled_backward`), the loss and the score's cotangent u = (2/B) σ (σ s + z);
  3. the tangent forward along the input direction (u, 0): ż_0 = W_0[:, :O] u, ż_k = W_k ḣ_{k−1},
     ḣ_k = act'(z_k) ⊙ ż_k, ṫ = W_out ḣ_L (`_tiled_forward`, TANGENT);
  4. one reverse pass through both streams (`_reverse`, two streams) from the cotangents ḡ = u/√v − ṫ of f and
     ġ = r/√v of ṫ: ġz_k = ġh_k ⊙ act'(z_k), ḡz_k = ḡh_k ⊙ act'(z_k) + ġh_k ⊙ act''(z_k) ⊙ ż_k,
     ḡh_{k−1} = W_kᵀ ḡz_k, ġh_{k−1} = W_kᵀ ġz_k; dW_k += ḡz_kᵀ h_{k−1} + ġz_kᵀ ḣ_{k−1}, db_k += Σ ḡz_k (the input
     layer's inputs x and (u, 0)).

The gradient ops run every layer on kernels/mlp_layers.py's tiled path (64-column chunks, HP a multiple of 64, the
streams in a per-program scratch; see its TRAIN layout), whatever the width. The programs each add their blocks'
gradients to a row of their own (no atomics; at most GRAD_ROWS_BYTES of rows, fewer programs for a wide network),
summed over the programs afterwards (deterministic). Input and output
widths up to MLP_NET_MAX_IN (the rows in registers), any hidden width. Dots in ieee precision. Never run on a GPU:
checked by the interpreter tests and by compiling for sm_90.
"""
import torch
import triton
import triton.language as tl

from ._launch import INTERPRET, f64, launch, need_idx64, next_pow2
from .gmm import _whole_rows
from .mlp import _STAGES, MLP_MAX_D, persistent_programs
from .mlp_layers import (
    BACKPROP,
    CHUNK,
    MLP_REG_HIDDEN,
    TANGENT,
    TRAIN,
    _act_tiles,
    _chunk_dot,
    _chunk_lanes,
    _h_tile,
    _tile,
    _tiled_backward,
    _tiled_forward,
    forward_layers,
)
from .tiles import div_ieee, sqrt_ieee

# the widest input or output row (x's D_in and f's O columns in registers); above it fastsamp.ops's "auto" runs the
# reference
MLP_NET_MAX_IN = MLP_MAX_D
_BLOCK_B = 32 if INTERPRET else 16
# the most memory the gradient ops' per-program gradient rows take (programs x n_params): a wide network gets fewer
# programs, each looping over more row blocks, instead of hundreds of MB of rows to zero and sum per call (H = 512,
# L = 3 has 0.8 M parameters: 528 programs of an H100's bound would be 1.7 GB in float32)
GRAD_ROWS_BYTES = 64 << 20
_RUNTIME_INTS = ["NZ", "B", "Din", "O", "H", "L", "act", "off_wo", "off_bo", "off_h"]  # n_params too, where taken


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
def _stream_cotangents(gh_bar, gh_dot, zs, k, L, at, T, gp, row, o, om, TWO: tl.constexpr):
    """Stores ḡz_k of the cotangent ḡh_k of h_k at the chunk `at` in layer k's cotangent tile (`_g_tile`), and with
    TWO streams ġz_k of ġh_k (the cotangent of ḣ_k) in the tile after it; adds Σ_rows ḡz_k to db_k."""
    a1_at, a2_at = _act_tiles(zs, k, L, at, T)
    a1 = tl.load(a1_at)
    g = zs + _g_tile(k, L) * T + at
    if TWO:
        gz_bar = gh_bar * a1 + gh_dot * tl.load(a2_at)
        tl.store(g + T, gh_dot * a1)
    else:
        gz_bar = gh_bar * a1
    tl.store(g, gz_bar)
    _add_to(gp + _bias_offset(k, row) + o, om, tl.sum(gz_bar, axis=0))


@triton.jit
def _g_tile(k, L):
    """The double scratch tile of layer k's cotangents (ḡz_k rows, then ġz_k rows): 0 and 6 + 4L in turn."""
    return (k % 2) * (6 + 4 * L)


@triton.jit
def _reverse(x, u, g_bar, g_dot, w_ptr, gp, zs, O, row, HP: tl.constexpr, TWO: tl.constexpr):
    """The reverse pass of the module's docstring: adds the block's gradients to the program's row gp (flat, as the
    parameters), from the output cotangent g_bar = ḡ [BLOCK_B, BLOCK_D] (zeros outside the block's rows and the O
    columns) and the scratch of the forward (the TRAIN layout, `_tiled_forward` with TRAIN or BACKPROP); with TWO
    streams also from g_dot = ġ, the cotangent of the tangent forward along (u, 0) (TANGENT; else g_dot and u are
    not read). Leaves ḡz_0 in the scratch tile `_g_tile(0, L)`."""
    off_w0, ld0, off_wo, off_bo, off_h, H, L, _ = row
    BB: tl.constexpr = x.shape[0]
    NR: tl.constexpr = BB * (1 + TWO)  # the rows of a dW tile's dot: the primal stream's, then the tangent's
    c, slot, T, zero = _chunk_lanes(x, HP)
    d = tl.arange(0, x.shape[1])
    om_ = d < O
    rb = tl.arange(0, BB)
    r2 = tl.arange(0, NR)
    _add_to(gp + off_bo + d, om_, tl.sum(g_bar, axis=0))
    hs = zs + _h_tile(L, L, TRAIN) * T  # h_L, ḣ_L
    for o0 in range(0, H, CHUNK):  # the output layer: dW_out, then ḡz_L (ġz_L)
        o = o0 + c
        jm = o < H
        at = gp + off_wo + d[:, None] * H + o[None, :]
        m = om_[:, None] & jm[None, :]
        acc = tl.dot(tl.trans(g_bar), tl.load(hs + o0 + slot), tl.load(at, mask=m, other=0.0),
                     input_precision="ieee")
        w = _tile(w_ptr, off_wo, d, om_, o, jm, H, 1)  # W_out[d, o]
        gh_bar = tl.dot(g_bar, w, input_precision="ieee")
        if TWO:
            acc = tl.dot(tl.trans(g_dot), tl.load(hs + T + o0 + slot), acc, input_precision="ieee")
            gh_dot = tl.dot(g_dot, w, input_precision="ieee")
        else:
            gh_dot = gh_bar
        tl.store(at, acc, mask=m)
        _stream_cotangents(gh_bar, gh_dot, zs, L, L, o0 + slot, T, gp, row, o, jm, TWO)
    for kk in range(L):
        k = L - kk  # z_k = W_k h_{k−1} + b_k, W_k hidden layer k − 1 of the flat order
        tl.debug_barrier()  # layer k's cotangents written by every thread
        off = off_h + (k - 1) * (H * H + H)
        gk = zs + _g_tile(k, L) * T
        hin = zs + _h_tile(k - 1, L, TRAIN) * T  # h_{k−1}, ḣ_{k−1}
        for o0 in range(0, H, CHUNK):  # dW_k by [CHUNK, CHUNK] tiles, the streams in one dot of NR rows
            o = o0 + c
            gzt = tl.load(gk + o[:, None] + r2[None, :] * HP)
            for i0 in range(0, H, CHUNK):
                i = i0 + c
                at = gp + off + o[:, None] * H + i[None, :]
                m = (o < H)[:, None] & (i < H)[None, :]
                acc = tl.dot(gzt, tl.load(hin + r2[:, None] * HP + i[None, :]), tl.load(at, mask=m, other=0.0),
                             input_precision="ieee")
                tl.store(at, acc, mask=m)
        for o0 in range(0, H, CHUNK):  # ḡh_{k−1} = W_kᵀ ḡz_k (ġh_{k−1} = W_kᵀ ġz_k), then ḡz_{k−1} (ġz_{k−1})
            o = o0 + c
            om = o < H
            gh_bar = _chunk_dot(zero, gk, slot, w_ptr, off, H, 1, o, om, H)
            if TWO:
                gh_dot = _chunk_dot(zero, gk + T, slot, w_ptr, off, H, 1, o, om, H)
            else:
                gh_dot = gh_bar
            _stream_cotangents(gh_bar, gh_dot, zs, k - 1, L, o0 + slot, T, gp, row, o, om, TWO)
    tl.debug_barrier()
    g0 = zs + _g_tile(0, L) * T
    for o0 in range(0, H, CHUNK):  # the input layer: dW_0 += ḡz_0ᵀ x (+ ġz_0ᵀ (u, 0))
        o = o0 + c
        at = gp + off_w0 + o[:, None] * ld0 + d[None, :]
        m = (o < H)[:, None] & (d < ld0)[None, :]
        acc = tl.dot(tl.load(g0 + o[:, None] + rb[None, :] * HP), x, tl.load(at, mask=m, other=0.0),
                     input_precision="ieee")
        if TWO:
            acc = tl.dot(tl.load(g0 + T + o[:, None] + rb[None, :] * HP), u, acc, input_precision="ieee")
        tl.store(at, acc, mask=m)
    tl.debug_barrier()  # every thread has read the scratch (and its gradient row) before the next block


@triton.jit
def _program_rows(gp_ptr, zs_ptr, n_params, NZ, BLOCK_B: tl.constexpr, HP: tl.constexpr):
    """This program's gradient row (n_params) and its NZ [BLOCK_B, HP] scratch tiles (int64 offsets whatever IDX64,
    which bounds x's rows only)."""
    pid = tl.program_id(0).to(tl.int64)
    return gp_ptr + pid * n_params, zs_ptr + pid * NZ * (BLOCK_B * HP)


@triton.jit
def _row_block(x_ptr, blk, B, Din, O, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, IDX64: tl.constexpr):
    """Row block blk (`_whole_rows`): its rows and mask, the columns, the output columns' mask (O), the outputs'
    [BLOCK_B, BLOCK_D] mask and offsets, x, and x's mask and offsets (Din)."""
    rows, rmask, cols, _, xm, xoffs, x = _whole_rows(x_ptr, blk, B, Din, BLOCK_B, BLOCK_D, IDX64)
    omask = cols < O
    return rows, rmask, cols, omask, rmask[:, None] & omask, rows[:, None] * O + cols, x, xm, xoffs


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _net_kernel(x_ptr, w_ptr, out_ptr, zs_ptr, NZ, B, Din, O, H, L, act, off_wo, off_bo, off_h, HP: tl.constexpr,
                BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, IDX64: tl.constexpr):
    """mlp_net: out = f(x) of the row blocks (a persistent grid; NZ [BLOCK_B, HP] scratch tiles per program, used
    above MLP_REG_HIDDEN)."""
    zs = zs_ptr + tl.program_id(0).to(tl.int64) * NZ * (BLOCK_B * HP)
    row = (0, Din, off_wo, off_bo, off_h, H, L, act)
    for blk in range(tl.program_id(0), tl.cdiv(B, BLOCK_B), tl.num_programs(0)):
        rows, rmask, cols, _, _, _, x = _whole_rows(x_ptr, blk, B, Din, BLOCK_B, BLOCK_D, IDX64)
        omask = cols < O
        f = forward_layers(x, w_ptr, w_ptr + H * Din, row, zs, Din, O, cols, omask, HP, False)
        tl.store(out_ptr + rows[:, None] * O + cols, f, mask=rmask[:, None] & omask)


@triton.jit(do_not_specialize=["n_params"] + _RUNTIME_INTS)
def _net_grad_kernel(x_ptr, w_ptr, g_ptr, c_ptr, k_ptr, loss_ptr, gx_ptr, gp_ptr, zs_ptr, n_params, NZ, B, Din, O, H,
                     L, act, off_wo, off_bo, off_h, scale_: tl.float64, HP: tl.constexpr, BLOCK_B: tl.constexpr,
                     BLOCK_D: tl.constexpr, IDX64: tl.constexpr, LSQ: tl.constexpr, WANT_GX: tl.constexpr):
    """mlp_net_backward (the output cotangent g_out at g_ptr; with WANT_GX, g_x) or, with LSQ, mlp_net_lsq (the rows'
    losses, the cotangent scale_ k_b r_b): the programs loop over the row blocks, each with NZ [BLOCK_B, HP] scratch
    tiles and a gradient row of n_params."""
    gp, zs = _program_rows(gp_ptr, zs_ptr, n_params, NZ, BLOCK_B, HP)
    row = (0, Din, off_wo, off_bo, off_h, H, L, act)
    for blk in range(tl.program_id(0), tl.cdiv(B, BLOCK_B), tl.num_programs(0)):
        rows, rmask, cols, omask, m2, offs, x, xm, xoffs = _row_block(x_ptr, blk, B, Din, O, BLOCK_B, BLOCK_D, IDX64)
        f = _tiled_forward(x, w_ptr, w_ptr + H * Din, row, zs, Din, O, cols, omask, HP, BACKPROP)
        if LSQ:
            k = tl.load(k_ptr + rows, mask=rmask, other=0.0)[:, None]
            r = tl.where(m2, tl.load(c_ptr + offs, mask=m2, other=0.0) + k * f, 0.0)
            tl.store(loss_ptr + rows, tl.sum(r * r, axis=1), mask=rmask)
            g = scale_.to(x.dtype) * k * r
        else:
            g = tl.load(g_ptr + offs, mask=m2, other=0.0)
        _reverse(x, x, g, g, w_ptr, gp, zs, O, row, HP, 0)
        if WANT_GX:  # g_x = ḡz_0 W_0, ḡz_0 in the scratch (`_reverse`, after its barrier)
            _, slot, T, _ = _chunk_lanes(x, HP)
            d = tl.arange(0, BLOCK_D)
            gx = _chunk_dot(tl.zeros(x.shape, x.dtype), zs + _g_tile(0, L) * T, slot, w_ptr, 0, Din, 1, d, d < Din, H)
            tl.store(gx_ptr + xoffs, gx, mask=xm)


@triton.jit(do_not_specialize=["n_params"] + _RUNTIME_INTS)
def _energy_lsq_kernel(x_ptr, w_ptr, c_ptr, v_ptr, sigma_ptr, z_ptr, loss_ptr, gp_ptr, zs_ptr, n_params, NZ, B, Din,
                       O, H, L, act, off_wo, off_bo, off_h, scale_: tl.float64, HP: tl.constexpr,
                       BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, IDX64: tl.constexpr):
    """mlp_net_energy_lsq: the programs loop over the row blocks (a persistent grid), each with NZ [BLOCK_B, HP]
    scratch tiles and a gradient row of n_params."""
    gp, zs = _program_rows(gp_ptr, zs_ptr, n_params, NZ, BLOCK_B, HP)
    row = (0, Din, off_wo, off_bo, off_h, H, L, act)
    for blk in range(tl.program_id(0), tl.cdiv(B, BLOCK_B), tl.num_programs(0)):
        rows, rmask, cols, omask, m2, offs, x, _, _ = _row_block(x_ptr, blk, B, Din, O, BLOCK_B, BLOCK_D, IDX64)
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
        _reverse(x, u, div_ieee(u, sv) - t_dot, div_ieee(r, sv), w_ptr, gp, zs, O, row, HP, 1)


class _Net:
    """One call's network: the widths of params (mlp_net's packing), the flat parameters w (one tensor, the kernels'
    offsets into it), the kernels' block sizes and grid (`grads`: with a gradient row per program, at most
    GRAD_ROWS_BYTES of them); raises ValueError naming `op` above MLP_NET_MAX_IN."""

    def __init__(self, op, x, params, grads=False):
        self.B, self.Din = x.shape
        w_in, _, w_out, _, *hidden = params
        self.H, self.O, self.L = w_in.shape[0], w_out.shape[0], len(hidden) // 2
        for name, width in (("x.shape[1]", self.Din), ("the output width O = weights[-1].shape[0]", self.O)):
            if width > MLP_NET_MAX_IN:
                raise ValueError(f"triton {op} supports {name} <= {MLP_NET_MAX_IN}, got {width}")
        self.sizes = [p.numel() for p in params]
        self.w = torch.cat([p.reshape(-1) for p in params])
        off_wo = self.sizes[0] + self.sizes[1]
        self.offsets = (off_wo, off_wo + self.sizes[2], off_wo + self.sizes[2] + self.sizes[3])
        self.HP = CHUNK.value * triton.cdiv(self.H, CHUNK.value)
        self.BLOCK_D = max(16, next_pow2(max(self.Din, self.O)))
        self.programs = persistent_programs(triton.cdiv(self.B, _BLOCK_B), x.device)  # the evaluators' bound
        if grads:
            self.programs = min(self.programs, max(1, GRAD_ROWS_BYTES // (self.w.numel() * x.element_size())))

    def scratch(self, x, NZ):
        """Each program's NZ [BLOCK_B, HP] scratch tiles."""
        return torch.empty(self.programs * NZ * _BLOCK_B * self.HP, dtype=x.dtype, device=x.device)

    def grad_rows(self, x):
        """One zeroed gradient row (flat, as w) per program."""
        return torch.zeros((self.programs, self.w.numel()), dtype=x.dtype, device=x.device)

    def gradients(self, gp, params):
        """The programs' gradient rows summed, split and shaped as params."""
        return [part.view_as(p) for part, p in zip(torch.split(gp.sum(0), self.sizes), params)]

    def launch(self, kernel, x, tensors, act, scalars=(), **constexprs):
        """kernel(x, w, *tensors, B, Din, O, H, L, act, off_wo, off_bo, off_h, *scalars) on the persistent grid."""
        launch(kernel, (self.programs,), x, self.w, *tensors, self.B, self.Din, self.O, self.H, self.L, act,
               *self.offsets, *scalars, HP=self.HP, BLOCK_B=_BLOCK_B, BLOCK_D=self.BLOCK_D,
               IDX64=need_idx64(self.B * max(self.Din, self.O)), num_warps=4, num_stages=_STAGES, **constexprs)


# the scratch tiles of the first-order gradient ops: the TRAIN layout (kernels/mlp_layers.py) and the cotangent tiles
# (`_g_tile`), as mlp_net_energy_lsq's
def _grad_tiles(L):
    return 4 * L + 8


def mlp_net(x, params, act):
    """f(x) (B, O): module docstring."""
    net = _Net("mlp_net", x, params)
    out = torch.empty((net.B, net.O), dtype=x.dtype, device=x.device)
    if net.B == 0:
        return out
    NZ = 2 if net.HP > MLP_REG_HIDDEN.value else 0  # the tiled path's two h_k tiles
    net.launch(_net_kernel, x, (out, net.scratch(x, max(NZ, 1)), NZ), act)
    return out


def _first_order(op, x, params, act, g_out, c, k, want_g_x):
    """(loss or None, g_x or None, the parameters' gradients) of mlp_net_backward (g_out) or mlp_net_lsq (c, k)."""
    net = _Net(op, x, params, grads=True)
    lsq = g_out is None
    loss = torch.empty(net.B, dtype=x.dtype, device=x.device) if lsq else None
    g_x = torch.empty_like(x) if want_g_x else None
    if net.B == 0:
        return loss, g_x, [torch.zeros_like(p) for p in params]
    gp, NZ = net.grad_rows(x), _grad_tiles(net.L)
    net.launch(_net_grad_kernel, x, (g_out, c, k, loss, g_x, gp, net.scratch(x, NZ), gp.shape[1], NZ), act,
               (f64(2.0 / net.B),), LSQ=lsq, WANT_GX=want_g_x)
    return loss, g_x, net.gradients(gp, params)


def mlp_net_backward(x, params, act, g_out, want_g_x, act_hidden):
    """(g_x (B, D_in) when want_g_x, else None; the gradients of Σ g_out · f(x), shaped as params). act_hidden (the C++
    training forward's kept activations) is not read: the kernel recomputes the forward in registers."""
    _, g_x, g_params = _first_order("mlp_net_backward", x, params, act, g_out, None, None, want_g_x)
    return g_x, g_params


def mlp_net_lsq(x, params, act, c, k):
    """(the rows' losses |c_b + k_b f(x_b)|² (B,), the gradients of their mean, shaped as params)."""
    loss, _, g_params = _first_order("mlp_net_lsq", x, params, act, None, c, k, False)
    return loss, g_params


def mlp_net_energy_lsq(x, params, act, c, v, sigma, z):
    """(the rows' losses (B,), the gradients of their mean, shaped as params): module docstring; O <= D_in."""
    net = _Net("mlp_net_energy_lsq", x, params, grads=True)
    if net.O > net.Din:
        raise ValueError(f"triton mlp_net_energy_lsq needs O <= x.shape[1] (the state is x's first O columns), got "
                         f"O = {net.O}, x.shape[1] = {net.Din}")
    loss = torch.empty(net.B, dtype=x.dtype, device=x.device)
    if net.B == 0:
        return loss, [torch.zeros_like(p) for p in params]
    gp, NZ = net.grad_rows(x), _grad_tiles(net.L)
    net.launch(_energy_lsq_kernel, x, (c, v, sigma, z, loss, gp, net.scratch(x, NZ), gp.shape[1], NZ), act,
               (f64(2.0 / net.B),))
    return loss, net.gradients(gp, params)
