"""Generative priors on 8×8 digits for outsourced diffusion sampling: data split, tiny generators and
classifiers, cache, rewards, the noise-space posterior and the metrics. Tiny sizes only (seconds)."""
import copy

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

from fastsamp.experiments import digits as G  # noqa: E402
from fastsamp.experiments.digits import training  # noqa: E402

GENERATORS = ["vae", "gan", "flow"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """Every test caches into its own temporary directory, never the user's cache."""
    monkeypatch.setenv("FASTSAMP_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tiny():
    """Tiny generators and classifiers, trained once for the module (directly, without the cache)."""
    x, y = G.load_digits_data("prior")
    xh, yh = G.load_digits_data("heldout")
    return {"vae": G.train_vae(x, size="tiny", seed=0), "gan": G.train_gan(x, size="tiny", seed=0),
            "flow": G.train_flow(x, size="tiny", seed=0),
            "classifier": G.train_classifier((x, y), size="tiny", seed=0),
            "heldout_classifier": G.train_heldout_classifier((xh, yh), size="tiny", seed=1)}


# ----------------------------------------------------------------------------------------------- data

def test_splits_disjoint_sizes_and_range():
    idx = {s: G.split_indices(s) for s in G.SPLITS}
    assert {s: len(i) for s, i in idx.items()} == G.SPLIT_SIZES == {"prior": 1000, "heldout": 400, "test": 397}
    all_idx = np.concatenate(list(idx.values()))
    assert len(np.unique(all_idx)) == len(all_idx) == 1797
    for s in G.SPLITS:
        x, y = G.load_digits_data(s)
        assert x.shape == (G.SPLIT_SIZES[s], 64) and x.dtype == torch.float32
        assert y.shape == (G.SPLIT_SIZES[s],) and y.dtype == torch.int64
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and float(x.max()) == 1.0
        counts = torch.bincount(y, minlength=10)
        assert int(counts.min()) >= 0.09 * len(y) and int(counts.max()) <= 0.11 * len(y)  # stratified
    x1, _ = G.load_digits_data("test")
    x2, _ = G.load_digits_data("test")
    assert torch.equal(x1, x2)
    x1[0, 0] = 5.0  # returned tensors are copies
    assert float(G.load_digits_data("test")[0][0, 0]) <= 1.0
    assert G.real_digits(3).shape[1] == 64 and len(G.real_digits(3)) == int((G.load_digits_data("test")[1] == 3).sum())


def test_bad_arguments_raise_value_error(tiny):
    with pytest.raises(ValueError, match="split"):
        G.load_digits_data("train")
    with pytest.raises(ValueError, match="kind"):
        G.load_or_train("diffusion", size="tiny")
    with pytest.raises(ValueError, match="size"):
        G.load_or_train("vae", size="huge")
    with pytest.raises(ValueError, match="size"):
        G.train_vae(G.load_digits_data("prior")[0], size="medium")
    with pytest.raises(ValueError, match="steps"):
        G.train_gan(G.load_digits_data("prior")[0], size="tiny", steps=0)
    with pytest.raises(ValueError, match=r"\(N, 64\)"):
        G.train_flow(torch.rand(10, 32), size="tiny")
    with pytest.raises(ValueError, match="pair"):
        G.train_classifier(torch.rand(10, 64), size="tiny")
    with pytest.raises(ValueError, match="z must be"):
        tiny["vae"](torch.randn(3, tiny["vae"].latent_dim + 1))
    with pytest.raises(ValueError, match=r"\(N, 64\)"):
        tiny["classifier"].log_prob(torch.rand(3, 8, 8), 1)
    with pytest.raises(ValueError, match="labels"):
        tiny["classifier"].log_prob(torch.rand(3, 64), 10)
    with pytest.raises(ValueError, match="labels"):
        tiny["classifier"].log_prob(torch.rand(3, 64), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="mask"):
        G.InpaintReward(torch.rand(64), torch.ones(63, dtype=torch.bool), 0.1)
    with pytest.raises(ValueError, match="sigma"):
        G.InpaintReward(torch.rand(64), torch.ones(64, dtype=torch.bool), 0.0)
    with pytest.raises(ValueError, match="digit"):
        G.real_digits(10)
    post = G.NoisePosterior(tiny["gan"], G.ClassReward(tiny["classifier"], 3), lam=1.0)
    with pytest.raises(ValueError, match="z must be"):
        post.log_prob(torch.randn(4, 64))
    with pytest.raises(ValueError, match="feature"):
        G.frechet_distance(torch.randn(10, 4), torch.randn(10, 5))


# ----------------------------------------------------------------------------------------------- models

@pytest.mark.parametrize("kind", GENERATORS)
def test_tiny_generator_maps_noise_to_digits_differentiably(tiny, kind):
    gen = tiny[kind]
    assert gen.latent_dim == {"vae": 8, "gan": 16, "flow": 64}[kind]
    assert gen.info["kind"] == kind and gen.info["steps"] == G.CONFIGS[kind]["tiny"]["steps"]
    z = torch.randn(5, gen.latent_dim, requires_grad=True)
    x = gen(z)
    assert x.shape == (5, 64)
    assert bool(((x > 0) & (x < 1)).all())
    (g,) = torch.autograd.grad(x.square().sum(), z)
    assert g.shape == z.shape and bool(torch.isfinite(g).all()) and float(g.abs().sum()) > 0
    # sampling is seeded
    assert torch.equal(gen.sample(4, seed=3), gen.sample(4, seed=3))


def test_tiny_generators_learn_something(tiny):
    """A few optimiser steps already move the generators towards the data (mean pixel ~0.3, not 0.5)."""
    x = G.load_digits_data("prior")[0]
    for kind in ("vae", "flow"):
        s = tiny[kind].sample(500, seed=0)
        assert abs(float(s.mean()) - float(x.mean())) < 0.1, kind


def test_tiny_classifier_beats_chance(tiny):
    x, y = G.load_digits_data("test")
    clf = tiny["classifier"]
    assert G.classifier_accuracy(clf, x, y) > 0.6
    assert G.classifier_accuracy(tiny["heldout_classifier"], x, y) > 0.4
    assert clf.features(x).shape == (len(x), 32)
    lp = clf.log_prob(x, y)
    assert lp.shape == (len(x),) and bool((lp <= 0).all())
    torch.testing.assert_close(clf.log_probs(x).exp().sum(1), torch.ones(len(x)))


# ----------------------------------------------------------------------------------------------- cache

@pytest.mark.parametrize("kind", ["vae", "flow", "heldout_classifier"])
def test_cache_round_trip(tmp_path, monkeypatch, kind):
    first = G.load_or_train(kind, size="tiny", seed=2)
    assert first.info["cached"] is False
    path = G.cache_path(kind, size="tiny", seed=2)
    assert path.exists() and path.parent == tmp_path / "cache" and G.CACHE_VERSION in path.name

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although cached")

    monkeypatch.setitem(training.TRAINERS, kind, no_training)
    second = G.load_or_train(kind, size="tiny", seed=2)
    assert second.info["cached"] is True and second.info["train_seconds"] == first.info["train_seconds"]
    assert not any(p.requires_grad for p in second.parameters()) and not second.training
    if kind.endswith("classifier"):
        inp = G.load_digits_data("test")[0][:8]
    else:
        inp = torch.randn(8, first.latent_dim, generator=torch.Generator().manual_seed(0))
    assert torch.equal(first(inp), second(inp))
    # another seed or size is another file: it must train, which here fails loudly
    with pytest.raises(AssertionError, match="retrained"):
        G.load_or_train(kind, size="tiny", seed=3)


def test_digits_and_guided_digits_cache_files_check_the_seed_alike(tmp_path):
    """One cache-file rule for both caches: an integer seed (NumPy's too), never a bool."""
    from fastsamp.experiments.guided_digits.training import cache_file
    assert G.cache_path("vae", size="tiny", seed=np.int64(2)) == G.cache_path("vae", size="tiny", seed=2)
    assert cache_file("eps", size="tiny", seed=np.int64(2), cache_dir=tmp_path).name == "guided-eps-tiny-seed2-v1.pt"
    for path_of, kind in ((G.cache_path, "vae"), (cache_file, "eps")):
        for seed in (True, 1.0, "1"):
            with pytest.raises(ValueError, match="seed must be an int"):
                path_of(kind, size="tiny", seed=seed)


def test_corrupt_cache_file_is_retrained_with_a_warning():
    path = G.cache_path("classifier", size="tiny", seed=0)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="unreadable cache"):
        clf = G.load_or_train("classifier", size="tiny", seed=0)
    assert clf.info["cached"] is False
    assert G.load_or_train("classifier", size="tiny", seed=0).info["cached"] is True


def test_cache_dir_argument_and_training_determinism(tmp_path):
    a = G.load_or_train("classifier", size="tiny", seed=0, cache_dir=tmp_path / "a")
    b = G.load_or_train("classifier", size="tiny", seed=0, cache_dir=tmp_path / "b")
    assert (tmp_path / "a").is_dir() and not (tmp_path / "cache").exists()
    x = G.load_digits_data("test")[0][:16]
    torch.testing.assert_close(a(x), b(x))


# ----------------------------------------------------------------------------------------------- rewards

def test_rewards_shapes_and_gradients(tiny):
    x = G.load_digits_data("test")[0][:6].clone().requires_grad_(True)
    cr = G.ClassReward(tiny["classifier"], 4)
    r = cr(x)
    assert r.shape == (6,) and bool((r <= 0).all())
    (g,) = torch.autograd.grad(r.sum(), x)
    assert g.shape == x.shape and float(g.abs().sum()) > 0
    assert G.ClassReward(tiny["classifier"], torch.arange(6))(x).shape == (6,)

    x_obs = G.load_digits_data("test")[0][0]
    mask = torch.zeros(64, dtype=torch.bool)
    mask[:32] = True  # the top half is observed
    ir = G.InpaintReward(x_obs, mask, sigma=0.2)
    r = ir(x)
    assert r.shape == (6,)
    expected = -0.5 * ((x.detach() - x_obs)[:, :32] ** 2).sum(1) / 0.04
    torch.testing.assert_close(r.detach(), expected)
    assert float(ir(x_obs[None])) == 0.0
    (g,) = torch.autograd.grad(r.sum(), x)
    assert float(g[:, 32:].abs().max()) == 0.0 and float(g[:, :32].abs().sum()) > 0
    # per-sample observations and 0/1 masks
    ir2 = G.InpaintReward(x.detach(), mask.float().expand(6, 64), sigma=0.2)
    assert torch.equal(ir2(x.detach()), torch.zeros(6))
    with pytest.raises(ValueError, match="rows"):
        ir2(x.detach()[:3])


# ----------------------------------------------------------------------------------------------- target

@pytest.mark.parametrize("kind,reward", [("vae", "class"), ("flow", "inpaint"), ("gan", "class")])
def test_noise_posterior_score_matches_finite_differences(tiny, kind, reward):
    gen = copy.deepcopy(tiny[kind]).double()
    clf = copy.deepcopy(tiny["classifier"]).double()
    if reward == "class":
        r = G.ClassReward(clf, 7)
    else:
        x_obs = G.load_digits_data("test")[0][5].double()
        r = G.InpaintReward(x_obs, torch.arange(64) % 3 == 0, sigma=0.3)
    post = G.NoisePosterior(gen, r, lam=2.0)
    assert post.dim == gen.latent_dim
    z = torch.randn(3, post.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    lp = post.log_prob(z)
    assert lp.shape == (3,) and lp.dtype == torch.float64
    torch.testing.assert_close(lp, -0.5 * (z**2).sum(1) + 2.0 * r(gen(z)))
    s = post.score(z)
    assert s.shape == z.shape
    eps = 1e-5
    v = torch.randn(z.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    fd = (post.log_prob(z + eps * v) - post.log_prob(z - eps * v)) / (2 * eps)
    torch.testing.assert_close((s * v).sum(1), fd, rtol=1e-6, atol=1e-6)
    s2, lp2 = post.score_and_log_prob(z)
    torch.testing.assert_close(s2, s)
    torch.testing.assert_close(lp2, lp)
    torch.testing.assert_close(post.energy(z), -lp)


def test_noise_posterior_float64_input_on_float32_generator(tiny):
    post = G.NoisePosterior(tiny["gan"], G.ClassReward(tiny["classifier"], 1), lam=0.0)
    z = torch.randn(4, 16, dtype=torch.float64)
    torch.testing.assert_close(post.log_prob(z), -0.5 * (z**2).sum(1), rtol=1e-6, atol=1e-5)
    s = post.score(z)
    assert s.dtype == torch.float64
    torch.testing.assert_close(s, -z, rtol=1e-6, atol=1e-5)  # λ = 0: the standard normal score


def test_noise_posterior_score_under_inference_mode():
    """The autograd score also works inside torch.inference_mode (and under no_grad), with the same values."""
    torch.manual_seed(0)
    post = G.NoisePosterior(G.VAEDecoder(latent_dim=4, hidden=16), G.ClassReward(G.DigitClassifier((16, 8)), 3))
    z = torch.randn(6, 4)
    want, lp_want = post.score_and_log_prob(z)
    for mode in (torch.inference_mode, torch.no_grad):
        with mode():
            got, lp = post.score_and_log_prob(z)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(lp, lp_want)
    assert want.abs().sum() > 0


# ----------------------------------------------------------------------------------------------- metrics

def test_frechet_distance_zero_for_identical_and_grows_with_shift():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 8, generator=g, dtype=torch.float64)
    assert G.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    fd1 = G.frechet_distance(a, a + 1.0)
    assert fd1 == pytest.approx(8.0, rel=1e-6)  # a pure shift: |Δμ|² = 8
    assert G.frechet_distance(a, a + 2.0) > fd1
    # a scaling by 2: |μ − 2μ|² + tr(C) + tr(4C) − 2 tr(2C) = |μ|² + tr(C)
    expected = float(a.mean(0).square().sum() + torch.cov(a.T).trace())
    assert G.frechet_distance(a, 2 * a) == pytest.approx(expected, rel=1e-6)


def test_sample_and_prior_metrics(tiny, tmp_path):
    hclf = tiny["heldout_classifier"]
    real = G.real_digits(2)
    m = G.sample_metrics(real, 2, hclf, real)
    assert m["frechet"] == pytest.approx(0.0, abs=1e-6)
    assert m["diversity"] == pytest.approx(m["real_diversity"])
    assert 0.0 <= m["heldout_accuracy"] <= 1.0 and m["n"] == len(real)
    other = G.sample_metrics(G.real_digits(5), 2, hclf, real)
    assert other["frechet"] > 0 and other["heldout_accuracy"] < m["heldout_accuracy"]
    assert G.mean_pairwise_distance(torch.tensor([[0.0, 0.0], [3.0, 4.0]])) == pytest.approx(5.0)

    pm = G.prior_metrics(tiny["vae"], hclf, n=200)
    assert len(pm["class_fractions"]) == 10 and sum(pm["class_fractions"]) == pytest.approx(1.0)
    assert 0.0 <= pm["class_entropy"] <= np.log(10) + 1e-9 and pm["frechet"] >= 0

    path = G.save_grid(tiny["gan"].sample(10), tmp_path / "grid.png", title="gan")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
