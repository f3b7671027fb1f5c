"""The gmm family (gmm_score, gmm_mala, gmm_hmc): every compiled backend against the float64
PyTorch reference on fresh random inputs."""
import math

import pytest
import torch
from conftest import (
    GMM_SHAPES,
    MOVE_SHAPES,
    assert_close,
    assert_moves_match,
    eps64,
    f64,
    interpreted,
    interpreted_batch,
    mixture,
    rand,
    skip_unless_op,
    step_sizes,
    tol,
)

from fastsamp import ops
from fastsamp.ops import reference as ref

# Chains of the whole-move kernels under the Triton interpreter (the rest of MOVE_SHAPES as is).
INTERPRETED_MOVE_CHAINS = 200


# Wide D off the compile-time set {1, 2, 4, 8, 16} (the CPU score's tiles of 8 rows, then a remainder), B not a
# multiple of the lanes, and in the last shape more components than one chunk of the log-sum-exp (64).
WIDE_SHAPES = [(37, 17, 5), (301, 32, 40), (45, 50, 70)]


@pytest.mark.parametrize("B,D", GMM_SHAPES)
@pytest.mark.parametrize("K", [1, 5, 16])
def test_gmm_score(backend, dtype, B, D, K):
    _score_matches_the_reference(backend, dtype, B, D, K)


# The CPU kernels' compile-time D's at B = 37: whole blocks of rows (on AVX2 loaded and stored by the row lanes'
# transposes at D = 2, 4, 8, 16) and a partial block, on every backend.
@pytest.mark.parametrize("D", [1, 2, 4, 8, 16])
def test_gmm_score_compile_time_d(backend, dtype, D):
    _score_matches_the_reference(backend, dtype, 37, D, 3)


@pytest.mark.parametrize("B,D,K", WIDE_SHAPES)
def test_gmm_score_wide(backend, dtype, B, D, K):
    _score_matches_the_reference(backend, dtype, B, D, K)


# Every chunk of the log-sum-exp carries weight (seeded): D = 4, 15 (tiles 8 + 4 + 2 + 1), 16, and
#   "far": K = 70, chain b at component 64 + b % 6 (second chunk) and its 0.1-ball: a one-hot softmax there,
#          so a kernel that drops the second chunk or does not rescale the first one's sums fails;
#   "soft": K = 130 (three chunks), means of scale 0.3 and variances in [2, 4): many components share weight.
@pytest.mark.parametrize("D", [4, 15, 16])
@pytest.mark.parametrize("case", ["far", "soft"])
def test_gmm_score_chunks(backend, dtype, case, D):
    name, device = backend
    gen = torch.Generator().manual_seed(1000 * D + (case == "soft"))
    B = 37
    if case == "far":
        K = 70
        means = 2.0 * torch.randn(K, D, generator=gen, dtype=torch.float64)
        x = means[64 + torch.arange(B) % 6] + 0.1 * torch.randn(B, D, generator=gen, dtype=torch.float64)
        var = 0.3 + torch.rand(K, generator=gen, dtype=torch.float64)
        alpha, sigma2 = 1.0, 0.0
    else:
        K = 130
        means = 0.3 * torch.randn(K, D, generator=gen, dtype=torch.float64)
        x = torch.randn(B, D, generator=gen, dtype=torch.float64)
        var = 2.0 + 2.0 * torch.rand(K, generator=gen, dtype=torch.float64)
        alpha, sigma2 = 0.8, 0.35
    lw = 0.5 * torch.randn(K, generator=gen, dtype=torch.float64)
    _check_score(name, dtype, *(t.to(dtype=dtype, device=device) for t in (x, means, lw, var)), alpha, sigma2)


def _score_matches_the_reference(backend, dtype, B, D, K):
    """gmm_score on `backend` against the float64 reference at (B, D, K)."""
    name, device = backend
    x = rand(B, D, dtype=dtype, device=device, scale=3.0)
    means, lw, var = mixture(K, D, dtype, device)
    _check_score(name, dtype, x, means, lw, var, 0.8, 0.35)


def _check_score(name, dtype, x, means, lw, var, alpha, sigma2):
    """gmm_score on backend `name` at (x, means, lw, var) against the float64 reference."""
    B, D = x.shape
    device = x.device
    score, logp = ops.gmm_score(x, means, lw, var, alpha=alpha, sigma2=sigma2, backend=name)
    r_score, r_logp = ref.gmm_score(*f64(x, means, lw, var), alpha, sigma2)
    assert score.dtype == dtype and score.device.type == device.type
    if dtype == torch.float64:
        assert_close(score, r_score, dtype, scale=10, name="score")
        assert_close(logp, r_logp, dtype, scale=10 * D, name="logp")
        return
    # float32: the softmax over log-densities of size ~|x − μ|²/(2s) amplifies rounding, so the
    # bound is the float32 reference's own error against float64 (times a small factor)
    s32, l32 = ref.gmm_score(*[t.cpu() for t in (x, means, lw, var)], alpha, sigma2)
    for name_, out, exact, ref32 in (("score", score, r_score, s32), ("logp", logp, r_logp, l32)):
        err = (out.double().cpu() - exact).abs().max().item()
        err_ref = (ref32.double() - exact).abs().max().item()
        assert err <= 4 * err_ref + 1e-5 * (1 + exact.abs().max().item()), (name_, err, err_ref)


def test_gmm_score_far_from_modes(backend, dtype):
    """Log-sum-exp stability: points far from every component (exp underflows naively)."""
    name, device = backend
    D, K = 5, 7
    x = rand(64, D, dtype=dtype, device=device, scale=200.0)
    means, lw, var = mixture(K, D, dtype, device)
    score, logp = ops.gmm_score(x, means, lw, var, backend=name)
    r_score, r_logp = ref.gmm_score(*f64(x, means, lw, var), 1.0, 0.0)
    assert torch.isfinite(score).all() and torch.isfinite(logp).all()
    assert_close(score, r_score, dtype, scale=1e3, name="score")
    torch.testing.assert_close(logp.double().cpu(), r_logp, rtol=tol(dtype)[0] * 10, atol=0)


def _moves_match_the_reference(op, backend, dtype, B, D, K, mh, **kw):
    """op (gmm_mala / gmm_hmc) on `backend` against the float64 reference's moves from the same inputs and Philox
    stream (B chains, fewer under the Triton interpreter, in D dims, K components, per-chain step sizes), and
    bit for bit the same on a second call (compiled backends)."""
    name, device = backend
    skip_unless_op(name, op.__name__)
    B = interpreted_batch(name, B, INTERPRETED_MOVE_CHAINS)
    x = rand(B, D, dtype=dtype, device=device, scale=2.0)
    means, lw, var = mixture(K, D, dtype, device)
    eps = step_sizes(True, B, dtype, device)
    x_new, rate = op(x, means, lw, var, step_size=eps, backend=name, mh=mh, **kw)
    e_x, e_rate = op(*f64(x, means, lw, var), step_size=eps64(eps, B), backend="torch", mh=mh, **kw)
    assert_moves_match(x_new, rate, e_x, e_rate, dtype, mh)
    if not interpreted(name):
        again = op(x, means, lw, var, step_size=eps, backend=name, mh=mh, **kw)
        assert torch.equal(again[0], x_new) and torch.equal(again[1], rate)


def skip_wide_under_interpreter(backend, shape, variant: str, kept: bool):
    """Under the Triton interpreter the wide shape (D = 50, K = 70: a D off the compile-time set, more components
    than one log-sum-exp chunk) runs, per MH test, only the move variant with the most code (`kept`); the others
    run at MOVE_SHAPES there, and at every shape on the compiled backends (each took 4-13 s interpreted)."""
    if not kept and interpreted(backend[0]) and shape == WIDE_SHAPES[-1]:
        pytest.skip(f"{variant}: the wide shape under the Triton interpreter runs the variant with the most code only")


# n_trapezoid only matters for the score (trapezoid) test
@pytest.mark.parametrize("B,D,K", MOVE_SHAPES + WIDE_SHAPES[-1:])
@pytest.mark.parametrize("mh,n_trapezoid", [("score", 1), ("score", 3), ("energy", 1), ("none", 1)])
def test_gmm_mala(backend, dtype, B, D, K, mh, n_trapezoid):
    """The fused whole-move kernel reproduces n_steps reference moves (same Philox stream)."""
    skip_wide_under_interpreter(backend, (B, D, K), f"n_trapezoid {n_trapezoid}", mh != "score" or n_trapezoid == 3)
    _moves_match_the_reference(ops.gmm_mala, backend, dtype, B, D, K, mh, n_steps=6, n_trapezoid=n_trapezoid,
                               alpha=0.9, sigma2=0.2, seed=123, offset=2**32 + 5)


@pytest.mark.parametrize("B,D,K", MOVE_SHAPES + WIDE_SHAPES[-1:])
@pytest.mark.parametrize("mh", ["score", "energy", "none"])
@pytest.mark.parametrize("n_leapfrog,damping", [(1, 0.0), (3, 0.0), (3, 0.8)])
def test_gmm_hmc(backend, dtype, B, D, K, mh, n_leapfrog, damping):
    """The fused HMC kernel reproduces n_steps reference moves (same Philox stream, momentum
    carried across moves)."""
    skip_wide_under_interpreter(backend, (B, D, K), f"n_leapfrog {n_leapfrog}, damping {damping}",
                                (n_leapfrog, damping) == (3, 0.8))
    _moves_match_the_reference(ops.gmm_hmc, backend, dtype, B, D, K, mh, n_steps=5, n_leapfrog=n_leapfrog,
                               alpha=0.9, sigma2=0.2, seed=321, offset=2**32 + 7, damping=damping)


# The whole-move kernels' compile-time D's at B = 37: whole blocks of chains (loaded and stored by the row lanes'
# transposes at D = 2, 4, 8 on AVX-512 and AVX2) and a partial block, on every backend.
@pytest.mark.parametrize("D", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("op", ["gmm_mala", "gmm_hmc"])
def test_gmm_moves_compile_time_d(backend, dtype, op, D):
    kw = dict(n_trapezoid=3) if op == "gmm_mala" else dict(n_leapfrog=2, damping=0.5)
    _moves_match_the_reference(getattr(ops, op), backend, dtype, 37, D, 3, "score", n_steps=3, alpha=0.9, sigma2=0.2,
                               seed=7, offset=11, **kw)


def test_gmm_hmc_reference_one_leapfrog_oracle():
    """One leapfrog step from p0 = ξ: the trapezoid ΔlogP and the kinetic terms combine to
    log α = −(ε²/8)(|s_L|² − |s_0|²) exactly, so the reference accepts iff log u < that."""
    B, D, K = 500, 3, 4
    x = rand(B, D, dtype=torch.float64, device=torch.device("cpu"), scale=2.0)
    means, lw, var = mixture(K, D, torch.float64, torch.device("cpu"))
    eps = torch.full((B,), 0.7, dtype=torch.float64)
    seed, offset = 9, 4
    x_new, rate = ref.gmm_hmc(x, means, lw, var, eps, 1, 1, 1.0, 0.0, seed, offset, 0, 0, 0.0)
    xi = ops.normal(seed, offset, B, D, torch.float64)
    u = ops.uniform(seed, offset, B, torch.float64)
    s0, _ = ref.gmm_score(x, means, lw, var, 1.0, 0.0)
    x_l = x + eps[:, None] * (xi + 0.5 * eps[:, None] * s0)
    s_l, _ = ref.gmm_score(x_l, means, lw, var, 1.0, 0.0)
    log_alpha = -(eps ** 2 / 8) * ((s_l * s_l).sum(1) - (s0 * s0).sum(1))
    accepted = torch.log(u) < log_alpha
    assert 0 < int(accepted.sum()) < B
    torch.testing.assert_close(rate, accepted.double())
    torch.testing.assert_close(x_new, torch.where(accepted[:, None], x_l, x))


@pytest.mark.parametrize("op,kw", [
    ("gmm_mala", dict(step_size=0.1, n_steps=4, n_trapezoid=2, seed=1)),
    ("gmm_hmc", dict(step_size=0.1, n_steps=4, n_leapfrog=2, damping=0.5, seed=1)),
])
def test_whole_move_nan_chain_stays_in_its_chain(backend, dtype, op, kw):
    name, device = backend
    skip_unless_op(name, op)
    B, D, K = 37, 3, 4
    x = rand(B, D, dtype=dtype, device=device)
    x[5, 1] = math.nan
    means, lw, var = mixture(K, D, dtype, device)
    x_new, rate = getattr(ops, op)(x, means, lw, var, backend=name, **kw)
    assert torch.isnan(x_new[5]).any()
    keep = torch.arange(B, device=device) != 5
    assert torch.isfinite(x_new[keep]).all() and torch.isfinite(rate[keep]).all()
    e_x, _ = getattr(ops, op)(*f64(x[keep], means, lw, var), backend="torch", **kw)
    # chain b of the NaN-free batch is chain b (< 5) or b + 1 of the full batch: compare those whose
    # Philox streams coincide (b < 5)
    assert_close(x_new[:5], e_x[:5], dtype, scale=100, name="x_new")
