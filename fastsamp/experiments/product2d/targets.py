"""The 2-D product experiment's densities (Du et al. 2023, §2-D composition; Sjöberg et al. 2026, Table 1).

* model 1, `ring`: 8 equal-weight Gaussians N(0.5 (cos 2πk/8, sin 2πk/8), 0.03² I);
* model 2, `bar`: uniform on [−0.2, 0.2] × [−1, 1] (density 1/0.8);
* the target, their product: the two ring modes inside the bar, ½ N((0, ±0.5), 0.03² I). The exact
  product ring·bar/Z differs from it by the other modes' tails inside the bar (at ≥ 5σ from them:
  mass < 1e-6) and by the two modes' tails outside it (≥ 6.6σ: < 1e-10), so the two-mode mixture is
  the target density of every metric (normalised, finite everywhere).
"""
from __future__ import annotations

import math

import torch

RING_RADIUS, RING_STD, RING_MODES = 0.5, 0.03, 8
BAR_HALF_WIDTH, BAR_HALF_HEIGHT = 0.2, 1.0


def ring_means(dtype=torch.float64) -> torch.Tensor:
    k = torch.arange(RING_MODES, dtype=dtype)
    a = 2 * math.pi * k / RING_MODES
    return RING_RADIUS * torch.stack([torch.cos(a), torch.sin(a)], 1)


def target_means(dtype=torch.float64) -> torch.Tensor:
    return torch.tensor([[0.0, RING_RADIUS], [0.0, -RING_RADIUS]], dtype=dtype)


def _mixture_log_prob(x, means, std):
    """log Σ_k (1/K) N(x; μ_k, std² I) for x (B, 2)."""
    d2 = ((x[:, None, :] - means.to(x.dtype)[None]) ** 2).sum(-1)
    return torch.logsumexp(-0.5 * d2 / std**2, 1) - math.log(means.shape[0]) - math.log(2 * math.pi * std**2)


def _mixture_sample(n, means, std, generator):
    k = torch.randint(0, means.shape[0], (n,), generator=generator)
    return means[k] + std * torch.randn(n, 2, generator=generator, dtype=means.dtype)


def ring_log_prob(x):
    return _mixture_log_prob(x, ring_means(), RING_STD)


def ring_sample(n, generator=None):
    return _mixture_sample(n, ring_means(), RING_STD, generator)


def bar_log_prob(x):
    inside = (x[:, 0].abs() <= BAR_HALF_WIDTH) & (x[:, 1].abs() <= BAR_HALF_HEIGHT)
    area = 4 * BAR_HALF_WIDTH * BAR_HALF_HEIGHT
    return torch.where(inside, torch.full_like(x[:, 0], -math.log(area)), torch.full_like(x[:, 0], -math.inf))


def bar_sample(n, generator=None):
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    return (2 * u - 1) * torch.tensor([BAR_HALF_WIDTH, BAR_HALF_HEIGHT], dtype=torch.float64)


def target_log_prob(x):
    """The product target's normalised log-density (the two ring modes inside the bar)."""
    return _mixture_log_prob(x, target_means(), RING_STD)


def target_sample(n, generator=None):
    return _mixture_sample(n, target_means(), RING_STD, generator)


FACTORS = {"ring": (ring_sample, ring_log_prob), "bar": (bar_sample, bar_log_prob)}
