"""Sample quality on digits: held-out accuracy, diversity and Fréchet distance of classifier features."""
from __future__ import annotations

import numpy as np
import torch

from .data import N_CLASSES, check_labels, check_x, load_digits_data
from .networks import sample_prior


def frechet_distance(a, b) -> float:
    """Fréchet distance between Gaussian fits of two feature sets (rows = samples):
    |μ_a − μ_b|² + tr(C_a + C_b − 2 (C_a C_b)^½), the matrix root by scipy.linalg.sqrtm (real part).
    Biased upwards for few samples; compare values computed with equal sample sizes."""
    from scipy import linalg

    a = torch.as_tensor(a).detach().double().cpu().numpy()
    b = torch.as_tensor(b).detach().double().cpu().numpy()
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two (n >= 2, d) feature sets of equal d, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = linalg.sqrtm(ca @ cb)
    covmean = np.real(covmean)
    fd = float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * np.trace(covmean))
    return max(fd, 0.0)


def mean_pairwise_distance(x) -> float:
    """Mean Euclidean distance over distinct pairs of rows."""
    x = torch.as_tensor(x).detach().double().cpu()
    n = x.shape[0]
    if x.dim() != 2 or n < 2:
        raise ValueError(f"need (n >= 2, d) samples, got {tuple(x.shape)}")
    return float(torch.cdist(x, x).sum() / (n * (n - 1)))


def classifier_accuracy(classifier, x, y) -> float:
    check_x(x)
    with torch.no_grad():
        return float((classifier.predict(x) == check_labels(y, x.shape[0], x.device)).double().mean())


def sample_metrics(x, y, heldout_classifier, real_x_of_class) -> dict:
    """Quality of samples x (N, 64) meant to be of class y: `heldout_accuracy` (fraction the held-out
    classifier labels y), `diversity` (mean pairwise Euclidean distance of x), `frechet` (Fréchet distance
    between Gaussian fits of heldout_classifier.features of x and of real_x_of_class) and, for reference,
    `real_diversity` of the real digits. (The mean log-reward is computed by the caller.)"""
    check_x(x)
    check_x(real_x_of_class, "real_x_of_class")
    x = x.detach()
    p = next(heldout_classifier.parameters())
    xc, rc = x.to(dtype=p.dtype, device=p.device), real_x_of_class.detach().to(dtype=p.dtype, device=p.device)
    with torch.no_grad():
        fx, fr = heldout_classifier.features(xc), heldout_classifier.features(rc)
    return {"heldout_accuracy": classifier_accuracy(heldout_classifier, xc, y),
            "diversity": mean_pairwise_distance(x),
            "frechet": frechet_distance(fx, fr),
            "real_diversity": mean_pairwise_distance(real_x_of_class),
            "n": int(x.shape[0])}


def prior_metrics(generator, heldout_classifier, n=1000, seed=0, split="test") -> dict:
    """Unconditional samples of a generator against the held-out classifier: the class histogram
    (`class_fractions`, ≈ 0.1 each for a prior that covers the digits evenly), its entropy in nats
    (log 10 ≈ 2.303 at most), `diversity`, and the Fréchet distance of all features to the real `split`."""
    x = sample_prior(generator, n, seed)
    p = next(heldout_classifier.parameters())
    xc = x.to(dtype=p.dtype, device=p.device)
    real = load_digits_data(split)[0].to(dtype=p.dtype, device=p.device)
    with torch.no_grad():
        frac = torch.bincount(heldout_classifier.predict(xc), minlength=N_CLASSES).double() / n
        fd = frechet_distance(heldout_classifier.features(xc), heldout_classifier.features(real))
    nz = frac[frac > 0]
    return {"class_fractions": frac.tolist(), "class_entropy": float(-(nz * nz.log()).sum()),
            "diversity": mean_pairwise_distance(x), "frechet": fd, "n": n}
