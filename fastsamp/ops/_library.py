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
* the check of the arguments against the table (`_checker`: shapes with the table's dims, a list's by its layout,
  dtypes, devices, contiguity; a ValueError / TypeError naming the op and the argument), in the fake
  implementation, in the CPU / CUDA kernels, both ways the Autograd kernel reaches them, and before the reference
  that nested transforms run: called directly, the op never hands a kernel a buffer smaller than the table's
  shapes, nor strided memory (metadata only: no sync, no graph break; its cost per call: benchmarks/RESULTS.md,
  "Twelfth session: the registered ops' argument checks");
* the CPU kernel (the cpp backend when built, else the reference) and the CUDA kernel (cuda when built,
  else triton, else the reference; above a compiled kernel's size limits the reference: `_auto_kernel.py`),
  registered per dispatch key;
* an Autograd kernel (`_autograd_kernel`): the formulas of `_autograd.py` for the ops the table marks
  differentiable, through an autograd.Function (what `torch.library.register_autograd` builds, without its
  per-call cost), with the jvp formulas too (forward mode: torch.func.jvp / jacfwd / hessian, forward_ad); the
  other ops raise when an input requires grad or carries a tangent (never a silent detach or zero tangent). With
  neither it calls the op's CPU / CUDA kernel itself where the dispatcher would go there next.
  (Not torch's autograd fallback for the ops without backward: under torch.func.grad / vjp their kernels see
  unwrapped tensors that require no grad, and the fallback gives zero gradients with only a warning.)
* a batching rule for torch.func.vmap (`_vmap.kernel`): a call that draws nothing, with only its chain arguments
  vmapped, folds the vmapped dimension into the chains (one kernel call); the others run once per slice; both exactly
  the map of the op over the slices;
* autocast kernels (`_autocast_kernel`, CPU and CUDA): under torch.autocast a float16 / bfloat16 argument (a
  network's output) is cast up to the chains' dtype, as the public ops and autocast's own type promotion do, and the
  op runs with autocast off inside (its kernels and any reference at full precision).

Registered with `torch.library.Library` define / impl rather than `torch.library.custom_op`: at B = 64 on
one CPU thread the latter costs several µs more per eager call (benchmarks/op_latency.py). A call as a user
makes it (through the Autograd kernel) adds to the backend function one trip from the dispatcher into Python:
most of it is torch's boxing of the arguments into a Python kernel and back, about 0.3 µs per scalar and
0.2 µs per tensor (of a list too) while hot, about twice that after a kernel of 10–60 µs has run in between
(op_latency.py's "floor" and "bare" columns: the network and policy ops, 7–20 arguments, pay 8–24 µs there,
loaded); the Autograd kernel's own Python, with torch's key set argument, 1.5–5 µs.
The public functions (`fastsamp.ops`) reach these ops through `_dispatch.route` with backend="auto".
"""
from __future__ import annotations

import inspect
import os

import torch
import torch.autograd.forward_ad as _fwad
from torch._functorch.utils import enable_single_level_autograd_function as _single_level_function

from . import _autograd, _checks, _table, _vmap

# which function the kernels run (_auto_kernel.py); device_kernel, encode_u64, is_reference, max_d, max_hidden and
# _above_limits are called as _library.<name> too
from ._auto_kernel import _INT64_MAX, _given_tensor_forms, _kernel_choice, _reference_kernel, _u64_positions
from ._auto_kernel import _above_limits as _above_limits
from ._auto_kernel import device_kernel as device_kernel
from ._auto_kernel import encode_u64 as encode_u64
from ._auto_kernel import is_reference as is_reference
from ._auto_kernel import max_d as max_d
from ._auto_kernel import max_hidden as max_hidden

NAMESPACE = "fastsamp"
_BELOW_AUTOGRAD = torch._C._AutoDispatchBelowAutograd

_lib = torch.library.Library(NAMESPACE, "DEF")


def _requires_grad_test(op: _table.Op):
    """args -> whether a tensor argument of `op` requires grad (`_table.requires_grad_source`)."""
    namespace = {}
    _table.define(_table.requires_grad_source(op), f"<fastsamp requires_grad {op.name}>", namespace)
    return namespace["requires_grad"]


CHECK_NAMES = {"torch": torch, "_arg_error": _checks.arg_error, "_FLOATS": _checks.FLOAT_DTYPES}
"""The names the generated argument checks use (`_table.check_source`)."""


def _checker(op: _table.Op, device_type: str, fn=None):
    """The check of `op`'s schema arguments for `device_type` tensors (`_table.check_source`; "cpu" needs no device
    test); with `fn`, checking then returning fn(<the schema arguments>) (a backend function, called without the u64
    tensor forms) in the same frame."""
    namespace = {**CHECK_NAMES, "_fn": fn}
    source = _table.check_source(op, "check", device_type != "cpu", call=fn and "_fn")
    _table.define(source, f"<fastsamp check {op.name} {device_type}{' call' if fn else ''}>", namespace)
    return namespace["check"]


def _backend_kernel(op: _table.Op, device_type: str):
    """The op's registered kernel for `device_type` tensors, in one Python frame (several µs of a call are frames):
    the schema's arguments (the dispatcher passes the trailing tensor forms of the u64 arguments only up to the last
    one given: they replace those arguments), "auto"'s backend function (resolved at the first call; the reference
    above its size limits), and each output that is a given input (em_step_logprob's x_next) copied, since a
    registered op's outputs may not alias its inputs. The arguments are checked first (`_checker`: shapes, dtypes,
    devices, contiguity; the kernels read their memory as the table's dense shapes)."""
    name, at, n, copies = op.name, _u64_positions(op), len(op.schema_args), _copied_outputs(op)
    check = _checker(op, device_type)
    choice = None

    def kernel(*args):
        nonlocal choice
        check(*args)
        if len(args) != n:
            args = _given_tensor_forms(args, at, n)
        if choice is None:
            choice = _kernel_choice(name, device_type)
        fn, above, ref = choice
        if above is not None and above(args):
            fn = ref
        outs = fn(*args)
        if copies:
            outs = list(outs)
            for k, i in copies:
                if args[i] is not None:
                    outs[k] = outs[k].clone()
            outs = tuple(outs)
        return outs
    kernel.__name__ = f"{name}_{device_type}"
    return kernel


def _copied_outputs(op: _table.Op) -> tuple:
    """(output index, schema position) of each output that is a given input (em_step_logprob's x_next)."""
    names = [a.name for a in op.schema_args]
    return tuple((k, names.index(o.given_by)) for k, o in enumerate(op.outs)
                 if o.given_by and op.arg(o.given_by).kind != "out")


def _direct_kernels(op: _table.Op, device_type: str, kernel) -> tuple:
    """(plain, kernel): what the Autograd kernel calls in place of the dispatcher's next trip into Python, to the op's
    registered `kernel` for `device_type` tensors. `plain` takes a call with the schema's arguments alone (no trailing
    tensor form given): where the backend function takes any size and no output is a copy of an input, the argument
    check and that function's call in one frame (`_checker`; one Python frame less than `kernel`, with its argument
    shuffling: about 1 µs of a call), else `kernel`, which takes any call."""
    fn, above, _ = _kernel_choice(op.name, device_type)
    return (_checker(op, device_type, fn) if above is None and not _copied_outputs(op) else kernel), kernel


_DEVICE_TYPES = {torch._C.DispatchKey.CPU: "cpu", torch._C.DispatchKey.CUDA: "cuda"}
_AFTER_AUTOGRAD = torch._C._after_autograd_keyset
_is_grad_enabled = torch._C.is_grad_enabled


def _function(op: _table.Op, handle):
    """The autograd.Function of an op with backward and jvp formulas (`_autograd.FORMULAS`, `_autograd.JVPS`):
    forward redispatches below the autograd key; backward gives one gradient per schema argument, and none for the
    key set and for the trailing tensor forms of the u64 arguments (which the dispatcher passes only up to the last
    one given); jvp the outputs' tangents from the schema arguments' (forward mode). A separate setup_context, so
    that torch.func's transforms (grad, vjp, jvp, jacrev, jacfwd, hessian) take it."""
    formula, jvp_formula, n = _autograd.FORMULAS[op.name], _autograd.JVPS[op.name], len(op.schema_args)

    def forward(keyset, *args):
        with _BELOW_AUTOGRAD():
            return handle.redispatch_boxed(keyset & _AFTER_AUTOGRAD, *args)

    def setup_context(ctx, inputs, output):
        _autograd.SETUP(ctx, inputs[1:n + 1], output)
        ctx.n_tail = len(inputs) - 1 - n

    def backward(ctx, *grads):
        return (None, *formula(ctx, *grads)) + (None,) * ctx.n_tail

    def jvp(ctx, _keyset, *tangents):
        return jvp_formula(ctx, *tangents[:n])

    function = type(f"{NAMESPACE}_{op.name}", (torch.autograd.Function,),  # grad_fn: fastsamp_<op>Backward
                    {"forward": staticmethod(forward), "setup_context": staticmethod(setup_context),
                     "backward": staticmethod(backward), "jvp": staticmethod(jvp)})
    plain_apply = _FUNCTION_APPLY.__get__(None, function)

    def apply(*args):
        if _functorch_level() is None:
            return plain_apply(*args)
        with _single_level_function():
            return plain_apply(*args)
    return apply


_FUNCTION_APPLY = _autograd._FUNCTION_APPLY
"""autograd's own apply of an autograd.Function (what `Function.apply` calls outside torch.func's transforms). Under a
transform the Autograd kernel runs inside the transform's level (its tensors are that level's wrappers, torch.func's
dispatch keys already handled), as aten's Autograd kernels do: there the Function is a single-level one (as
torch.func's own custom_function_call makes), and `Function.apply` would enter custom_function_call, which has no
kernel at that point."""


_UNSEEN = object()
_interpreter_stack = torch._C._functorch.get_interpreter_stack
_DIFFERENTIATING = (torch._C._functorch.TransformType.Grad, torch._C._functorch.TransformType.Jvp)


def _tensor_args(op: _table.Op):
    """args -> an iterator over `op`'s given tensor arguments (a list's elements too)."""
    at = [(i, a.kind == "tensors") for i, a in enumerate(op.schema_args) if a.kind in ("state", "tensor", "tensors")]

    def tensors(args):
        for i, many in at:
            for t in (args[i] if many else (args[i],)):
                if t is not None:
                    yield t
    return tensors


def _reference_test(op: _table.Op):
    """args -> whether the Autograd kernel runs the op's reference, not its autograd.Function: under two or more of
    torch.func's differentiating transforms (grad / vjp / jacrev, jvp / jacfwd; hessian is two), or under one while
    an input's level-0 tensor requires grad (regular autograd differentiates the transform's result:
    autograd.grad of torch.func.grad's gradient). The Function runs at the innermost level only (single-level,
    `_function`): the outer levels see its outputs as constants, so a second derivative through a nonlinear use of
    an output (hessian of logp², jacrev(jacrev(f)) of |x'|², autograd.grad of func.grad's |x'|² gradient) comes out
    silently wrong, and forward over forward (jacfwd(jacfwd(f)), jvp of jvp) drops the jvp formula's own derivative
    (all-zero Hessian of gmm_score's logp; pytorch issue 197867). The reference is differentiated by every level.
    (torch.autograd.forward_ad's dual levels do not nest, with each other nor with torch.func.jvp: torch raises
    there; forward_ad under regular autograd runs the Function, whose jvp regular autograd differentiates.)"""
    tensors = _tensor_args(op)

    def runs_reference(args):
        if _functorch_level() is None:
            return False
        n = sum(i.key() in _DIFFERENTIATING for i in _interpreter_stack())
        if n != 1:
            return n > 1
        return any(_checks.level0(t).requires_grad for t in tensors(args))
    return runs_reference


def _tangent_test(op: _table.Op):
    """args -> whether a tensor argument of `op` (a list's elements too) carries a forward-mode tangent at the
    current dual level (torch.func.jvp / jacfwd / hessian, torch.autograd.forward_ad); the caller tests that a dual
    level is open first."""
    tensors = _tensor_args(op)

    def has_tangent(args):
        return any(_fwad.unpack_dual(t).tangent is not None for t in tensors(args))
    return has_tangent


def _autograd_kernel(op: _table.Op, handle, backend_kernels: dict, requires_grad):
    """The op's kernel at the Autograd key (called with the dispatch key set); `requires_grad`: args -> whether a
    tensor argument requires grad (`_requires_grad_test`).

    Grad mode on and an input requires grad, or an input carries a forward-mode tangent (`_tangent_test`): the
    autograd.Function of the op's backward and jvp formulas, or, for an op without them, a RuntimeError naming the
    op (never a silent detach, nor a zero tangent; also under torch.func's transforms, whose wrapped inputs require
    grad or carry the tangent here). Under nested differentiating transforms (hessian, jacrev(jacrev),
    jacfwd(jacfwd), ...; regular autograd over torch.func.grad too: `_reference_test`) the op's reference instead,
    which every level differentiates (the single-level Function's outputs would be constants to the outer levels),
    after the argument check the kernels run (`_checker`, devices included: the transforms' per-sample shapes).
    Otherwise the op runs below the
    autograd key: where the dispatcher's next kernel is the op's own CPU or CUDA kernel (no mode, tensor subclass or
    transform in between), that kernel (`backend_kernels`, by dispatch key), or the backend function it would call
    (`_direct_kernels`), is called here, which saves the dispatcher's second trip into Python (about 3 µs per
    call); else the call is redispatched. Which of the two a key set takes is memoised by its bits
    (a few distinct key sets occur), and the requires-grad test reads only the op's tensor positions
    (`_table.requires_grad_source`): together about 3 µs less than torch's own helpers."""
    apply = _function(op, handle) if op.grad else None
    nested = _reference_kernel(op) if op.grad else None
    check = _checker(op, "cuda")  # the reference's arguments (its torch ops would broadcast a short one), None's
    runs_reference = _reference_test(op) if op.grad else None
    has_tangent = _tangent_test(op)
    hint = f" (fastsamp.ops.{op.public} with backend='auto' is differentiable)" if op.public else ""
    n = len(op.schema_args)
    direct_by_keys = {}  # DispatchKeySet.raw_repr() -> `_direct_kernels` of the key set's next kernel, or False

    def kernel(keyset, *args):
        try:
            grad = _is_grad_enabled() and requires_grad(args)
        except AttributeError:  # None where a tensor is required: the check names it
            check(*args)
            raise
        if grad or (_fwad._current_level >= 0 and has_tangent(args)):  # reverse mode, or forward mode (a dual level)
            if apply is None:
                raise RuntimeError(
                    f"torch.ops.fastsamp.{op.name} has no backward and an input requires grad: detach the inputs or "
                    f"run under torch.no_grad(){hint}" if grad else
                    f"torch.ops.fastsamp.{op.name} has no forward-mode derivative (jvp) and an input carries a tangent "
                    f"(torch.func.jvp / jacfwd / hessian, or forward_ad){hint}")
            if runs_reference(args):
                check(*args)
                return nested(*args)
            return apply(keyset, *args)
        keys = keyset.raw_repr()
        direct = direct_by_keys.get(keys, _UNSEEN)
        if direct is _UNSEEN:
            key = (keyset & _AFTER_AUTOGRAD).highestPriorityTypeId()
            direct = direct_by_keys[keys] = key in backend_kernels and _direct_kernels(
                op, _DEVICE_TYPES[key], backend_kernels[key])
        if direct:
            plain, general = direct
            return plain(*args) if len(args) == n else general(*args)
        return handle.redispatch_boxed(keyset & _AFTER_AUTOGRAD, *args)
    kernel.__name__ = f"{op.name}_autograd"
    return kernel


_profiler_enabled = torch._C._autograd._profiler_enabled
_dispatch_modes = torch._C._len_torch_dispatch_stack
_function_modes = torch._C._is_torch_function_mode_enabled
_functorch_level = torch._C._functorch.maybe_current_level
_jit_tracing_state = torch._C._get_tracing_state


def observed() -> bool:
    """Something watches the dispatcher in eager: the profiler (registered ops appear by name), a dispatch
    mode (FakeTensorMode, export's tracing), a torch-function mode, a functorch transform (vmap, grad) or
    torch.jit.trace (which records dispatcher calls only: a kernel called directly would leave its output
    uninitialised in the trace)."""
    return (_profiler_enabled() or _dispatch_modes() > 0 or _function_modes() or _functorch_level() is not None
            or _jit_tracing_state() is not None)


class Entry:
    """How a public op calls its registered op: `graph` through the dispatcher (autograd, tracing),
    `eager` below the autograd key (no input requires grad; under a dispatch mode, one trip into Python fewer
    than through the Autograd kernel, which would redispatch).
    Both take the backend signature (u64 seeds, and the op's `out` arguments, `out=` or score_mh_accept's x_out= and
    score_out=, where it has them)."""

    def __init__(self, op: _table.Op, opobj):
        # differentiable: autograd (and forward mode) go through `graph`, the registered op's formulas (or its
        # decomposed reference, or, for an internal op without reference, its refusal naming the op)
        self.name, self.differentiable = op.name, bool(op.grad) or not op.backends or not op.reference
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

        # the output each `out` argument receives (score_mh_accept: x_out, score_out; the others: out, their only one)
        given = {o.given_by: k for k, o in enumerate(op.outs) if o.given_by and op.arg(o.given_by).kind == "out"}
        single = len(op.outs) == 1

        def graph(*args, **outs):
            result = opobj(*encoded(args))
            if single:
                out = outs.get("out")
                return result if out is None else out.copy_(result)
            if not any(v is not None for v in outs.values()):
                return result
            result = list(result)
            for name, out in outs.items():
                if out is not None:
                    result[given[name]] = out.copy_(result[given[name]])
            return tuple(result)

        event = f"fastsamp::{op.name}"

        def eager(*args, **outs):
            if any(v is not None for v in outs.values()):
                # torch.func's wrapped tensors have no memory to hand a kernel, and torch.jit.trace records only
                # dispatcher calls: the functional op, copied into out
                if _functorch_level() is not None or _jit_tracing_state() is not None:
                    return graph(*args, **outs)
                # written in place by the backend function, as with backend= given
                fn = device_kernel(self.name, args[0].device.type)
                if _profiler_enabled():  # not through the dispatcher: a range named as the op's own events
                    with torch.profiler.record_function(event):
                        return fn(*args, **outs)
                return fn(*args, **outs)
            with _BELOW_AUTOGRAD():
                return opobj(*encoded(args))

        self.graph, self.eager = graph, eager


def _fake(op: _table.Op):
    """The fake implementation: the arguments checked as the kernels check them (devices too), then the outputs
    allocated (`_table.outputs_source`), so that torch.compile / export report a bad argument when they trace."""
    namespace = dict(CHECK_NAMES)
    _table.define(_table.outputs_source(op, "fake", checked=True), f"<fastsamp fake {op.name}>", namespace)
    return namespace["fake"]


def _register_factory(op: _table.Op) -> None:
    """normal / uniform: the kernel of the `device` argument's type (the dispatcher has no tensor to choose by)."""
    at = next(i for i, a in enumerate(op.schema_args) if a.kind == "device")
    u64, n, check = _u64_positions(op), len(op.schema_args), _checker(op, "cpu")

    def kernel(*args):
        if len(args) != n:  # the u64 arguments' trailing tensor forms given (one int64 element each)
            check(*args)
            args = _given_tensor_forms(args, u64, n)
        return device_kernel(op.name, torch.device(args[at]).type)(*args)
    torch.library.register_fake(f"{NAMESPACE}::{op.name}", _fake(op), lib=_lib)
    _lib.impl(op.name, kernel, "CompositeExplicitAutograd")
    if "triton" in op.backends:
        _triton_decomposition(op, kernel)


TRACE_TRITON = False
"""Whether torch.compile traces into the Triton kernels of ops on CUDA tensors (`_triton_decomposition`); off
until a lent GPU has passed tests/test_triton_inductor.py. Set with `set_trace_triton` or FASTSAMP_TRACE_TRITON=1."""

_CACHE_TAG = "fastsamp-trace-triton"


def set_trace_triton(on: bool) -> None:
    """Switches TRACE_TRITON. The switch is invisible to the graph that torch.compile's caches key on (the same
    `fastsamp::` op nodes either way), so it also adds / removes a tag in `torch.compiler.config.cache_key_tag`:
    otherwise a graph compiled and cached (on disk, across processes) with the other setting would be reused."""
    global TRACE_TRITON
    TRACE_TRITON = bool(on)
    tags = [t for t in torch.compiler.config.cache_key_tag.split(",") if t and t != _CACHE_TAG]
    torch.compiler.config.cache_key_tag = ",".join(tags + [_CACHE_TAG] * TRACE_TRITON)


set_trace_triton(os.environ.get("FASTSAMP_TRACE_TRITON", "0") == "1")


def _is_triton(fn) -> bool:
    module = inspect.getmodule(fn)
    return module is not None and module.__name__.startswith("fastsamp.kernels")


def _triton_decomposition(op: _table.Op, cuda_kernel) -> None:
    """`torch.library.triton_op`'s mechanism on this Library op: while AOTAutograd functionalizes a graph for
    Inductor (FunctionalTensorMode), a call on CUDA tensors whose "auto" kernel is a Triton launcher runs that
    launcher under the mode, so its launches become `triton_kernel_wrapper_functional` nodes (`wrap_triton`, in
    kernels/_launch.launch) that Inductor compiles into its own code. Otherwise (TRACE_TRITON off, CPU tensors,
    the CUDA C++ kernel, torch.export, tensor subclasses) the op stays one opaque node, as triton_op does.
    (Not triton_op itself: it is a custom_op, several µs slower per eager call, and names a second op.)"""
    from torch._subclasses.fake_tensor import FakeTensor
    from torch._subclasses.functional_tensor import FunctionalTensor, FunctionalTensorMode
    from torch.export._trace import custom_triton_ops_decomposition_disabled
    at = next(i for i, a in enumerate(op.schema_args) if a.kind in ("state", "device"))
    known = (torch.Tensor, FakeTensor, FunctionalTensor)

    def rule(mode, func, types, args, kwargs):
        where = args[at]
        device_type = where.device.type if isinstance(where, torch.Tensor) else torch.device(where).type
        if (not TRACE_TRITON or device_type != "cuda" or custom_triton_ops_decomposition_disabled()
                or not _is_triton(_kernel_choice(op.name, "cuda")[0]) or not all(issubclass(t, known) for t in types)):
            return mode.__torch_dispatch__(func, types, args, kwargs)
        with mode:
            return cuda_kernel(*args, **kwargs)
    torch.library.register_torch_dispatch(f"{NAMESPACE}::{op.name}", FunctionalTensorMode, rule, lib=_lib)


def _autocast_kernel(op: _table.Op, opobj, key):
    """The op's kernel for autocast dispatch key `key`: every float16 / bfloat16 argument of the chains' dtype
    (the table's dtype "x": a tensor or a list's tensors) but the state itself cast up to that dtype, the state's, or
    without a state the first float32 / float64 such argument's (`_checks.autocast_promoted`'s rule), then the op
    with `key` excluded. Outside autocast the dispatcher never comes here (its keys are excluded by default)."""
    state = next((i for i, a in enumerate(op.schema_args) if a.kind == "state"), None)
    like_x = [i for i, a in enumerate(op.schema_args) if a.kind in ("state", "tensor", "tensors") and a.dtype == "x"]
    excluded = torch._C.DispatchKeySet(key)

    def dtype_of(args):
        if state is not None:
            return args[state].dtype
        for i in like_x:
            for t in args[i] if isinstance(args[i], (list, tuple)) else (args[i],):
                if isinstance(t, torch.Tensor) and t.dtype in _checks.FLOAT_DTYPES:
                    return t.dtype
        return None

    def up(t, dtype):
        return t.to(dtype) if isinstance(t, torch.Tensor) and t.dtype in _checks.AUTOCAST_DTYPES else t

    def kernel(_keyset, *args):
        dtype = dtype_of(args)
        if dtype in _checks.FLOAT_DTYPES:
            args = list(args)
            for i in like_x:
                if i != state and args[i] is not None:
                    args[i] = [up(t, dtype) for t in args[i]] if isinstance(args[i], (list, tuple)) else up(args[i],
                                                                                                           dtype)
        with torch._C._ExcludeDispatchKeyGuard(excluded):
            return opobj(*args)
    return kernel


def _register(op: _table.Op) -> Entry:
    _lib.define(op.schema())
    qualname = f"{NAMESPACE}::{op.name}"
    opobj = getattr(getattr(torch.ops, NAMESPACE), op.name).default
    if not op.backends:  # no compiled kernel: the reference, decomposed (autograd and tracing see its aten ops)
        _lib.impl(op.name, _reference_kernel(op), "CompositeImplicitAutograd")
        return Entry(op, opobj)
    _lib.impl(op.name, _vmap.kernel(op, opobj), "FuncTorchBatched", with_keyset=True)
    if op.state is None and any(a.kind == "device" for a in op.args):  # a factory op: no tensor to dispatch on
        _register_factory(op)
        return Entry(op, opobj)
    torch.library.register_fake(qualname, _fake(op), lib=_lib)
    backend_kernels = {key: _backend_kernel(op, device_type) for key, device_type in _DEVICE_TYPES.items()}
    for key, kernel in backend_kernels.items():
        _lib.impl(op.name, kernel, key.name)
    _lib.impl(op.name, _autograd_kernel(op, opobj._handle, backend_kernels, _requires_grad_test(op)), "Autograd",
              with_keyset=True)
    for key in (torch._C.DispatchKey.AutocastCPU, torch._C.DispatchKey.AutocastCUDA):
        _lib.impl(op.name, _autocast_kernel(op, opobj, key), key.name, with_keyset=True)
    if "triton" in op.backends:
        _triton_decomposition(op, backend_kernels[torch._C.DispatchKey.CUDA])
    return Entry(op, opobj)


ENTRIES: dict[str, Entry] = {op.name: _register(op) for op in _table.registered()}
