"""Evaluation of an off-policy trained diffusion sampler against ground truth: log Z errors (ELBO and
importance-weighted), ESS, W2 to exact samples and the diagnostics of what W2 mixes together
(`fastsamp.experiments.offpolicy` imports `evaluate`)."""
from __future__ import annotations

import torch

from ..distributed import Comm


def equal_count_reference(target, n: int, generator=None) -> torch.Tensor:
    """n // K exact draws from each of the K components of an equal-weight mixture target (in
    component order): the 25GMM reference set of gfn-diffusion's twenty_five_gmm.py before its
    2025-02 fix ("previously all modes were covered with an equal number of samples"), so the set the
    paper's W2 was computed against (2000 // 25 = 80 per mode). Not an i.i.d. sample: its mode counts
    carry none of the multinomial noise that an exact sample's W2 pays for."""
    k = torch.arange(target.n_modes).repeat_interleave(n // target.n_modes)
    return target._draw(k, generator, torch.device("cpu"))


def _sample_diagnostics(x, exact, target, seed) -> dict:
    """What W2 mixes together, separately: W2 of a second exact sample against the same reference
    (what a perfect sampler scores, one draw), mode weights for mixtures (×K, 1 = exact; and W2 of the
    model and of that second exact sample against the paper's equal-count 25GMM reference), and the
    fraction of Manywell's double-well coordinates in the right well (a > 0; exact 0.844) for the model
    and the exact samples."""
    from .. import metrics
    second = target.sample(len(exact), torch.Generator().manual_seed(seed + 10**9))  # the second exact sample
    out = {"w2_exact": metrics.wasserstein2(second, exact)}
    if hasattr(target, "n_modes"):
        w = metrics.nearest_mode_weights(x, target.means) * target.n_modes
        out.update(mode_weights=w.tolist(), mode_weight_min=float(w.min()), mode_weight_max=float(w.max()),
                   modes_hit=int((w > 0).sum()))
    if target.name == "25gmm" and len(exact) >= target.n_modes:  # the equal-count set needs one draw per mode
        ref = equal_count_reference(target, len(exact), torch.Generator().manual_seed(seed + 2 * 10**9))
        out["w2_equal_counts"] = metrics.wasserstein2(x, ref)
        out["w2_exact_equal_counts"] = metrics.wasserstein2(second, ref)
    if target.name == "manywell":
        out["right_well_fraction"] = float((x[:, 0::2] > 0).double().mean())
        out["right_well_fraction_exact"] = float((exact[:, 0::2] > 0).double().mean())
    return out


def evaluate(sampler, target, *, n=2000, seed=12345):
    """log Z errors against the ground truth (where known), ELBO/EUBO, ESS, W2 to exact samples and
    the diagnostics of `_sample_diagnostics` (model samples and reference set as for W2)."""
    exact = None
    try:
        exact = target.sample(n, torch.Generator().manual_seed(seed))
    except NotImplementedError:
        pass
    x, log_w = sampler.sample(n, seed=seed, group=Comm(None))  # one rollout: the samples of W2 and diagnostics
    m = sampler.evaluate(n, seed=seed, exact_samples=exact, samples=(x, log_w))
    if exact is not None:
        m.update(_sample_diagnostics(x.cpu(), exact.cpu(), target, seed))
    if target.log_Z is not None:
        m["log_Z_true"] = target.log_Z
        m["delta_log_Z"] = abs(m["elbo"] - target.log_Z)        # Δlog Z of the paper (from the ELBO)
        m["delta_log_Z_rw"] = abs(m["log_Z"] - target.log_Z)    # Δlog Z^RW (importance-weighted)
    return m
