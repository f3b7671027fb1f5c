"""The function a public op calls: with backend="auto" its registered op `torch.ops.fastsamp.<op>`
(`route`), with an explicit backend that backend's function (`kernel`: the registry's choice,
`fastsamp.backends.resolve`, made independent of what is built where autograd or a kernel's size
limit is concerned).

* Registered ops (`_library`): eager calls with no input requiring grad go below the autograd key
  (no Python autograd kernel on the hot path); under torch.compile tracing, or when an input requires
  grad, the op is called through the dispatcher, so torch.compile sees one opaque op with a fake
  implementation, and autograd runs the op's registered backward. An op without a backward runs the
  differentiable reference instead when an input requires grad (as before registration).

* Autograd: the compiled kernels of these ops have no backward. When grad mode is on and an
  input requires grad, `backend="auto"` runs the differentiable PyTorch reference (so "auto"
  never changes autograd semantics with the build) and an explicit compiled backend raises.
  (`em_step_logprob` and `policy_log_pf` have fused backward kernels: they resolve their
  backend functions themselves.)
* Size limits: a compiled module that keeps whole rows in registers declares its largest D
  (`GMM_SCORE_MAX_D`, `GMM_MALA_MAX_D`); above it "auto" runs the reference and an explicit
  backend raises ValueError.
"""
from __future__ import annotations

import inspect

import torch

from .. import backends
from . import _library, reference

# backend op -> the module attribute holding its largest supported D
_MAX_D_ATTR = {"gmm_score": "GMM_SCORE_MAX_D", "gmm_mala": "GMM_MALA_MAX_D", "gmm_hmc": "GMM_MALA_MAX_D"}


def max_d(fn, op: str):
    """The largest D that backend function `fn` of `op` supports, or None (no limit)."""
    attr = _MAX_D_ATTR.get(op)
    return None if attr is None else vars(inspect.getmodule(fn)).get(attr)  # no AttributeError raised per call


def is_reference(fn) -> bool:
    """Whether backend function `fn` is the PyTorch reference (autograd-aware)."""
    return inspect.getmodule(fn) is reference


def _needs_grad(x: torch.Tensor, tensors) -> bool:
    """Grad mode on and x or one of the other tensors (None allowed) requires grad (a plain loop: the
    generator of any() costs about a microsecond per call)."""
    if not torch.is_grad_enabled():
        return False
    if x.requires_grad:
        return True
    for t in tensors:
        if t is not None and t.requires_grad:
            return True
    return False


def kernel(backend: str, op: str, x: torch.Tensor, *tensors):
    """The function implementing backend op `op` for state x (B, D) and the other tensor inputs."""
    if backend != "torch" and _needs_grad(x, tensors):
        if backend == "auto":
            return getattr(reference, op)
        raise ValueError(f"{op} on backend {backend!r} is not differentiable and an input requires grad: use "
                         f"backend='torch' or 'auto' (the differentiable reference), or detach the inputs / "
                         f"run under torch.no_grad()")
    fn = backends.resolve(backend, op, x.device)
    limit = max_d(fn, op)
    if limit is not None and x.shape[1] > limit:
        if backend == "auto":
            return getattr(reference, op)
        raise ValueError(f"backend {backend!r} {op} supports D <= {limit}, got D = {x.shape[1]} "
                         f"(backend='auto' or 'torch' take any D)")
    return fn


def route(backend: str, op: str, x: torch.Tensor, *tensors):
    """The function the public op calls for backend op `op` (the backend signature): the registered op for
    backend="auto" (where `op` is registered), else `kernel(backend, op, x, *tensors)`."""
    entry = _library.ENTRIES.get(op) if backend == "auto" else None
    if entry is None:
        return kernel(backend, op, x, *tensors)
    if _needs_grad(x, tensors):
        return entry.graph if entry.differentiable else getattr(reference, op)
    return entry.graph if torch.compiler.is_compiling() else entry.eager
