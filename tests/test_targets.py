"""Benchmark targets: scores against autograd, normalising constants by quadrature, exact samplers
against their known marginals, the registry and input validation."""
import math
import warnings

import numpy as np
import pytest
import torch

from fastsamp import datasets
from fastsamp.targets import GMM25, GMM40, LGCP, TARGETS, Funnel, ManyWell, Target, get_target

F64 = torch.float64


@pytest.fixture(scope="module")
def targets():
    return {name: get_target(name) for name in TARGETS}


def random_inputs(target, n=64, seed=0):
    """Float64 points spread over the region where each target has its mass (and beyond)."""
    g = torch.Generator().manual_seed(seed)
    if isinstance(target, LGCP):
        return target.mu0 + 1.5 * torch.randn(n, target.dim, generator=g, dtype=F64)
    spread = {"25gmm": 13.0, "funnel": 2.5, "manywell": 2.0, "40gmm": 45.0}[target.name]
    return spread * (2 * torch.rand(n, target.dim, generator=g, dtype=F64) - 1)


def autograd_score(target, x):
    xg = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(target.log_prob(xg).sum(), xg)
    return g


# ------------------------------------------------------------------------------------------------
# Common interface
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TARGETS)
def test_score_matches_autograd(targets, name):
    t = targets[name]
    x = random_inputs(t, n=4 if name == "lgcp" else 64)
    s = t.score(x)
    assert s.shape == x.shape and s.dtype == F64
    torch.testing.assert_close(s, autograd_score(t, x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", TARGETS)
@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["f32", "f64"])
def test_log_prob_finite_dtype_and_energy(targets, name, dtype):
    t = targets[name]
    x = random_inputs(t, n=4 if name == "lgcp" else 32, seed=1).to(dtype)
    lp = t.log_prob(x)
    assert lp.shape == (x.shape[0],) and lp.dtype == dtype
    assert torch.isfinite(lp).all()
    assert t.score(x).dtype == dtype and torch.isfinite(t.score(x)).all()
    torch.testing.assert_close(t.energy(x), -lp)
    ref = t.log_prob(x.double())
    torch.testing.assert_close(lp.double(), ref, rtol=1e-4, atol=1e-5 * (1 + ref.abs().max().item()))
    # leading batch dimensions are kept
    assert t.log_prob(x.reshape(2, -1, t.dim)).shape == (2, x.shape[0] // 2)


@pytest.mark.parametrize("name", TARGETS)
@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["f32", "f64"])
def test_kernel_log_prob_equals_log_prob(targets, name, dtype):
    """Target.kernel_log_prob (the mixtures: ops.gmm_score's C++ log-density; the others: log_prob itself) = log_prob
    up to float rounding."""
    t = targets[name]
    x = random_inputs(t, n=4 if name == "lgcp" else 64, seed=2).to(dtype)
    ref = t.log_prob(x.double())
    lp = t.kernel_log_prob(x)
    assert lp.shape == (x.shape[0],) and lp.dtype == dtype
    torch.testing.assert_close(lp.double(), ref, rtol=1e-10 if dtype == F64 else 1e-5,
                               atol=(1e-12 if dtype == F64 else 1e-5) * (1 + ref.abs().max().item()))


class _OwnLogProbPrivate(GMM25):
    def _log_prob(self, x):
        return 0.5 * super()._log_prob(x)


class _OwnLogits(GMM25):
    def _logits(self, x):
        return 0.5 * super()._logits(x)


class _OwnLogProbPublic(GMM25):
    def log_prob(self, x, t=None):
        return 0.5 * super().log_prob(x)


@pytest.mark.parametrize("cls", [_OwnLogProbPrivate, _OwnLogits, _OwnLogProbPublic],
                         ids=["_log_prob", "_logits", "log_prob"])
def test_kernel_log_prob_of_a_mixture_with_its_own_log_density_is_that_one(targets, cls):
    """A mixture subclass that overrides _log_prob, _logits or log_prob has its own density: kernel_log_prob is its
    log_prob, not the equal-weight mixture's kernel (which differs from it on these points)."""
    x = random_inputs(targets["25gmm"], seed=2)
    own = cls().log_prob(x)
    assert (own - targets["25gmm"].log_prob(x)).abs().max() > 1
    torch.testing.assert_close(cls().kernel_log_prob(x), own)


@pytest.mark.parametrize("name", TARGETS)
def test_shape_validation_names_x(targets, name):
    t = targets[name]
    with pytest.raises(ValueError, match=r"\bx\b"):
        t.log_prob(torch.zeros(3, t.dim + 1))
    with pytest.raises(ValueError, match=r"\bx\b"):
        t.score(torch.zeros(3, t.dim - 1))


@pytest.mark.parametrize("name", ["25gmm", "funnel", "manywell", "40gmm"])
@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["f32", "f64"])
def test_sample_shape_dtype_and_reproducible(name, dtype):
    t = get_target(name).to(dtype=dtype)
    x = t.sample(50, generator=torch.Generator().manual_seed(3))
    assert x.shape == (50, t.dim) and x.dtype == dtype and torch.isfinite(x).all()
    torch.testing.assert_close(x, t.sample(50, generator=torch.Generator().manual_seed(3)))
    assert t.sample(0).shape == (0, t.dim)


def test_lgcp_has_no_sampler_and_no_log_z(targets):
    t = targets["lgcp"]
    assert t.log_Z is None
    with pytest.raises(NotImplementedError, match="LGCP"):
        t.sample(4)


def test_registry():
    assert TARGETS == ("25gmm", "funnel", "manywell", "40gmm", "lgcp")
    assert isinstance(get_target("funnel", dim=5), Funnel) and get_target("funnel", dim=5).dim == 5
    with pytest.raises(ValueError, match="25gmm, funnel, manywell, 40gmm, lgcp"):
        get_target("nope")
    with pytest.raises(ValueError, match="unknown target"):
        get_target(None)


def test_autograd_fallback_of_base_class():
    class Quartic(Target):
        name, dim = "quartic", 3

        def _log_prob(self, x):
            return -(x**4).sum(1)

    x = torch.randn(5, 3, dtype=F64)
    torch.testing.assert_close(Quartic().score(x), -4 * x**3)
    with pytest.raises(NotImplementedError):
        Quartic().sample(2)


# ------------------------------------------------------------------------------------------------
# 25GMM
# ------------------------------------------------------------------------------------------------
def test_gmm25_definition_and_quadrature():
    t = GMM25()
    assert t.dim == 2 and t.log_Z == 0.0 and t.n_modes == 25
    assert sorted(set(t.means[:, 0].tolist())) == [-10.0, -5.0, 0.0, 5.0, 10.0]
    # at a mode, the other modes are ≥ 5 away (e^{-25/0.6} ≈ 1e-18): log p = log(1/25) − log(2π·0.3)
    lp = t.log_prob(torch.tensor([[5.0, -10.0]], dtype=F64))
    assert abs(lp.item() - (-math.log(25) - math.log(2 * math.pi * 0.3))) < 1e-12
    # 2-D trapezoid/grid quadrature of exp(log R) over [-16, 16]^2 gives Z = 1
    h = 0.1
    u = torch.arange(-16.0, 16.0 + h / 2, h, dtype=F64)
    X, Y = torch.meshgrid(u, u, indexing="ij")
    log_z = torch.logsumexp(t.log_prob(torch.stack([X.reshape(-1), Y.reshape(-1)], 1)), 0) + 2 * math.log(h)
    assert abs(log_z.item() - t.log_Z) < 1e-6


def test_gmm25_samples_per_mode():
    t = GMM25().to(dtype=F64)
    x = t.sample(50000, torch.Generator().manual_seed(0))
    nearest = torch.cdist(x, t.means).argmin(1)
    freq = torch.bincount(nearest, minlength=25).double() / x.shape[0]
    assert (freq - 1 / 25).abs().max() < 0.006  # ~7 sigma of a binomial count
    resid = x - t.means[nearest]
    torch.testing.assert_close(resid.var(0), torch.full((2,), 0.3, dtype=F64), rtol=0.03, atol=0)


# ------------------------------------------------------------------------------------------------
# 40GMM
# ------------------------------------------------------------------------------------------------
def test_gmm40_definition():
    t = GMM40()
    assert (t.dim, t.n_modes, t.variance, t.log_Z) == (50, 40, 1.0, 0.0)
    assert t.means.abs().max() <= 40 and t.means.abs().max() > 39  # U[-40, 40]^50, 2000 draws
    torch.testing.assert_close(t.means, GMM40().means)  # deterministic
    assert not torch.equal(t.means, GMM40(seed=1).means)
    x = 40 * (2 * torch.rand(16, 50, dtype=F64) - 1)
    mix = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(torch.ones(40, dtype=F64)),
        torch.distributions.Independent(torch.distributions.Normal(t.means, torch.ones_like(t.means)), 1))
    torch.testing.assert_close(t.log_prob(x), mix.log_prob(x))


def test_gmm40_means_are_fab_s_in_two_dimensions():
    """The recipe (torch.rand((40, D)) from seed 0, scaled to [−40, 40]) gives in 2-D the means of FAB's GMM
    (Midgley et al. 2023), as tabulated to 4 decimals by gfn-diffusion forks (e.g. minkyu1022/distill_diff_sampler,
    energy_sampling/energies/fourty_gmm.py): its first, middle and last rows."""
    fab = {0: (-0.2995, 21.4577), 1: (-32.9218, -29.4376), 16: (-25.9272, -18.4133), 39: (3.6797, -25.0242)}
    means = GMM40(dim=2).means
    for k, mu in fab.items():
        torch.testing.assert_close(means[k], torch.tensor(mu, dtype=F64), rtol=0, atol=5e-5)


def test_gmm40_quadrature_2d_and_samples():
    t = GMM40(dim=2)
    h = 0.25  # the grid rule is spectrally accurate for unit-variance Gaussians
    u = torch.arange(-46.0, 46.0 + h / 2, h, dtype=F64)
    X, Y = torch.meshgrid(u, u, indexing="ij")
    log_z = torch.logsumexp(t.log_prob(torch.stack([X.reshape(-1), Y.reshape(-1)], 1)), 0) + 2 * math.log(h)
    assert abs(log_z.item()) < 1e-6
    t50 = GMM40().to(dtype=F64)
    x = t50.sample(4000, torch.Generator().manual_seed(1))
    resid = x - t50.means[torch.cdist(x, t50.means).argmin(1)]
    assert abs(resid.var().item() - 1.0) < 0.03


# ------------------------------------------------------------------------------------------------
# Funnel
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma", [1.0, 3.0])
def test_funnel_normalisation_by_quadrature(sigma):
    """2-D funnel: ∫∫ p(x0, x1) dx0 dx1 with x1 = e^{x0/2} u (Jacobian e^{x0/2}) on a grid = 1."""
    t = Funnel(dim=2, sigma=sigma)
    h = 0.02
    x0 = torch.arange(-9.0 * sigma, 9.0 * sigma + h / 2, h, dtype=F64)
    uu = torch.arange(-9.0, 9.0 + h / 2, h, dtype=F64)
    A, U = torch.meshgrid(x0, uu, indexing="ij")
    pts = torch.stack([A.reshape(-1), torch.exp(A.reshape(-1) / 2) * U.reshape(-1)], 1)
    log_z = torch.logsumexp(t.log_prob(pts) + pts[:, 0] / 2, 0) + 2 * math.log(h)
    assert abs(log_z.item()) < 1e-6


@pytest.mark.parametrize("sigma", [1.0, 3.0])
def test_funnel_matches_factorised_definition(sigma):
    t = Funnel(sigma=sigma)
    assert t.dim == 10 and t.log_Z == 0.0 and Funnel().sigma == 3.0  # the benchmark ("hard") funnel
    x = random_inputs(t)
    ref = torch.distributions.Normal(0.0, sigma).log_prob(x[:, 0]) + torch.distributions.Normal(
        0.0, torch.exp(x[:, :1] / 2)).log_prob(x[:, 1:]).sum(1)
    torch.testing.assert_close(t.log_prob(x), ref)


def test_funnel_sample_moments():
    t = Funnel(sigma=1.0).to(dtype=F64)
    x = t.sample(40000, torch.Generator().manual_seed(2))
    x0, xr = x[:, 0], x[:, 1:]
    assert abs(x0.mean().item()) < 0.03 and abs(x0.var().item() - 1) < 0.04
    # E[x_i^2] = E[e^{x0}] = e^{1/2};  x_i e^{-x0/2} ~ N(0, 1) independent of x0
    assert abs((xr**2).mean().item() - math.exp(0.5)) < 0.06
    w = xr * torch.exp(-x0[:, None] / 2)
    assert abs(w.var().item() - 1) < 0.02 and abs(torch.corrcoef(torch.stack([x0, w[:, 0] ** 2]))[0, 1]) < 0.03


# ------------------------------------------------------------------------------------------------
# Many-well
# ------------------------------------------------------------------------------------------------
def test_manywell_log_z():
    t = ManyWell()
    assert t.dim == 32 and t.n_wells == 16
    quad = pytest.importorskip("scipy.integrate").quad
    z1, _ = quad(lambda a: math.exp(-(a**4) + 6 * a**2 + 0.5 * a), -np.inf, np.inf, epsabs=0, epsrel=1e-12)
    assert abs(t.Z_well / z1 - 1) < 1e-10
    assert abs(t.Z_well - 11784.50927) < 1e-4  # the constant of gfn-diffusion's many_well.py
    assert abs(t.log_Z - 16 * (math.log(z1) + 0.5 * math.log(2 * math.pi))) < 1e-8
    # the 2-D double-well factor integrates to Z_1·√(2π) (grid quadrature on ManyWell(dim=2))
    t2 = ManyWell(dim=2)
    h = 0.02
    a = torch.arange(-4.0, 4.0 + h / 2, h, dtype=F64)
    b = torch.arange(-9.0, 9.0 + h / 2, h, dtype=F64)
    A, B = torch.meshgrid(a, b, indexing="ij")
    log_z2 = torch.logsumexp(t2.log_prob(torch.stack([A.reshape(-1), B.reshape(-1)], 1)), 0) + 2 * math.log(h)
    assert abs(log_z2.item() - t2.log_Z) < 1e-8 and abs(t2.log_Z * 16 - t.log_Z) < 1e-9


def test_manywell_samples_match_marginals():
    t = ManyWell().to(dtype=F64)
    x = t.sample(20000, torch.Generator().manual_seed(4))
    a, b = x[:, 0::2].reshape(-1), x[:, 1::2].reshape(-1)  # 320k draws of each coordinate
    # histogram of the well coordinate vs its normalised density integrated over each bin
    fine = torch.linspace(-3.0, 3.0, 120 * 50 + 1, dtype=F64)
    ref_log = -(fine**4) + 6 * fine**2 + 0.5 * fine - math.log(11784.50927)  # independent of the module
    torch.testing.assert_close(t.well_log_density(fine), ref_log, rtol=0, atol=1e-8)
    dens = torch.exp(ref_log)
    cdf = torch.cat([torch.zeros(1, dtype=F64), torch.cumsum((dens[1:] + dens[:-1]) / 2 * (fine[1] - fine[0]), 0)])
    p_bin = cdf[::50].diff()
    assert abs(p_bin.sum().item() - 1) < 1e-6
    counts = torch.histc(a, bins=120, min=-3.0, max=3.0)
    assert counts.sum().item() == a.numel()  # no mass outside [-3, 3]
    expected = a.numel() * p_bin
    used = expected > 5
    chi2 = (((counts - expected) ** 2 / expected)[used]).sum().item()
    dof = int(used.sum()) - 1
    assert chi2 < dof + 5 * math.sqrt(2 * dof), (chi2, dof)
    # right-well mass vs quadrature (≈ 0.85): a sign error in the a/2 term would give ≈ 0.15
    p_right = (cdf[-1] - cdf[3000]).item()
    assert abs((a > 0).double().mean().item() - p_right) < 0.004
    assert abs(b.mean().item()) < 0.01 and abs(b.var().item() - 1) < 0.01
    # coordinate 0 alone, as in the brief: histogram agrees with the density in total variation
    c0 = torch.histc(x[:, 0], bins=30, min=-3.0, max=3.0) / x.shape[0]
    assert 0.5 * (c0 - p_bin.reshape(30, 4).sum(1)).abs().sum().item() < 0.025  # noise ≈ 0.008


# ------------------------------------------------------------------------------------------------
# LGCP
# ------------------------------------------------------------------------------------------------
def test_lgcp_definition():
    t = LGCP(points="synthetic")
    assert t.dim == 1600 and t.grid == 40 and t.points_source == "synthetic"
    assert t.counts.sum().item() == t.points.shape[0] > 0
    assert abs(t.mu0 - (math.log(126) - 0.5 * 1.91)) < 1e-12
    # kernel between horizontally adjacent cells: σ² exp(−1 / (40 β)), β = 1/33
    assert abs(t.gram[0, 1].item() - 1.91 * math.exp(-33 / 40)) < 1e-12
    assert abs(t.gram[0, 41].item() - 1.91 * math.exp(-math.sqrt(2) * 33 / 40)) < 1e-12
    x = t.mu0 + torch.randn(4, 1600, dtype=F64)
    lp, s = t.log_prob(x), t.score(x)
    assert lp.shape == (4,) and s.shape == (4, 1600) and torch.isfinite(lp).all() and torch.isfinite(s).all()
    # the synthetic pattern is reproducible
    torch.testing.assert_close(LGCP("synthetic", grid=8, seed=5).points, LGCP("synthetic", grid=8, seed=5).points)


def test_lgcp_log_prob_against_dense_formula():
    pts = np.array([[0.05, 0.9], [0.05, 0.91], [1.0, 1.0], [0.5, 0.0], [0.26, 0.74]])
    t = LGCP(points=pts, grid=4)
    assert t.points_source == "user" and t.true_latent is None
    expected = torch.zeros(4, 4, dtype=F64)
    for r, c in [(0, 3), (0, 3), (3, 3), (2, 0), (1, 2)]:
        expected[r, c] += 1
    torch.testing.assert_close(t.counts, expected.reshape(-1))
    x = t.mu0 + torch.randn(6, 16, dtype=F64)
    prior = torch.distributions.MultivariateNormal(torch.full((16,), t.mu0, dtype=F64), covariance_matrix=t.gram)
    ref = prior.log_prob(x) + (x * t.counts - torch.exp(x) / 16).sum(1)
    torch.testing.assert_close(t.log_prob(x), ref)
    with pytest.raises(ValueError, match="points"):
        LGCP(points=np.array([[0.5, 1.5]]), grid=4)
    with pytest.raises(ValueError, match="'finpines', 'synthetic'"):
        LGCP(points="pines")


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_lgcp_score_is_the_formula_bit_for_bit_and_differentiable(dtype):
    """The score accumulated in place, n − a e^x − (x − μ_0) K⁻¹, equals the out-of-place expression bit for bit;
    autograd through it (it overwrites no tensor autograd saved) gives the Jacobian's column sums −a e^x − K⁻¹ 1."""
    t = LGCP(points="synthetic", grid=4)
    x = (t.mu0 + torch.randn(5, 16, generator=torch.Generator().manual_seed(0), dtype=F64)).to(dtype)
    precision, n = t._p("precision", x), t._p("counts", x)
    assert torch.equal(t.score(x), torch.addmm(n - t.bin_area * torch.exp(x), x - t.mu0, precision, alpha=-1))
    xg = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(t.score(xg).sum(), xg)
    torch.testing.assert_close(grad, -t.bin_area * torch.exp(x) - precision.sum(0))


def test_lgcp_precision_and_hessian():
    """precision = K⁻¹ (float64); hessian(x) = K⁻¹ + diag(a e^x) is −∇² log_prob (autograd), in x's dtype, of one
    state only."""
    t = LGCP(points="synthetic", grid=4)
    assert t.precision.dtype == F64
    torch.testing.assert_close(t.precision @ t.gram, torch.eye(16, dtype=F64))
    x = t.mu0 + torch.randn(16, generator=torch.Generator().manual_seed(1), dtype=F64)
    torch.testing.assert_close(t.hessian(x), -torch.autograd.functional.hessian(lambda y: t.log_prob(y), x))
    assert t.hessian(x.float()).dtype == torch.float32
    with pytest.raises(ValueError, match=r"x must have shape \(16,\) \(one state\) for LGCP.hessian, got \(1, 16\)"):
        t.hessian(x[None])


needs_finpines = pytest.mark.skipif(datasets.finpines_path() is None, reason="the Finnish pines data is not "
                                    "installed (apt-get install r-cran-spatstat.data, or bash .ci/run)")


@needs_finpines
def test_finpines_loader_and_binning():
    """spatstat's finpines: 126 points in [−5, 5] × [−8, 2] m; the window mapped onto [0, 1]² as the
    benchmark's csv has them (gfn-diffusion's df_pines.csv row 1: 0.3006125, 0.89297642, from the
    first pine at (−1.993875, 0.9297642)); binned on 40 × 40 they fill 111 cells, at most 3 per cell."""
    xy, u = datasets.finpines_points(unit_square=False), datasets.finpines_points()
    assert xy.shape == u.shape == (126, 2) and xy.dtype == u.dtype == np.float64
    np.testing.assert_allclose(xy[0], [-1.993875, 0.9297642], rtol=0, atol=1e-12)
    np.testing.assert_allclose(u[0], [0.3006125, 0.89297642], rtol=0, atol=1e-12)
    np.testing.assert_allclose(u, (xy + [5.0, 8.0]) / 10.0, rtol=0, atol=1e-15)
    assert (u >= 0).all() and (u <= 1).all()
    for t in (LGCP(points="finpines"), LGCP()):  # the default takes the pines where they are installed
        assert t.points_source == "finpines" and t.dim == 1600 and t.grid == 40 and "points='finpines'" in repr(t)
        assert t.counts.shape == (1600,) and t.counts.dtype == F64
        assert t.counts.sum().item() == 126 and (t.counts > 0).sum().item() == 111 and t.counts.max().item() == 3
    # the binning by hand: the pine (p, q) in cell ⌊40p⌋·40 + ⌊40q⌋ (no point lies on the last edge)
    expected = np.zeros(1600)
    for p, q in u:
        expected[int(np.floor(40 * p)) * 40 + int(np.floor(40 * q))] += 1
    np.testing.assert_array_equal(t.counts.numpy(), expected)


@needs_finpines
def test_lgcp_finpines_against_brute_force():
    """log R and ∇ log R on the pines, in float64 and float32, against a float64 computation from the
    definition: K_ij from every cell pair's distance, the Gaussian log density and K⁻¹(x − μ_0) by a
    dense solve."""
    t = LGCP(points="finpines")
    g = 40
    cells = np.array([(r, c) for r in range(g) for c in range(g)], dtype=np.float64)
    dist = np.sqrt(((cells[:, None, :] - cells[None, :, :]) ** 2).sum(-1))
    gram = 1.91 * np.exp(-dist / (g / 33.0))
    mu0 = np.log(126.0) - 1.91 / 2
    n = t.counts.numpy()
    x64 = mu0 + 1.5 * np.random.default_rng(7).standard_normal((3, 1600))
    centred = x64 - mu0
    _, logdet = np.linalg.slogdet(gram)
    solved = np.linalg.solve(gram, centred.T).T
    log_r = (-0.5 * (centred * solved).sum(1) - 0.5 * 1600 * np.log(2 * np.pi) - 0.5 * logdet
             + (x64 * n - np.exp(x64) / 1600).sum(1))
    score = -solved + n - np.exp(x64) / 1600
    for dtype, tol in ((F64, dict(rtol=1e-9, atol=1e-9)), (torch.float32, dict(rtol=1e-5, atol=1e-3))):
        x = torch.from_numpy(x64).to(dtype)
        lp, s = t.log_prob(x), t.score(x)
        assert lp.dtype == s.dtype == dtype
        torch.testing.assert_close(lp.double(), torch.from_numpy(log_r), **tol)
        torch.testing.assert_close(s.double(), torch.from_numpy(score), **tol)


def test_finpines_absent_is_a_clear_error(monkeypatch, tmp_path):
    """Without the data: the loader and LGCP(points="finpines") name what to install; the default
    falls back to the synthetic pattern and says so."""
    monkeypatch.setattr(datasets, "spatstat_data_dirs", lambda: [str(tmp_path / "nowhere")])
    assert datasets.finpines_path() is None
    with pytest.raises(FileNotFoundError, match="apt-get install r-cran-spatstat.data"):
        datasets.finpines_points()
    with pytest.raises(FileNotFoundError, match="FASTSAMP_SPATSTAT_DATA"):
        LGCP(points="finpines", grid=4)
    with pytest.warns(UserWarning, match="not installed.*synthetic point pattern"):
        t = LGCP(grid=4)
    assert t.points_source == "synthetic" and "points='synthetic'" in repr(t)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # asking for the synthetic pattern is silent
        assert get_target("lgcp", points="synthetic", grid=4).points_source == "synthetic"


def test_spatstat_variable_that_points_nowhere_raises(monkeypatch, tmp_path):
    """An explicit $FASTSAMP_SPATSTAT_DATA without finpines.txt is an error, not a fall-through to the
    system directories (nor, for points="auto", to the synthetic pattern)."""
    monkeypatch.setenv(datasets.SPATSTAT_DATA_ENV, str(tmp_path / "nowhere"))
    for call in (datasets.finpines_path, datasets.finpines_points, LGCP.default_points, lambda: LGCP(grid=4)):
        with pytest.raises(FileNotFoundError, match="FASTSAMP_SPATSTAT_DATA=.*nowhere holds no"):
            call()


def test_finpines_read_from_the_environment_variable(monkeypatch, tmp_path):
    """$FASTSAMP_SPATSTAT_DATA names the spatstat.data directory; the file's columns are x y diameter
    height after a header line; points outside the finpines window are refused."""
    path = tmp_path / "rawdata" / "finpines"
    path.mkdir(parents=True)
    (path / "finpines.txt").write_text("  x  y  diameter  height\n -5.0 -8.0 1 1.7\n 5.0 2.0 2 1.8\n"
                                       " 0.0 -3.0 3 2.0\n")
    monkeypatch.setenv(datasets.SPATSTAT_DATA_ENV, str(tmp_path))
    assert datasets.spatstat_data_dirs()[0] == str(tmp_path)
    np.testing.assert_array_equal(datasets.finpines_points(), [[0.0, 0.0], [1.0, 1.0], [0.5, 0.5]])
    t = LGCP(points="finpines", grid=2)  # the corner (1, 1) goes into the last cell
    np.testing.assert_array_equal(t.counts.numpy(), [1, 0, 0, 2])
    (path / "finpines.txt").write_text("x y diameter height\n 6.0 0.0 1 1.0\n")
    with pytest.raises(ValueError, match="window"):
        datasets.finpines_points()
