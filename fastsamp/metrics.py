"""Sample-quality metrics: against exact samples (2-Wasserstein by exact optimal transport,
sliced 2-Wasserstein, MMD, mode-occupancy total variation for mixtures) and, from importance
log-weights log w (E[w] = Z), log-partition-function estimates and the effective sample size."""
from __future__ import annotations

import math

import torch


def log_z_estimates(log_w) -> dict:
    """From log w of n independent draws: the ELBO mean(log w) (≤ log Z in expectation), the
    importance-weighted log-mean-exp (→ log Z), and the effective sample size fraction
    ESS/n = (Σw)² / (n Σw²). Non-finite weights count as w = 0."""
    log_w = torch.as_tensor(log_w).double().flatten()
    n = log_w.numel()
    finite = torch.isfinite(log_w)
    lw = torch.where(finite, log_w, torch.full_like(log_w, -math.inf))
    elbo = float(log_w[finite].mean()) if bool(finite.any()) else -math.inf
    log_z = float(torch.logsumexp(lw, 0) - math.log(n))
    ess = float(torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0))) / n
    return {"log_Z": log_z, "elbo": elbo, "ess": ess, "n": n, "n_finite": int(finite.sum())}


def wasserstein2(x, y) -> float:
    """Exact 2-Wasserstein distance between the empirical measures of x (n, D) and y (m, D):
    sqrt of the optimal-transport cost with squared Euclidean ground cost (POT's network simplex)."""
    import ot
    x, y = x.detach().double().cpu(), y.detach().double().cpu()
    cost = torch.cdist(x, y) ** 2
    a = torch.full((x.shape[0],), 1.0 / x.shape[0], dtype=torch.float64)
    b = torch.full((y.shape[0],), 1.0 / y.shape[0], dtype=torch.float64)
    return math.sqrt(max(float(ot.emd2(a.numpy(), b.numpy(), cost.numpy(), numItermax=10_000_000)), 0.0))


def sliced_w2(x, y, n_projections=256, seed=0) -> float:
    """Sliced 2-Wasserstein: sqrt of the mean over random unit directions θ of W2²(θ·x, θ·y)
    (1-D W2 by sorted quantiles; unequal sizes are matched on a common quantile grid)."""
    x, y = x.double().cpu(), y.double().cpu()
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(x.shape[1], n_projections, generator=g, dtype=torch.float64)
    theta /= theta.norm(dim=0, keepdim=True)
    px, py = torch.sort(x @ theta, 0)[0], torch.sort(y @ theta, 0)[0]
    if px.shape[0] != py.shape[0]:
        q = (torch.arange(min(px.shape[0], py.shape[0]), dtype=torch.float64) + 0.5) / min(px.shape[0], py.shape[0])
        px = torch.quantile(px, q, dim=0)
        py = torch.quantile(py, q, dim=0)
    return float(((px - py) ** 2).mean().sqrt())


def mmd(x, y, bandwidths=(0.1, 0.3, 1.0, 3.0), max_n=4000, seed=0) -> float:
    """Unbiased MMD² with a sum of Gaussian kernels exp(−|a−b|²/(2h²)) (subsampled to max_n)."""
    g = torch.Generator().manual_seed(seed)
    x = x.double().cpu()[torch.randperm(x.shape[0], generator=g)[:max_n]]
    y = y.double().cpu()[torch.randperm(y.shape[0], generator=g)[:max_n]]

    def k(a, b):
        d2 = torch.cdist(a, b) ** 2
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)

    n, m = x.shape[0], y.shape[0]
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return float((kxx.sum() - kxx.diag().sum()) / (n * (n - 1)) + (kyy.sum() - kyy.diag().sum()) / (m * (m - 1))
                 - 2 * kxy.mean())


def mode_assignment(x, mixture):
    """Index of the most responsible component of `mixture` (a GaussianMixture) for each sample."""
    lw = mixture.log_weights.double().cpu()
    var = mixture.variances.double().cpu()
    d2 = torch.cdist(x.double().cpu(), mixture.means.double().cpu()) ** 2
    return (torch.log_softmax(lw, 0) - 0.5 * d2 / var - 0.5 * x.shape[1] * torch.log(var)).argmax(1)


def nearest_mode_weights(x, means) -> torch.Tensor:
    """(K,) fraction of the samples x (n, D) whose nearest mean is each of means (K, D): the mode
    weights of an equal-weight, equal-variance isotropic mixture's samples (mode_assignment's rule there)."""
    nearest = torch.cdist(x.double().cpu(), means.double().cpu()).argmin(1)
    return torch.bincount(nearest, minlength=means.shape[0]).double() / x.shape[0]


def mode_occupancy_tv(x, y, mixture) -> float:
    """Total variation between the component occupancies of two sample sets."""
    K = mixture.means.shape[0]
    ox = torch.bincount(mode_assignment(x, mixture), minlength=K).double() / x.shape[0]
    oy = torch.bincount(mode_assignment(y, mixture), minlength=K).double() / y.shape[0]
    return float(0.5 * (ox - oy).abs().sum())
