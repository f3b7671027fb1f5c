"""EnergyMLP (issue 11, item 4): the energy-parameterised twin of ScoreMLP. Its score is −∇E (autograd, checked
by finite differences), its log_prob differences are the score's line integral, annealed_mcmc runs exact energy MH
on it on the generic path (never the fused score-network kernels), train_score_mlp trains both parameterisations
with the same loss, and it saves and loads."""
import pickle

import pytest
import torch

from fastsamp.models import EnergyMLP, GaussianMixture, Product, ScoreMLP, load, save, train_score_mlp
from fastsamp.protocol import fused_corrector, has_energy
from fastsamp.samplers import annealed_mcmc

pytestmark = pytest.mark.usefixtures("one_thread")

TWO_MODES = GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 0.5]]), torch.zeros(2), torch.full((2,), 0.3))


def energy_mlp(seed=0, dtype=torch.float64, hidden=16):
    """An EnergyMLP with random weights scaled so that the network's part of the energy is O(1)."""
    torch.manual_seed(seed)
    net = EnergyMLP(2, hidden=hidden, n_freq=4, data_mean=torch.tensor([0.3, -0.2]), data_var=1.7)
    with torch.no_grad():
        for p in net.net.parameters():
            p.mul_(2.0)
    return net.to(dtype)


@pytest.mark.parametrize("t", [0.02, 0.5, 1.0])
def test_score_is_minus_grad_energy_by_finite_differences(t):
    net = energy_mlp()
    x = torch.randn(7, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2
    h = 1e-6
    fd = torch.stack([(net.log_prob(x + h * e, t) - net.log_prob(x - h * e, t)) / (2 * h)
                      for e in torch.eye(2, dtype=torch.float64)], 1)
    with torch.no_grad():  # the score enables grad locally
        s, lp = net.score_and_log_prob(x, t)
        torch.testing.assert_close(net.score(x, t), s, rtol=0, atol=0)
    torch.testing.assert_close(s, fd, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(lp, net.log_prob(x, t), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(net(x, t).detach(), s, rtol=1e-12, atol=1e-12)  # the differentiable score (training)
    assert s.dtype == torch.float64 and lp.shape == (7,)


def test_log_prob_differences_are_the_score_line_integral():
    """log p(b) − log p(a) = ∫_0^1 s(a + u(b − a))·(b − a) du, the trapezoid on 2001 points."""
    net = energy_mlp(seed=3)
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(5, 2, dtype=torch.float64, generator=g), torch.randn(5, 2, dtype=torch.float64, generator=g) * 2
    u = torch.linspace(0, 1, 2001, dtype=torch.float64)
    path = a[None] + u[:, None, None] * (b - a)[None]
    s = net.score(path.reshape(-1, 2), 0.3).reshape(len(u), 5, 2)
    integral = torch.trapezoid((s * (b - a)[None]).sum(-1), u, dim=0)
    torch.testing.assert_close(net.log_prob(b, 0.3) - net.log_prob(a, 0.3), integral, rtol=1e-6, atol=1e-6)


def test_zero_network_is_scoremlps_gaussian():
    """With f ≡ 0 both parameterisations are the moment-matched Gaussian's score."""
    e, s = EnergyMLP(2, hidden=8, data_mean=torch.tensor([1.0, -1.0]), data_var=2.0), ScoreMLP(2, hidden=8)
    s.load_state_dict(e.state_dict())
    with torch.no_grad():
        for p in list(e.net.parameters()) + list(s.net.parameters()):
            p.zero_()
    x = torch.randn(6, 2)
    torch.testing.assert_close(e.score(x, 0.4), s.score(x, 0.4), rtol=1e-6, atol=1e-6)


def test_annealed_mcmc_runs_exact_energy_mh_on_the_generic_path():
    net = energy_mlp(dtype=torch.float32)
    assert has_energy(net) and fused_corrector(net) is None
    assert fused_corrector(Product(net, TWO_MODES)) is None  # ScoreMLP's fused hooks never take an EnergyMLP
    calls, exact = [], net.score_and_log_prob
    net.score_and_log_prob = lambda x, t: calls.append(len(x)) or exact(x, t)  # the energy MH's evaluation
    for corrector in ("mala", "hmc"):
        calls.clear()
        x, stats = annealed_mcmc(net, 64, n_levels=5, n_corrector_steps=2, corrector=corrector, mh="energy",
                                 step_size=1.5)
        assert x.shape == (64, 2) and torch.isfinite(x).all()
        assert stats.fused is False and len(stats.accept_rate) == 5
        assert all(0 <= r <= 1 for r in stats.accept_rate) and min(stats.accept_rate) < 1  # a real MH test ran
        assert sum(calls) > 0  # on log-densities: the exact energy test


def dsm_loss(net, data, seed=5):
    """The denoising score-matching loss of train_score_mlp on fixed draws (4 per data point)."""
    g = torch.Generator().manual_seed(seed)
    data = data.repeat(4, 1)
    t = 1e-3 + (1 - 1e-3) * torch.rand(len(data), 1, generator=g)
    alpha, sigma2 = net.marginal(t)
    z = torch.randn(data.shape, generator=g)
    s = net(alpha * data + sigma2.sqrt() * z, t[:, 0]).detach()
    return float(((sigma2.sqrt() * s + z) ** 2).sum(1).mean())


@pytest.mark.parametrize("parameterisation,cls", [("score", ScoreMLP), ("energy", EnergyMLP)])
def test_training_both_parameterisations_reduces_the_loss_and_saves(parameterisation, cls, tmp_path):
    data = TWO_MODES.sample(1024, torch.Generator().manual_seed(0))
    kw = dict(batch_size=128, hidden=32, parameterisation=parameterisation)
    before, net = train_score_mlp(data, n_iters=0, **kw), train_score_mlp(data, n_iters=300, **kw)
    assert type(net) is cls and not net.training
    assert dsm_loss(net, data) < 0.9 * dsm_loss(before, data)
    x = torch.randn(9, 2, dtype=torch.float64)
    save(net, tmp_path / "m.pt")
    again = load(tmp_path / "m.pt")
    assert type(again) is cls
    torch.testing.assert_close(again.score(x, 0.3), net.score(x, 0.3), rtol=0, atol=0)
    torch.testing.assert_close(pickle.loads(pickle.dumps(net)).score(x, 0.3), net.score(x, 0.3), rtol=0, atol=0)
    if parameterisation == "energy":
        torch.testing.assert_close(again.log_prob(x, 0.3), net.log_prob(x, 0.3), rtol=0, atol=0)


def test_unknown_parameterisation_is_named():
    with pytest.raises(ValueError, match="parameterisation.*'flow'"):
        train_score_mlp(torch.randn(16, 2), n_iters=1, parameterisation="flow")
