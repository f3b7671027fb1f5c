"""The log Gaussian Cox process target: a GP prior on a 40×40 grid with a Poisson likelihood of a point pattern
(the Finnish pines by default)."""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from ..datasets import finpines_path, finpines_points
from .base import _LOG_2PI, Target


class LGCP(Target):
    """Log Gaussian Cox process on a ``grid``×``grid`` lattice of [0, 1]² (lgcp.py; 40×40 → D = 1600).

    Latent field x ∈ R^D (cell (r, c) at index r·grid + c, r from the first point coordinate):
        prior       x ~ N(μ_0 1, K),  K_ij = σ² exp(−|u_i − u_j| / (grid·β)),  u_i ∈ {0..grid−1}² cell indices,
                    σ² = 1.91, β = 1/33, μ_0 = log 126 − σ²/2;
        likelihood  n_i | x ~ Poisson(a e^{x_i}), a = 1/D (cell area), n_i the points in cell i;
        log R(x) = −½|L⁻¹(x − μ_0)|² − (D/2) log 2π − Σ log L_ii + Σ_i (n_i x_i − a e^{x_i}),   K = L Lᵀ,
        ∇ log R(x) = −K⁻¹(x − μ_0) + n − a e^{x},   −∇² log R(x) = K⁻¹ + diag(a e^{x})  (`hessian`; log-concave).
    (The unwhitened posterior, as used there; the Poisson term omits −log n_i!.) The score of a (B, D)
    batch is one GEMM with the precision K⁻¹ (formed once from L; cond K ≈ 28 on 40×40, so float32 rounds as the
    two triangular solves did), the samplers' per-step cost on this target.

    ``points``: ``"finpines"``, the Finnish pines of the benchmark (126 points, spatstat's window
    [−5, 5] × [−8, 2] mapped onto [0, 1]² as in the benchmark's code; read by
    :func:`fastsamp.datasets.finpines_points` from Debian's r-cran-spatstat.data, not shipped here);
    ``"synthetic"``, a point pattern drawn from this same model with ``torch.Generator().manual_seed(seed)``
    — a latent field x* ~ prior (kept as ``true_latent``), counts n_i ~ Poisson(a e^{x*_i}), and points
    uniform within their cells — whose posterior differs from the pines posterior; ``"auto"`` (default),
    the pines where the data is installed, else the synthetic pattern with a UserWarning; or an (N, 2)
    array of points in [0, 1]². ``points_source`` says which ("finpines", "synthetic" or "user"; also in
    the repr). log Z is unknown (None) and no exact sampler exists. Reference on the pines (40×40): log Z ≈
    501.71 ± 0.05 (AIS from the Laplace Gaussian, 512 chains, K = 800; Laplace: 511.2), `offpolicy_checks.py lgcp`.
    """

    name = "lgcp"
    log_Z = None
    signal_variance = 1.91
    beta = 1.0 / 33.0

    def __init__(self, points="auto", grid: int = 40, seed: int = 0, device=None, dtype=None):
        super().__init__(device, dtype)
        self.grid = int(grid)
        if self.grid < 1:
            raise ValueError(f"grid must be >= 1, got {grid}")
        self.dim = self.grid**2
        self.bin_area = 1.0 / self.dim
        self.mu0 = math.log(126.0) - 0.5 * self.signal_variance
        r, c = torch.meshgrid(torch.arange(self.grid), torch.arange(self.grid), indexing="ij")
        cells = torch.stack([r.reshape(-1), c.reshape(-1)], 1).double()
        gram = self.signal_variance * torch.exp(-torch.cdist(cells, cells) / (self.grid * self.beta))
        chol = torch.linalg.cholesky(gram)
        self.half_log_det = float(torch.log(torch.diagonal(chol)).sum())
        self.true_latent = None
        if isinstance(points, str):
            if points not in ("auto", "finpines", "synthetic"):
                raise ValueError("points must be 'auto', 'finpines', 'synthetic' or an (N, 2) array in [0, 1]^2, "
                                 f"got {points!r}")
            if points == "auto":
                points = self.default_points()
                if points == "synthetic":
                    warnings.warn("LGCP(points='auto'): the Finnish pines data is not installed (see "
                                  "fastsamp.datasets.finpines_points), so this LGCP uses the synthetic point pattern, "
                                  "whose posterior differs from the benchmark's; pass points='synthetic' to choose it",
                                  UserWarning, stacklevel=2)
            self.points_source = points
            points = finpines_points() if points == "finpines" else self._synthetic_points(chol, int(seed))
        else:
            self.points_source = "user"
        self.points = torch.as_tensor(np.asarray(points, dtype=np.float64))
        self._register("gram", gram)
        self._register("chol", chol)
        self._register("precision", torch.cholesky_inverse(chol))
        self._register("counts", self.bin_counts(self.points, self.grid).reshape(-1))

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, points={self.points_source!r})"

    @staticmethod
    def default_points() -> str:
        """The pattern ``points="auto"`` takes: "finpines" where the data is installed, else "synthetic"."""
        return "finpines" if finpines_path() is not None else "synthetic"

    @property
    def counts(self) -> torch.Tensor:
        """(grid·grid,) point counts per cell (row-major)."""
        return self._params["counts"]

    @property
    def gram(self) -> torch.Tensor:
        """(D, D) float64 prior covariance K."""
        return self._params["gram"]

    @property
    def precision(self) -> torch.Tensor:
        """(D, D) float64 prior precision K⁻¹."""
        return self._params["precision"]

    def hessian(self, x: torch.Tensor) -> torch.Tensor:
        """(D, D) −∇² log R(x) = K⁻¹ + diag(a e^x) of one (D,) state, in x's dtype (positive definite)."""
        if self._check(x).ndim != 1:
            raise ValueError(f"x must have shape ({self.dim},) (one state) for LGCP.hessian, got {tuple(x.shape)}")
        return self._p("precision", x) + torch.diag(self.bin_area * torch.exp(x))

    @staticmethod
    def bin_counts(points, grid: int) -> torch.Tensor:
        """(grid, grid) counts: a point (p, q) falls in cell (⌊p·grid⌋, ⌊q·grid⌋), the edge 1 in the last cell."""
        points = torch.as_tensor(points, dtype=torch.float64)
        if points.ndim != 2 or points.shape[1] != 2:
            raise ValueError(f"points must have shape (N, 2), got {tuple(points.shape)}")
        if points.numel() and (points.min() < 0 or points.max() > 1):
            raise ValueError("points must lie in [0, 1]^2")
        idx = torch.clamp(torch.floor(points * grid).long(), max=grid - 1)
        flat = idx[:, 0] * grid + idx[:, 1]
        return torch.bincount(flat, minlength=grid * grid).double().reshape(grid, grid)

    def _synthetic_points(self, chol, seed):
        g = torch.Generator().manual_seed(seed)
        latent = self.mu0 + chol @ torch.randn(self.dim, generator=g, dtype=torch.float64)
        self.true_latent = latent
        counts = torch.poisson(self.bin_area * torch.exp(latent), generator=g).long()
        cell = torch.repeat_interleave(torch.arange(self.dim), counts)
        rc = torch.stack([cell // self.grid, cell % self.grid], 1).double()
        return (rc + torch.rand(rc.shape, generator=g, dtype=torch.float64)) / self.grid

    def _log_prob(self, x):
        chol, n = self._p("chol", x), self._p("counts", x)
        white = torch.linalg.solve_triangular(chol, (x - self.mu0).T, upper=False)  # (D, B)
        prior = -0.5 * (white**2).sum(0) - 0.5 * self.dim * _LOG_2PI - self.half_log_det
        return prior + (x * n - self.bin_area * torch.exp(x)).sum(1)

    def _score(self, x):
        precision, n = self._p("precision", x), self._p("counts", x)
        # n − a e^x − (x − μ_0) K⁻¹ (K⁻¹ symmetric), accumulated in place into the first term, which rounds as
        # n − a·e^x does: three (B, D) temporaries instead of five (differentiable: no saved tensor is overwritten)
        return (torch.exp(x) * -self.bin_area).add_(n).addmm_(x - self.mu0, precision, alpha=-1)

    def _sample(self, n, generator, device):
        raise NotImplementedError("LGCP has no exact sampler (its posterior is only known up to a constant); "
                                  "use MCMC reference samples instead")
