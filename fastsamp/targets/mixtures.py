"""The Gaussian-mixture targets: 25GMM (a 5×5 grid of modes) and 40GMM (40 modes drawn in [−40, 40]^50)."""
from __future__ import annotations

import math

import torch

from .. import ops
from .base import _LOG_2PI, Target


class _IsotropicMixture(Target):
    """Equal-weight mixture (1/K) Σ_k N(x; μ_k, s² I) (normalised, log Z = 0).

    log p(x) = logsumexp_k(−|x − μ_k|² / (2s²)) − log K − (D/2) log(2π s²);
    ∇ log p(x) = (Σ_k r_k(x) μ_k − x) / s², with responsibilities r(x) = softmax_k(−|x − μ_k|² / (2s²)).
    """

    log_Z = 0.0

    def __init__(self, means, variance: float, device=None, dtype=None):
        super().__init__(device, dtype)
        means = torch.as_tensor(means, dtype=torch.float64)
        self.n_modes, self.dim = means.shape
        self.variance = float(variance)
        self._register("means", means)

    @property
    def means(self) -> torch.Tensor:
        return self._params["means"]

    def _logits(self, x):
        mu = self._p("means", x)
        return -((x[:, None, :] - mu[None]) ** 2).sum(-1) / (2.0 * self.variance)  # (B, K)

    def _log_prob(self, x):
        const = math.log(self.n_modes) + 0.5 * self.dim * (_LOG_2PI + math.log(self.variance))
        return torch.logsumexp(self._logits(x), dim=1) - const

    def kernel_log_prob(self, x):
        """log R(x) by ops.gmm_score (equal weights: log π_k = −log K), unless a subclass has its own ``log_prob``,
        ``_log_prob`` or ``_logits`` (then ``log_prob``, its own density)."""
        if any(getattr(type(self), name) is not getattr(_IsotropicMixture, name)
               for name in ("log_prob", "_log_prob", "_logits")):
            return super().kernel_log_prob(x)
        x = self._check(x)
        variances = x.new_full((self.n_modes,), self.variance)
        return ops.gmm_score(x, self._p("means", x), x.new_zeros(self.n_modes), variances)[1]

    def _score(self, x):
        r = torch.softmax(self._logits(x), dim=1)
        return (r @ self._p("means", x) - x) / self.variance

    def score_kernel(self, dtype):
        means = self._params["means"].to(dtype).cpu().contiguous()
        return self._kernel_if_own(_IsotropicMixture, (1, means, self.variance))

    def _sample(self, n, generator, device):
        k = torch.randint(self.n_modes, (n,), generator=generator, device=device)
        return self._draw(k, generator, device)

    def _draw(self, k, generator, device):
        """One draw of each component k (n,): μ_k + √variance · ξ, ξ ~ N(0, I) drawn in float64."""
        eps = torch.randn(len(k), self.dim, generator=generator, device=device, dtype=torch.float64)
        return self.means.to(device)[k] + math.sqrt(self.variance) * eps


class GMM25(_IsotropicMixture):
    """25 equally weighted 2-D Gaussians N(μ, 0.3 I), μ ∈ {−10, −5, 0, 5, 10}² (twenty_five_gmm.py).

    Mode order: μ = (a, b) with a the outer loop. Normalised: log Z = 0.
    """

    name = "25gmm"

    def __init__(self, device=None, dtype=None):
        grid = [-10.0, -5.0, 0.0, 5.0, 10.0]
        super().__init__([(a, b) for a in grid for b in grid], 0.3, device, dtype)


class GMM40(_IsotropicMixture):
    """40 equally weighted Gaussians N(μ_k, I) in ``dim`` dimensions (default 50, forty_gmm.py).

    forty_gmm.py came to gfn-diffusion after Sendera et al. 2024 (commit 9697e5d; the paper and its code
    release have no 40GMM). That commit is not in the mirrored branches, so its branch is not known here;
    its train.py has the time discretizers of the ``stagger`` branch (the code of Berner et al. 2025),
    benchmarks/results/offpolicy_full/checks/gmm40.md §1. It loads the means for D ∈ {2, 50, 200}
    from ``data/GMM40-{D}d.pt`` (not available here); its fallback recipe is μ = (U − 0.5)·2·40 with
    U ~ Uniform[0, 1)^{40×D}, i.e. uniform on [−40, 40]^D. We always use that recipe, drawn in float32
    by ``torch.rand((40, dim))`` from a ``torch.Generator`` seeded with ``seed`` (default 0: in 2-D these
    are the means of the FAB GMM this benchmark comes from), so the means are deterministic but are not
    known to be those of the .pt files. Unit scale, as in forty_gmm.py (FAB itself used softplus(1) ≈ 1.31).
    Normalised: log Z = 0.
    """

    name = "40gmm"

    def __init__(self, dim: int = 50, seed: int = 0, n_modes: int = 40, loc_scaling: float = 40.0,
                 device=None, dtype=None):
        if int(dim) < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        g = torch.Generator().manual_seed(int(seed))
        means = (torch.rand((int(n_modes), int(dim)), generator=g) - 0.5) * 2 * loc_scaling
        super().__init__(means.double(), 1.0, device, dtype)
        self.seed = int(seed)
