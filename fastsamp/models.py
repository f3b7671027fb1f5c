"""Score models: exact Gaussian mixtures, products (composition), any score network,
energy-parameterised models, and a small trained score MLP.

A model has `dim`, `schedule` and `score(x, t) -> (B, D)`; models with an energy
also have `log_prob(x, t) -> (B,)` (up to a constant for products).
"""
from __future__ import annotations

import math

import torch

from . import ops
from .schedules import VP


def _float_tensor(name, v, dtype=None, device=None):
    """v as a floating tensor (array-likes through torch.as_tensor); a TypeError naming `name` otherwise."""
    try:
        t = torch.as_tensor(v)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"{name} must be a tensor or an array-like of numbers, got {type(v).__name__}") from e
    if t.is_complex() or not (t.is_floating_point() or t.dtype in (torch.int8, torch.int16, torch.int32,
                                                                    torch.int64, torch.uint8)):
        raise TypeError(f"{name} must hold real numbers, got {type(v).__name__} of {t.dtype}")
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    return t.to(dtype=dtype or t.dtype, device=device or t.device)


def value_and_grad(fn, x):
    """(f(x), ∇f(x)) for f with one value per row, (B,), by one backward pass of Σ_b f(x_b); works
    under torch.no_grad and torch.inference_mode (x is copied out of inference mode). A constant f
    (no graph to x) has gradient 0."""
    with torch.inference_mode(False), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        f = fn(xg)
        if not f.requires_grad:
            return f.detach(), torch.zeros_like(xg)
        (g,) = torch.autograd.grad(f.sum(), xg)
    return f.detach(), g.detach()


class GaussianMixture:
    """p_0 = Σ_k π_k N(μ_k, v_k I), whose diffusion marginal is exact at every t:
    p_t = Σ_k π_k N(α_t μ_k, (α_t² v_k + σ_t²) I)."""

    has_energy = True

    def __init__(self, means, log_weights, variances, schedule=None):
        """means (K, D), log_weights (K,) (unnormalised), variances (K,): tensors or array-likes (NumPy
        arrays, lists); integer inputs become the default float dtype, the others take means' dtype."""
        self.means = _float_tensor("means", means)
        dtype, device = self.means.dtype, self.means.device
        self.log_weights = _float_tensor("log_weights", log_weights, dtype, device)
        self.variances = _float_tensor("variances", variances, dtype, device)
        if self.means.dim() != 2 or 0 in self.means.shape:
            raise ValueError(f"means must have shape (K, D) with K, D >= 1, got {tuple(self.means.shape)}")
        K = self.means.shape[0]
        for name, v in (("log_weights", self.log_weights), ("variances", self.variances)):
            if tuple(v.shape) != (K,):
                raise ValueError(f"{name} must have shape ({K},) like means' K, got {tuple(v.shape)}")
        if not bool(torch.isfinite(self.means).all()):
            raise ValueError("means must be finite")
        if not bool((torch.isfinite(self.variances) & (self.variances > 0)).all()):
            raise ValueError("variances must be finite and > 0")
        lw = self.log_weights
        if bool(torch.isnan(lw).any() | (lw == math.inf).any()) or bool((lw == -math.inf).all()):
            raise ValueError("log_weights must be < inf, not NaN, and not all -inf")
        self.schedule = schedule or VP()
        self.dim = self.means.shape[1]

    def to(self, dtype=None, device=None):
        conv = lambda t: t.to(dtype=dtype or t.dtype, device=device or t.device)  # noqa: E731
        return GaussianMixture(conv(self.means), conv(self.log_weights), conv(self.variances), self.schedule)

    def marginal(self, t: float) -> tuple[float, float]:
        return self.schedule.alpha(t), self.schedule.sigma2(t)

    def _params(self, x):
        return [p.to(dtype=x.dtype, device=x.device) for p in (self.means, self.log_weights, self.variances)]

    def score_and_log_prob(self, x, t, backend="auto"):
        alpha, sigma2 = self.marginal(t)
        return ops.gmm_score(x, *self._params(x), alpha=alpha, sigma2=sigma2, backend=backend)

    def score(self, x, t, backend="auto"):
        return self.score_and_log_prob(x, t, backend)[0]

    def log_prob(self, x, t, backend="auto"):
        return self.score_and_log_prob(x, t, backend)[1]

    def sample(self, n, generator=None, dtype=None):
        """Exact samples of p_0."""
        dtype = dtype or self.means.dtype
        k = torch.multinomial(torch.softmax(self.log_weights.double().cpu(), 0), n, replacement=True,
                              generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means.double().cpu()[k] + self.variances.double().cpu()[k, None].sqrt() * z
        return x.to(dtype=dtype, device=self.means.device)


class Product:
    """Composition p ∝ Π_i p_i: scores and energies add (at every t, as in the
    MCMC-corrected composition; the product of marginals is not the marginal of the product)."""

    def __init__(self, *models):
        if len(models) < 2:
            raise ValueError("Product needs at least two models")
        dims = {m.dim for m in models}
        if len(dims) != 1:
            raise ValueError(f"models have different dims {dims}")
        self.models, self.dim = models, models[0].dim
        self.schedule = models[0].schedule
        self.has_energy = all(getattr(m, "has_energy", False) for m in models)

    def score(self, x, t, backend="auto"):
        return sum(m.score(x, t, backend=backend) for m in self.models)

    def log_prob(self, x, t, backend="auto"):
        if not self.has_energy:
            raise TypeError("log_prob needs every factor to have an energy")
        return sum(m.log_prob(x, t, backend=backend) for m in self.models)

    def score_and_log_prob(self, x, t, backend="auto"):
        return self.score(x, t, backend), self.log_prob(x, t, backend)

    def as_mixture(self) -> GaussianMixture:
        """The product of isotropic Gaussian mixtures at t = 0 as one mixture:
        N(μ_i, v_i)·N(μ_j, v_j) = N(μ_i; μ_j, (v_i + v_j) I) · N(μ_ij, v_ij),
        v_ij = v_i v_j/(v_i + v_j), μ_ij = (v_j μ_i + v_i μ_j)/(v_i + v_j)."""
        if not all(isinstance(m, GaussianMixture) for m in self.models):
            raise TypeError("exact product samples exist for products of GaussianMixture models only")
        mu, lw, var = (self.models[0].means.double().cpu(), self.models[0].log_weights.double().cpu(),
                       self.models[0].variances.double().cpu())
        for m in self.models[1:]:
            mu2, lw2, var2 = m.means.double().cpu(), m.log_weights.double().cpu(), m.variances.double().cpu()
            vs = var[:, None] + var2[None, :]
            d2 = ((mu[:, None, :] - mu2[None, :, :]) ** 2).sum(-1)
            lw = (torch.log_softmax(lw, 0)[:, None] + torch.log_softmax(lw2, 0)[None, :]
                  - 0.5 * d2 / vs - 0.5 * self.dim * torch.log(2 * math.pi * vs)).reshape(-1)
            mu = ((var2[None, :, None] * mu[:, None, :] + var[:, None, None] * mu2[None, :, :])
                  / vs[..., None]).reshape(-1, self.dim)
            var = (var[:, None] * var2[None, :] / vs).reshape(-1)
        dtype = self.models[0].means.dtype
        return GaussianMixture(mu.to(dtype), lw.to(dtype), var.to(dtype), self.schedule)

    def sample_exact(self, n, generator=None):
        return self.as_mixture().sample(n, generator)


class ScoreModel:
    """Any callable fn(x, t) -> score (a neural score network): no energy."""

    has_energy = False

    def __init__(self, fn, dim, schedule=None):
        self.fn, self.dim, self.schedule = fn, dim, schedule or VP()

    def score(self, x, t, backend="auto"):
        with torch.no_grad():
            return self.fn(x, t)


class EnergyModel:
    """Energy-parameterised model: log p_t(x) = −E(x, t) + const, score = −∇E by autograd."""

    has_energy = True

    def __init__(self, energy, dim, schedule=None):
        self.energy, self.dim, self.schedule = energy, dim, schedule or VP()

    def score_and_log_prob(self, x, t, backend="auto"):
        e, g = value_and_grad(lambda z: self.energy(z, t), x)
        return -g, -e

    def score(self, x, t, backend="auto"):
        return self.score_and_log_prob(x, t)[0]

    def log_prob(self, x, t, backend="auto"):
        with torch.no_grad():
            return -self.energy(x, t)


class ScoreMLP(torch.nn.Module):
    """s_θ(x, t) = (α_t m − x)/v_t + MLP([x, Fourier(t)])/√v_t, v_t = α_t² σ_d² + σ_t²:
    the score of the moment-matched Gaussian (data mean m, variance σ_d²) plus a learned
    correction, an MLP with a sinusoidal time embedding. The Gaussian part keeps the score
    well scaled at small t and far from the data, where the network has seen little."""

    def __init__(self, dim, hidden=128, n_freq=16, schedule=None, data_mean=None, data_var=1.0):
        super().__init__()
        self.schedule = schedule or VP()
        self.register_buffer("freq", torch.exp(torch.linspace(0, math.log(1000.0), n_freq)))
        self.register_buffer("data_mean", torch.zeros(dim) if data_mean is None else data_mean.float())
        self.register_buffer("data_var", torch.tensor(float(data_var)))
        self.net = torch.nn.Sequential(
            torch.nn.Linear(dim + 2 * n_freq, hidden), torch.nn.SiLU(),
            torch.nn.Linear(hidden, hidden), torch.nn.SiLU(),
            torch.nn.Linear(hidden, hidden), torch.nn.SiLU(),
            torch.nn.Linear(hidden, dim))

    def marginal(self, t):
        """(α_t, σ_t²) of the VP schedule for a tensor of times."""
        sch = self.schedule
        log_alpha = -0.5 * (sch.beta_min * t + 0.5 * (sch.beta_max - sch.beta_min) * t * t)
        return log_alpha.exp(), -torch.expm1(2 * log_alpha)

    def forward(self, x, t):
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])[:, None]
        alpha, sigma2 = self.marginal(t)
        v = alpha**2 * self.data_var + sigma2
        emb = torch.cat([torch.sin(t * self.freq), torch.cos(t * self.freq)], 1)
        return (alpha * self.data_mean - x) / v + self.net(torch.cat([x, emb], 1)) / v.sqrt()


def train_score_mlp(samples, *, n_iters=3000, batch_size=512, lr=2e-3, hidden=128, t_min=1e-3, seed=0,
                    schedule=None) -> ScoreModel:
    """Denoising score matching on data samples (VP schedule): minimise
    E ||σ_t s_θ(α_t x_0 + σ_t z, t) + z||² over t ~ U(t_min, 1)."""
    schedule = schedule or VP()
    if not isinstance(schedule, VP):
        raise TypeError("train_score_mlp supports the VP schedule")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    data = samples.detach().float().cpu()
    net = ScoreMLP(data.shape[1], hidden=hidden, schedule=schedule, data_mean=data.mean(0),
                   data_var=float(data.var(0).mean()))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, n_iters)
    for _ in range(n_iters):
        x0 = data[torch.randint(0, data.shape[0], (batch_size,), generator=g)]
        t = t_min + (1 - t_min) * torch.rand(batch_size, 1, generator=g)
        alpha, sigma2 = net.marginal(t)
        sigma = sigma2.sqrt()
        z = torch.randn(x0.shape, generator=g)
        s = net(alpha * x0 + sigma * z, t[:, 0])
        loss = ((sigma * s + z) ** 2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    net.eval()

    def fn(x, t):
        return net(x.float(), float(t)).to(x.dtype)

    return ScoreModel(fn, data.shape[1], schedule)
