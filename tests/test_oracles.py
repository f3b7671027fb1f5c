"""Exact identities (docs/design.md) used as oracles, on the reference and every backend."""
import math

import pytest
import torch
from conftest import COMPILED, backend_device, skip_unless_available, skip_unless_op

from fastsamp import VE, VP, ops
from fastsamp.ops import random as rng
from fastsamp.ops import reference as ref
from fastsamp.schedules import reverse_em_coefficients

ALL = ("torch",) + COMPILED


@pytest.fixture(params=ALL)
def any_backend(request):
    if request.param != "torch":
        skip_unless_available(request.param)
        return request.param, backend_device(request.param)
    return "torch", torch.device("cpu")


def test_philox_known_answers():
    t = lambda v: torch.tensor([v], dtype=torch.int64)  # noqa: E731
    cases = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
         (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ]
    for ctr, key, expect in cases:
        out = rng.philox4x32_10(*map(t, ctr), *key)
        assert tuple(int(w) for w in out) == expect


def test_philox_normals_are_standard_normal():
    z = rng.normal(7, 0, 20000, 9).flatten()
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    # quantiles of N(0, 1) at 2.5%, 50%, 97.5%
    q = torch.quantile(z[:200000], torch.tensor([0.025, 0.5, 0.975], dtype=z.dtype))
    torch.testing.assert_close(q, torch.tensor([-1.95996, 0.0, 1.95996], dtype=z.dtype), atol=0.03, rtol=0)
    # columns (lanes of one Philox call) are uncorrelated
    c = torch.corrcoef(rng.normal(7, 1, 20000, 4).T)
    assert (c - torch.eye(4, dtype=c.dtype)).abs().max() < 0.04
    u = rng.uniform(7, 0, 100000)
    assert u.min() > 0 and u.max() <= 1 and abs(u.mean() - 0.5) < 0.005


def test_normal_stream_is_independent_of_batch_shape():
    big = rng.normal(3, 9, 50, 11)
    small = rng.normal(3, 9, 7, 5)
    assert torch.equal(big[:7, :5], small)


def test_gmm_score_is_gradient_of_logp():
    torch.manual_seed(0)
    B, D, K = 20, 3, 4
    x = torch.randn(B, D, dtype=torch.float64, requires_grad=True)
    means, lw, var = torch.randn(K, D, dtype=torch.float64), torch.randn(K, dtype=torch.float64), \
        0.5 + torch.rand(K, dtype=torch.float64)
    score, logp = ref.gmm_score(x.detach(), means, lw, var, 0.7, 0.3)
    x_logp = ref.gmm_score(x, means, lw, var, 0.7, 0.3)[1]
    (grad,) = torch.autograd.grad(x_logp.sum(), x)
    torch.testing.assert_close(score, grad)
    # logp is a normalised density: in 1-D it integrates to one
    grid = torch.linspace(-30, 30, 200001, dtype=torch.float64)[:, None]
    lp = ref.gmm_score(grid, means[:, :1], lw, var, 0.7, 0.3)[1]
    assert abs(torch.trapezoid(lp.exp(), grid[:, 0]).item() - 1) < 1e-8


def test_mala_n1_identity(any_backend):
    """With n = 1, MALA's log α is exactly −(ε/4)(|s(x')|² − |s(x)|²)."""
    name, device = any_backend
    B, D = 513, 6
    x, xp, s, sp = (torch.randn(B, D, dtype=torch.float64, device=device) for _ in range(4))
    eps = 0.01 + torch.rand(B, dtype=torch.float64, device=device)
    u = torch.rand(B, dtype=torch.float64, device=device)
    _, _, acc, log_alpha = ops.score_mh_accept(x, xp, s, sp, eps, u, backend=name)
    expect = -(eps / 4) * ((sp * sp).sum(1) - (s * s).sum(1))
    torch.testing.assert_close(log_alpha, expect, rtol=1e-10, atol=1e-10)
    assert torch.equal(acc, torch.log(u) < log_alpha)


def test_hmc_path_trapezoid_identity(any_backend):
    """Along the leapfrog path, trapezoid ΔlogP − ΔK = −(ε²/8)(|s_L|² − |s_0|²)."""
    name, device = any_backend
    skip_unless_op(name, "leapfrog", "leapfrog_finish", "hmc_accept", "momentum_refresh")
    B, D, K, L = 300, 4, 5, 7
    g = torch.Generator().manual_seed(1)
    means = torch.randn(K, D, generator=g, dtype=torch.float64).to(device)
    lw = torch.randn(K, generator=g, dtype=torch.float64).to(device)
    var = (0.5 + torch.rand(K, generator=g, dtype=torch.float64)).to(device)
    x0 = torch.randn(B, D, generator=g, dtype=torch.float64).to(device)
    p0 = ops.momentum_refresh(torch.zeros_like(x0), 0.0, seed=4, backend=name)
    eps = 0.05 + 0.1 * torch.rand(B, generator=g, dtype=torch.float64).to(device)
    s0 = ops.gmm_score(x0, means, lw, var, backend="torch")[0]
    x, p, s, delta = x0, p0, s0, torch.zeros(B, dtype=torch.float64, device=device)
    for _ in range(L):
        x_next, p_half = ops.leapfrog(x, p, s, eps, backend=name)
        s_next = ops.gmm_score(x_next, means, lw, var, backend="torch")[0]
        p, delta = ops.leapfrog_finish(x, x_next, p_half, s, s_next, eps, delta, backend=name)
        x, s = x_next, s_next
    u = torch.full((B,), 0.5, dtype=torch.float64, device=device)
    _, _, _, log_alpha = ops.hmc_accept(x0, x, s0, s, p0, p, delta, u, backend=name)
    expect = -(eps**2 / 8) * ((s * s).sum(1) - (s0 * s0).sum(1))
    torch.testing.assert_close(log_alpha, expect, rtol=1e-9, atol=1e-9)


def test_trapezoid_converges_to_exact_energy():
    """The trapezoid ΔlogP tends to logp(x') − logp(x) with error O(1/n²)."""
    torch.manual_seed(2)
    B, D, K = 200, 3, 6
    means, lw, var = 2 * torch.randn(K, D, dtype=torch.float64), torch.randn(K, dtype=torch.float64), \
        0.3 + torch.rand(K, dtype=torch.float64)
    x = 2 * torch.randn(B, D, dtype=torch.float64)
    xp = x + 0.5 * torch.randn(B, D, dtype=torch.float64)
    s, lp = ref.gmm_score(x, means, lw, var, 1.0, 0.0)
    sp, lpp = ref.gmm_score(xp, means, lw, var, 1.0, 0.0)
    errs = []
    for n in (2, 4, 8, 16, 32):
        pts = ops.line_points(x, xp, n, backend="torch")
        si = ref.gmm_score(pts.reshape(-1, D), means, lw, var, 1.0, 0.0)[0].reshape(pts.shape)
        errs.append((ref.trapezoid_delta_logp(x, xp, s, sp, si) - (lpp - lp)).abs().max().item())
    assert errs[-1] < 1e-2
    assert all(b < a / 3 for a, b in zip(errs, errs[1:])), errs


@pytest.mark.parametrize("schedule", [VP(), VP(0.5, 10.0), VE(), VE(0.1, 5.0)])
def test_schedules_are_consistent(schedule):
    """α_t² and σ_t² solve the forward moment ODEs: d log α/dt = f, dσ²/dt = 2f σ² + g²."""
    for t in (0.05, 0.3, 0.7, 0.95):
        h = 1e-6
        dlog_alpha = (math.log(schedule.alpha(t + h)) - math.log(schedule.alpha(t - h))) / (2 * h)
        assert math.isclose(dlog_alpha, schedule.drift_coef(t), rel_tol=1e-6, abs_tol=1e-8)
        dsig2 = (schedule.sigma2(t + h) - schedule.sigma2(t - h)) / (2 * h)
        expect = 2 * schedule.drift_coef(t) * schedule.sigma2(t) + schedule.g2(t)
        assert math.isclose(dsig2, expect, rel_tol=1e-5)
    assert schedule.sigma2(0.0) == 0.0 and schedule.alpha(0.0) == 1.0
    a, c_s, c_n = reverse_em_coefficients(schedule, 0.5, 0.01)
    assert math.isclose(a, 1 - 0.01 * schedule.drift_coef(0.5)) and math.isclose(c_n**2, c_s)


def test_reverse_sde_recovers_mixture_marginal():
    """Reverse VP Euler–Maruyama with the exact mixture score maps N(0, I) at t = 1 to the
    data mixture at t = 0 (mode weights, per-mode means and variances: the variances catch a noise coefficient
    10 % off, which the means do not; measured 0.495 / 0.505 and 0.254 / 0.247 against 0.5 and 0.25)."""
    torch.manual_seed(3)
    vp = VP()
    means = torch.tensor([[-3.0, 0.0], [3.0, 1.0]], dtype=torch.float64)
    lw = torch.log(torch.tensor([0.3, 0.7], dtype=torch.float64))
    var = torch.tensor([0.25, 0.5], dtype=torch.float64)
    n_steps, B = 400, 20000
    x = torch.randn(B, 2, dtype=torch.float64)
    ts = torch.linspace(1.0, 1e-3, n_steps + 1, dtype=torch.float64).tolist()
    for i in range(n_steps):
        t, h = ts[i], ts[i] - ts[i + 1]
        s = ops.gmm_score(x, means, lw, var, alpha=vp.alpha(t), sigma2=vp.sigma2(t))[0]
        x = ops.reverse_sde_step(x, s, t=t, h=h, schedule=vp, seed=11, offset=i)
    right = x[:, 0] > 0
    assert abs(right.double().mean().item() - 0.7) < 0.02
    torch.testing.assert_close(x[right].mean(0), means[1], atol=0.06, rtol=0)
    torch.testing.assert_close(x[~right].mean(0), means[0], atol=0.06, rtol=0)
    exact_var = var + vp.sigma2(ts[-1])  # α(t_end)² ≈ 1 - 1e-4
    torch.testing.assert_close(x[right].var(0), exact_var[1].expand(2), atol=0.035, rtol=0)
    torch.testing.assert_close(x[~right].var(0), exact_var[0].expand(2), atol=0.025, rtol=0)
