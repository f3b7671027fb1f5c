"""Outsourced sampling in the noise space of a small VAE trained on the 8×8 digits: the
z-space samplers must raise the held-out classifier's accuracy for the asked digit well above
the prior's without collapsing diversity (fixed seeds, small models trained in the test)."""
import pytest
import torch

from fastsamp.experiments import digits, outsourced

DIGIT = 3


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    data = digits.load_digits_data("prior")
    vae = digits.train_vae(data, steps=1500, seed=0, size="tiny")
    clf = digits.train_classifier(data, steps=600, seed=0, size="tiny")
    heldout = digits.train_heldout_classifier(digits.load_digits_data("heldout"), steps=600, seed=1, size="tiny")
    yield vae, clf, heldout
    torch.set_num_threads(n)


def _metrics(vae, heldout, z):
    with torch.no_grad():
        x = vae(z)
    return digits.sample_metrics(x, DIGIT, heldout, digits.real_digits(DIGIT, "test"))


@pytest.mark.parametrize("sampler", ["diffusion", "mala"])
def test_noise_space_sampler_raises_heldout_accuracy(models, sampler):
    vae, clf, heldout = models
    post = outsourced.CountingPosterior(digits.NoisePosterior(vae, digits.ClassReward(clf, DIGIT), lam=1.0))
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
    # the posterior's own E[log r], by self-normalised importance sampling from 100,000 prior draws (weights
    # r^λ = p(3 | x) <= 1: ESS 20,600), against the samples' mean log r (measured: -0.870; MALA -0.862 ± 0.067, the
    # diffusion sampler, trained on the 12,000-call budget, -1.51 ± 0.09; sampling λ = 3 instead gives -0.26 / -0.55)
    with torch.no_grad():
        prior_draws = torch.randn(100_000, vae.latent_dim, generator=torch.Generator().manual_seed(123))
        log_r = post.model.log_reward(prior_draws)
        exact = (torch.softmax(log_r.double(), 0) * log_r.double()).sum().item()
        mean = post.model.log_reward(z).double().mean().item()
    if sampler == "mala":
        assert abs(mean - exact) < 0.3, (mean, exact)
    else:  # well past the prior's -4.32, short of the posterior, not past it
        assert log_r.double().mean().item() + 1.5 < mean < exact + 0.2, (mean, exact)


def test_run_rejects_bad_arguments():
    with pytest.raises(ValueError, match="prior"):
        outsourced.run("dcgan", "class", "prior")
    with pytest.raises(ValueError, match="sampler"):
        outsourced.run("vae", "class", "smc")
    with pytest.raises(ValueError, match="guidance"):
        outsourced.run("vae", "class", "guidance")
    with pytest.raises(ValueError, match="reward"):
        outsourced.make_reward("caption", None, 3)


class _CountingReward:
    """A reward that counts the rows it is called on (guidance calls the reward directly)."""

    def __init__(self, reward):
        self.reward, self.calls = reward, 0

    def __call__(self, x):
        self.calls += x.shape[0]
        return self.reward(x)


@pytest.mark.parametrize("budget", [4000, 1000])
@pytest.mark.parametrize("sampler", ["mala", "hmc", "diffusion", "guidance"])
def test_samplers_stay_within_the_budget(sampler, budget):
    """Every sampler makes at most `budget` reward calls and spends most of it (whole moves, iterations or
    steps that would pass it are not run); untrained tiny networks: only the accounting is tested."""
    torch.manual_seed(0)
    n = 128
    reward = _CountingReward(digits.ClassReward(digits.DigitClassifier(hidden=(16, 8)), DIGIT))
    post = outsourced.CountingPosterior(digits.NoisePosterior(digits.VAEDecoder(latent_dim=4, hidden=16), reward))
    if sampler == "guidance":
        outsourced.sample_flow_guidance(digits.FlowGenerator(hidden=16, n_steps=2), reward, n, budget=budget, lam=1.0)
        calls = reward.calls
    else:
        if sampler == "diffusion":
            outsourced.sample_diffusion(post, n, budget=budget, lam=1.0, n_steps=5, hidden=16)
        else:
            outsourced.sample_annealed_mcmc(post, n, budget=budget, lam=1.0, corrector=sampler)
        calls = post.calls
        assert calls == reward.calls  # the posterior's count is the reward's
    per_unit = {"mala": 2 * n, "hmc": 4 * n, "diffusion": n, "guidance": n}[sampler]  # what one more unit costs
    assert budget - per_unit < calls <= budget, (calls, budget)
    with pytest.raises(ValueError, match="budget .* too small"):
        outsourced.sample_annealed_mcmc(post, n, budget=n, lam=1.0, corrector=sampler if sampler != "guidance"
                                        else "mala")


def test_run_warns_that_tiny_is_for_tests_and_reports_the_calls_made(monkeypatch):
    """size="tiny" warns; run() reports the reward calls actually made, within the budget (untrained tiny
    networks stand in for the cached models)."""
    torch.manual_seed(0)
    monkeypatch.setattr(digits, "load_or_train", lambda kind, size: digits.VAEDecoder(latent_dim=4, hidden=16)
                        if kind == "vae" else digits.DigitClassifier((16, 8)))
    with pytest.warns(UserWarning, match="tiny' is for tests only"):
        _, m = outsourced.run("vae", "class", "hmc", n=16, budget=300, size="tiny")
    assert 300 - 4 * 16 < m["reward_calls"] <= 300 and m["budget"] == 300
    with pytest.raises(ValueError, match="budget 20 is too small for the hmc sampler"):
        outsourced.run("vae", "class", "hmc", n=16, budget=20, size="tiny")
