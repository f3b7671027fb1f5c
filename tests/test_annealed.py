"""Annealed MCMC with score-based MH: statistical tests against exact mixture answers; the
divergence report and the argument checks shared by the fused and generic paths."""
import re
import warnings

import pytest
import torch
from conftest import assert_moved

from fastsamp import metrics
from fastsamp.models import EnergyModel, GaussianMixture, Product, ScoreModel
from fastsamp.samplers import NonFiniteChainsError, NonFiniteChainsWarning, annealed_mcmc, mcmc

MIX = GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 0.0]], dtype=torch.float64),
                      torch.log(torch.tensor([0.4, 0.6], dtype=torch.float64)),
                      torch.tensor([0.5, 0.3], dtype=torch.float64))
EXACT_VAR_RIGHT = 0.3


def var_right(x):
    x = x.double()
    return x[x[:, 0] > 0, 0].var().item()


@pytest.mark.parametrize("corrector,mh,kw", [
    ("mala", "score", {"n_trapezoid": 3}),
    ("hmc", "score", {"n_leapfrog": 3}),
    ("mala", "energy", {}),
    ("hmc", "energy", {"n_leapfrog": 3}),
    ("hmc", "score", {"n_leapfrog": 3, "damping": 0.7}),  # partial refresh (rejections are rare at this step: that the
])                                                         # flip on rejection is needed, test_sampling.py shows)
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "generic"])
def test_corrector_keeps_mixture_invariant(corrector, mh, kw, fused):
    """From exact samples, every MH corrector keeps the mixture at t = 0 (the ULA control in
    test_sampling.py shows these tolerances catch an unadjusted kernel)."""
    x0 = MIX.sample(8000, torch.Generator().manual_seed(0))
    eps = 0.2 if corrector == "mala" else 0.35
    x, rate = mcmc(MIX, x0, t=0.0, corrector=corrector, mh=mh, n_steps=15, step_size=eps, seed=5, fused=fused, **kw)
    assert abs(var_right(x) - EXACT_VAR_RIGHT) < 0.03
    assert abs((x[:, 0] > 0).double().mean().item() - 0.6) < 0.025
    assert 0.4 < rate.mean().item() < 1.0
    assert_moved(x, x0)


def test_ula_corrector_is_biased():
    x0 = MIX.sample(8000, torch.Generator().manual_seed(0))
    x, rate = mcmc(MIX, x0, t=0.0, corrector="ula", mh="none", n_steps=15, step_size=0.2, seed=5)
    assert var_right(x) - EXACT_VAR_RIGHT > 0.1 and rate.min() == 1


def test_fused_and_generic_paths_agree_in_distribution():
    x0 = MIX.sample(8000, torch.Generator().manual_seed(1))
    kw = dict(t=0.3, corrector="mala", mh="score", n_steps=10, step_size=0.3, n_trapezoid=2, seed=9)
    xf, rf = mcmc(MIX, x0, fused=True, **kw)
    xg, rg = mcmc(MIX, x0, fused=False, **kw)
    assert abs(rf.mean() - rg.mean()) < 0.02
    assert metrics.mmd(xf, xg, max_n=3000) < 2e-3


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "generic"])
def test_pure_annealed_mcmc_without_predictor(fused):
    """predictor=False (the MCMC-correction paper's protocol): no reverse step between levels, so
    n_levels − 1 fewer score evaluations per chain on the fused path (the generic path's predictor takes
    the score its corrector holds: no call either way), and the MALA corrector alone reaches the mixture."""
    common = dict(n_levels=20, corrector="mala", n_corrector_steps=10, step_size=0.1, n_trapezoid=2, seed=4,
                  fused=fused, dtype=torch.float64)
    x, st = annealed_mcmc(MIX, 8000, predictor=False, **common)
    _, st_pred = annealed_mcmc(MIX, 8000, **common)
    assert st_pred.n_score_evals - st.n_score_evals == (19 * 8000 if fused else 0)
    assert abs((x[:, 0] > 0).double().mean().item() - 0.6) < 0.03
    assert abs(var_right(x) - EXACT_VAR_RIGHT) < 0.04


class RowCounter:
    """MIX's score as a plain callable that counts the rows it is called on."""

    def __init__(self):
        self.rows = 0

    def __call__(self, x, t):
        self.rows += x.shape[0]
        return MIX.score(x, t)


@pytest.mark.parametrize("corrector,mh,kw", [
    ("mala", "score", {}), ("mala", "score", {"n_trapezoid": 3}), ("mala", "energy", {}), ("ula", "none", {}),
    ("hmc", "score", {"n_leapfrog": 2}), ("uhmc", "none", {"n_leapfrog": 2})])
def test_predictor_reuses_the_correctors_score_exactly(corrector, mh, kw, monkeypatch):
    """The generic predictor takes the score of x at the previous level's t that the corrector's last move
    holds: the same chains, bit for bit, as recomputing it (a run whose corrector hands no score on),
    with n_levels − 1 fewer score evaluations per chain."""
    common = dict(n_levels=6, corrector=corrector, mh=mh, n_corrector_steps=3, step_size=0.1, seed=2,
                  fused=False, dtype=torch.float64, **kw)
    x, st = annealed_mcmc(MIX, 500, **common)
    from fastsamp.samplers import annealed
    run = annealed.run_corrector
    monkeypatch.setattr(annealed, "run_corrector", lambda *a, **k: run(*a, **k)._replace(score=None))
    x_recomputed, st_recomputed = annealed_mcmc(MIX, 500, **common)
    torch.testing.assert_close(x, x_recomputed, rtol=0, atol=0)
    assert st.accept_rate == st_recomputed.accept_rate
    assert st_recomputed.n_score_evals - st.n_score_evals == 5 * 500


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "generic"])
@pytest.mark.parametrize("corrector,kw", [("mala", {"n_trapezoid": 2}), ("hmc", {"n_leapfrog": 3}), ("ula", {})])
@pytest.mark.parametrize("n_steps,predictor", [(2, True), (0, True), (2, False)])
def test_n_score_evals_counts_the_model_calls(fused, corrector, kw, n_steps, predictor):
    """stats.n_score_evals is the number of states the model was called on (the generic path, counted here
    by the model itself) or evaluated inside the fused kernel, the predictor's calls included (the generic
    predictor makes none after corrector moves: it reuses their score)."""
    counter = RowCounter()
    n, levels = 100, 5
    _, st = annealed_mcmc(MIX if fused else ScoreModel(counter, dim=2), n, n_levels=levels, corrector=corrector,
                          n_corrector_steps=n_steps, step_size=0.1, seed=1, predictor=predictor,
                          dtype=torch.float64, **kw)
    assert st.fused == fused
    per_move = kw.get("n_trapezoid", kw.get("n_leapfrog", 1))
    corrector_rows = levels * n * (n_steps * per_move + 1) if n_steps else 0
    predictor_rows = (levels - 1) * n if predictor and (fused or n_steps == 0) else 0
    assert st.n_score_evals == corrector_rows + predictor_rows
    if not fused:
        assert counter.rows == st.n_score_evals


def composed():
    a = GaussianMixture(torch.tensor([[-2.5, 0.0], [2.5, 0.0], [0.0, 2.5]]), torch.zeros(3), torch.full((3,), 1.0))
    b = GaussianMixture(torch.tensor([[0.0, 0.0], [2.5, 2.5], [-2.5, 2.5]]), torch.log(torch.tensor([0.2, 0.3, 0.5])),
                        torch.full((3,), 1.0))
    return Product(a, b)


def test_product_of_mixtures_is_exact_mixture():
    prod = composed()
    mix = prod.as_mixture()
    x = torch.randn(50, 2, dtype=torch.float32) * 2
    s, lp = prod.score(x, 0.0), prod.log_prob(x, 0.0)
    s2, lp2 = mix.score(x, 0.0), mix.log_prob(x, 0.0)
    torch.testing.assert_close(s, s2, atol=1e-4, rtol=1e-4)
    c = lp - lp2  # equal up to the normalising constant
    assert (c - c.mean()).abs().max() < 1e-4


def test_composition_score_mh_beats_unadjusted():
    """Product of two mixtures: sampling with the summed marginal scores is biased (the product of
    marginals is not the marginal of the product); score-MH correctors remove much of the bias."""
    prod = composed()
    exact = prod.sample_exact(6000, torch.Generator().manual_seed(0))
    mix = prod.as_mixture()
    common = dict(n_levels=30, n_corrector_steps=4, step_size=0.3, seed=3)
    x_ula, _ = annealed_mcmc(prod, 6000, corrector="ula", mh="none", **common)
    x_mh, st = annealed_mcmc(prod, 6000, corrector="mala", mh="score", n_trapezoid=3, **common)
    w_ula, w_mh = metrics.sliced_w2(x_ula, exact), metrics.sliced_w2(x_mh, exact)
    tv_ula, tv_mh = metrics.mode_occupancy_tv(x_ula, exact, mix), metrics.mode_occupancy_tv(x_mh, exact, mix)
    assert w_mh < 0.7 * w_ula and tv_mh < tv_ula, (w_ula, w_mh, tv_ula, tv_mh)
    assert st.n_score_evals > 0 and len(st.accept_rate) == 30


@pytest.mark.parametrize("corrector", ["mala", "ula", "hmc", "uhmc"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_noncontiguous_score_gives_the_same_chains(corrector, dtype):
    """The generic path reads a model's score by strides, not as contiguous memory: a model returning a
    transposed view samples exactly what the same model returning a contiguous tensor samples."""
    def plain(x, t):
        return MIX.score(x, t)

    def strided(x, t):
        return MIX.score(x, t).t().contiguous().t()

    kw = dict(n_levels=4, n_corrector_steps=3, corrector=corrector, step_size=0.05, seed=3, dtype=dtype,
              fused=False)
    x0, _ = annealed_mcmc(ScoreModel(plain, dim=2), 300, **kw)
    x1, _ = annealed_mcmc(ScoreModel(strided, dim=2), 300, **kw)
    torch.testing.assert_close(x1, x0, rtol=0, atol=0)


@pytest.mark.parametrize("corrector,mh", [("mala", "score"), ("mala", "energy"), ("hmc", "score"), ("ula", "none")])
def test_generic_moves_take_seed_none(corrector, mh):
    """seed=None (a seed drawn from torch's generator) runs on the generic path as on the fused one."""
    x = torch.randn(64, 2, dtype=torch.float64)
    for fused in (True, False):
        y, rate = mcmc(MIX, x, corrector=corrector, mh=mh, n_steps=3, step_size=0.1, seed=None, fused=fused)
        assert y.shape == x.shape and torch.isfinite(y).all() and rate.shape == (64,)


def test_energy_and_score_models_wrap_callables():
    energy = EnergyModel(lambda x, t: 0.5 * (x**2).sum(1), dim=2)
    x = torch.randn(10, 2)
    torch.testing.assert_close(energy.score(x, 0.0), -x)
    sm = ScoreModel(lambda x, t: -x, dim=2)
    y, rate = mcmc(sm, x, corrector="mala", mh="score", n_steps=3, step_size=0.1, seed=0)
    assert y.shape == x.shape and torch.isfinite(y).all()
    with pytest.raises(ValueError, match="mh='energy' needs a model with an energy"):
        annealed_mcmc(sm, 10, mh="energy")


def test_step_size_adaptation_moves_acceptance_to_target():
    """Per-chain adaptation: from a step far too large, acceptance moves towards the target."""
    common = dict(n_levels=40, corrector="mala", mh="score", n_corrector_steps=3, step_size=3.0, n_trapezoid=2,
                  seed=2)
    _, fixed = annealed_mcmc(MIX, 3000, **common)
    _, adapted = annealed_mcmc(MIX, 3000, adapt=True, target_accept=0.6, **common)
    assert abs(adapted.accept_rate[-1] - 0.6) < 0.1 < abs(fixed.accept_rate[-1] - 0.6), \
        (fixed.accept_rate[-1], adapted.accept_rate[-1])
    assert adapted.step_size[-1] < fixed.step_size[-1]


# --- divergence report ---------------------------------------------------------------------------

def test_ula_with_a_huge_step_warns_and_counts_nonfinite_chains():
    """ULA at 100x a sane step diverges; the stats count the chains per level, NaN chains count as
    rejected (not 1.0), and one warning names the first level."""
    with pytest.warns(NonFiniteChainsWarning, match="became non-finite") as record:
        x, st = annealed_mcmc(MIX, 400, n_levels=10, corrector="ula", mh="none", n_corrector_steps=3,
                              step_size=50.0, seed=1)
    assert len([w for w in record if issubclass(w.category, NonFiniteChainsWarning)]) == 1
    first = st.first_nonfinite_level
    assert first is not None and f"at level {first} of 10" in str(record[0].message)
    assert "step size" in str(record[0].message)
    counts = st.n_nonfinite
    assert len(counts) == 10 and counts[first] > 0 and all(c == 0 for c in counts[:first])
    assert counts == sorted(counts) and counts[-1] == int((~torch.isfinite(x).all(1)).sum()) > 0
    assert st.accept_rate[first - 1] == 1.0  # before: unadjusted, every move kept
    assert st.accept_rate[-1] == pytest.approx(1 - counts[-1] / 400)  # NaN chains are not accepted


def test_nonfinite_raise_and_ignore():
    kw = dict(n_levels=10, corrector="ula", mh="none", n_corrector_steps=3, step_size=50.0, seed=1)
    with pytest.raises(NonFiniteChainsError, match="at level"):
        annealed_mcmc(MIX, 200, on_nonfinite="raise", **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, st = annealed_mcmc(MIX, 200, on_nonfinite="ignore", **kw)
    assert st.first_nonfinite_level is not None and st.n_nonfinite[-1] > 0
    with pytest.raises(ValueError, match="on_nonfinite must be one of"):
        annealed_mcmc(MIX, 200, on_nonfinite="quiet", **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("D", [1, 3, 8])
def test_nonfinite_monitor_mask_is_isfinite_all(dtype, D):
    """The monitor's finite mask (Σ_d (x - x)_d == 0) is isfinite(x).all(1) for NaN, ±inf and the largest finite
    rows, row by row in every dtype; with `was_finite` it counts only the chains that were finite."""
    from fastsamp.samplers.annealed import NonFiniteMonitor
    x = torch.randn(300, D, dtype=dtype, generator=torch.Generator().manual_seed(0)) * 1e30
    x[::7, 0], x[::11, -1], x[::13, 0], x[::17] = float("nan"), float("inf"), -float("inf"), torch.finfo(dtype).max
    monitor = NonFiniteMonitor(2, x.device, "ignore")
    expected = torch.isfinite(x).all(1)
    assert torch.equal(monitor.record(0, x), expected)
    was = torch.arange(300) % 2 == 0
    monitor.record(1, x, was)
    assert monitor.report("test", None)[0] == [int((~expected).sum()), int((was & ~expected).sum())]


def test_checked_run_chooses_each_op_once_unless_an_input_needs_grad():
    """A sampler's run keeps route's choice per op; a call with an input that requires grad (a model's score
    carrying a graph) gets route's choice for it and leaves the kept one alone."""
    import torch.autograd.forward_ad as fwAD

    from fastsamp.ops import _dispatch
    from fastsamp.samplers.kernels import routed
    x, s, eps = torch.randn(8, 2), torch.randn(8, 2), torch.full((8,), 0.1)
    routes = {}
    fn = routed(routes, "mala_propose", "auto", (x, s, eps, None))
    assert fn is _dispatch.route("auto", "mala_propose", x, s, eps, None) and routes == {"mala_propose": fn}
    g = s.clone().requires_grad_()
    assert routed(routes, "mala_propose", "auto", (x, g, eps, None)) is _dispatch.route("auto", "mala_propose", x, g,
                                                                                        eps, None)
    assert routes == {"mala_propose": fn}
    with fwAD.dual_level():  # a score carrying a forward-mode tangent: route's choice for it too
        d = fwAD.make_dual(s, torch.ones_like(s))
        chosen = _dispatch.route("auto", "mala_propose", x, d, eps, None)
        assert chosen is not fn and routed(routes, "mala_propose", "auto", (x, d, eps, None)) is chosen
    assert routes == {"mala_propose": fn}


@pytest.mark.parametrize("scale,diverges", [(1000.0, True), (1.0, False)])
def test_score_model_with_a_wrong_scale_is_reported(scale, diverges):
    """A score network returning 1000x the right score is reported; the right score is not."""
    model = ScoreModel(lambda x, t: scale * MIX.score(x, t), dim=2)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        x, st = annealed_mcmc(model, 300, n_levels=20, corrector="mala", mh="score", n_corrector_steps=2,
                              n_trapezoid=2, step_size=0.1, seed=0)
    reported = [w for w in record if issubclass(w.category, NonFiniteChainsWarning)]
    assert bool(reported) == diverges and (st.first_nonfinite_level is not None) == diverges
    assert bool(torch.isfinite(x).all()) != diverges
    if diverges:
        assert "score model's output" in str(reported[0].message)


def test_mcmc_reports_chains_that_went_nonfinite_only():
    """mcmc: a chain NaN on entry is not reported (it stays NaN, rate 0); chains that diverge are."""
    x0 = MIX.sample(200, torch.Generator().manual_seed(0))
    x0[3] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x, rate = mcmc(MIX, x0, corrector="mala", mh="score", n_steps=5, step_size=0.2, n_trapezoid=2, seed=1)
    assert torch.isnan(x[3]).all() and rate[3] == 0 and torch.isfinite(x[torch.arange(200) != 3]).all()
    with pytest.warns(NonFiniteChainsWarning, match="mcmc"):
        x, rate = mcmc(MIX, x0, corrector="ula", mh="none", n_steps=200, step_size=100.0, seed=1)
    assert (rate[~torch.isfinite(x).all(1)] == 0).all()


# --- one validation for the fused and generic paths ----------------------------------------------

ENERGY = EnergyModel(lambda x, t: MIX.to(dtype=x.dtype).log_prob(x, t).neg(), dim=2)
PATHS = {"fused mixture": (MIX, True), "generic mixture": (MIX, False), "generic energy model": (ENERGY, True)}


def _error(fn):
    with pytest.raises((ValueError, TypeError)) as e:
        fn()
    return e.type, str(e.value)


@pytest.mark.parametrize("kw,exc,match", [
    (dict(corrector="hmc", n_leapfrog=0), ValueError, "n_leapfrog must be >= 1"),
    (dict(n_steps=-1), ValueError, "n_steps must be >= 0"),
    (dict(n_steps=2**32 + 1), ValueError, "n_steps must be <= 2147483647"),
    (dict(n_trapezoid=0), ValueError, "n_trapezoid must be >= 1"),
    (dict(n_steps=2.5), TypeError, "n_steps must be an int"),
    (dict(corrector="ula", mh="score"), ValueError, "has no MH step"),
    (dict(corrector="uhmc", mh="none", damping=1.5), ValueError, "damping must be in"),
    (dict(corrector="hmc", damping=1.0), ValueError, "damping must be in \\[0.0, 1.0\\)"),  # the ops' range
    (dict(step_size=-0.1), ValueError, "step_size"),
])
def test_mcmc_paths_validate_alike(kw, exc, match):
    x = MIX.sample(16, torch.Generator().manual_seed(0)).float()
    errors = {name: _error(lambda m=m, f=f: mcmc(m, x, **{"n_steps": 2, **kw, "fused": f}))
              for name, (m, f) in PATHS.items()}
    assert len(set(errors.values())) == 1, errors
    got_type, msg = next(iter(errors.values()))
    assert got_type is exc and re.search(match, msg), msg


@pytest.mark.parametrize("kw,match", [
    (dict(corrector="hmc", n_leapfrog=0), "n_leapfrog must be >= 1"),
    (dict(n_corrector_steps=-1), "n_corrector_steps must be >= 0"),
    (dict(adapt=True, target_accept=0.0), "target_accept must be in \\(0, 1\\)"),
    (dict(adapt=True, target_accept=1.5), "target_accept must be in \\(0, 1\\)"),
    (dict(n_levels=1), "n_levels must be >= 2"),
    (dict(t_min=0.0), "t_min must be in"),
])
def test_annealed_paths_validate_alike(kw, match):
    errors = {name: _error(lambda m=m, f=f: annealed_mcmc(m, 8, **{"n_levels": 3, **kw, "fused": f}))
              for name, (m, f) in PATHS.items()}
    assert len(set(errors.values())) == 1, errors
    assert re.search(match, next(iter(errors.values()))[1])


def test_model_errors_are_the_same_on_both_paths():
    x = torch.randn(8, 2)
    sm = ScoreModel(lambda x, t: -x, dim=2)
    energy_errors = {_error(lambda f=f: mcmc(sm, x, mh="energy", fused=f)) for f in (True, False)}
    assert len(energy_errors) == 1 and "mh='energy' needs a model with an energy" in energy_errors.pop()[1]
    for f in (True, False):
        with pytest.raises(TypeError, match="model must be a score model .* got list"):
            mcmc([MIX], x, fused=f)
        with pytest.raises(ValueError, match="x must have shape \\(B, 2\\)"):
            mcmc(MIX, torch.randn(8, 3), fused=f)


# --- models: inference mode, array-likes ---------------------------------------------------------

def test_energy_model_works_under_inference_mode():
    x0 = MIX.sample(500, torch.Generator().manual_seed(2))
    kw = dict(corrector="mala", mh="energy", n_steps=3, step_size=0.2, seed=4)
    want, rate_want = mcmc(ENERGY, x0, **kw)
    with torch.inference_mode():
        got, rate = mcmc(ENERGY, x0.clone(), **kw)
        s = ENERGY.score(x0, 0.0)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(rate, rate_want)
    torch.testing.assert_close(s, MIX.score(x0, 0.0))


def test_gaussian_mixture_takes_array_likes_and_names_bad_types():
    np = pytest.importorskip("numpy")
    means = np.random.default_rng(0).normal(size=(4, 8))
    g = GaussianMixture(means, np.zeros(4), np.ones(4))
    torch.testing.assert_close(g.means, torch.as_tensor(means))
    assert GaussianMixture([[0, 1], [2, 3]], [0, 0], [1, 1]).means.dtype == torch.get_default_dtype()
    with pytest.raises(TypeError, match="means must be a tensor or an array-like of numbers, got str"):
        GaussianMixture("abc", [0.0], [1.0])
    with pytest.raises(ValueError, match="means must be finite"):
        GaussianMixture([[float("nan"), 0.0]], [0.0], [1.0])
    with pytest.raises(ValueError, match="variances must have shape \\(4,\\)"):
        GaussianMixture(means, np.zeros(4), np.ones(3))


@pytest.mark.parametrize("corrector,fused", [("mala", False), ("hmc", False), ("mala", True), ("ula", False)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_level_statistics_in_chunks_equal_level_by_level(monkeypatch, corrector, fused, dtype):
    """annealed_mcmc's chunked level statistics (and accept counts) give the bits of one level at a time: samples,
    acceptance rates, step sizes and non-finite counts, with chains going NaN and levels not a multiple of a chunk,
    in either dtype."""
    from fastsamp.samplers import annealed

    def score(x, t):  # MIX's score, with chain 3 NaN after t < 0.5
        s = MIX.score(x, t)
        return torch.where((torch.arange(x.shape[0]) == 3)[:, None] & (t < 0.5), float("nan"), s)
    model = MIX if fused else ScoreModel(score, 2, schedule=MIX.schedule)

    def run():
        x, st = annealed_mcmc(model, 64, n_levels=21, corrector=corrector, n_corrector_steps=3, n_trapezoid=2,
                              step_size=0.05, seed=4, dtype=dtype, fused=fused, on_nonfinite="ignore")
        return x, st.accept_rate, st.step_size, st.n_nonfinite, st.first_nonfinite_level
    chunked = run()
    monkeypatch.setattr(annealed, "LEVEL_CHUNK", 1)
    one_by_one = run()
    assert torch.equal(chunked[0].nan_to_num(), one_by_one[0].nan_to_num()) and chunked[1:] == one_by_one[1:]
    if not fused:
        assert chunked[3][-1] == 1 and chunked[4] is not None


@pytest.mark.parametrize("predictor", [True, False])
@pytest.mark.parametrize("n_trapezoid", [1, 3])
def test_returned_chains_do_not_change_when_the_sampler_runs_again(n_trapezoid, predictor):
    """The generic score-MH moves write their states into buffers reused across moves (`ScoreMH.accept_outputs`):
    the samples annealed_mcmc and mcmc return are not overwritten by a later run, from the same chains or others."""
    net = torch.nn.Linear(3, 2, dtype=torch.float64)
    model = ScoreModel(lambda x, t: net(torch.cat([x, torch.full_like(x[:, :1], t)], 1)) - x, 2)
    kw = dict(n_corrector_steps=3, n_trapezoid=n_trapezoid, dtype=torch.float64, fused=False, predictor=predictor)
    first, _ = annealed_mcmc(model, 16, n_levels=3, seed=1, **kw)
    kept = first.clone()
    again, _ = annealed_mcmc(model, 16, n_levels=3, seed=2, **kw)
    chains, _ = mcmc(model, first, n_steps=4, n_trapezoid=n_trapezoid)
    kept_chains = chains.clone()
    mcmc(model, chains, n_steps=4, n_trapezoid=n_trapezoid, seed=3)
    assert torch.equal(first, kept) and torch.equal(chains, kept_chains) and not torch.equal(first, again)


class _RecordingNet:
    """A small network's score that records (a copy of) every input and output: the values the sampler passed it."""

    def __init__(self, dtype, nan_chain=None):
        g = torch.Generator().manual_seed(0)
        self.w = 0.3 * torch.randn(3, 2, generator=g, dtype=dtype)
        self.nan_chain, self.calls = nan_chain, []

    def __call__(self, x, t):
        s = torch.tanh(torch.cat([x, torch.full_like(x[:, :1], t)], 1) @ self.w) - x
        if self.nan_chain is not None and t < 0.5:
            s[self.nan_chain] = float("nan")
        self.calls.append((x.clone(), s.clone()))
        return s


@pytest.mark.parametrize("case", [
    dict(), dict(n_trapezoid=3), dict(predictor=False), dict(n_trapezoid=2, predictor=False), dict(adapt=True),
    dict(dtype=torch.float32, n_trapezoid=3), dict(nan_chain=3, n_trapezoid=2), dict(corrector="hmc"),
    dict(n_corrector_steps=17), dict(backend="torch", n_trapezoid=2, predictor=False),
], ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_reused_accept_outputs_keep_every_tensor_of_a_fresh_run(monkeypatch, case):
    """annealed_mcmc and mcmc write each generic score-MH move's state into one of two buffer pairs, overwritten two
    moves later (`ScoreMH.accept_outputs`): the returned samples and statistics, mcmc's chains and rates, every
    input the model saw and every output it gave (through the predictor, the level boundaries with and without
    it, adapt, NaN chains; the model copies what it records, as a model must) are those of a run with fresh outputs,
    bit for bit, and mcmc's input is left alone."""
    from fastsamp.samplers import annealed, kernels
    case = dict(case)
    dtype, nan_chain = case.pop("dtype", torch.float64), case.pop("nan_chain", None)
    reused = []
    accept_outputs = kernels.ScoreMH.accept_outputs

    def spy(self, kernel, state, tensors):
        out = accept_outputs(self, kernel, state, tensors)
        reused.append(bool(out))
        return out
    monkeypatch.setattr(kernels.ScoreMH, "accept_outputs", spy)

    def run():
        net = _RecordingNet(dtype, nan_chain)
        model = ScoreModel(net, 2, schedule=MIX.schedule)
        kw = dict(corrector="mala", n_corrector_steps=3, step_size=0.3, seed=4, on_nonfinite="ignore") | case
        x, st = annealed_mcmc(model, 24, n_levels=5, dtype=dtype, fused=False, **kw)
        x0 = x.clone()
        kw = {k: v for k, v in kw.items() if k not in ("adapt", "predictor", "n_corrector_steps")}
        chains, rate = mcmc(model, x, t=0.2, n_steps=5, **kw)
        assert torch.equal(x.nan_to_num(), x0.nan_to_num())  # mcmc's input and annealed_mcmc's samples kept
        return [x, chains, rate, *(t for call in net.calls for t in call)], (
            st.accept_rate, st.step_size, st.n_nonfinite, st.first_nonfinite_level, st.n_score_evals)
    got, got_stats = run()
    assert any(reused) == (case.get("corrector") != "hmc")  # the reuse ran (HMC: never)
    monkeypatch.setattr(annealed, "mh_test", lambda spec, reuse_outputs=False: kernels.mh_test(spec))
    reused.clear()
    want, want_stats = run()
    assert not any(reused) and got_stats == want_stats and len(got) == len(want)
    for a, b in zip(got, want):
        assert torch.equal(a.nan_to_num(), b.nan_to_num()) and torch.equal(a.isnan(), b.isnan())
    if nan_chain is not None:
        assert got[0][nan_chain].isnan().any() and got_stats[3] is not None


def test_sampler_arguments_name_themselves():
    """A per-chain step of the wrong shape failed in a broadcast ((3,) for 10 chains) or was reported after it
    ((10, 1) as (10, 10)); dtype=int32 or "float32" in torch.finfo; mcmc's t = "a" or None deep in the schedule: each
    now names its argument."""
    for step, match in ((torch.full((3,), 0.1), "step_size must be a float or have shape \\(10,\\)"),
                        (torch.full((10, 1), 0.1), "got \\(10, 1\\)"),
                        (torch.tensor([0.1] * 9 + [float("nan")]), "step_size must be finite and > 0")):
        with pytest.raises(ValueError, match=match):
            annealed_mcmc(MIX, 10, n_levels=3, step_size=step)
    for dtype in (torch.int32, "float32"):
        with pytest.raises(TypeError, match="dtype must be float32 or float64"):
            annealed_mcmc(MIX, 10, n_levels=3, dtype=dtype)
    x0 = MIX.sample(10, torch.Generator().manual_seed(0))
    for t, exc in (("a", TypeError), (None, TypeError), (float("nan"), ValueError)):
        with pytest.raises(exc, match="t must be"):
            mcmc(MIX, x0, t=t, n_steps=1)
    x, _ = annealed_mcmc(MIX, 10, n_levels=3, step_size=torch.full((10,), 0.1))
    assert x.shape == (10, 2) and torch.isfinite(x).all()
