"""Score networks on the fused MLP engine (ops.mlp_score, ops.mlp_mala; csrc/cpu/score_mlp.cpp): equal to
the PyTorch reference and to ScoreMLP.forward on many shapes, the whole-move kernel equal to the generic
samplers' moves with the same Philox draws, products with mixtures, the samplers' automatic use, and
the argument checks."""
import dataclasses

import pytest
import torch

from fastsamp import ops
from fastsamp.models import GaussianMixture, Product, ScoreMLP, ScoreModel
from fastsamp.samplers import annealed_mcmc, mcmc

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=2e-4, atol=2e-4)}


def score_mlp(D, hidden, seed, n_freq=16, dtype=torch.float64):
    """A ScoreMLP with random (not trained) weights scaled so that the correction is O(1)."""
    torch.manual_seed(seed)
    net = ScoreMLP(D, hidden=hidden, n_freq=n_freq, data_mean=torch.randn(D), data_var=1.7)
    with torch.no_grad():
        for p in net.net.parameters():
            p.mul_(2.0)
    return net.to(dtype)


def random_net(D, H, L, F, dtype, seed, activation="silu"):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: (torch.randn(*s, generator=g, dtype=torch.float64) / max(s[-1], 1) ** 0.5).to(dtype)  # noqa: E731
    widths = [(H, D + 2 * F)] + [(H, H)] * L + [(D, H)]
    return ops.ScoreNet(tuple(r(*w) for w in widths), tuple(r(w[0]) for w in widths),
                        torch.rand(F, generator=g, dtype=torch.float64).to(dtype) * 30,
                        torch.randn(D, generator=g, dtype=torch.float64).to(dtype), 1.3, 0.37, 0.8, 0.36, activation)


def net_fields(net):
    """The constructor arguments of a network op's dataclass (ScoreNet, EnergyNet; not the ops' memo fields)."""
    return {f.name: getattr(net, f.name) for f in dataclasses.fields(net) if f.init}


def to(net, dtype, device="cpu"):
    """A ScoreNet, EnergyNet or MixtureScore with its tensors in dtype on device."""
    conv = lambda v: v.to(dtype=dtype, device=device) if isinstance(v, torch.Tensor) else v  # noqa: E731
    if isinstance(net, ops.MixtureScore):
        return ops.MixtureScore(*(conv(v) for v in net))
    return dataclasses.replace(net, **{name: tuple(conv(t) for t in v) if isinstance(v, tuple) else conv(v)
                                       for name, v in net_fields(net).items()})


def assert_moves_close(dtype, got, want):
    """(x, rate) of a whole-move kernel equal to the reference's: to TOL (rates exactly) in float64; in float32 a
    rounding may flip an accept that sits on the threshold (and an HMC momentum with it), in few chains."""
    (x_new, rate), (e_x, e_rate) = got, want
    if dtype == torch.float64:
        torch.testing.assert_close(x_new, e_x, **TOL[dtype])
        torch.testing.assert_close(rate, e_rate, rtol=0, atol=0)
    else:
        close = ((x_new - e_x).abs() <= 2e-4 * (1 + e_x.abs())).all(1)
        assert close.float().mean() >= 0.97 and (rate - e_rate).abs().mean() <= 0.02


def mixture_score(D, dtype, alpha=0.8, sigma2=0.36):
    g = torch.Generator().manual_seed(7)
    return ops.MixtureScore(torch.randn(3, D, generator=g, dtype=dtype) * 2, torch.randn(3, generator=g, dtype=dtype),
                            torch.rand(3, generator=g, dtype=dtype) + 0.2, alpha, sigma2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("B,D,H,L,F", [(1, 1, 1, 0, 1), (47, 1, 16, 2, 16), (49, 3, 33, 1, 4), (150, 2, 128, 2, 16),
                                       (97, 5, 7, 3, 0), (100, 17, 64, 1, 2), (48, 16, 24, 0, 3)])
@pytest.mark.parametrize("activation", ["silu", "gelu"])
def test_mlp_score_matches_reference(dtype, B, D, H, L, F, activation):
    net = random_net(D, H, L, F, dtype, seed=B + D + H, activation=activation)
    x = torch.randn(B, D, dtype=dtype) * 2
    got = ops.mlp_score(x, net, backend="cpp")
    want = ops.mlp_score(x.double(), to(net, torch.float64), backend="torch")
    torch.testing.assert_close(got.double(), want, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("D,hidden", [(1, 8), (2, 128), (3, 20)])
def test_score_mlp_model_on_the_fused_engine(dtype, D, hidden):
    """ops.mlp_score on ScoreMLP.score_net equals the module's own forward (its score)."""
    model = score_mlp(D, hidden, seed=D, dtype=dtype)
    x = torch.randn(130, D, dtype=dtype) * 1.5
    for t in (1.0, 0.3, 1e-3):
        got = ops.mlp_score(x, model.score_net(t, x), backend="cpp")
        torch.testing.assert_close(got, model.score(x, t), **TOL[dtype])


@pytest.mark.parametrize("cls", ["ScoreMLP", "EnergyMLP"])
def test_fused_network_follows_data_var_writes(cls):
    """σ_d² written in place (fill_, an optimizer's copy_) or replaced by another tensor is what the next fused
    network reads (FourierMLP keeps it as a float for torch.compile), equal to the module's own forward."""
    from fastsamp.models import EnergyMLP

    model = (score_mlp(2, 16, seed=4) if cls == "ScoreMLP"
             else EnergyMLP(2, hidden=16, n_freq=4, data_var=1.7, dtype=torch.float64))
    fused = ops.mlp_score if cls == "ScoreMLP" else (lambda x, net, **kw: ops.mlp_energy(x, net, **kw)[0])
    x = torch.randn(40, 2, dtype=torch.float64)
    before = fused(x, model.fused_net(0.2, x), backend="cpp")
    with torch.no_grad():
        model.data_var.fill_(0.4)
    after_fill = fused(x, model.fused_net(0.2, x), backend="cpp")
    assert not torch.equal(after_fill, before)
    torch.testing.assert_close(after_fill, model.score(x, 0.2), **TOL[torch.float64])
    with torch.no_grad():
        model.data_var.copy_(torch.tensor(2.5))
    torch.testing.assert_close(fused(x, model.fused_net(0.2, x), backend="cpp"), model.score(x, 0.2),
                               **TOL[torch.float64])
    model.data_var = torch.tensor(0.9, dtype=torch.float64)  # a new buffer tensor
    torch.testing.assert_close(fused(x, model.fused_net(0.2, x), backend="cpp"), model.score(x, 0.2),
                               **TOL[torch.float64])
    assert model._data_var == 0.9


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sum_of_networks_and_a_mixture(dtype):
    D = 3
    nets = [random_net(D, 32, 2, 8, dtype, seed=1), random_net(D, 16, 1, 4, dtype, seed=2, activation="gelu")]
    mix = mixture_score(D, dtype)
    x = torch.randn(77, D, dtype=dtype)
    got = ops.mlp_score(x, nets, mixture=mix, backend="cpp")
    want = ops.mlp_score(x, nets[0], backend="torch") + ops.mlp_score(x, nets[1], backend="torch") + ops.gmm_score(
        x, *mix[:3], alpha=mix.alpha, sigma2=mix.sigma2, backend="torch")[0]
    torch.testing.assert_close(got, want, **TOL[dtype])
    torch.testing.assert_close(ops.mlp_score(x, [], mixture=mix, backend="cpp"), ops.gmm_score(
        x, *mix[:3], alpha=mix.alpha, sigma2=mix.sigma2, backend="torch")[0], **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mh,n_trapezoid", [("score", 1), ("score", 3), ("score", 6), ("none", 1)])
@pytest.mark.parametrize("B,D,with_mixture", [(1, 1, False), (50, 2, True), (97, 3, False)])
def test_mlp_mala_matches_reference(dtype, mh, n_trapezoid, B, D, with_mixture):
    nets = [random_net(D, 24, 2, 4, dtype, seed=3), random_net(D, 16, 1, 4, dtype, seed=4)]
    mix = mixture_score(D, dtype) if with_mixture else None
    x = torch.randn(B, D, dtype=dtype)
    eps = torch.rand(B, dtype=dtype) * 0.2 + 0.05
    kw = dict(step_size=eps, n_steps=6, n_trapezoid=n_trapezoid, seed=11, offset=2**32 + 3, chain_offset=5, mh=mh)
    x_new, rate = ops.mlp_mala(x, nets, mixture=mix, backend="cpp", **kw)
    e_x, e_rate = ops.mlp_mala(x, nets, mixture=mix, backend="torch", **kw)
    torch.testing.assert_close(x_new, e_x, **TOL[dtype])
    if dtype == torch.float64:
        torch.testing.assert_close(rate, e_rate, rtol=0, atol=0)
    else:  # a float32 rounding may flip an accept that sits on the threshold
        assert (rate - e_rate).abs().sum() <= 2 / 6
    again = ops.mlp_mala(x, nets, mixture=mix, backend="cpp", **kw)
    assert torch.equal(again[0], x_new) and torch.equal(again[1], rate)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mh,n_leapfrog,damping", [("score", 1, 0.0), ("score", 3, 0.0), ("score", 2, 0.8),
                                                   ("none", 2, 0.8)])
@pytest.mark.parametrize("B,D,with_mixture", [(1, 1, False), (50, 2, True), (97, 3, False)])
def test_mlp_hmc_matches_reference(dtype, mh, n_leapfrog, damping, B, D, with_mixture):
    nets = [random_net(D, 24, 2, 4, dtype, seed=3), random_net(D, 16, 1, 4, dtype, seed=4)]
    mix = mixture_score(D, dtype) if with_mixture else None
    x = torch.randn(B, D, dtype=dtype)
    eps = torch.rand(B, dtype=dtype) * 0.2 + 0.05
    kw = dict(step_size=eps, n_steps=5, n_leapfrog=n_leapfrog, seed=12, offset=7, chain_offset=3, mh=mh,
              damping=damping)
    assert_moves_close(dtype, ops.mlp_hmc(x, nets, mixture=mix, backend="cpp", **kw),
                       ops.mlp_hmc(x, nets, mixture=mix, backend="torch", **kw))


def test_mlp_mala_rows_are_independent_of_the_batch():
    """Chain b of a run equals chain b of a run on a prefix (same global index), and a NaN chain stays
    in its row."""
    net = random_net(2, 32, 2, 4, torch.float64, seed=5)
    x = torch.randn(130, 2, dtype=torch.float64)
    x[7] = float("nan")
    kw = dict(step_size=0.1, n_steps=4, n_trapezoid=2, seed=3)
    full, rate = ops.mlp_mala(x, net, backend="cpp", **kw)
    part, _ = ops.mlp_mala(x[60:], net, chain_offset=60, backend="cpp", **kw)
    assert torch.equal(full[60:], part)
    assert torch.isnan(full[7]).all() and torch.isfinite(full[torch.arange(130) != 7]).all()
    assert rate[7] == 0


@pytest.mark.parametrize("corrector,mh,n_trapezoid,damping", [
    ("mala", "score", 3, None), ("mala", "score", 1, None), ("ula", None, 1, None), ("hmc", "score", 1, None),
    ("hmc", "score", 1, 0.7), ("uhmc", None, 1, None)])
@pytest.mark.parametrize("with_mixture", [False, True])
def test_fused_equals_generic_moves(corrector, mh, n_trapezoid, damping, with_mixture):
    """mcmc's fused path (ops.mlp_mala / ops.mlp_hmc) equals its generic Langevin / HMC kernels with ScoreMH or
    NoMH, same Philox draws."""
    factors = [score_mlp(2, 32, seed=1), score_mlp(2, 16, seed=2)]
    if with_mixture:
        factors.append(GaussianMixture(torch.tensor([[1.0, 0.0], [-1.0, 0.5]], dtype=torch.float64),
                                       torch.zeros(2, dtype=torch.float64), torch.tensor([0.3, 0.5],
                                                                                         dtype=torch.float64)))
    model = Product(*factors)
    x0 = torch.randn(200, 2, dtype=torch.float64)
    kw = dict(t=0.2, corrector=corrector, mh=mh, n_steps=8, step_size=0.05, n_trapezoid=n_trapezoid, n_leapfrog=3,
              damping=damping, seed=9, offset=4)
    xf, rf = mcmc(model, x0, fused=True, **kw)
    xg, rg = mcmc(model, x0, fused=False, **kw)
    torch.testing.assert_close(xf, xg, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(rf, rg, rtol=0, atol=0)
    single_f, _ = mcmc(factors[0], x0, fused=True, **kw)
    single_g, _ = mcmc(factors[0], x0, fused=False, **kw)
    torch.testing.assert_close(single_f, single_g, rtol=1e-9, atol=1e-9)


def assert_annealed_fused_matches_generic(model, n_samples, **kw):
    """annealed_mcmc takes the fused corrector for `model` and gives the generic path's samples (float32 tolerance),
    with one more score evaluation per chain and level after the first (the generic predictor reuses its corrector's
    score)."""
    xf, sf = annealed_mcmc(model, n_samples, **kw)
    xg, sg = annealed_mcmc(model, n_samples, fused=False, **kw)
    assert sf.fused and not sg.fused
    assert sf.n_score_evals - sg.n_score_evals == (kw["n_levels"] - 1) * n_samples
    torch.testing.assert_close(xf, xg, rtol=1e-3, atol=1e-3)


def test_annealed_mcmc_takes_the_fused_path():
    model = Product(score_mlp(2, 16, seed=1, dtype=torch.float32), score_mlp(2, 16, seed=2, dtype=torch.float32))
    assert_annealed_fused_matches_generic(model, 64, n_levels=6, n_corrector_steps=3, n_trapezoid=2, step_size=0.05,
                                          seed=1)
    _, sh = annealed_mcmc(model, 16, corrector="hmc", n_levels=3, n_corrector_steps=1)
    assert sh.fused
    _, sm = annealed_mcmc(Product(model.models[0], ScoreModel(model.models[1], 2)), 16, n_levels=3,
                          n_corrector_steps=1)
    assert not sm.fused  # a factor the kernels do not know: the generic path
    odd = score_mlp(2, 8, seed=3, dtype=torch.float32)
    odd.net[1] = torch.nn.Tanh()  # not the architecture the kernels evaluate: the generic path
    for m in (odd, Product(odd, model.models[0])):
        assert not annealed_mcmc(m, 16, n_levels=3, n_corrector_steps=1)[1].fused
    away = score_mlp(2, 8, seed=4, dtype=torch.float32).to("meta")  # off the CPU: no kernel, so not fused
    assert not away.fusable() and away.fused_corrector() is None
    assert Product(away, model.models[0]).fused_corrector() is None


# --- argument checks ---------------------------------------------------------------------------------
def _replace(net, **kw):
    return dataclasses.replace(net, **kw)


@pytest.mark.parametrize("change,exc,words", [
    (lambda n: _replace(n, weights=(n.weights[0][:, :-1],) + n.weights[1:]), ValueError, "nets[0].weights[0]"),
    (lambda n: _replace(n, weights=n.weights[:1] + (n.weights[1][:-1],) + n.weights[2:]), ValueError,
     "nets[0].weights[1]"),
    (lambda n: _replace(n, weights=n.weights[:-1] + (n.weights[-1][:1],)), ValueError, "nets[0].weights[3]"),
    (lambda n: _replace(n, biases=n.biases[:-1]), ValueError, "same length"),
    (lambda n: _replace(n, biases=n.biases[:1] + (n.biases[1][:-1],) + n.biases[2:]), ValueError,
     "nets[0].biases[1]"),
    (lambda n: _replace(n, weights=(n.weights[0].float(),) + n.weights[1:]), TypeError, "nets[0].weights[0]"),
    (lambda n: _replace(n, data_mean=n.data_mean[:1]), ValueError, "nets[0].data_mean"),
    (lambda n: _replace(n, freq=n.freq[None]), ValueError, "nets[0].freq"),
    (lambda n: _replace(n, activation="relu"), ValueError, "activation"),
    (lambda n: _replace(n, data_var=-1.0), ValueError, "data_var"),
    (lambda n: "not a net", TypeError, "nets[0]"),
])
def test_bad_networks_are_named(change, exc, words):
    net = random_net(2, 8, 2, 3, torch.float64, seed=0)
    x = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(exc, match=words.replace("[", r"\[").replace("]", r"\]")):
        ops.mlp_score(x, [change(net)])
    with pytest.raises(exc, match=words.replace("[", r"\[").replace("]", r"\]")):
        ops.mlp_mala(x, [change(net)], step_size=0.1, n_steps=1)


@pytest.mark.parametrize("view", ["strided", "neg"])
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_layer_views_read_as_their_values(view, backend):
    """A weight, bias, freq or data_mean that is a strided view or carries a neg bit (not the dense memory the kernels
    read) is resolved first: the same bits as the dense tensors, whichever one tensor it is."""
    net = random_net(3, 8, 1, 2, torch.float64, seed=5)
    x = torch.randn(17, 3, dtype=torch.float64)

    def as_view(t):
        if view == "neg":
            return torch._neg_view(-t)
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
        wide[..., ::2] = t
        return wide[..., ::2]

    want = ops.mlp_score(x, net, backend=backend)
    fields = net_fields(net)
    cases = [("freq", None), ("data_mean", None)] + [(k, i) for k in ("weights", "biases") for i in range(3)]
    for field, i in cases:
        if i is None:
            changed = _replace(net, **{field: as_view(fields[field])})
        else:
            layers = list(fields[field])
            layers[i] = as_view(layers[i])
            changed = _replace(net, **{field: tuple(layers)})
        assert torch.equal(ops.mlp_score(x, changed, backend=backend), want), (field, i)


def test_bad_move_arguments():
    net = random_net(2, 8, 1, 3, torch.float64, seed=0)
    x = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="mh"):
        ops.mlp_mala(x, net, step_size=0.1, n_steps=1, mh="energy")
    with pytest.raises(ValueError, match="mh"):
        ops.mlp_hmc(x, net, step_size=0.1, n_steps=1, mh="energy")
    with pytest.raises(ValueError, match="damping"):
        ops.mlp_hmc(x, net, step_size=0.1, n_steps=1, damping=1.0)
    with pytest.raises(ValueError, match="n_trapezoid"):
        ops.mlp_mala(x, net, step_size=0.1, n_steps=1, n_trapezoid=0)
    with pytest.raises(ValueError, match="nothing to evaluate"):
        ops.mlp_score(x, [])
    with pytest.raises(ValueError, match="means"):
        ops.mlp_score(x, net, mixture=ops.MixtureScore(torch.zeros(2, 3, dtype=torch.float64),
                                                       torch.zeros(2, dtype=torch.float64),
                                                       torch.ones(2, dtype=torch.float64), 1.0, 0.0))


def test_a_replaced_layer_is_seen():
    """The layers are read at every call: replacing one in its container (a deque here) is seen, equal to a fresh
    copy's call."""
    import collections
    base = random_net(3, 8, 1, 2, torch.float64, seed=5)
    net = dataclasses.replace(base, weights=collections.deque(base.weights))
    x = torch.randn(6, 3, dtype=torch.float64)
    first = ops.mlp_score(x, net, backend="cpp")
    net.weights[1] = net.weights[1] * 1.5
    changed = ops.mlp_score(x, net, backend="cpp")
    assert not torch.equal(changed, first)
    assert torch.equal(changed, ops.mlp_score(x, dataclasses.replace(net), backend="cpp"))
