"""Annealed MCMC with score-based MH: statistical tests against exact mixture answers."""
import pytest
import torch

from fastsamp import metrics
from fastsamp.models import EnergyModel, GaussianMixture, Product, ScoreModel
from fastsamp.samplers import annealed_mcmc, mcmc

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
])
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
