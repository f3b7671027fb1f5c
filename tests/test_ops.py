"""Every compiled backend against the float64 PyTorch reference on fresh random inputs."""
import math

import pytest
import torch
from conftest import assert_close, skip_unless_op, tol

from fastsamp import VE, VP, backends, ops
from fastsamp.ops import reference as ref

SHAPES = [(1, 1), (3, 2), (1000, 7), (257, 64), (65537, 2)]
GMM_SHAPES = [(1, 1), (3, 2), (1000, 7), (129, 64)]


def rand(*shape, dtype, device, scale=1.0):
    return (scale * torch.randn(*shape, dtype=torch.float64)).to(dtype=dtype, device=device)


def mixture(K, D, dtype, device):
    means = rand(K, D, dtype=dtype, device=device, scale=2.0)
    log_weights = rand(K, dtype=dtype, device=device)
    variances = (0.3 + torch.rand(K, dtype=torch.float64)).to(dtype=dtype, device=device)
    return means, log_weights, variances


def f64(*ts):
    return [None if t is None else t.double().cpu() for t in ts]


def step_sizes(per_chain, B, dtype, device):
    if per_chain:
        return (0.01 + 0.2 * torch.rand(B, dtype=torch.float64)).to(dtype=dtype, device=device)
    return 0.07


def eps64(eps, B):
    return eps.double().cpu() if isinstance(eps, torch.Tensor) else torch.full((B,), eps, dtype=torch.float64)


@pytest.mark.parametrize("B,D", GMM_SHAPES)
@pytest.mark.parametrize("K", [1, 5, 16])
def test_gmm_score(backend, dtype, B, D, K):
    name, device = backend
    x = rand(B, D, dtype=dtype, device=device, scale=3.0)
    means, lw, var = mixture(K, D, dtype, device)
    alpha, sigma2 = 0.8, 0.35
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


@pytest.mark.parametrize("B,D", SHAPES)
@pytest.mark.parametrize("schedule", [VP(), VE()], ids=["vp", "ve"])
@pytest.mark.parametrize("with_extra", [False, True], ids=["", "extra"])
def test_reverse_sde_step_noise_tensor(backend, dtype, B, D, schedule, with_extra):
    name, device = backend
    x, s, xi = (rand(B, D, dtype=dtype, device=device) for _ in range(3))
    extra = rand(B, D, dtype=dtype, device=device) if with_extra else None
    out = ops.reverse_sde_step(x, s, t=0.6, h=0.01, schedule=schedule, noise=xi, extra_drift=extra, backend=name)
    expect = ops.reverse_sde_step(*f64(x, s), t=0.6, h=0.01, schedule=schedule, noise=f64(xi)[0],
                                  extra_drift=f64(extra)[0], backend="torch")
    assert_close(out, expect, dtype, scale=10, name="x_new")


@pytest.mark.parametrize("B,D", SHAPES)
def test_reverse_sde_step_philox(backend, dtype, B, D):
    """In-kernel Philox noise is the stream of fastsamp.ops.random, on every backend."""
    name, device = backend
    x, s = (rand(B, D, dtype=dtype, device=device) for _ in range(2))
    seed, offset = 2**40 + 12345, 2**33 + 7
    out = ops.reverse_sde_step(x, s, t=0.3, h=0.02, schedule=VP(), seed=seed, offset=offset, backend=name)
    expect = ops.reverse_sde_step(*f64(x, s), t=0.3, h=0.02, schedule=VP(), seed=seed, offset=offset,
                                  backend="torch")
    assert_close(out, expect, dtype, scale=10, name="x_new")
    again = ops.reverse_sde_step(x, s, t=0.3, h=0.02, schedule=VP(), seed=seed, offset=offset, backend=name)
    assert torch.equal(out, again), "same seed and offset must reproduce exactly"
    other = ops.reverse_sde_step(x, s, t=0.3, h=0.02, schedule=VP(), seed=seed, offset=offset + 1, backend=name)
    assert not torch.equal(out, other)


@pytest.mark.parametrize("B,D", SHAPES)
@pytest.mark.parametrize("per_chain", [False, True], ids=["scalar_eps", "chain_eps"])
@pytest.mark.parametrize("noise_src", ["tensor", "philox"])
def test_mala_propose(backend, dtype, B, D, per_chain, noise_src):
    name, device = backend
    skip_unless_op(name, "mala_propose")
    x, s, xi = (rand(B, D, dtype=dtype, device=device) for _ in range(3))
    eps = step_sizes(per_chain, B, dtype, device)
    kw = {"noise": xi} if noise_src == "tensor" else {"seed": 99, "offset": 3}
    out = ops.mala_propose(x, s, eps, backend=name, **kw)
    kw64 = {"noise": f64(xi)[0]} if noise_src == "tensor" else {"seed": 99, "offset": 3}
    expect = ops.mala_propose(*f64(x, s), eps64(eps, B), backend="torch", **kw64)
    assert_close(out, expect, dtype, scale=10, name="x_prop")


@pytest.mark.parametrize("B,D", SHAPES)
@pytest.mark.parametrize("n", [1, 2, 5])
def test_line_points(backend, dtype, B, D, n):
    name, device = backend
    skip_unless_op(name, "line_points")
    x, xp = (rand(B, D, dtype=dtype, device=device) for _ in range(2))
    pts = ops.line_points(x, xp, n, backend=name)
    assert pts.shape == (n - 1, B, D)
    assert_close(pts, ref.line_points(*f64(x, xp), n), dtype, name="points")


def _accept_inputs(B, D, dtype, device, n_interior):
    x, xp, s, sp = (rand(B, D, dtype=dtype, device=device) for _ in range(4))
    xp = x + 0.3 * xp
    interior = rand(n_interior, B, D, dtype=dtype, device=device) if n_interior else None
    u = torch.rand(B, dtype=torch.float64).clamp_min(1e-12).to(dtype=dtype, device=device)
    return x, xp, s, sp, interior, u


def assert_accept_matches(out, expect, u, dtype, D):
    """Outputs of an MH accept agree with the reference wherever the decision is not a
    rounding-level tie between log u and log α."""
    x_new, s_new, acc, log_alpha = out
    e_x, e_s, e_acc, e_la = expect
    assert acc.dtype == torch.bool and log_alpha.shape == e_la.shape
    assert_close(log_alpha, e_la, dtype, scale=100 * D, name="log_alpha")
    margin = (torch.log(u.double().cpu()) - e_la).abs() > 1e-3 * (1 + e_la.abs())
    assert int(margin.sum()) >= margin.numel() - max(1, margin.numel() // 10)  # near-ties are rare
    assert torch.equal(acc.cpu()[margin], e_acc[margin])
    assert_close(x_new.cpu()[margin], e_x[margin], dtype, name="x_new")
    assert_close(s_new.cpu()[margin], e_s[margin], dtype, name="score_new")


@pytest.mark.parametrize("B,D", SHAPES)
@pytest.mark.parametrize("n_interior", [0, 1, 3])
@pytest.mark.parametrize("per_chain", [False, True], ids=["scalar_eps", "chain_eps"])
def test_score_mh_accept(backend, dtype, B, D, n_interior, per_chain):
    name, device = backend
    x, xp, s, sp, interior, u = _accept_inputs(B, D, dtype, device, n_interior)
    eps = step_sizes(per_chain, B, dtype, device)
    out = ops.score_mh_accept(x, xp, s, sp, eps, u, interior_scores=interior, backend=name)
    expect = ref.score_mh_accept(*f64(x, xp, s, sp), eps64(eps, B), *f64(u, interior))
    assert_accept_matches(out, expect, u, dtype, D)


@pytest.mark.parametrize("B,D", SHAPES)
def test_leapfrog_and_finish(backend, dtype, B, D):
    name, device = backend
    skip_unless_op(name, "leapfrog", "leapfrog_finish")
    x, p, s, s_next = (rand(B, D, dtype=dtype, device=device) for _ in range(4))
    eps = step_sizes(True, B, dtype, device)
    delta = rand(B, dtype=dtype, device=device)
    x_next, p_half = ops.leapfrog(x, p, s, eps, backend=name)
    e_x, e_p = ref.leapfrog(*f64(x, p, s), eps64(eps, B))
    assert_close(x_next, e_x, dtype, scale=10, name="x_next")
    assert_close(p_half, e_p, dtype, scale=10, name="p_half")
    p_next, d_next = ops.leapfrog_finish(x, x_next, p_half, s, s_next, eps, delta, backend=name)
    e_p2, e_d = ref.leapfrog_finish(*f64(x, x_next, p_half, s, s_next), eps64(eps, B), *f64(delta))
    assert_close(p_next, e_p2, dtype, scale=10, name="p_next")
    assert_close(d_next, e_d, dtype, scale=10 * D, name="delta_logp")


@pytest.mark.parametrize("B,D", SHAPES)
def test_hmc_accept(backend, dtype, B, D):
    name, device = backend
    skip_unless_op(name, "hmc_accept")
    x, xp, s, sp, _, u = _accept_inputs(B, D, dtype, device, 0)
    p, pp = (0.3 * rand(B, D, dtype=dtype, device=device) for _ in range(2))
    delta = 0.1 * rand(B, dtype=dtype, device=device)
    out = ops.hmc_accept(x, xp, s, sp, p, pp, delta, u, backend=name)
    expect = ref.hmc_accept(*f64(x, xp, s, sp, p, pp, delta, u))
    assert_accept_matches(out, expect, u, dtype, D)


@pytest.mark.parametrize("B,D", SHAPES)
@pytest.mark.parametrize("damping", [0.0, 0.9])
def test_momentum_refresh(backend, dtype, B, D, damping):
    name, device = backend
    skip_unless_op(name, "momentum_refresh")
    p = rand(B, D, dtype=dtype, device=device)
    out = ops.momentum_refresh(p, damping, seed=5, offset=11, backend=name)
    expect = ops.momentum_refresh(f64(p)[0], damping, seed=5, offset=11, backend="torch")
    assert_close(out, expect, dtype, scale=10, name="p_new")


@pytest.mark.parametrize("B,D,K", [(1, 1, 1), (3, 2, 5), (1000, 7, 16), (130, 17, 3)])
@pytest.mark.parametrize("mh", ["score", "energy", "none"])
@pytest.mark.parametrize("n_trapezoid", [1, 3])
def test_gmm_mala(backend, dtype, B, D, K, mh, n_trapezoid):
    """The fused whole-move kernel reproduces n_steps reference moves (same Philox stream).
    In float32 a chain may leave the reference path where log u and log α tie to rounding
    level; such chains must stay a tiny fraction."""
    name, device = backend
    x = rand(B, D, dtype=dtype, device=device, scale=2.0)
    means, lw, var = mixture(K, D, dtype, device)
    eps = step_sizes(True, B, dtype, device)
    kw = dict(n_steps=6, n_trapezoid=n_trapezoid, alpha=0.9, sigma2=0.2, seed=123, offset=2**32 + 5, mh=mh)
    x_new, rate = ops.gmm_mala(x, means, lw, var, step_size=eps, backend=name, **kw)
    e_x, e_rate = ops.gmm_mala(*f64(x, means, lw, var), step_size=eps64(eps, B), backend="torch", **kw)
    assert x_new.shape == (B, D) and rate.shape == (B,) and rate.dtype == dtype
    rtol, atol = tol(dtype)
    err = ((x_new.double().cpu() - e_x).abs() / (atol * 100 + rtol * 100 * e_x.abs())).amax(1)
    bad = (err > 1) | ((rate.double().cpu() - e_rate).abs() > 1e-6)
    allowed = 0 if dtype == torch.float64 else max(1, int(0.002 * B))
    assert int(bad.sum()) <= allowed, f"{int(bad.sum())} of {B} chains differ from the reference"
    if mh == "none":
        assert torch.all(rate == 1)
    again = ops.gmm_mala(x, means, lw, var, step_size=eps, backend=name, **kw)
    assert torch.equal(again[0], x_new) and torch.equal(again[1], rate)


def test_gmm_mala_nan_chain_stays_in_its_chain(backend, dtype):
    name, device = backend
    B, D, K = 37, 3, 4
    x = rand(B, D, dtype=dtype, device=device)
    x[5, 1] = math.nan
    means, lw, var = mixture(K, D, dtype, device)
    x_new, rate = ops.gmm_mala(x, means, lw, var, step_size=0.1, n_steps=4, n_trapezoid=2, seed=1, backend=name)
    assert torch.isnan(x_new[5]).any()
    keep = torch.arange(B, device=device) != 5
    assert torch.isfinite(x_new[keep]).all() and torch.isfinite(rate[keep]).all()
    e_x, _ = ops.gmm_mala(*f64(x[keep], means, lw, var), step_size=0.1, n_steps=4, n_trapezoid=2, seed=1,
                          backend="torch")
    # chain b of the NaN-free batch is chain b (< 5) or b + 1 of the full batch: compare those whose
    # Philox streams coincide (b < 5)
    assert_close(x_new[:5], e_x[:5], dtype, scale=100, name="x_new")


@pytest.mark.parametrize("B,D", [(3, 2), (1000, 7)])
def test_reverse_sde_step_out_and_in_place(backend, dtype, B, D):
    name, device = backend
    x, s = (rand(B, D, dtype=dtype, device=device) for _ in range(2))
    kw = dict(t=0.4, h=0.01, schedule=VP(), seed=8, offset=1, backend=name)
    expect = ops.reverse_sde_step(x, s, **kw)
    out = torch.full_like(x, math.nan)
    assert ops.reverse_sde_step(x, s, out=out, **kw) is out
    assert torch.equal(out, expect)
    x_in = x.clone()
    ops.reverse_sde_step(x_in, s, out=x_in, **kw)
    assert torch.equal(x_in, expect)


@pytest.mark.parametrize("B,D", SHAPES)
@pytest.mark.parametrize("noise_src", ["tensor", "philox"])
def test_guided_sde_step(backend, dtype, B, D, noise_src):
    name, device = backend
    skip_unless_op(name, "guided_sde_step")
    x, s, s_shift, v, xi = (rand(B, D, dtype=dtype, device=device) for _ in range(5))
    s_shift = s + 1e-3 * s_shift  # a finite difference: s(x + εv) close to s(x)
    kw = dict(t=0.7, h=0.01, schedule=VP(), fd_eps=1e-3, guidance=0.8)
    src = {"noise": xi} if noise_src == "tensor" else {"seed": 4, "offset": 9}
    out = ops.guided_sde_step(x, s, s_shift, v, backend=name, **kw, **src)
    src64 = {"noise": f64(xi)[0]} if noise_src == "tensor" else src
    expect = ops.guided_sde_step(*f64(x, s, s_shift, v), backend="torch", **kw, **src64)
    assert_close(out, expect, dtype, scale=10, name="x_new")


@pytest.mark.parametrize("B,D,K", [(1, 1, 1), (3, 2, 5), (1000, 7, 16), (130, 17, 3)])
@pytest.mark.parametrize("mh", ["score", "energy", "none"])
@pytest.mark.parametrize("n_leapfrog,damping", [(1, 0.0), (3, 0.0), (3, 0.8)])
def test_gmm_hmc(backend, dtype, B, D, K, mh, n_leapfrog, damping):
    """The fused HMC kernel reproduces n_steps reference moves (same Philox stream, momentum
    carried across moves); as for gmm_mala, float32 chains may leave the reference path where
    log u and log α tie to rounding level, which must stay a tiny fraction."""
    name, device = backend
    if name == "triton" and backends.triton_interpreted() and B > 200:
        B = 200
    x = rand(B, D, dtype=dtype, device=device, scale=2.0)
    means, lw, var = mixture(K, D, dtype, device)
    eps = step_sizes(True, B, dtype, device)
    kw = dict(n_steps=5, n_leapfrog=n_leapfrog, alpha=0.9, sigma2=0.2, seed=321, offset=2**32 + 7, mh=mh,
              damping=damping)
    x_new, rate = ops.gmm_hmc(x, means, lw, var, step_size=eps, backend=name, **kw)
    e_x, e_rate = ops.gmm_hmc(*f64(x, means, lw, var), step_size=eps64(eps, B), backend="torch", **kw)
    assert x_new.shape == (B, D) and rate.shape == (B,) and rate.dtype == dtype
    rtol, atol = tol(dtype)
    err = ((x_new.double().cpu() - e_x).abs() / (atol * 100 + rtol * 100 * e_x.abs())).amax(1)
    bad = (err > 1) | ((rate.double().cpu() - e_rate).abs() > 1e-6)
    allowed = 0 if dtype == torch.float64 else max(1, int(0.002 * B))
    assert int(bad.sum()) <= allowed, f"{int(bad.sum())} of {B} chains differ from the reference"
    if mh == "none":
        assert torch.all(rate == 1)
    again = ops.gmm_hmc(x, means, lw, var, step_size=eps, backend=name, **kw)
    assert torch.equal(again[0], x_new) and torch.equal(again[1], rate)


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


def test_gmm_hmc_nan_chain_stays_in_its_chain(backend, dtype):
    name, device = backend
    B, D, K = 37, 3, 4
    x = rand(B, D, dtype=dtype, device=device)
    x[5, 1] = math.nan
    means, lw, var = mixture(K, D, dtype, device)
    kw = dict(step_size=0.1, n_steps=4, n_leapfrog=2, damping=0.5, seed=1)
    x_new, rate = ops.gmm_hmc(x, means, lw, var, backend=name, **kw)
    assert torch.isnan(x_new[5]).any()
    keep = torch.arange(B, device=device) != 5
    assert torch.isfinite(x_new[keep]).all() and torch.isfinite(rate[keep]).all()
    e_x, _ = ops.gmm_hmc(*f64(x[keep], means, lw, var), backend="torch", **kw)
    assert_close(x_new[:5], e_x[:5], dtype, scale=100, name="x_new")
