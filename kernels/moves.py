"""The whole-move kernels, one per move kind: n_steps MALA (`_mala_kernel`) or HMC (`_hmc_kernel`) moves of
BLOCK_B chains on the score evaluator chosen at compile time by the constexpr EVAL (`mlp.evaluate`):

* EVAL_MIXTURE: a Gaussian mixture (`gmm.gmm_eval`): gmm_mala, gmm_hmc;
* EVAL_SCORE_NETS: a sum of score networks, optionally with a mixture: mlp_mala, mlp_hmc (and the
  mlp_energy ones when no factor is an energy network);
* EVAL_ENERGY_NETS: a sum of score and energy networks, optionally with a mixture (`mlp._energy_sum`: one forward
  and one backward per energy network): mlp_energy_mala, mlp_energy_hmc.

Every evaluator returns (score, log p) at a [BLOCK_B, BLOCK_D] tile of whole rows (log p only where every
factor has one). The state x, s(x), log p(x) (and the HMC momentum) stay in registers across the moves.

MALA, move m (op 7 of docs/backend-contract.md): x' = x + ε s(x) + √(2ε) ξ, log α = ΔlogP + (|d − ε s|² −
|d + ε s'|²)/(4ε), d = x' − x, with ΔlogP the trapezoid of the score with n_trap sub-intervals (MH_MODE 0),
log p(x') − log p(x) (1, the exact energy test) or no test (2: ULA).
HMC (op 8): p0 = damping p + c_n ξ, n_lf leapfrog steps, ΔlogP the trapezoid along the path (0) or the exact
log p(end) − log p(start) (1), log α = ΔlogP − |p|²/2 + |p0|²/2; on rejection p = −p0.
Move m draws ξ and u from Philox (seed, offset + m) (`random.py`: the bits of ops.mala_propose /
momentum_refresh / the accept ops), so the kernels reproduce the reference moves.

Host side: `gmm_mala` / `gmm_hmc` (the mixture's component table, register tiles of about GMM_MALA_TILE
elements) and the four network ops (`mlp._engine`, blocks of `mlp._blocks`), one `_launch_moves` for all.
"""
import math

import triton
import triton.language as tl

from fastsamp.backends._abi import move_outputs

from ._launch import INTERPRET, f64, launch, need_idx64, next_pow2, rng_args
from .gmm import GMM_MALA_MAX_D, _gmm_blocks, _gmm_table, _whole_rows
from .mlp import (
    _RUNTIME_INTS,
    _STAGES,
    EVAL_MIXTURE,
    MLP_MAX_D,
    MLP_MAX_HIDDEN,
    _blocks,
    _engine,
    evaluate,
)
from .random import global_chain, normal_rows, offset_add, rng_words, uniform_mh
from .tiles import div_ieee, sqrt_ieee

__all__ = ["gmm_mala", "gmm_hmc", "mlp_mala", "mlp_hmc", "mlp_energy_mala", "mlp_energy_hmc", "GMM_MALA_MAX_D",
           "MLP_MAX_D", "MLP_MAX_HIDDEN"]

# fp32 elements of one program's [BLOCK_B, BLOCK_D] tile of the mixture moves (halved for fp64). Measured on an
# H100 (fp32): 1024 is best for small D, 2048 for D >= 64 (~15% faster). Under the interpreter, where a program
# costs a python-level loop over the moves and components, the tiles are 4x larger.
GMM_MALA_TILE = 4096 if INTERPRET else 1024
GMM_MALA_TILE_WIDE = 8192 if INTERPRET else 2048   # BLOCK_D >= 64


@triton.jit
def _chain_tile(x_ptr, eps_ptr, blk, B, D, chain0, alpha_, BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr,
                IDX64: tl.constexpr):
    """Where row block blk of a move kernel starts: gmm._whole_rows (BLOCK_D = 4 BLOCK_J: whole Philox draws), the
    step sizes (1 in the padding rows), the rows' Philox chain words (`global_chain`) and the evaluator's alpha_
    in the chains' dtype."""
    rows, rmask, cols, cmask, m2, offs, x = _whole_rows(x_ptr, blk, B, D, BLOCK_B, 4 * BLOCK_J, IDX64)
    eps = tl.load(eps_ptr + rows, mask=rmask, other=1.0)
    return rows, rmask, cols, cmask, m2, offs, x, eps, global_chain(rows, chain0), alpha_.to(x.dtype)


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


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _mala_kernel(x_ptr, eps_ptr, xo_ptr, rate_ptr, w_ptr, c_ptr, meta_ptr, n_nets, CS, zs_ptr, NZ, mu_ptr, tab_ptr,
                 K, alpha_: tl.float64, k0, k1, o0, o1, chain0, seed_p, offset_p, chain_p, B, D, n_steps, n_trap,
                 MH_MODE: tl.constexpr, EVAL: tl.constexpr, HP: tl.constexpr, HAS_MIX: tl.constexpr,
                 BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr, IDX64: tl.constexpr, RNG_T: tl.constexpr):
    """n_steps MALA moves of BLOCK_B chains on evaluator EVAL (arguments w_ptr .. alpha_: `mlp.evaluate`'s);
    x, s(x), logp(x) stay in registers; the programs loop over the row blocks (a persistent grid where the evaluator
    has a scratch, `mlp._Engine.grid`). MH_MODE 0: trapezoid score test with n_trap sub-intervals, 1: exact energy
    test, 2: no test (ULA)."""
    k0, k1, o0, o1, chain0 = rng_words(k0, k1, o0, o1, chain0, seed_p, offset_p, chain_p, RNG_T)
    for blk in range(tl.program_id(0), tl.cdiv(B, BLOCK_B), tl.num_programs(0)):  # persistent grid
        rows, rmask, cols, cmask, m2, offs, x, eps, chains, alpha = _chain_tile(x_ptr, eps_ptr, blk, B, D, chain0,
                                                                                alpha_, BLOCK_B, BLOCK_J, IDX64)
        DT: tl.constexpr = x.dtype
        e2 = eps[:, None]
        c_n = sqrt_ieee(2.0 * eps)[:, None]
        e4 = 4.0 * eps
        nf = tl.cast(n_trap, DT)
        s, logp = evaluate(x, w_ptr, c_ptr, meta_ptr, n_nets, CS, zs_ptr, NZ, mu_ptr, tab_ptr, K, alpha, D, cols, cmask,
                           EVAL, HP, HAS_MIX)
        n_acc = tl.zeros([BLOCK_B], tl.int32)
        for mv in range(n_steps):
            om0, om1, xi = _move_normals(k0, k1, o0, o1, mv, chains, cmask, BLOCK_J, DT)
            xp = x + e2 * s + c_n * xi
            sp, logpp = evaluate(xp, w_ptr, c_ptr, meta_ptr, n_nets, CS, zs_ptr, NZ, mu_ptr, tab_ptr, K, alpha, D, cols,
                                 cmask, EVAL, HP, HAS_MIX)
            if MH_MODE == 2:
                acc = rmask
            else:
                d = xp - x
                if MH_MODE == 0:
                    si = tl.zeros([BLOCK_B], DT)
                    for i in range(1, n_trap):
                        t = div_ieee(tl.cast(i, DT), nf)
                        si_s, si_l = evaluate(x + t * d, w_ptr, c_ptr, meta_ptr, n_nets, CS, zs_ptr, NZ, mu_ptr,
                                              tab_ptr, K, alpha, D, cols, cmask, EVAL, HP, HAS_MIX)
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


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _hmc_kernel(x_ptr, eps_ptr, xo_ptr, rate_ptr, w_ptr, c_ptr, meta_ptr, n_nets, CS, zs_ptr, NZ, mu_ptr, tab_ptr,
                K, alpha_: tl.float64, k0, k1, o0, o1, chain0, seed_p, offset_p, chain_p, B, D, n_steps, n_lf,
                damping_: tl.float64, c_n_: tl.float64, MH_MODE: tl.constexpr, EVAL: tl.constexpr, HP: tl.constexpr,
                HAS_MIX: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr, IDX64: tl.constexpr,
                RNG_T: tl.constexpr):
    """n_steps HMC moves of BLOCK_B chains on evaluator EVAL; x, s(x), logp(x) and the momentum p stay in
    registers. Move m: p0 = damping p + c_n ξ, n_lf leapfrog steps, then the trapezoid (MH_MODE 0), energy (1)
    or no (2) test; on rejection p = −p0."""
    k0, k1, o0, o1, chain0 = rng_words(k0, k1, o0, o1, chain0, seed_p, offset_p, chain_p, RNG_T)
    for blk in range(tl.program_id(0), tl.cdiv(B, BLOCK_B), tl.num_programs(0)):  # persistent grid
        rows, rmask, cols, cmask, m2, offs, x, eps, chains, alpha = _chain_tile(x_ptr, eps_ptr, blk, B, D, chain0,
                                                                                alpha_, BLOCK_B, BLOCK_J, IDX64)
        DT: tl.constexpr = x.dtype
        damping = damping_.to(DT)
        c_n = c_n_.to(DT)
        e2 = eps[:, None]
        he = (0.5 * eps)[:, None]
        s, logp = evaluate(x, w_ptr, c_ptr, meta_ptr, n_nets, CS, zs_ptr, NZ, mu_ptr, tab_ptr, K, alpha, D, cols, cmask,
                           EVAL, HP, HAS_MIX)
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
                sn, logpl = evaluate(xn, w_ptr, c_ptr, meta_ptr, n_nets, CS, zs_ptr, NZ, mu_ptr, tab_ptr, K, alpha, D,
                                     cols, cmask, EVAL, HP, HAS_MIX)
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


def _launch_moves(kernel, x, evaluator, step_size, n_steps, n_inner, seed, offset, chain_offset, mh, extra, blocks):
    """The shared host side of the move ops: outputs, the B = 0 / n_steps <= 0 cases and the launch of `kernel`
    with `evaluator` (a callable giving (evaluator arguments, their constexprs), run only when there is work) and
    `blocks` (BLOCK_B, BLOCK_J, grid, launch options) after the move arguments (n_steps, n_inner, *extra)."""
    x_new, rate = move_outputs(x)
    n_steps = int(n_steps)
    if x.shape[0] == 0:
        return x_new, rate
    if n_steps <= 0:
        x_new.copy_(x)
        rate.zero_()
        return x_new, rate
    B, D = x.shape
    block_b, block_j, grid, options = blocks
    args, consts = evaluator(grid[0], block_b)
    rng, rng_t = rng_args(seed, offset, chain_offset, x.device)
    launch(kernel, grid, x, step_size, x_new, rate, *args, *rng, B, D, n_steps, int(n_inner), *extra, MH_MODE=mh,
           **consts, BLOCK_B=block_b, BLOCK_J=block_j, IDX64=need_idx64(B * D), RNG_T=rng_t, **options)
    return x_new, rate


def _hmc_extra(damping):
    """The HMC kernel's (damping, c_n = √(1 − damping²)) arguments."""
    damping = float(damping)
    return f64(damping), f64(math.sqrt(1.0 - damping * damping))


# ------------------------------------------------------------------ the mixture

def _gmm_moves(kernel, name, x, means, log_weights, variances, step_size, n_steps, n_inner, alpha, sigma2, seed,
               offset, chain_offset, mh, *extra):
    """A move op on the mixture (EVAL_MIXTURE): its checks, register tiles and component table."""
    B, D = x.shape
    if D > GMM_MALA_MAX_D:
        raise ValueError(f"triton {name} supports D <= {GMM_MALA_MAX_D}, got D={D}")
    mh = int(mh)
    if mh not in (0, 1, 2):
        raise ValueError(f"mh must be 0, 1 or 2, got {mh}")
    block_j = next_pow2((D + 3) // 4)
    block_d = 4 * block_j
    block_b, warps = _gmm_blocks(B, block_d, x.dtype, GMM_MALA_TILE_WIDE if block_d >= 64 else GMM_MALA_TILE)
    alpha = float(alpha)

    def evaluator(n_programs, block_b):
        tab = _gmm_table(log_weights, variances, D, alpha, sigma2)
        return ((None, None, None, 0, 0, None, 0, means, tab, means.shape[0], f64(alpha)),
                dict(EVAL=EVAL_MIXTURE.value, HP=16, HAS_MIX=True))
    blocks = (block_b, block_j, (triton.cdiv(B, block_b),), dict(num_warps=warps))
    return _launch_moves(kernel, x, evaluator, step_size, n_steps, n_inner, seed, offset, chain_offset, mh, extra,
                         blocks)


def gmm_mala(x, means, log_weights, variances, step_size, n_steps, n_trapezoid, alpha, sigma2,
             seed, offset, chain_offset, mh):
    return _gmm_moves(_mala_kernel, "gmm_mala", x, means, log_weights, variances, step_size, n_steps, n_trapezoid,
                      alpha, sigma2, seed, offset, chain_offset, mh)


def gmm_hmc(x, means, log_weights, variances, step_size, n_steps, n_leapfrog, alpha, sigma2,
            seed, offset, chain_offset, mh, damping):
    return _gmm_moves(_hmc_kernel, "gmm_hmc", x, means, log_weights, variances, step_size, n_steps, n_leapfrog,
                      alpha, sigma2, seed, offset, chain_offset, mh, *_hmc_extra(damping))


# ------------------------------------------------------------------ network sums

def _net_moves(kernel, name, x, net_args, energy, step_size, n_steps, n_inner, seed, offset, chain_offset, mh, *extra):
    """A move op on a network sum: net_args (params, dims, scalars, means, log_weights, variances, mix_alpha,
    mix_sigma2), energy: the per-network energy flags of the mlp_energy ops, None for the score ops."""
    mh = int(mh)
    if energy is None and mh not in (0, 2):
        raise ValueError(f"triton {name}: mh must be 0 (score) or 2 (none): a score network has no energy, got {mh}")
    if mh not in (0, 1, 2):
        raise ValueError(f"triton {name}: mh must be 0 (score), 1 (energy) or 2 (none), got {mh}")
    eng = _engine(name, x, *net_args, energy=energy, need_energy=mh == 1)
    block_b, block_j, grid = _blocks(x.shape[0], x.shape[1], x.dtype)
    blocks = (block_b, block_j, eng.grid(grid[0], x.device), dict(num_warps=4, num_stages=_STAGES))

    def evaluator(n_programs, block_b):
        return eng.arguments(x, n_programs, block_b), dict(EVAL=eng.EVAL, HP=eng.HP, HAS_MIX=eng.HAS_MIX)
    return _launch_moves(kernel, x, evaluator, step_size, n_steps, n_inner, seed, offset, chain_offset, mh, extra,
                         blocks)


def mlp_mala(x, params, dims, scalars, means, log_weights, variances, mix_alpha, mix_sigma2, step_size, n_steps,
             n_trapezoid, seed, offset, chain_offset, mh):
    return _net_moves(_mala_kernel, "mlp_mala", x, (params, dims, scalars, means, log_weights, variances, mix_alpha,
                                                    mix_sigma2), None, step_size, n_steps, n_trapezoid, seed, offset,
                      chain_offset, mh)


def mlp_hmc(x, params, dims, scalars, means, log_weights, variances, mix_alpha, mix_sigma2, step_size, n_steps,
            n_leapfrog, seed, offset, chain_offset, mh, damping):
    return _net_moves(_hmc_kernel, "mlp_hmc", x, (params, dims, scalars, means, log_weights, variances, mix_alpha,
                                                  mix_sigma2), None, step_size, n_steps, n_leapfrog, seed, offset,
                      chain_offset, mh, *_hmc_extra(damping))


def mlp_energy_mala(x, params, dims, scalars, energy, means, log_weights, variances, mix_alpha, mix_sigma2, step_size,
                    n_steps, n_trapezoid, seed, offset, chain_offset, mh):
    return _net_moves(_mala_kernel, "mlp_energy_mala", x, (params, dims, scalars, means, log_weights, variances,
                                                           mix_alpha, mix_sigma2), energy, step_size, n_steps,
                      n_trapezoid, seed, offset, chain_offset, mh)


def mlp_energy_hmc(x, params, dims, scalars, energy, means, log_weights, variances, mix_alpha, mix_sigma2, step_size,
                   n_steps, n_leapfrog, seed, offset, chain_offset, mh, damping):
    return _net_moves(_hmc_kernel, "mlp_energy_hmc", x, (params, dims, scalars, means, log_weights, variances,
                                                         mix_alpha, mix_sigma2), energy, step_size, n_steps,
                      n_leapfrog, seed, offset, chain_offset, mh, *_hmc_extra(damping))
