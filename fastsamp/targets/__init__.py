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

from .base import Target
from .funnel import Funnel
from .lgcp import LGCP
from .manywell import ManyWell
from .mixtures import GMM25, GMM40

__all__ = ["Target", "GMM25", "Funnel", "ManyWell", "GMM40", "LGCP", "TARGETS", "get_target"]


_REGISTRY = {"25gmm": GMM25, "funnel": Funnel, "manywell": ManyWell, "40gmm": GMM40, "lgcp": LGCP}
TARGETS = tuple(_REGISTRY)


def get_target(name: str, **kw) -> Target:
    """Build the target registered under ``name`` (one of :data:`TARGETS`); ``kw`` go to its constructor."""
    cls = _REGISTRY.get(str(name).lower()) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown target {name!r}; valid names: {', '.join(TARGETS)}")
    return cls(**kw)
