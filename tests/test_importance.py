"""Training-free importance sampling against exact tilted mixtures (fixed seeds)."""
import pytest
import torch

from fastsamp import metrics
from fastsamp.experiments.tilting import base_mixture, exponential_tilt, gaussian_bump
from fastsamp.samplers import NonFiniteChainsError, NonFiniteChainsWarning, effective_sample_size, importance_sde

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


@pytest.mark.parametrize("kw,match", [
    (dict(n_corrector_steps=-1, corrector="mala"), "n_corrector_steps must be >= 0"),
    (dict(n_corrector_steps=-1), "n_corrector_steps must be >= 0"),
    (dict(n_steps=0), "n_steps must be >= 1"),
    (dict(fd_eps=0.0), "fd_eps must be > 0"),
    (dict(corrector_step_size=float("nan")), "corrector_step_size must be finite"),
    (dict(t_min=1.0), "t_min must be in"),
    (dict(on_nonfinite="loud"), "on_nonfinite must be one of"),
])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        importance_sde(P, lambda x: x.sum(1), 10, **kw)
    with pytest.raises(TypeError, match="log_weight must be a callable"):
        importance_sde(P, 3.0, 10)


def test_divergence_is_counted_and_reported():
    """A log-weight with an enormous gradient sends chains to inf/NaN: counted per step, one warning
    naming the step, or NonFiniteChainsError with on_nonfinite="raise"; a sane weight reports nothing."""
    wild = lambda x: 1e30 * x[:, 0] ** 3  # noqa: E731
    with pytest.warns(NonFiniteChainsWarning, match="importance_sde: .* at level \\d+ of 20 \\(t = "):
        x, st = importance_sde(P, wild, 200, n_steps=20, seed=0)
    first = st.first_nonfinite_step
    assert len(st.n_nonfinite) == 20 and first is not None and st.n_nonfinite[first] > 0
    assert st.n_nonfinite[-1] == int((~torch.isfinite(x).all(1)).sum()) > 0
    with pytest.raises(NonFiniteChainsError):
        importance_sde(P, wild, 200, n_steps=20, seed=0, on_nonfinite="raise")
    _, st = importance_sde(P, lambda x: x.sum(1), 200, n_steps=20, seed=0, corrector="mala", n_corrector_steps=2)
    assert st.n_nonfinite == [0] * 21 and st.first_nonfinite_step is None
