"""Which function a registered op's CPU / CUDA kernel runs (`device_kernel`): "auto"'s backend function for the
device, with the reference above a compiled kernel's size limits (`max_d`, `max_hidden`, `_above_limits`) or where
nothing is compiled (`is_reference`), called with the schema's arguments (u64 ints as int64, `encode_u64`; their
trailing tensor forms, `_given_tensor_forms`)."""
from __future__ import annotations

import functools
import inspect
import math

import torch

from .. import backends
from . import _table, reference

_INT64_MAX = 2**63 - 1


# The size limits of the compiled kernels: backend op -> the module attribute holding its largest supported D, and
# for the network ops the one holding the largest hidden width H (the Triton engine, kernels/mlp.py: MLP_MAX_D,
# MLP_MAX_HIDDEN; a module without the attribute has no such limit); the ops of one MLP (kernels/mlp_train.py) bound
# the input width D and the output width O = W_out.shape[0] alike. Above them "auto" runs the reference.
_MLP_OPS = ("mlp_score", "mlp_mala", "mlp_hmc", "mlp_energy", "mlp_energy_mala", "mlp_energy_hmc")
_MLP_NET_OPS = ("mlp_net", "mlp_net_backward", "mlp_net_lsq", "mlp_net_energy_lsq")
_MAX_D_ATTR = {"gmm_score": "GMM_SCORE_MAX_D", "gmm_mala": "GMM_MALA_MAX_D", "gmm_hmc": "GMM_MALA_MAX_D",
               **{op: "MLP_MAX_D" for op in _MLP_OPS}, **{op: "MLP_NET_MAX_IN" for op in _MLP_NET_OPS}}
_MAX_HIDDEN_ATTR = {op: "MLP_MAX_HIDDEN" for op in _MLP_OPS}


def _limit(attrs: dict, fn, op: str):
    attr = attrs.get(op)
    return None if attr is None else vars(inspect.getmodule(fn)).get(attr)  # no AttributeError raised per call


def max_d(fn, op: str):
    """The largest D that backend function `fn` of `op` supports, or None (no limit)."""
    return _limit(_MAX_D_ATTR, fn, op)


def max_hidden(fn, op: str):
    """The largest hidden width H of a network that backend function `fn` of network op `op` supports, or None (no
    limit)."""
    return _limit(_MAX_HIDDEN_ATTR, fn, op)


def _above_limits(fn, op: _table.Op):
    """args -> whether a call of `op` (the schema's arguments) is above backend function `fn`'s size limits: the
    state's D and, for the network ops, the widest network of the `dims` argument ([F, H, L, act] per network), for
    the ops of one MLP the wider of D and O; None where `fn` has no limit."""
    most_d, most_h = max_d(fn, op.name), max_hidden(fn, op.name)
    if most_d is None and most_h is None:
        return None
    state = _state_position(op)
    if op.name in _MLP_NET_OPS:  # params = [W_in, b_in, W_out (O, H), ...]
        params = [a.name for a in op.schema_args].index("params")
        return lambda args: max(args[state].shape[1], args[params][2].shape[0]) > most_d
    if most_h is None:
        return lambda args: args[state].shape[1] > most_d
    dims = [a.name for a in op.schema_args].index("dims")
    most_d = math.inf if most_d is None else most_d
    return lambda args: args[state].shape[1] > most_d or max(args[dims][1::4], default=0) > most_h


def is_reference(fn) -> bool:
    """Whether backend function `fn` is the PyTorch reference (autograd-aware): the "torch" backend's module,
    `reference`, holds it under its name (every family's reference, re-exported there)."""
    return getattr(reference, getattr(fn, "__name__", ""), None) is fn


def encode_u64(v):
    """A u64 (seed, offset) as the int64 of the schema: v − 2**64 when v >= 2**63 (two's complement)."""
    return v - 2**64 if v > _INT64_MAX else v


def _u64_positions(op: _table.Op) -> tuple:
    return tuple(i for i, a in enumerate(op.schema_args) if a.kind == "u64")


def _reference_kernel(op: _table.Op):
    """The op's reference (`fastsamp.ops.reference`, looked up now) as every registered path runs it: called with
    the schema's arguments (u64 ints as int64; a trailing tensor form `<name>_t`, when given, replaces its argument)
    or with the backend signature (a u64 int64 or tensor, `out=`), the u64 ints back in [0, 2**64) (the reference
    validates them)."""
    fn, at, n = getattr(reference, op.name), _u64_positions(op), len(op.schema_args)
    if not at:
        return fn

    def kernel(*args, **kwargs):
        args = list(args) if len(args) == n else list(_given_tensor_forms(args, at, n))
        for i in at:
            if not isinstance(args[i], torch.Tensor):
                args[i] &= _table.U64_MASK
        return fn(*args, **kwargs)
    return kernel


def _kernel_choice(name: str, device_type: str) -> tuple:
    """(fn, above, ref): "auto"'s backend function of op `name` for tensors of `device_type` (u64 arguments as
    int64), whether a call is above its size limits (`_above_limits`; None: it takes any size) and the reference
    that runs there (`_reference_kernel`)."""
    op = _table.OPS[name]
    try:
        fn = backends.resolve("auto", name, torch.device(device_type))
    except AttributeError:  # no kernel there and no reference (policy_log_pf_backward)
        def missing(*args, **kwargs):
            raise NotImplementedError(f"{name} has no kernel for {device_type} tensors (and no reference)")
        return missing, None, None
    if is_reference(fn):
        return _reference_kernel(op), None, None
    above = _above_limits(fn, op)
    return fn, above, None if above is None else _reference_kernel(op)


@functools.cache
def device_kernel(name: str, device_type: str):
    """The function "auto" runs for op `name` on tensors of `device_type` (u64 arguments as int64), with the
    reference above a compiled kernel's size limits."""
    fn, above, ref = _kernel_choice(name, device_type)
    if above is None:
        return fn

    def kernel(*args, **kwargs):
        return (ref if above(args) else fn)(*args, **kwargs)
    return kernel


def _state_position(op: _table.Op) -> int | None:
    return next((i for i, a in enumerate(op.schema_args) if a.kind == "state"), None)


def _given_tensor_forms(args: tuple, at: tuple, n: int) -> tuple:
    """The n schema arguments, each u64 argument (positions `at`) replaced by its trailing tensor form when given."""
    head = list(args[:n])
    for i, t in zip(at, args[n:]):
        if t is not None:
            head[i] = t
    return tuple(head)
