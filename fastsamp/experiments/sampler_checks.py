"""Pieces of the off-policy table's checks (benchmarks/offpolicy_checks.py, fastsamp.experiments.lgcp_reference)
on a saved DiffusionSampler: its evaluation draws, quantiles, and its loss and gradient by the fused kernels
against the eager per-step path on the same batch (`compare_grads`: one gradient against another)."""
from __future__ import annotations

import torch

from .offpolicy_released import N


def draws(sampler, seeds, n=N):
    """Samples and log w (float64) of one evaluation of `n` samples (the paper's 2000) per seed (fastsamp's
    rollout)."""
    return [(x, lw.double()) for x, lw in (sampler.sample(n, seed=s) for s in seeds)]


def quantiles(values):
    """min, 10 / 50 / 90 % (linear interpolation, torch.quantile's default) and max of `values`."""
    q = torch.quantile(torch.as_tensor(values, dtype=torch.float64), torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0],
                                                                                 dtype=torch.float64))
    return dict(zip(("min", "0.1", "0.5", "0.9", "max"), q.tolist()))


def max_rel(a, b):
    """max |a − b| / max |b| (max |a − b| where b is 0)."""
    scale = float(b.abs().max())
    return float((a - b).abs().max()) / scale if scale > 0 else float((a - b).abs().max())


def compare_grads(grads, ref):
    """A gradient against a reference one (lists of tensors, one per parameter), flattened and in float64:
    {"max_rel": max_rel(g, g_ref), "cosine": g·g_ref / (|g| |g_ref|), "per_tensor_max_rel": the largest max_rel of one
    parameter's tensors}."""
    a, b = (torch.cat([t.flatten() for t in ts]).double() for ts in (grads, ref))
    return {"max_rel": max_rel(a, b), "cosine": float(torch.nn.functional.cosine_similarity(a, b, 0)),
            "per_tensor_max_rel": max(max_rel(x.double(), y.double()) for x, y in zip(grads, ref))}


def fused_and_eager(sampler, objective, batch, seed):
    """The policy parameters, and {"fused", "eager"}: (states, loss, policy gradient) of `objective` on one batch by
    the fused kernels and by the eager per-step path with the PyTorch op (same weights and seed; PIS:
    reparameterised). The sampler's path settings are restored."""
    policy = [p for n, p in sampler.net.named_parameters() if n != "log_Z"]
    fused, backend = sampler.fused, sampler.backend
    out = {}
    try:
        for name, is_fused in (("fused", True), ("eager", False)):
            sampler.fused, sampler.backend = is_fused, "auto" if is_fused else "torch"
            sampler.zero_grad(set_to_none=True)
            traj = sampler.forward_trajectories(batch, reparam=objective == "pis", seed=seed)
            loss = sampler.loss(traj, objective)
            loss.backward()
            out[name] = (traj.states.detach(), float(loss.detach()), [p.grad.clone() for p in policy])
    finally:
        sampler.fused, sampler.backend = fused, backend
    return policy, out
