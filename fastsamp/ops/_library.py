"""The public ops as PyTorch dispatcher ops: `torch.ops.fastsamp.<op>` for every op of
`_table.registered()`, with the backend signature of docs/backend-contract.md.

Per op, from the op table (`_table.py`):
* the schema (an output given by an input, em_step_logprob's x_next, is a copy); seeds, offsets and
  chain offsets are `SymInt` (int64: a u64 value v >= 2**63 travels as
  v − 2**64, `encode_u64`, and the kernels read it back modulo 2**64, so the noise stream is unchanged),
  or one-element int64 tensors, passed as the trailing `Tensor? <name>_t` (the SymInt is then 0) and read
  inside the kernel (a captured CUDA graph replays with the tensor's current value; compiled graphs take
  a new value without recompiling);
* a fake (meta) implementation allocating the outputs (shapes and dtypes from the table), so
  torch.compile / torch.export trace the op as one opaque node;
* the CPU kernel (the cpp backend when built, else the reference) and the CUDA kernel (cuda when built,
  else triton, else the reference; above a compiled kernel's D limit the reference), registered per
  dispatch key;
* autograd: the formulas of `_autograd.py` (`torch.library.register_autograd`) for the ops the table marks
  differentiable; the other ops raise when an input requires grad (never a silent detach).

Registered with `torch.library.Library` define / impl rather than `torch.library.custom_op`: at B = 64 on
one CPU thread the latter costs about 15–20 µs more per eager call (benchmarks/op_latency.py).
The public functions (`fastsamp.ops`) reach these ops through `_dispatch.route` with backend="auto".
"""
from __future__ import annotations

import functools
import inspect

import torch

from .. import backends
from . import _autograd, _table, reference

NAMESPACE = "fastsamp"
_INT64_MAX = 2**63 - 1
_BELOW_AUTOGRAD = torch._C._AutoDispatchBelowAutograd

_lib = torch.library.Library(NAMESPACE, "DEF")


# backend op -> the module attribute holding its largest supported D
_MAX_D_ATTR = {"gmm_score": "GMM_SCORE_MAX_D", "gmm_mala": "GMM_MALA_MAX_D", "gmm_hmc": "GMM_MALA_MAX_D"}


def max_d(fn, op: str):
    """The largest D that backend function `fn` of `op` supports, or None (no limit)."""
    attr = _MAX_D_ATTR.get(op)
    return None if attr is None else vars(inspect.getmodule(fn)).get(attr)  # no AttributeError raised per call


def is_reference(fn) -> bool:
    """Whether backend function `fn` is the PyTorch reference (autograd-aware)."""
    return inspect.getmodule(fn) is reference


def encode_u64(v):
    """A u64 (seed, offset) as the int64 of the schema: v − 2**64 when v >= 2**63 (two's complement)."""
    return v - 2**64 if v > _INT64_MAX else v


def _u64_positions(op: _table.Op) -> tuple:
    return tuple(i for i, a in enumerate(op.schema_args) if a.kind == "u64")


def _decoded(fn, op: _table.Op):
    """fn called with its u64 arguments back in [0, 2**64) (the reference validates them)."""
    at = _u64_positions(op)
    if not at:
        return fn

    def kernel(*args, **kwargs):
        args = list(args)
        for i in at:
            if not isinstance(args[i], torch.Tensor):
                args[i] &= _table.U64_MASK
        return fn(*args, **kwargs)
    return kernel


@functools.cache
def device_kernel(name: str, device_type: str):
    """The function "auto" runs for op `name` on tensors of `device_type` (u64 arguments as int64), with the
    reference above a compiled kernel's D limit."""
    op = _table.OPS[name]
    try:
        fn = backends.resolve("auto", name, torch.device(device_type))
    except AttributeError:  # no kernel there and no reference (policy_log_pf_backward)
        def missing(*args, **kwargs):
            raise NotImplementedError(f"{name} has no kernel for {device_type} tensors (and no reference)")
        return missing
    if is_reference(fn):
        return _decoded(fn, op)
    limit = max_d(fn, name)
    if limit is None:
        return fn
    ref = _decoded(getattr(reference, name), op)
    state = next(i for i, a in enumerate(op.schema_args) if a.kind == "state")

    def kernel(*args, **kwargs):
        return (fn if args[state].shape[1] <= limit else ref)(*args, **kwargs)
    return kernel


def _fresh_outputs(fn, op: _table.Op):
    """fn, with each output that is a given input (em_step_logprob's x_next) copied: a registered op's outputs
    may not alias its inputs."""
    given = [(k, [a.name for a in op.schema_args].index(o.given_by)) for k, o in enumerate(op.outs)
             if o.given_by and op.arg(o.given_by).kind != "out"]
    if not given:
        return fn

    def kernel(*args):
        outs = list(fn(*args))
        for k, i in given:
            if args[i] is not None:
                outs[k] = outs[k].clone()
        return tuple(outs)
    return kernel


def _with_u64_tensors(fn, op: _table.Op):
    """fn (the backend signature) called by the registered op: each given trailing tensor form `<name>_t`
    of a u64 argument replaces that argument."""
    at = _u64_positions(op)
    if not at:
        return fn
    n = len(op.schema_args)

    def kernel(*args):
        tail = args[n:]
        if not any(t is not None for t in tail):
            return fn(*args[:n])
        head = list(args[:n])
        for i, t in zip(at, tail):
            if t is not None:
                head[i] = t
        return fn(*head)
    return kernel


def _backward_with_u64_tensors(backward, op: _table.Op):
    """The autograd formula, with no gradient for the trailing tensor forms of the u64 arguments."""
    pad = (None,) * len(op.u64_args)
    if not pad:
        return backward

    def kernel(ctx, *grads):
        return tuple(backward(ctx, *grads)) + pad
    return kernel


def _kernel_for(name: str, device_type: str):
    """A kernel that resolves the backend function at its first call."""
    def kernel(*args):
        return device_kernel(name, device_type)(*args)
    kernel.__name__ = f"{name}_{device_type}"
    return kernel


def _refuse_grad(op: _table.Op, opobj):
    """Autograd kernel of an op without a backward: raise when an input requires grad."""
    hint = f" (fastsamp.ops.{op.public} with backend='auto' is differentiable)" if op.public else ""

    def kernel(*args):
        if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            raise RuntimeError(f"torch.ops.fastsamp.{op.name} has no backward and an input requires grad: detach "
                               f"the inputs or run under torch.no_grad(){hint}")
        with _BELOW_AUTOGRAD():
            return opobj(*args)
    return kernel


_profiler_enabled = torch._C._autograd._profiler_enabled
_dispatch_modes = torch._C._len_torch_dispatch_stack
_function_modes = torch._C._is_torch_function_mode_enabled
_functorch_level = torch._C._functorch.maybe_current_level


def observed() -> bool:
    """Something watches the dispatcher in eager: the profiler (registered ops appear by name), a dispatch
    mode (FakeTensorMode, export's tracing), a torch-function mode or a functorch transform (vmap, grad)."""
    return _profiler_enabled() or _dispatch_modes() > 0 or _function_modes() or _functorch_level() is not None


class Entry:
    """How a public op calls its registered op: `graph` through the dispatcher (autograd, tracing),
    `eager` below the autograd key (no input requires grad: skips the Python autograd kernel, several µs).
    Both take the backend signature (u64 seeds, and `out=` where the op has one)."""

    def __init__(self, op: _table.Op, opobj):
        self.name, self.differentiable = op.name, bool(op.grad) or not op.backends
        at = _u64_positions(op)

        def encoded(args):
            """The schema's arguments: u64 ints as int64, tensors as the trailing `<name>_t` (the int 0)."""
            if not at:
                return args
            args, tail = list(args), None
            for k, i in enumerate(at):
                v = args[i]
                if isinstance(v, torch.Tensor):
                    tail = tail or [None] * len(at)
                    args[i], tail[k] = 0, v
                elif v > _INT64_MAX:
                    args[i] = v - 2**64
            return args if tail is None else args + tail

        def graph(*args, out=None):
            if out is None:
                return opobj(*encoded(args))
            return out.copy_(opobj(*encoded(args)))

        def eager(*args, out=None):
            if out is not None:  # written in place by the backend function, as with backend= given
                return device_kernel(self.name, args[0].device.type)(*args, out=out)
            with _BELOW_AUTOGRAD():
                return opobj(*encoded(args))

        self.graph, self.eager = graph, eager


def _register_factory(op: _table.Op) -> None:
    """normal / uniform: the kernel of the `device` argument's type (the dispatcher has no tensor to choose by)."""
    at = next(i for i, a in enumerate(op.schema_args) if a.kind == "device")

    def kernel(*args):
        return device_kernel(op.name, torch.device(args[at]).type)(*args)
    kernel = _with_u64_tensors(kernel, op)
    namespace = {"torch": torch}
    _table.define(_table.outputs_source(op, "fake"), f"<fastsamp fake {op.name}>", namespace)
    torch.library.register_fake(f"{NAMESPACE}::{op.name}", namespace["fake"], lib=_lib)
    _lib.impl(op.name, kernel, "CompositeExplicitAutograd")


def _register(op: _table.Op) -> Entry:
    _lib.define(op.schema())
    qualname = f"{NAMESPACE}::{op.name}"
    opobj = getattr(getattr(torch.ops, NAMESPACE), op.name).default
    if not op.backends:  # no compiled kernel: the reference, decomposed (autograd and tracing see its aten ops)
        _lib.impl(op.name, _with_u64_tensors(getattr(reference, op.name), op), "CompositeImplicitAutograd")
        return Entry(op, opobj)
    if op.state is None and any(a.kind == "device" for a in op.args):  # a factory op: no tensor to dispatch on
        _register_factory(op)
        return Entry(op, opobj)
    namespace = {"torch": torch}
    _table.define(_table.outputs_source(op, "fake"), f"<fastsamp fake {op.name}>", namespace)
    torch.library.register_fake(qualname, namespace["fake"], lib=_lib)
    _lib.impl(op.name, _fresh_outputs(_with_u64_tensors(device_kernel(op.name, "cpu"), op), op), "CPU")  # no trampoline
    _lib.impl(op.name, _fresh_outputs(_with_u64_tensors(_kernel_for(op.name, "cuda"), op), op), "CUDA")  # at 1st call
    if op.grad:
        torch.library.register_autograd(qualname, _backward_with_u64_tensors(_autograd.FORMULAS[op.name], op),
                                        setup_context=_autograd.SETUP,
                                        lib=_lib)
    else:
        _lib.impl(op.name, _refuse_grad(op, opobj), "Autograd")
    return Entry(op, opobj)


ENTRIES: dict[str, Entry] = {op.name: _register(op) for op in _table.registered()}
