"""Rewards r(x, y) on digits: log p(y | x) of a classifier, and the Gaussian likelihood of observed pixels."""
from __future__ import annotations

import torch

from .data import DIM, check_labels, check_x


class ClassReward:
    """log r(x) = log p(y | x) under `classifier` (a DigitClassifier); y an int or (N,) labels."""

    def __init__(self, classifier, y):
        self.classifier = classifier
        self.y = y if isinstance(y, torch.Tensor) else int(y)
        check_labels(self.y, 1 if not isinstance(y, torch.Tensor) else max(y.numel(), 1), "cpu")

    def __call__(self, x):
        check_x(x)
        return self.classifier.log_prob(x, self.y)


class InpaintReward:
    """Gaussian log-likelihood of the observed pixels, log r(x) = −½ Σ_mask (x − x_obs)² / σ².
    x_observed: (64,) or (N, 64); mask: bool/0-1, (64,) or (N, 64); sigma > 0."""

    def __init__(self, x_observed, mask, sigma=0.1):
        x_obs = torch.as_tensor(x_observed, dtype=torch.float32)
        mask = torch.as_tensor(mask)
        for name, t in (("x_observed", x_obs), ("mask", mask)):
            if t.dim() not in (1, 2) or t.shape[-1] != DIM:
                raise ValueError(f"{name} must be (64,) or (N, 64), got {tuple(t.shape)}")
        if not float(sigma) > 0:
            raise ValueError(f"sigma must be positive, got {sigma!r}")
        if mask.dtype != torch.bool:
            if not bool(((mask == 0) | (mask == 1)).all()):
                raise ValueError("mask must be boolean or 0/1")
            mask = mask.bool()
        self.x_observed, self.mask, self.sigma = x_obs, mask, float(sigma)

    def __call__(self, x):
        check_x(x)
        n = x.shape[0]
        for name, t in (("x_observed", self.x_observed), ("mask", self.mask)):
            if t.dim() == 2 and t.shape[0] not in (1, n):
                raise ValueError(f"{name} has {t.shape[0]} rows for {n} inputs")
        x_obs = self.x_observed.to(dtype=x.dtype, device=x.device)
        m = self.mask.to(device=x.device, dtype=x.dtype)
        return -0.5 * (m * (x - x_obs) ** 2).sum(-1).expand(n) / self.sigma**2
