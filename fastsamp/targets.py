"""Benchmark targets for diffusion samplers of unnormalised densities.

Each target is a density R(x) = exp(−E(x)) on R^D, known up to a constant; the definitions follow
the energies of the public GFNOrg/gfn-diffusion code (``energy_sampling/energies/*.py``):

=========  ====  ===========================================================  =================
name       D     density                                                      log Z
=========  ====  ===========================================================  =================
25gmm      2     (1/25) Σ_k N(x; μ_k, 0.3 I), μ_k ∈ {−10,−5,0,5,10}²             0
funnel     10    N(x_0; 0, 3²) Π_{i≥1} N(x_i; 0, e^{x_0})                     0
manywell   32    Π_{j<16} exp(−a_j⁴ + 6a_j² + a_j/2 − b_j²/2),  (a_j, b_j) =   16·log(Z_1 √(2π))
                 (x_{2j}, x_{2j+1})
40gmm      50    (1/40) Σ_k N(x; μ_k, I), μ_k ~ U[−40, 40]^D (fixed seed)       0
lgcp       1600  GP prior × Poisson likelihood on a 40×40 grid (Finnish pines)  None (unknown)
=========  ====  ===========================================================  =================

Common interface (:class:`Target`): ``dim``, ``name``, ``log_prob(x)`` (log R, shape (B,)), ``energy``,
``score`` (∇ log R, shape (B, D)), ``log_Z``, ``sample(n, generator)`` and ``to(device, dtype)``.
A target is a model of `fastsamp.protocol` without a schedule: ``score(x, t)`` and ``log_prob(x, t)``
take (and ignore) a time, so ``mcmc(target, x, mh="energy")`` samples it.
Parameters are kept in float64; every evaluation runs in the dtype and on the device of its input.

    target = get_target("manywell")
    x = target.sample(1000, torch.Generator().manual_seed(0))
    target.log_prob(x), target.score(x), target.log_Z
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from .datasets import finpines_path, finpines_points

__all__ = ["Target", "GMM25", "Funnel", "ManyWell", "GMM40", "LGCP", "TARGETS", "get_target"]

_LOG_2PI = math.log(2.0 * math.pi)


class Target:
    """Base class: an unnormalised density log R(x) = −E(x) on R^dim.

    Subclasses set ``name``, ``dim`` and ``log_Z`` (``None`` where unknown), register their float64
    parameters with :meth:`_register`, and implement ``_log_prob`` on a (B, dim) batch; ``_score``
    defaults to autograd of ``_log_prob`` and ``_sample`` to NotImplementedError.
    """

    name: str = "target"
    dim: int = 0
    log_Z: float | None = None

    def __init__(self, device=None, dtype=None):
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.dtype = torch.get_default_dtype() if dtype is None else dtype
        self._params: dict[str, torch.Tensor] = {}
        self._cache: dict[tuple, torch.Tensor] = {}

    # -- parameters ------------------------------------------------------------------------------
    def _register(self, name: str, value) -> None:
        self._params[name] = torch.as_tensor(value, dtype=torch.float64).to(self.device)
        self._cache.clear()

    def _p(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """Parameter ``name`` in the dtype and on the device of ``like`` (cached)."""
        key = (name, like.dtype, like.device)
        t = self._cache.get(key)
        if t is None:
            t = self._params[name].to(device=like.device, dtype=like.dtype)
            self._cache[key] = t
        return t

    def to(self, device=None, dtype=None) -> Target:
        """Move the stored parameters to ``device`` and make ``dtype`` the dtype of ``sample``.

        ``to(torch.float32)`` is read as a dtype. Parameters stay float64 (cast per call); returns self.
        """
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        if device is not None:
            self.device = torch.device(device)
            self._params = {k: v.to(self.device) for k, v in self._params.items()}
            self._cache.clear()
        if dtype is not None:
            if not dtype.is_floating_point:
                raise ValueError(f"dtype must be a floating dtype, got {dtype}")
            self.dtype = dtype
        return self

    # -- public interface ------------------------------------------------------------------------
    def _check(self, x) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"x must be a torch.Tensor of shape (B, {self.dim}), got {type(x).__name__}")
        if x.ndim < 1 or x.shape[-1] != self.dim:
            raise ValueError(f"x must have shape (..., {self.dim}) for target {self.name!r}, "
                             f"got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
        return x

    def log_prob(self, x: torch.Tensor, t=None) -> torch.Tensor:
        """log R(x), shape x.shape[:-1] ((B,) for a (B, D) batch); a time t is ignored (a fixed density)."""
        x = self._check(x)
        lead = x.shape[:-1]
        return self._log_prob(x.reshape(-1, self.dim)).reshape(lead)

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """E(x) = −log R(x)."""
        return -self.log_prob(x)

    def score(self, x: torch.Tensor, t=None) -> torch.Tensor:
        """∇_x log R(x), same shape as x; a time t is ignored."""
        x = self._check(x)
        return self._score(x.reshape(-1, self.dim)).reshape(x.shape)

    def score_kernel(self, dtype: torch.dtype):
        """The C++ policy kernels' description of ``score`` (csrc/cpu/target_score.h), for the Langevin
        parametrisation of the fused diffusion sampler: (kind, means (K, D) in ``dtype`` or None,
        parameter), or None where there is none (also for subclasses that override ``_score``)."""
        return None

    def _kernel_if_own(self, cls, spec):
        """spec when ``_score`` is that of ``cls`` (a subclass with its own score has no kernel), else None."""
        return spec if type(self)._score is cls._score else None

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` exact samples, shape (n, dim), in ``self.dtype`` on ``self.device``.

        Random numbers are drawn (float64) on the generator's device, or on ``self.device``."""
        n = int(n)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        device = generator.device if generator is not None else self.device
        out = self._sample(n, generator, device)
        return out.to(device=self.device, dtype=self.dtype)

    # -- defaults for subclasses -----------------------------------------------------------------
    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        """Autograd fallback: ∇ of Σ_b log R(x_b)."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self._log_prob(xg).sum(), xg)
        return g

    def _sample(self, n: int, generator, device) -> torch.Tensor:
        raise NotImplementedError(f"target {self.name!r} has no exact sampler")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, log_Z={self.log_Z})"


# ------------------------------------------------------------------------------------------------
# Gaussian mixtures
# ------------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------------
# Neal's funnel
# ------------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------------
# Many-well
# ------------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------------
# Log Gaussian Cox process
# ------------------------------------------------------------------------------------------------
class LGCP(Target):
    """Log Gaussian Cox process on a ``grid``×``grid`` lattice of [0, 1]² (lgcp.py; 40×40 → D = 1600).

    Latent field x ∈ R^D (cell (r, c) at index r·grid + c, r from the first point coordinate):
        prior       x ~ N(μ_0 1, K),  K_ij = σ² exp(−|u_i − u_j| / (grid·β)),  u_i ∈ {0..grid−1}² cell indices,
                    σ² = 1.91, β = 1/33, μ_0 = log 126 − σ²/2;
        likelihood  n_i | x ~ Poisson(a e^{x_i}), a = 1/D (cell area), n_i the points in cell i;
        log R(x) = −½|L⁻¹(x − μ_0)|² − (D/2) log 2π − Σ log L_ii + Σ_i (n_i x_i − a e^{x_i}),   K = L Lᵀ,
        ∇ log R(x) = −K⁻¹(x − μ_0) + n − a e^{x}.
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
    the repr). log Z is unknown (None) and no exact sampler exists.
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
        return self._params["gram"]

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


# ------------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------------
_REGISTRY = {"25gmm": GMM25, "funnel": Funnel, "manywell": ManyWell, "40gmm": GMM40, "lgcp": LGCP}
TARGETS = tuple(_REGISTRY)


def get_target(name: str, **kw) -> Target:
    """Build the target registered under ``name`` (one of :data:`TARGETS`); ``kw`` go to its constructor."""
    cls = _REGISTRY.get(str(name).lower()) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown target {name!r}; valid names: {', '.join(TARGETS)}")
    return cls(**kw)
