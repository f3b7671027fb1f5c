"""Neal's funnel in D = 10: N(x_0; 0, 3²) Π_{i≥1} N(x_i; 0, e^{x_0})."""
from __future__ import annotations

import math

import torch

from .base import _LOG_2PI, Target


class Funnel(Target):
    """Neal's funnel (hard_funnel.py / easy_funnel.py): x_0 ~ N(0, σ²), x_i | x_0 ~ N(0, e^{x_0}), i = 1..D−1.

    log p(x) = −x_0²/(2σ²) − log σ − (D/2) log 2π − (D−1) x_0/2 − e^{−x_0} Σ_{i≥1} x_i² / 2 (normalised);
    ∂_0 log p = −x_0/σ² − (D−1)/2 + e^{−x_0} Σ x_i²/2,   ∂_i log p = −x_i e^{−x_0}.
    Defaults D = 10, σ = 3: the benchmark funnel of Sendera et al. (gfn-diffusion's hard_funnel.py);
    σ = 1 is the "easy" funnel of PIS and Lahlou et al.
    """

    name = "funnel"
    log_Z = 0.0

    def __init__(self, dim: int = 10, sigma: float = 3.0, device=None, dtype=None):
        super().__init__(device, dtype)
        if int(dim) < 2:
            raise ValueError(f"dim must be >= 2, got {dim}")
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.dim = int(dim)
        self.sigma = float(sigma)

    def _log_prob(self, x):
        x0, xr = x[:, 0], x[:, 1:]
        d = self.dim
        return (-0.5 * x0**2 / self.sigma**2 - math.log(self.sigma) - 0.5 * d * _LOG_2PI
                - 0.5 * (d - 1) * x0 - 0.5 * torch.exp(-x0) * (xr**2).sum(1))

    def _score(self, x):
        x0, xr = x[:, :1], x[:, 1:]
        inv_var = torch.exp(-x0)
        g0 = -x0 / self.sigma**2 - 0.5 * (self.dim - 1) + 0.5 * inv_var * (xr**2).sum(1, keepdim=True)
        return torch.cat([g0, -xr * inv_var], dim=1)

    def score_kernel(self, dtype):
        return self._kernel_if_own(Funnel, (2, None, self.sigma))

    def _sample(self, n, generator, device):
        z = torch.randn(n, self.dim, generator=generator, device=device, dtype=torch.float64)
        x0 = self.sigma * z[:, :1]
        return torch.cat([x0, torch.exp(0.5 * x0) * z[:, 1:]], dim=1)
