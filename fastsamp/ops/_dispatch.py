"""The function a public op calls: with backend="auto" its registered op `torch.ops.fastsamp.<op>`
(`route`), with an explicit backend that backend's function (`kernel`: the registry's choice,
`fastsamp.backends.resolve`, made independent of what is built where autograd or a kernel's size
limit is concerned).

* Registered ops (`_library`): under torch.compile tracing, or when an input requires grad, the op is
  called through the dispatcher, so torch.compile sees one opaque op with a fake implementation and
  autograd runs the op's registered backward (compiled forward, `_autograd.py`). In eager with nothing
  watching the dispatcher, the kernel the op would run is called directly (see `route`).
* Autograd of the ops without a backward formula: when grad mode is on and an input requires grad,
  `backend="auto"` runs the differentiable PyTorch reference (so "auto" never changes autograd
  semantics with the build) and an explicit compiled backend raises (so does the registered op).
  Forward mode likewise: when an input carries a tangent (torch.func.jvp / jacfwd / hessian, forward_ad),
  "auto" runs the registered op (its jvp formula, `_autograd.JVPS`) or the reference, a compiled backend raises.
  (The ops with fused backward kernels — `em_step_logprob`, `policy_rollout(reparam=True)`, `policy_log_pf`,
  `mlp_net`, `mlp_net_lsq`, `mlp_net_energy_lsq` — run autograd.Functions of their own that `route` their forward
  and backward ops; `policy_rollout` and `policy_log_pf` also call `backends.resolve` themselves, to take autograd
  through the reference when it is the backend, and the Langevin log p_F, not a registered op, resolves its C++
  function.)
* Size limits: a compiled module that keeps whole rows in registers declares its largest D
  (`GMM_SCORE_MAX_D`, `GMM_MALA_MAX_D`, `MLP_MAX_D`), and the network ops' Triton module its largest hidden
  width too (`MLP_MAX_HIDDEN`: 256, the widest tested; `_library.max_hidden`); above them "auto" runs
  the reference and an explicit backend raises ValueError (`kernel` checks D, the Triton functions the width).
"""
from __future__ import annotations

import torch
import torch.autograd.forward_ad as _fwad

from .. import backends
from . import _checks, _library, reference
from ._library import _functorch_level, is_reference, max_d  # noqa: F401  (part of this module's interface)


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


def nothing_to_differentiate(x: torch.Tensor, tensors) -> bool:
    """Neither x nor one of the other tensors (None allowed) requires grad (or grad mode is off), and no torch.func
    transform is active. The ops with an autograd.Function of their own (the fused backward kernels: mlp.py,
    trajectory.py) then call their forward op alone, the same outputs without `Function.apply`, which costs about
    17 µs per call in eager (benchmarks/RESULTS.md, eighth session); under torch.compile too (its guards on grad mode
    and on the inputs' requires_grad keep the choice valid), where tracing the Function's apply with nothing to
    differentiate handed mlp_net's forward a ctx in place of its first argument (torch 2.13: graph breaks, and an error
    with fullgraph=True). Callers refuse forward mode first (`refuse_forward_mode`)."""
    return _functorch_level() is None and not _needs_grad(x, tensors)


def _has_tangent(x: torch.Tensor, tensors) -> bool:
    """x or one of the other tensors (None allowed) carries a forward-mode tangent at the current dual level
    (torch.func.jvp / jacfwd / hessian, torch.autograd.forward_ad); callers test `_fwad._current_level >= 0` (a dual
    level is open) first, which costs less than this call."""
    return any(t is not None and _fwad.unpack_dual(t).tangent is not None for t in (x, *tensors))


def refuse_forward_mode(op, x: torch.Tensor, *tensors, hint=""):
    """Raise a RuntimeError naming `op` when forward-mode AD is on and x or one of the other tensors (None allowed)
    carries a tangent. For the fused ops' autograd.Functions (mlp.py, trajectory.py), which have a backward kernel and
    no jvp: torch's own error there does not name the op (and under torch.func.jvp speaks of setup_context)."""
    if _fwad._current_level >= 0 and _has_tangent(x, tensors):
        raise RuntimeError(f"{op} has no forward-mode derivative (jvp): its autograd runs a fused backward kernel, "
                           f"and an input carries a tangent (torch.func.jvp / jacfwd / hessian, or forward_ad){hint}")


def refuse_jit_trace(op: str, how: str):
    """Raise a ValueError naming `op` under torch.jit.trace, for a call of a compiled kernel that bypasses the
    dispatcher (an explicit backend, a kernel that is not a registered op): the tracer records dispatcher calls only,
    so the trace would hold the kernel's output unwritten."""
    if _library._jit_tracing_state() is not None:
        raise ValueError(f"{op} {how} calls its kernel directly, which torch.jit.trace cannot record (the trace would "
                         f"return its output unwritten): use backend='auto' (the registered ops) or 'torch' while "
                         f"tracing")


def kernel(backend: str, op: str, x: torch.Tensor, *tensors):
    """The function of explicit backend `backend` for backend op `op`, state x (B, D) and the other tensor
    inputs ("auto" goes through `route`: the registered op, whose CPU/CUDA kernels fall back to the
    reference above a compiled kernel's D limit, `_library.device_kernel`)."""
    if backend != "torch" and _needs_grad(x, tensors):
        raise ValueError(f"{op} on backend {backend!r} is not differentiable and an input requires grad: use "
                         f"backend='torch' or 'auto' (the differentiable reference), or detach the inputs / "
                         f"run under torch.no_grad()")
    if backend != "torch" and _fwad._current_level >= 0 and _has_tangent(x, tensors):
        raise ValueError(f"{op} on backend {backend!r} has no forward-mode derivative and an input carries a "
                         f"tangent (torch.func.jvp / jacfwd / hessian, forward_ad): use backend='torch' or 'auto'")
    if backend != "torch":
        refuse_jit_trace(op, f"on backend {backend!r}")
        if any(t is not None and _checks.is_wrapped(t) for t in (x, *tensors)):
            raise ValueError(f"{op} on backend {backend!r} cannot run under torch.func.vmap: its kernel reads tensor "
                             f"memory, which a batched tensor does not have; use backend='auto' (its batching rule "
                             f"runs the kernel once on all the slices) or 'torch'")
    fn = backends.resolve(backend, op, x.device)
    limit = max_d(fn, op)
    if limit is not None and x.shape[1] > limit:
        raise ValueError(f"backend {backend!r} {op} supports D <= {limit}, got D = {x.shape[1]} "
                         f"(backend='auto' or 'torch' take any D)")
    return fn


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _plain(x: torch.Tensor, tensors) -> bool:
    """x and the other tensors (None allowed) are plain tensors or parameters (no subclass that overrides
    torch functions or dispatch, e.g. FakeTensor)."""
    if type(x) not in _PLAIN:
        return False
    for t in tensors:
        if t is not None and type(t) not in _PLAIN:
            return False
    return True


def route(backend: str, op: str, x: torch.Tensor, *tensors):
    """The function the public op calls for backend op `op` (the backend signature).

    backend="auto" (where `op` is registered): the registered op while torch.compile / export trace, when an
    input requires grad (its backward; the reference for an op without one), or when something watches the
    dispatcher (profiler, a dispatch or torch-function mode, a functorch transform, tensor subclasses);
    otherwise, in plain eager, the backend function the registered op's kernel would run, called directly
    (the same computation without the dispatcher's per-call cost). Other backends: `kernel(backend, ...)`."""
    if backend != "auto":
        return kernel(backend, op, x, *tensors)
    entry = _library.ENTRIES[op]
    if _needs_grad(x, tensors) or (_fwad._current_level >= 0 and _has_tangent(x, tensors)):
        return entry.graph if entry.differentiable else getattr(reference, op)
    if torch.compiler.is_compiling():
        return entry.graph
    if _library.observed() or not _plain(x, tensors):
        return entry.eager
    return _library.device_kernel(op, "cpu" if x.is_cpu else x.device.type)  # is_cpu: ~0.2 µs less than .device


def route_factory(backend: str, op: str, device: torch.device):
    """`route` for the factory ops (normal, uniform: no tensor input, outputs on `device`). Under torch.jit.trace
    "auto" takes the reference (aten ops; the uniforms' bits, the normals' to the rounding of Box–Muller's
    log / cos / sin): the tracer cannot record the registered op's Device argument."""
    if backend != "auto":
        if backend != "torch":
            refuse_jit_trace(op, f"on backend {backend!r}")
        return backends.resolve(backend, op, device)
    entry = _library.ENTRIES[op]
    if torch.compiler.is_compiling():
        return entry.graph
    if _library._jit_tracing_state() is not None:
        return getattr(reference, op)
    return entry.eager if _library.observed() else _library.device_kernel(op, device.type)
