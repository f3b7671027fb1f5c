"""EnergyMLP (issue 11, items 2 and 4): the energy-parameterised twin of ScoreMLP. Its score is −∇E (autograd, checked
by finite differences), its log_prob differences are the score's line integral, train_score_mlp trains both
parameterisations with the same loss, and it saves and loads. The fused kernels (ops.mlp_energy, mlp_energy_mala,
mlp_energy_hmc; csrc/cpu/score_mlp.cpp) equal the autograd reference in energy and score on many shapes, their moves
equal the reference and the samplers' generic moves with the same Philox draws (exact energy MH, score MH and none,
on energy networks, their sums, with a mixture, and mixed with score networks), annealed_mcmc and mcmc take the
fused path for EnergyMLPs and their Products, and bad input gives named errors."""
import dataclasses
import pickle

import pytest
import torch
from test_mlp import (
    TOL,
    assert_annealed_fused_matches_generic,
    assert_moves_close,
    mixture_score,
    net_fields,
    random_net,
    score_mlp,
    to,
)

from fastsamp import ops
from fastsamp.models import EnergyMLP, GaussianMixture, Product, ScoreMLP, load, save, train_score_mlp
from fastsamp.protocol import fused_corrector, has_energy
from fastsamp.samplers import annealed_mcmc, mcmc

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


def test_annealed_mcmc_runs_exact_energy_mh():
    """Exact energy MH in annealed_mcmc: on the fused kernels by default, on the generic kernels (the model's
    score_and_log_prob at every proposal) with fused=False."""
    net = energy_mlp(dtype=torch.float32)
    assert has_energy(net) and fused_corrector(net) is not None
    calls, exact = [], net.score_and_log_prob
    net.score_and_log_prob = lambda x, t: calls.append(len(x)) or exact(x, t)  # the energy MH's evaluation
    for corrector in ("mala", "hmc"):
        n_calls = {}
        for fused in (True, False):
            calls.clear()
            x, stats = annealed_mcmc(net, 64, n_levels=5, n_corrector_steps=2, corrector=corrector, mh="energy",
                                     step_size=1.5, fused=fused)
            assert x.shape == (64, 2) and torch.isfinite(x).all()
            assert stats.fused is fused and len(stats.accept_rate) == 5
            assert all(0 <= r <= 1 for r in stats.accept_rate) and min(stats.accept_rate) < 1  # a real MH test ran
            n_calls[fused] = sum(calls)
        assert n_calls[False] >= n_calls[True] + 5 * 2 * 64  # the generic moves test on the model's log-densities


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


# --- the fused kernels ------------------------------------------------------------------------------------------
def energy_net(D, H, L, F, dtype, seed, activation="silu"):
    """test_mlp.random_net's network as an energy network."""
    return ops.EnergyNet(**net_fields(random_net(D, H, L, F, dtype, seed, activation)))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("B,D,H,L,F", [(1, 1, 1, 0, 1), (47, 1, 16, 2, 16), (49, 3, 33, 1, 4), (150, 2, 128, 2, 16),
                                       (97, 5, 7, 3, 0), (100, 17, 64, 1, 2)])
@pytest.mark.parametrize("activation", ["silu", "gelu"])
def test_mlp_energy_matches_autograd(dtype, B, D, H, L, F, activation):
    """Energy and score of the fused kernel (one forward and one backward through the layers) equal the autograd
    reference, in float64 to 1e-10."""
    net = energy_net(D, H, L, F, dtype, seed=B + D + H, activation=activation)
    x = torch.randn(B, D, dtype=dtype) * 2
    score, logp = ops.mlp_energy(x, net, backend="cpp")
    want_s, want_lp = ops.mlp_energy(x.double(), to(net, torch.float64), backend="torch")
    torch.testing.assert_close(score.double(), want_s, **TOL[dtype])
    torch.testing.assert_close(logp.double(), want_lp, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_energy_mlp_model_on_the_fused_engine(dtype):
    """ops.mlp_energy on EnergyMLP.energy_net is the module's own (score, log_prob); sums add, with a mixture's exact
    log-density."""
    a, b = energy_mlp(seed=1, dtype=dtype), energy_mlp(seed=2, dtype=dtype, hidden=8)
    x = torch.randn(130, 2, dtype=dtype) * 1.5
    mix = mixture_score(2, dtype, alpha=1.0, sigma2=0.0)
    for t in (1.0, 0.3, 1e-3):
        for got, want in zip(ops.mlp_energy(x, a.energy_net(t, x), backend="cpp"), a.score_and_log_prob(x, t)):
            torch.testing.assert_close(got, want, **TOL[dtype])
        got = ops.mlp_energy(x, [a.energy_net(t, x), b.energy_net(t, x)], mixture=mix, backend="cpp")
        gmm = ops.gmm_score(x, *mix[:3], alpha=1.0, sigma2=0.0, backend="torch")
        want = [u + v + w for u, v, w in zip(a.score_and_log_prob(x, t), b.score_and_log_prob(x, t), gmm)]
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, **TOL[dtype])


def _nets(kinds, D, dtype):
    """Networks of the given kinds ("e" energy, "s" score), of different widths and depths."""
    make = {"e": energy_net, "s": random_net}
    return [make[k](D, (24, 16, 8)[i], (2, 1, 0)[i], 4, dtype, seed=3 + i) for i, k in enumerate(kinds)]


def _move_inputs(kinds, B, D, with_mixture, dtype):
    """(nets, mixture or None, x, per-chain step sizes) of a move test."""
    nets = _nets(kinds, D, dtype)
    mix = mixture_score(D, dtype) if with_mixture else None
    return nets, mix, torch.randn(B, D, dtype=dtype), torch.rand(B, dtype=dtype) * 0.2 + 0.05


MOVE_CASES = [("ee", "energy", 1), ("e", "energy", 1), ("ee", "score", 3), ("es", "score", 2), ("se", "none", 1),
              ("e", "none", 1)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kinds,mh,n_trapezoid", MOVE_CASES)
@pytest.mark.parametrize("B,D,with_mixture", [(1, 1, False), (50, 2, True), (97, 3, False)])
def test_mlp_energy_mala_matches_reference(dtype, kinds, mh, n_trapezoid, B, D, with_mixture):
    nets, mix, x, eps = _move_inputs(kinds, B, D, with_mixture, dtype)
    kw = dict(step_size=eps, n_steps=6, n_trapezoid=n_trapezoid, seed=11, offset=2**32 + 3, chain_offset=5, mh=mh)
    x_new, rate = ops.mlp_energy_mala(x, nets, mixture=mix, backend="cpp", **kw)
    assert_moves_close(dtype, (x_new, rate), ops.mlp_energy_mala(x, nets, mixture=mix, backend="torch", **kw))
    if mh != "none":
        assert 0 < rate.mean() < 1 or B == 1  # a real test ran


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kinds,mh,damping", [("ee", "energy", 0.0), ("e", "energy", 0.8), ("es", "score", 0.0),
                                              ("e", "none", 0.8)])
@pytest.mark.parametrize("B,D,with_mixture", [(1, 1, False), (50, 2, True), (97, 3, False)])
def test_mlp_energy_hmc_matches_reference(dtype, kinds, mh, damping, B, D, with_mixture):
    nets, mix, x, eps = _move_inputs(kinds, B, D, with_mixture, dtype)
    kw = dict(step_size=eps, n_steps=5, n_leapfrog=3, seed=12, offset=7, chain_offset=3, mh=mh, damping=damping)
    assert_moves_close(dtype, ops.mlp_energy_hmc(x, nets, mixture=mix, backend="cpp", **kw),
                       ops.mlp_energy_hmc(x, nets, mixture=mix, backend="torch", **kw))


def test_energy_moves_rows_are_independent_of_the_batch():
    """Chain b of a run equals chain b of a run on a suffix (same global index); a NaN chain stays in its row."""
    nets = _nets("ee", 2, torch.float64)
    x = torch.randn(130, 2, dtype=torch.float64)
    x[7] = float("nan")
    for move in (ops.mlp_energy_mala, ops.mlp_energy_hmc):
        full, rate = move(x, nets, step_size=0.1, n_steps=4, seed=3, backend="cpp")
        part, _ = move(x[60:], nets, step_size=0.1, n_steps=4, seed=3, chain_offset=60, backend="cpp")
        assert torch.equal(full[60:], part)
        assert torch.isnan(full[7]).all() and torch.isfinite(full[torch.arange(130) != 7]).all() and rate[7] == 0


def _two_modes(dtype):
    return GaussianMixture(TWO_MODES.means.to(dtype), TWO_MODES.log_weights.to(dtype), TWO_MODES.variances.to(dtype))


@pytest.mark.parametrize("corrector,mh", [("mala", "energy"), ("mala", "score"), ("ula", None), ("hmc", "energy"),
                                          ("hmc", "score"), ("uhmc", None)])
@pytest.mark.parametrize("factors", ["e", "ee", "e+mixture", "e+score"])
def test_fused_equals_generic_moves(corrector, mh, factors):
    """mcmc's fused path (ops.mlp_energy_mala / mlp_energy_hmc) equals its generic Langevin / HMC kernels with the
    same Philox draws: EnergyMH on the model's score_and_log_prob (autograd), ScoreMH, NoMH."""
    F64 = torch.float64
    parts = {"e": [energy_mlp(1)], "ee": [energy_mlp(1), energy_mlp(2, hidden=8)],
             "e+mixture": [energy_mlp(1), _two_modes(F64)], "e+score": [energy_mlp(1), score_mlp(2, 16, seed=2)]}
    model = parts[factors][0] if factors == "e" else Product(*parts[factors])
    if mh == "energy" and not has_energy(model):
        with pytest.raises(ValueError, match="energy"):
            mcmc(model, torch.zeros(4, 2, dtype=F64), corrector=corrector, mh=mh)
        return
    x0 = torch.randn(101, 2, dtype=F64)
    kw = dict(t=0.2, corrector=corrector, mh=mh, n_steps=8, step_size=0.3, n_trapezoid=2, n_leapfrog=3, seed=9,
              offset=4)
    assert fused_corrector(model) is not None
    xf, rf = mcmc(model, x0, fused=True, **kw)
    xg, rg = mcmc(model, x0, fused=False, **kw)
    torch.testing.assert_close(xf, xg, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(rf, rg, rtol=0, atol=0)
    if mh is not None:
        assert 0 < rf.mean() < 1


def test_annealed_mcmc_takes_the_fused_path_for_energy_products():
    a, b = energy_mlp(1, dtype=torch.float32), energy_mlp(2, dtype=torch.float32, hidden=8)
    for model in (Product(a, b), Product(a, _two_modes(torch.float32))):
        assert_annealed_fused_matches_generic(model, 64, n_levels=6, n_corrector_steps=3, step_size=0.05, seed=1,
                                              mh="energy")
    mixed = Product(a, score_mlp(2, 8, seed=3, dtype=torch.float32))
    assert annealed_mcmc(mixed, 16, n_levels=3, n_corrector_steps=1, mh="score")[1].fused
    odd = energy_mlp(3, dtype=torch.float32)
    odd.net[1] = torch.nn.Tanh()  # not the architecture the kernels evaluate: the generic path
    for m in (odd, Product(odd, a)):
        assert fused_corrector(m) is None and not annealed_mcmc(m, 16, n_levels=3, n_corrector_steps=1)[1].fused


# --- argument checks ---------------------------------------------------------------------------------------------
def test_bad_energy_arguments_are_named():
    D = 2
    e, s = energy_net(D, 8, 1, 3, torch.float64, seed=0), random_net(D, 8, 1, 3, torch.float64, seed=1)
    x = torch.randn(4, D, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"nets\[1\] is a ScoreNet.*every factor's energy"):
        ops.mlp_energy_mala(x, [e, s], step_size=0.1, n_steps=1, mh="energy")
    with pytest.raises(ValueError, match=r"nets\[0\] is a ScoreNet"):
        ops.mlp_energy_hmc(x, [s], step_size=0.1, n_steps=1)  # mh="energy" is the default
    with pytest.raises(TypeError, match=r"nets\[1\] must be a fastsamp.ops.EnergyNet"):
        ops.mlp_energy(x, [e, s])
    with pytest.raises(TypeError, match=r"nets\[0\] must be a fastsamp.ops.ScoreNet.*mlp_energy"):
        ops.mlp_score(x, e)
    with pytest.raises(TypeError, match=r"nets\[0\] must be a fastsamp.ops.ScoreNet"):
        ops.mlp_mala(x, [e], step_size=0.1, n_steps=1)
    with pytest.raises(ValueError, match="mh must be one of"):
        ops.mlp_energy_mala(x, e, step_size=0.1, n_steps=1, mh="exact")
    with pytest.raises(ValueError, match=r"nets\[0\].weights\[1\]"):
        ops.mlp_energy(x, dataclasses.replace(e, weights=(e.weights[0], e.weights[1][:-1], e.weights[2])))
    with pytest.raises(ValueError, match="damping"):
        ops.mlp_energy_hmc(x, e, step_size=0.1, n_steps=1, damping=1.0)
    with pytest.raises(ValueError, match="n_trapezoid"):
        ops.mlp_energy_mala(x, e, step_size=0.1, n_steps=1, n_trapezoid=0)
