"""The posterior of a generator's noise, log π(z) = −½|z|² + λ log r(f(z))."""
from __future__ import annotations

import torch

from ...models import value_and_grad
from .data import check_x


class NoisePosterior:
    """The posterior of the generator's noise, log π(z) = −½|z|² + λ log r(f(z)) (up to a constant).
    `dim` = generator.latent_dim. z is evaluated in the generator's dtype/device and results are returned
    in z's dtype/device. A model of `fastsamp.protocol` without a schedule: score/log_prob take (and
    ignore) a time t; `energy(z, t=None)` = −log π(z) for `models.EnergyModel`."""

    has_energy = True

    def __init__(self, generator, reward, lam=1.0):
        if not hasattr(generator, "latent_dim"):
            raise ValueError("generator must have a latent_dim attribute")
        if not callable(reward):
            raise ValueError("reward must be callable on (N, 64) samples")
        self.generator, self.reward, self.lam = generator, reward, float(lam)
        self.dim = int(generator.latent_dim)

    def _cast(self, z):
        check_x(z, "z", self.dim)
        p = next(self.generator.parameters(), None)
        return z if p is None else z.to(dtype=p.dtype, device=p.device)

    def decode(self, z):
        return self.generator(self._cast(z))

    def log_reward(self, z):
        """log r(f(z)), (N,)."""
        return self.reward(self.decode(z)).to(dtype=z.dtype, device=z.device)

    def _log_prob(self, z):
        zc = self._cast(z)
        lp = -0.5 * (zc**2).sum(1)
        if self.lam != 0.0:
            lp = lp + self.lam * self.reward(self.generator(zc))
        return lp

    def log_prob(self, z, t=None):
        """log π(z), (N,)."""
        with torch.no_grad():
            return self._log_prob(z).to(dtype=z.dtype, device=z.device)

    def score_and_log_prob(self, z, t=None):
        """(∇ log π(z), log π(z)) by autograd (also under torch.no_grad or torch.inference_mode)."""
        lp, g = value_and_grad(self._log_prob, z)
        return g.to(dtype=z.dtype, device=z.device), lp.to(dtype=z.dtype, device=z.device)

    def score(self, z, t=None):
        """∇_z log π(z), (N, dim)."""
        return self.score_and_log_prob(z)[0]

    def energy(self, z, t=None):
        return -self._log_prob(z).to(dtype=z.dtype, device=z.device)
