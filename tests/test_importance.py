"""Training-free importance sampling against exact tilted mixtures (fixed seeds)."""
import pytest
import torch

from fastsamp import metrics
from fastsamp.samplers import effective_sample_size, importance_sde
from fastsamp.tilting import base_mixture, exponential_tilt, gaussian_bump

P = base_mixture()


@pytest.mark.parametrize("make", [lambda p: exponential_tilt(p, [1.2, 0.4]),
                                  lambda p: gaussian_bump(p, [2.0, 2.0], 1.0)], ids=["tilt", "bump"])
def test_exact_tilted_target(make):
    """log q − log p − log l is constant: the closed-form q is the tilted density."""
    log_l, q = make(P)
    x = 3 * torch.randn(500, 2)
    c = q.log_prob(x, 0.0) - P.log_prob(x, 0.0) - log_l(x)
    assert (c - c.mean()).abs().max() < 1e-4


@pytest.mark.parametrize("make", [lambda p: exponential_tilt(p, [1.2, 0.4]),
                                  lambda p: gaussian_bump(p, [2.0, 2.0], 1.0)], ids=["tilt", "bump"])
def test_guidance_reaches_tilted_target_and_corrector_helps(make):
    log_l, q = make(P)
    n = 3000
    exact = q.sample(n, torch.Generator().manual_seed(5))
    base, _ = importance_sde(P, log_l, n, n_steps=100, seed=1, guidance_schedule=lambda t: 0.0)
    guided, st = importance_sde(P, log_l, n, n_steps=100, seed=1)
    corrected, st_c = importance_sde(P, log_l, n, n_steps=100, seed=1, corrector="mala")
    w_base, w_guided, w_corr = (metrics.sliced_w2(x, exact) for x in (base, guided, corrected))
    tv_base, tv_guided = (metrics.mode_occupancy_tv(x, exact, q) for x in (base, guided))
    assert w_guided < 0.25 * w_base and tv_guided < 0.25 * tv_base, (w_base, w_guided, tv_base, tv_guided)
    assert w_corr < 1.05 * w_guided + 0.01, (w_guided, w_corr)
    assert 0.3 < st_c.corrector_accept < 1.0
    assert st.n_score_evals == 2 * 100 * n and st.n_weight_grads == 100 * n


def test_effective_sample_size():
    assert effective_sample_size(torch.zeros(100)) == pytest.approx(100)
    assert effective_sample_size(torch.tensor([0.0, -1e9, -1e9])) == pytest.approx(1)


def test_bad_corrector():
    with pytest.raises(ValueError, match="corrector must be"):
        importance_sde(P, lambda x: x.sum(1), 10, corrector="hmc")
