"""The network evaluators of the Triton engine of fastsamp.ops.mlp: `evaluate` (the score and log p at a tile of
whole rows of a Gaussian mixture, a sum of score networks, or a sum of score and energy networks: the evaluator of
every move kernel of `moves.py`) and the ops mlp_score and mlp_energy (backend op signatures of
docs/backend-contract.md).

One score network at time t, with its schedule's marginal (α, σ²), data mean m and variance σ_d²:

    s(x) = (α m − x)/v + (W_o h_L + b_o)/√v,   v = α² σ_d² + σ²,
    h_0 = act(W_0[:, :D] x + c),   h_k = act(W_k h_{k−1} + b_k),   act = SiLU or exact GELU,
    c = b_0 + W_0[:, D:] [sin(t ω), cos(t ω)]   (t ω rounded to x's dtype; the time-embedding columns
                                                  summed in float64, as the CPU engine csrc/cpu/score_mlp.cpp)

c is the per-call row input of the input layer: every row meets the same embedding, so it is computed
once per call. An energy network has the same forward f(x) = W_o h_L + b_o and E(x) = |r|²/(2v),
r = (x − α m) − √v f(x), s = −∇E (`_net_energy`: one forward and one backward). The op's score is Σ_i s_i(x)
(+ an analytic Gaussian mixture's, `gmm.gmm_eval`), its log p Σ_i −E_i(x) (+ the mixture's).

One program holds BLOCK_B chains: their state and score stay in registers; the layers (`mlp_layers.py`) are
tl.dots in ieee precision (no TF32, so float32 agrees with the reference to float32 rounding: FMA dots on the GPU,
not tensor cores; float64 dots in float64, DMMA on sm_90). Dots need every dim >= 16, so the state tile is
BLOCK_D = 4 BLOCK_J >= 16 columns (zeros beyond D) and the hidden tile HP = max(16, next_pow2(H_max)). Up to
HP = 128 the activations stay in registers; wider networks take the tiled path (64-column chunks, the activations
in a per-program scratch). An energy network's backward reads act'(z_k) of every layer from the per-program scratch
in global memory (L + 1 tiles of [BLOCK_B, HP]) written by its forward. Kernels with a scratch run a persistent
grid (at most _PROGRAMS_PER_SM programs per multiprocessor, each looping over row blocks), so the scratch is bounded
by the device, not by the number of chains.

Host side of a call (`_Engine`): the networks' tensors are concatenated into one flat buffer, and one
`_net_prep_kernel` launch per network writes its row of an int64 table (offsets, H, L, activation, energy flag) and its
per-call constants (c, α m, v, √v): the python-float scalars reach the device as kernel arguments, never by
a host-to-device copy (no synchronisation). The evaluators loop over the networks and layers at run time.

Limits: D <= MLP_MAX_D (whole rows in registers), hidden width H <= MLP_MAX_HIDDEN (256: the widest tested; the
tiled path has no other bound); above them the functions raise ValueError (fastsamp.ops.mlp's backend="auto" then
runs the reference). The move kernels run their n_trapezoid and n_leapfrog evaluations one after the other.
"""
import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from fastsamp.ops import _ieee
from fastsamp.ops.mlp import _unflatten

from ._launch import _MIN_PROGRAMS, INTERPRET, f64, launch, need_idx64, next_pow2
from .gmm import _gmm_table, _whole_rows, gmm_eval
from .mlp_layers import MLP_REG_HIDDEN, backward_layers, forward_layers
from .tiles import div_ieee

MLP_MAX_D = 128
MLP_MAX_HIDDEN = 256
META = tl.constexpr(9)  # int64 table row of a network: off_w0, ld0, off_wo, off_bo, off_hidden, H, L, act, energy
_MIN_DOT = 16
# chains per program: under the interpreter (a python loop per program) larger blocks
_BLOCK_B_MAX = 64 if INTERPRET else 32
# Kernels with a scratch run a persistent grid (programs loop over the row blocks): at most this many programs per
# multiprocessor, so that the scratch is bounded by the device, not by B. Under the interpreter 2 programs in all,
# so that the tests run the loop.
_PROGRAMS_PER_SM = 4
_INTERPRET_PROGRAMS = 2
# Compiled for sm_90 (triton 3.9, HP = 128, BLOCK_B = 16, 4 warps): the default software pipelining (3 stages)
# double-buffers the layer loop's weight tile in shared memory, 280 KB in float64 (over the 227 KB an H100/H200
# block may use); one stage: 75 KB (float32) / 150 KB (float64). Checked by compiling without a GPU, not run.
_STAGES = 1
# Integer arguments are not specialised (value 1, multiples of 16): one compiled variant per dtype and block shape
# whatever the sizes, step counts and offsets of a call (each variant of the move kernels compiles in ~10-40 s).
_RUNTIME_INTS = ["n", "off_freq", "off_mean", "off_w0", "off_b0", "off_wo", "off_bo", "off_hidden", "D", "F", "H", "L",
                 "act", "energy", "CS", "NZ", "n_nets", "K", "B", "n_steps", "n_trap", "n_lf", "k0", "k1", "o0", "o1",
                 "chain0"]


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _net_prep_kernel(w_ptr, meta_ptr, c_ptr, n, off_freq, off_mean, off_w0, off_b0, off_wo, off_bo, off_hidden,
                     D, F, H, L, act, energy, CS, t_: tl.float64, alpha_: tl.float64, v_: tl.float64, sv_: tl.float64,
                     HP: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr):
    """Network n's table row and constants at c_ptr + n CS: c (H,), then at HP: α m (D,), v, √v."""
    DT: tl.constexpr = w_ptr.dtype.element_ty
    row = meta_ptr + n * META
    ld0 = D + 2 * F
    tl.store(row + 0, tl.cast(off_w0, tl.int64))
    tl.store(row + 1, tl.cast(ld0, tl.int64))
    tl.store(row + 2, tl.cast(off_wo, tl.int64))
    tl.store(row + 3, tl.cast(off_bo, tl.int64))
    tl.store(row + 4, tl.cast(off_hidden, tl.int64))
    tl.store(row + 5, tl.cast(H, tl.int64))
    tl.store(row + 6, tl.cast(L, tl.int64))
    tl.store(row + 7, tl.cast(act, tl.int64))
    tl.store(row + 8, tl.cast(energy, tl.int64))
    j = tl.arange(0, HP)
    jm = j < H
    tt = t_.to(DT)
    emb = tl.zeros([HP], tl.float64)
    for f0 in range(0, F, BLOCK_F):
        f = f0 + tl.arange(0, BLOCK_F)
        fm = f < F
        arg = (tt * tl.load(w_ptr + off_freq + f, mask=fm, other=0.0)).to(tl.float64)
        e_sin = tl.sin(arg).to(DT).to(tl.float64)
        e_cos = tl.cos(arg).to(DT).to(tl.float64)
        m2 = jm[:, None] & fm[None, :]
        w_sin = tl.load(w_ptr + off_w0 + j[:, None] * ld0 + D + f[None, :], mask=m2, other=0.0).to(tl.float64)
        w_cos = tl.load(w_ptr + off_w0 + j[:, None] * ld0 + D + F + f[None, :], mask=m2, other=0.0).to(tl.float64)
        emb += tl.sum(w_sin * e_sin[None, :] + w_cos * e_cos[None, :], axis=1)
    base = c_ptr + n * CS
    tl.store(base + j, emb.to(DT) + tl.load(w_ptr + off_b0 + j, mask=jm, other=0.0), mask=jm)
    d = tl.arange(0, BLOCK_D)
    dm = d < D
    tl.store(base + HP + d, alpha_.to(DT) * tl.load(w_ptr + off_mean + d, mask=dm, other=0.0), mask=dm)
    tl.store(base + HP + D, v_.to(DT))
    tl.store(base + HP + D + 1, sv_.to(DT))


@triton.jit
def _net_row(meta_ptr, n):
    """Network n's table row (`_net_prep_kernel`): off_w0, ld0, off_wo, off_bo, off_hidden, H, L, act."""
    row = meta_ptr + n * META
    return (tl.load(row + 0), tl.load(row + 1), tl.load(row + 2), tl.load(row + 3), tl.load(row + 4),
            tl.load(row + 5), tl.load(row + 6), tl.load(row + 7))


@triton.jit
def _net_forward(x, w_ptr, base, row, zs, D, cols, cmask, HP: tl.constexpr, KEEP: tl.constexpr):
    """A network's forward at the rows of x (row: its `_net_row`, base: its constants, c_ptr + n CS):
    (o, α m, v, √v) with o = W_o h_L + b_o [BLOCK_B, BLOCK_D] (zeros in the padding columns); with KEEP, act'(z_k)
    of every layer k = 0 .. L stored in the program's scratch zs for `_net_energy` ([L + 1, BLOCK_B, HP]; the tiled
    path, HP > MLP_REG_HIDDEN, keeps h_k there too: [L + 3, BLOCK_B, HP], [2, BLOCK_B, HP] without KEEP)."""
    o = forward_layers(x, w_ptr, base, row, zs, D, D, cols, cmask, HP, KEEP)
    am = tl.load(base + HP + cols, mask=cmask, other=0.0)
    return o, am, tl.load(base + HP + D), tl.load(base + HP + D + 1)


@triton.jit
def _net_score(x, w_ptr, c_ptr, meta_ptr, n, CS, zs, D, cols, cmask, HP: tl.constexpr):
    """s_n(x) = (α m − x)/v + o/√v [BLOCK_B, BLOCK_D] of network n at the rows of x (zeros in the padding columns);
    zs: the program's scratch (the tiled path's)."""
    o, am, v, sv = _net_forward(x, w_ptr, c_ptr + n * CS, _net_row(meta_ptr, n), zs, D, cols, cmask, HP, False)
    return div_ieee(am - x, v) + div_ieee(o, sv)


@triton.jit
def _program_scratch(zs_ptr, NZ, BB: tl.constexpr, HP: tl.constexpr):
    """This program's NZ tiles of [BB, HP] in the scratch zs_ptr (the programs of a persistent grid reuse theirs
    for every row block they take)."""
    return zs_ptr + tl.program_id(0).to(tl.int64) * NZ * (BB * HP)


@triton.jit
def _score_sum(x, w_ptr, c_ptr, meta_ptr, n_nets, CS, zs_ptr, NZ, mu_ptr, tab_ptr, K, mix_alpha, D, cols, cmask,
               HP: tl.constexpr, HAS_MIX: tl.constexpr):
    """Σ_n s_n(x) (+ the mixture's score), factors in order (networks, then the mixture); zs_ptr, NZ: the tiled
    path's scratch (`_program_scratch`), None at HP <= MLP_REG_HIDDEN."""
    if HP > MLP_REG_HIDDEN:
        zs = _program_scratch(zs_ptr, NZ, x.shape[0], HP)
    else:
        zs = zs_ptr
    s = tl.zeros(x.shape, x.dtype)
    for n in range(n_nets):
        s += _net_score(x, w_ptr, c_ptr, meta_ptr, n, CS, zs, D, cols, cmask, HP)
    if HAS_MIX:
        s_mix, _ = gmm_eval(x, mu_ptr, tab_ptr, K, D, cols, cmask, mix_alpha, x.shape[0])
        s += s_mix
    return s


@triton.jit
def _net_energy(x, w_ptr, c_ptr, meta_ptr, n, CS, zs, D, cols, cmask, HP: tl.constexpr):
    """(s_n(x), E_n(x)) of energy network n at the rows of x: the forward keeps act'(z_k) of every layer in the
    program's scratch zs (`_net_forward`), then r = (x − α m) − √v o, E = |r|²/(2v) and the backward
    g_L = (r W_out) ⊙ act'(z_L), g_{k−1} = (g_k W_k) ⊙ act'(z_{k−1}), J_fᵀ r = g_0 W_0[:, :D];
    s = J_fᵀ r/√v − r/v (the C++ engine's order, csrc/cpu/mlp_sum.h)."""
    row = _net_row(meta_ptr, n)
    o, am, v, sv = _net_forward(x, w_ptr, c_ptr + n * CS, row, zs, D, cols, cmask, HP, True)
    r = (x - am) - sv * o  # zeros in the padding columns
    energy = div_ieee(tl.sum(r * r, axis=1), 2.0 * v)
    tl.debug_barrier()  # the scratch rows were stored by other threads of the program
    gx = backward_layers(r, w_ptr, row, zs, D, HP)
    tl.debug_barrier()  # every thread has read the scratch before the next evaluation writes it
    return div_ieee(gx, sv) - div_ieee(r, v), energy


@triton.jit
def _energy_sum(x, w_ptr, c_ptr, meta_ptr, n_nets, CS, zs_ptr, NZ, mu_ptr, tab_ptr, K, mix_alpha, D, cols, cmask,
                HP: tl.constexpr, HAS_MIX: tl.constexpr):
    """(Σ_n s_n(x), Σ_n log p_n(x)) of score and energy networks (meta row flag 8) (+ the mixture's score and log
    p), factors in order (networks, then the mixture); log p = −E_n of the energy networks (the score networks have
    none: the sum is the log-density only when every factor is an energy network or the mixture). zs_ptr: NZ
    layers of [BLOCK_B, HP] scratch per program."""
    BB: tl.constexpr = x.shape[0]
    zs = _program_scratch(zs_ptr, NZ, BB, HP)
    s = tl.zeros(x.shape, x.dtype)
    logp = tl.zeros([BB], x.dtype)
    for n in range(n_nets):
        if tl.load(meta_ptr + n * META + 8) != 0:
            s_n, e_n = _net_energy(x, w_ptr, c_ptr, meta_ptr, n, CS, zs, D, cols, cmask, HP)
            logp -= e_n
        else:
            s_n = _net_score(x, w_ptr, c_ptr, meta_ptr, n, CS, zs, D, cols, cmask, HP)
        s += s_n
    if HAS_MIX:
        s_mix, lp_mix = gmm_eval(x, mu_ptr, tab_ptr, K, D, cols, cmask, mix_alpha, BB)
        s += s_mix
        logp += lp_mix
    return s, logp


# The score evaluators of the kernels (`evaluate`'s constexpr EVAL)
EVAL_MIXTURE = tl.constexpr(0)
EVAL_SCORE_NETS = tl.constexpr(1)
EVAL_ENERGY_NETS = tl.constexpr(2)


@triton.jit
def evaluate(x, w_ptr, c_ptr, meta_ptr, n_nets, CS, zs_ptr, NZ, mu_ptr, tab_ptr, K, alpha, D, cols, cmask,
             EVAL: tl.constexpr, HP: tl.constexpr, HAS_MIX: tl.constexpr):
    """(score, log p) [BLOCK_B, BLOCK_D], [BLOCK_B] at the rows of x of evaluator EVAL: EVAL_MIXTURE the mixture
    (mu_ptr, tab_ptr, K at alpha: `gmm.gmm_eval`), EVAL_SCORE_NETS the sum of the n_nets score networks of the
    engine's buffers (w_ptr, c_ptr, meta_ptr, CS) and, with HAS_MIX, the mixture at alpha (log p: zeros, unused: a
    score network has none), EVAL_ENERGY_NETS the sum of score and energy networks (`_energy_sum`). zs_ptr, NZ: the
    scratch of the energy networks and of the tiled path (`_Engine.NZ`)."""
    if EVAL == EVAL_MIXTURE:
        s, logp = gmm_eval(x, mu_ptr, tab_ptr, K, D, cols, cmask, alpha, x.shape[0])
    elif EVAL == EVAL_SCORE_NETS:
        s = _score_sum(x, w_ptr, c_ptr, meta_ptr, n_nets, CS, zs_ptr, NZ, mu_ptr, tab_ptr, K, alpha, D, cols, cmask,
                       HP, HAS_MIX)
        logp = tl.zeros([x.shape[0]], x.dtype)
    else:
        s, logp = _energy_sum(x, w_ptr, c_ptr, meta_ptr, n_nets, CS, zs_ptr, NZ, mu_ptr, tab_ptr, K, alpha, D, cols,
                              cmask, HP, HAS_MIX)
    return s, logp


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _net_sum_kernel(x_ptr, score_ptr, logp_ptr, w_ptr, c_ptr, meta_ptr, n_nets, CS, zs_ptr, NZ, mu_ptr, tab_ptr, K,
                    mix_alpha_: tl.float64, B, D, EVAL: tl.constexpr, HP: tl.constexpr, HAS_MIX: tl.constexpr,
                    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, IDX64: tl.constexpr):
    """mlp_score (EVAL_SCORE_NETS: the score) and mlp_energy (EVAL_ENERGY_NETS: the score and log p); the programs
    loop over the row blocks (a persistent grid where there is a scratch, `_Engine.grid`)."""
    for blk in range(tl.program_id(0), tl.cdiv(B, BLOCK_B), tl.num_programs(0)):
        rows, rmask, cols, cmask, m2, offs, x = _whole_rows(x_ptr, blk, B, D, BLOCK_B, BLOCK_D, IDX64)
        s, logp = evaluate(x, w_ptr, c_ptr, meta_ptr, n_nets, CS, zs_ptr, NZ, mu_ptr, tab_ptr, K,
                           mix_alpha_.to(x.dtype), D, cols, cmask, EVAL, HP, HAS_MIX)
        tl.store(score_ptr + offs, s, mask=m2)
        if EVAL == EVAL_ENERGY_NETS:
            tl.store(logp_ptr + rows, logp, mask=rmask)


# ------------------------------------------------------------------ host side

class _Engine(NamedTuple):
    """The per-call arguments of the kernels' evaluator shared by the network ops (`_engine`)."""

    nets: tuple       # w, consts, meta, n_nets, CS (`evaluate`'s order)
    NZ: int           # [BLOCK_B, HP] tiles of scratch per program: the energy networks' act' (max L + 1), + 2 on the
                      # tiled path (HP > MLP_REG_HIDDEN: the activations); 0: no scratch
    mixture: tuple    # means, tab, K, mix_alpha
    HP: int
    HAS_MIX: bool
    EVAL: int

    def grid(self, n_blocks, device):
        """The grid of a launch over n_blocks row blocks: one program per block, or with a scratch a persistent grid of
        at most _PROGRAMS_PER_SM programs per multiprocessor (the scratch then has a size bounded by the device)."""
        return (persistent_programs(n_blocks, device) if self.NZ else n_blocks,)

    def arguments(self, x, n_programs, block_b):
        """`evaluate`'s arguments w_ptr .. alpha of a launch on x of n_programs programs of block_b chains (with the
        scratch: NZ tiles of [block_b, HP] per program)."""
        zs = None
        if self.NZ:
            zs = torch.empty(n_programs * self.NZ * block_b * self.HP, dtype=x.dtype, device=x.device)
        return (*self.nets, zs, self.NZ, *self.mixture)


def _engine(name, x, params, dims, scalars, means, log_weights, variances, mix_alpha, mix_sigma2, energy=None,
            need_energy=False):
    """Checks the Triton limits, concatenates the networks' tensors, launches one `_net_prep_kernel` per
    network (its table row and constants) and the mixture's component table. energy: the per-network energy
    flags (the mlp_energy ops; None: score networks); need_energy: the log-density is asked for (mlp_energy, the
    energy test), which every network must have."""
    D = x.shape[1]
    if D > MLP_MAX_D:
        raise ValueError(f"triton {name} supports D <= {MLP_MAX_D}, got D={D}")
    nets = list(_unflatten(params, dims, scalars))
    n_nets = len(nets)
    hidden = [net.H for net in nets]
    if hidden and max(hidden) > MLP_MAX_HIDDEN:
        raise ValueError(f"triton {name} supports hidden widths H <= {MLP_MAX_HIDDEN}, got H={max(hidden)}")
    flags = [int(bool(e)) for e in energy] if energy else [0] * n_nets
    if len(flags) != n_nets:
        raise ValueError(f"triton {name}: energy must hold one flag per network ({n_nets}), got {len(flags)}")
    if need_energy and 0 in flags:
        raise ValueError(f"triton {name}: the log-density needs every factor's energy, network {flags.index(0)} is a "
                         f"score network")
    HP = max(_MIN_DOT, next_pow2(max(hidden, default=1)))
    CS = HP + D + 2
    w = consts = meta = None
    if n_nets:
        w = torch.cat([p.reshape(-1) for p in params])
        consts = torch.empty(n_nets * CS, dtype=x.dtype, device=x.device)
        meta = torch.empty(n_nets * META.value, dtype=torch.int64, device=x.device)
    offs = [0]
    for p in params:
        offs.append(offs[-1] + p.numel())
    for i, net in enumerate(nets):
        v = net.alpha * net.alpha * net.data_var + net.sigma2
        # buffer offsets of freq, mean, W_0, b_0, W_o, b_o and the first hidden layer (the flat order of a network)
        launch(_net_prep_kernel, (1,), w, meta, consts, i, *offs[net.start:net.start + 7], D, net.F, net.H, net.L,
               net.act, flags[i], CS, f64(net.t), f64(net.alpha), f64(v), f64(_ieee.sqrt(v)), HP=HP,
               BLOCK_F=min(max(next_pow2(net.F), 1), 64), BLOCK_D=next_pow2(D), num_warps=4)
    has_mix = means is not None
    tab = _gmm_table(log_weights, variances, D, float(mix_alpha), mix_sigma2) if has_mix else None
    K = means.shape[0] if has_mix else 0
    NZ = max((net.L + 1 for net, f in zip(nets, flags) if f), default=0)
    ev = EVAL_ENERGY_NETS if NZ or need_energy else EVAL_SCORE_NETS
    if HP > MLP_REG_HIDDEN:
        NZ += 2
    return _Engine((w, consts, meta, n_nets, CS), NZ, (means, tab, K, f64(mix_alpha)), HP, has_mix, ev.value)


@functools.cache
def _multiprocessors(device):
    return torch.cuda.get_device_properties(device).multi_processor_count


def persistent_programs(n_blocks, device):
    """The programs of a persistent grid over n_blocks row blocks on device: min(n_blocks, _PROGRAMS_PER_SM per
    multiprocessor), under the interpreter min(n_blocks, _INTERPRET_PROGRAMS). The module's names are looked up at
    each call (the tests bound a GPU's grid by monkeypatching them)."""
    if INTERPRET:
        return min(n_blocks, _INTERPRET_PROGRAMS)
    return min(n_blocks, _PROGRAMS_PER_SM * _multiprocessors(device))


def _blocks(B, D, dtype):
    """BLOCK_B, BLOCK_J (state tile 4 BLOCK_J >= 16 columns) and the grid of a call."""
    block_j = max(_MIN_DOT // 4, next_pow2((D + 3) // 4))
    block_b = _BLOCK_B_MAX if dtype == torch.float32 or INTERPRET else _BLOCK_B_MAX // 2
    if not INTERPRET:
        block_b = min(block_b, next_pow2(triton.cdiv(B, _MIN_PROGRAMS)))
    block_b = max(_MIN_DOT, min(block_b, next_pow2(B)))
    return block_b, block_j, (triton.cdiv(B, block_b),)


def _net_sum(name, x, engine_args, energy=None):
    """mlp_score (energy None: the score) or mlp_energy (the score and log p)."""
    B, D = x.shape
    eng = _engine(name, x, *engine_args, energy=energy, need_energy=energy is not None)
    score = torch.empty_like(x)
    logp = None if energy is None else torch.empty((B,), dtype=x.dtype, device=x.device)
    if B:
        block_b, block_j, grid = _blocks(B, D, x.dtype)
        grid = eng.grid(grid[0], x.device)
        launch(_net_sum_kernel, grid, x, score, logp, *eng.arguments(x, grid[0], block_b), B, D, EVAL=eng.EVAL,
               HP=eng.HP, HAS_MIX=eng.HAS_MIX, BLOCK_B=block_b, BLOCK_D=4 * block_j, IDX64=need_idx64(B * D),
               num_warps=4, num_stages=_STAGES)
    return score if energy is None else (score, logp)


def mlp_score(x, params, dims, scalars, means, log_weights, variances, mix_alpha, mix_sigma2):
    return _net_sum("mlp_score", x, (params, dims, scalars, means, log_weights, variances, mix_alpha, mix_sigma2))


def mlp_energy(x, params, dims, scalars, energy, means, log_weights, variances, mix_alpha, mix_sigma2):
    return _net_sum("mlp_energy", x, (params, dims, scalars, means, log_weights, variances, mix_alpha, mix_sigma2),
                    energy)
