"""The many-well target in D = 32: 16 independent double-well pairs (a_j, b_j)."""
from __future__ import annotations

import math

import numpy as np
import torch

from .base import _LOG_2PI, Target


def _well_log_density(a):
    """Unnormalised log density of the double-well coordinate: −a⁴ + 6a² + a/2."""
    return -(a**4) + 6.0 * a**2 + 0.5 * a


class ManyWell(Target):
    """Product of D/2 copies of the 2-D double well (many_well.py; D = 32 → 16 wells, 2^16 modes).

    For pairs (a_j, b_j) = (x_{2j}, x_{2j+1}):
        log R(x) = Σ_j [−a_j⁴ + 6a_j² + a_j/2 − b_j²/2],
        ∂_{a_j} log R = −4a_j³ + 12a_j + 1/2,   ∂_{b_j} log R = −b_j.
    Z = (Z_1 √(2π))^{D/2}, with Z_1 = ∫ exp(−a⁴ + 6a² + a/2) da computed by trapezoidal quadrature on
    [−6, 6] (the integrand is below e^{−1000} outside; the rule converges spectrally for this smooth,
    fast-decaying integrand). Z_1 ≈ 11784.509265, agreeing with the constant 11784.50927 used there.

    Sampling is exact: b ~ N(0, 1); a by rejection from the two-Gaussian proposal
    0.2·N(−1.7, 0.5²) + 0.8·N(1.7, 0.5²) (the proposal of many_well.py) with envelope constant
    M = 1.01 · max_a R_1(a)/q(a), the maximum taken on a grid of spacing 1e−4 over [−8, 8] (the ratio
    vanishes in both tails since −a⁴ beats the Gaussian's −a²).
    """

    name = "manywell"

    _PROPOSAL = ((0.2, -1.7, 0.5), (0.8, 1.7, 0.5))  # (weight, mean, std)

    def __init__(self, dim: int = 32, device=None, dtype=None):
        super().__init__(device, dtype)
        if int(dim) < 2 or int(dim) % 2:
            raise ValueError(f"dim must be a positive even number, got {dim}")
        self.dim = int(dim)
        self.n_wells = self.dim // 2
        f = np.exp(_well_log_density(np.linspace(-6.0, 6.0, 24001)))
        self.Z_well = float((f.sum() - 0.5 * (f[0] + f[-1])) * (12.0 / 24000))  # trapezoidal rule
        self.log_Z_well = math.log(self.Z_well)
        self.log_Z_gauss = 0.5 * _LOG_2PI
        self.log_Z = self.n_wells * (self.log_Z_well + self.log_Z_gauss)
        a = np.linspace(-8.0, 8.0, 160001)
        self._log_M = float(np.max(_well_log_density(a) - self._log_proposal(a, np))) + math.log(1.01)

    @classmethod
    def _log_proposal(cls, a, lib):
        terms = [math.log(w) - 0.5 * ((a - m) / s) ** 2 - math.log(s) - 0.5 * _LOG_2PI
                 for w, m, s in cls._PROPOSAL]
        if lib is np:
            return np.logaddexp(*terms)
        return torch.logaddexp(*terms)

    def well_log_density(self, a: torch.Tensor, normalised: bool = True) -> torch.Tensor:
        """log density of one double-well coordinate: −a⁴ + 6a² + a/2 (− log Z_1 if normalised)."""
        return _well_log_density(a) - (self.log_Z_well if normalised else 0.0)

    def _log_prob(self, x):
        a, b = x[:, 0::2], x[:, 1::2]
        return (_well_log_density(a) - 0.5 * b**2).sum(1)

    def _score(self, x):
        a, b = x[:, 0::2], x[:, 1::2]
        return torch.stack([-4.0 * a**3 + 12.0 * a + 0.5, -b], dim=2).reshape(x.shape)

    def score_kernel(self, dtype):
        return self._kernel_if_own(ManyWell, (3, None, 0.0))

    def _sample_well(self, m, generator, device):
        """m exact draws of the double-well coordinate by rejection sampling."""
        (w0, m0, s0), (_, m1, s1) = self._PROPOSAL
        kw = dict(generator=generator, device=device, dtype=torch.float64)
        chunks, got = [torch.empty(0, device=device, dtype=torch.float64)], 0
        while got < m:
            k = max(64, int(1.3 * (m - got) * math.exp(self._log_M - self.log_Z_well)) + 16)
            right = torch.rand(k, **kw) >= w0
            z = torch.randn(k, **kw)
            a = torch.where(right, m1 + s1 * z, m0 + s0 * z)
            log_u = torch.log(torch.rand(k, **kw))
            keep = a[log_u < _well_log_density(a) - self._log_proposal(a, torch) - self._log_M]
            chunks.append(keep)
            got += keep.numel()
        return torch.cat(chunks)[:m]

    def _sample(self, n, generator, device):
        a = self._sample_well(n * self.n_wells, generator, device).reshape(n, self.n_wells)
        b = torch.randn(n, self.n_wells, generator=generator, device=device, dtype=torch.float64)
        return torch.stack([a, b], dim=2).reshape(n, self.dim)
