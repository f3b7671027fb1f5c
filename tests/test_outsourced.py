"""Outsourced sampling in the noise space of a small VAE trained on the 8×8 digits: the
z-space samplers must raise the held-out classifier's accuracy for the asked digit well above
the prior's without collapsing diversity (fixed seeds, small models trained in the test)."""
import pytest
import torch

from fastsamp import generative as gen
from fastsamp import outsourced

DIGIT = 3


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    data = gen.load_digits_data("prior")
    vae = gen.train_vae(data, steps=1500, seed=0, size="tiny")
    clf = gen.train_classifier(data, steps=600, seed=0, size="tiny")
    heldout = gen.train_heldout_classifier(gen.load_digits_data("heldout"), steps=600, seed=1, size="tiny")
    yield vae, clf, heldout
    torch.set_num_threads(n)


def _metrics(vae, heldout, z):
    with torch.no_grad():
        x = vae(z)
    return gen.sample_metrics(x, DIGIT, heldout, gen.real_digits(DIGIT, "test"))


@pytest.mark.parametrize("sampler", ["diffusion", "mala"])
def test_noise_space_sampler_raises_heldout_accuracy(models, sampler):
    vae, clf, heldout = models
    post = outsourced.CountingPosterior(gen.NoisePosterior(vae, gen.ClassReward(clf, DIGIT), lam=1.0))
    z_prior = torch.randn(256, vae.latent_dim, generator=torch.Generator().manual_seed(0))
    prior = _metrics(vae, heldout, z_prior)
    budget = 12_000
    if sampler == "diffusion":
        z, info = outsourced.sample_diffusion(post, 256, budget=budget, lam=1.0, batch_size=64, n_steps=20,
                                              hidden=32, seed=0)
    else:
        z, info = outsourced.sample_annealed_mcmc(post, 256, budget=budget, lam=1.0, corrector="mala", levels=10,
                                                  seed=0)
    assert z.shape == (256, vae.latent_dim) and torch.isfinite(z).all()
    assert post.calls <= 1.05 * budget + 256  # the budget is respected
    got = _metrics(vae, heldout, z)
    # measured: diffusion 0.14 -> 0.50 held-out accuracy, diversity 1.97 -> 1.56
    assert got["heldout_accuracy"] > prior["heldout_accuracy"] + 0.25, (prior, got)
    assert got["diversity"] > 0.5 * prior["diversity"], (prior, got)  # no collapse onto one digit image


def test_run_rejects_bad_arguments():
    with pytest.raises(ValueError, match="prior"):
        outsourced.run("dcgan", "class", "prior")
    with pytest.raises(ValueError, match="sampler"):
        outsourced.run("vae", "class", "smc")
    with pytest.raises(ValueError, match="guidance"):
        outsourced.run("vae", "class", "guidance")
    with pytest.raises(ValueError, match="reward"):
        outsourced.make_reward("caption", None, 3)
