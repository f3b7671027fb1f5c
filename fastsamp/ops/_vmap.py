"""Batching rules of the registered ops (`torch.func.vmap`), one per op from the op table (`_table.py`).

vmap(op) must equal the map of op over the vmapped dimension (slice by slice, then stacked), bit for bit:

* **folded:** when every vmapped tensor is a chain argument (one of its dims the op's chain count B: x, the scores,
  the step sizes, given noise or uniforms, the trajectories' (T + 1, B, D) states), every output has a chain dim, and
  the op draws nothing in the call, each chain's result depends on its own chain's entries only, so the V slices of B
  chains run as one call on V·B chains (each chain argument's vmapped dim moved next to its chain dim and the two
  merged, slice-major; an unbatched one repeated; the outputs' chain dims split back into (V, B)). One kernel launch
  instead of V. The kernels' per-chain arithmetic does not depend on a chain's place in the batch (tested bit for bit).
* **one call per slice** otherwise (then stacked): an op whose draws depend on the chain index (noise / u not given,
  the whole-move ops, the policy rollouts: folding would hand slice v the chain indices v·B ... v·B + B − 1, where each
  slice of the map draws with chains 0 ... B − 1), a vmapped parameter (mixture, network layers, seed tensor), an
  output summed over the chains (the network ops' parameter gradients), or B given as an int (the rollouts'
  batch_size). score_mh_accept's score_prop, (M + 1)·B rows of stacked sets, folds set by set (`STACKED_SETS`).

Without these rules torch runs its generic per-slice fallback with a performance warning for every op.
"""
from __future__ import annotations

import re

import torch

from . import _table

DRAW_REPLACED_BY = ("noise", "u")
"""The optional arguments that, given, replace an op's in-kernel draw (the drawn noise ξ of the proposal and SDE ops,
the accept ops' uniforms)."""


def chain_dim(shape: tuple):
    """The position of the chain count B in a table shape (None: the tensor has no chain dim)."""
    return shape.index("B") if "B" in shape else None


def _b_computed(op: _table.Op) -> bool:
    """Whether the chain count B comes from an int argument (the rollouts' batch_size) or another dim is computed from
    it (score_mh_accept's M = R // B − 1): then no argument's shape says B alone."""
    return op.dims is not None and (re.search(r"\bB = batch_size", op.dims) is not None
                                    or re.search(r"=[^;]*\bB\b", op.dims) is not None)


STACKED_SETS = {"score_mh_accept": "score_prop"}
"""An argument whose rows are sets of B rows stacked set-major: score_mh_accept's score_prop, (M + 1)·B rows (s(x')
then the M interior sets) without `interior`, B with it. Folded as (sets, B, ...), so the op folds though its M is
computed from B."""


def foldable(op: _table.Op) -> bool:
    """Whether `op` folds a vmapped dimension into its chains when only chain arguments are vmapped and it draws
    nothing (`kernel`): every output with a chain dim, no list output, B read from the arguments' shapes alone (or
    from them and a `STACKED_SETS` argument)."""
    return (any(a.kind in ("state", "tensor") and chain_dim(a.shape) is not None for a in op.schema_args)
            and all(chain_dim(o.shape) is not None and not o.like_list for o in op.outs)
            and (not _b_computed(op) or op.name in STACKED_SETS))


_peek_interpreter = torch._C._functorch.peek_interpreter_stack
_VmapInterpreter = torch._C._functorch.CVmapInterpreterPtr
_unwrap_batched = torch._C._functorch._unwrap_batched
_add_batch_dim = torch._C._functorch._add_batch_dim
_EXCLUDE_BATCHED = torch._C.DispatchKeySet(torch._C.DispatchKey.FuncTorchBatched)


def kernel(op: _table.Op, opobj):
    """The op's kernel at the FuncTorchBatched key (called with the dispatch key set): the arguments unwrapped at
    vmap's current level, folded or run once per slice (module docstring) below the key, the outputs wrapped back
    with their vmapped dim where the fold split it out of their chain dim, else first. (What
    `torch.library.register_vmap` builds, without its pytree passes over the arguments: with a network's list of
    layers and its ints and floats those cost several hundred µs a call.)"""
    names = [a.name for a in op.schema_args]
    chain_args = {i: chain_dim(a.shape) for i, a in enumerate(op.schema_args)  # chain arguments: their chain dims
                  if a.kind in ("state", "tensor") and chain_dim(a.shape) is not None}
    outs = [chain_dim(o.shape) for o in op.outs]
    tensors = [i for i, a in enumerate(op.schema_args) if a.kind in ("state", "tensor")]
    lists = [i for i, a in enumerate(op.schema_args) if a.kind == "tensors"]
    n, fold_ok, single = len(names), foldable(op), len(op.outs) == 1  # single: the op returns one tensor
    draw_args = [names.index(a) for a in DRAW_REPLACED_BY if a in names] if op.u64_args else []
    always_draws = bool(op.u64_args) and not draw_args
    stacked = names.index(STACKED_SETS[op.name]) if op.name in STACKED_SETS else None

    def call(args):
        """The op's outputs as a tuple (a one-output op's too)."""
        result = opobj(*args)
        return (result,) if single else result

    first = [0] * len(op.outs)  # the per-slice outputs' vmapped dims

    def unwrapped(args, level):
        """(the arguments at the level below, the vmapped dim of each tensor argument by position, or of each
        element of a list argument)."""
        args, dims = list(args), {}
        for i in [*tensors, *range(n, len(args))]:  # and the u64 arguments' trailing tensor forms
            if args[i] is not None:
                args[i], d = _unwrap_batched(args[i], level)
                if d is not None:
                    dims[i] = d
        for i in lists:
            pairs = [_unwrap_batched(t, level) for t in args[i]]
            if any(d is not None for _, d in pairs):
                args[i], dims[i] = [t for t, _ in pairs], [d for _, d in pairs]
        return args, dims

    def chains(args, dims, i):
        """B as argument i's slices have it (its chain dim's size)."""
        t, d, c = args[i], dims.get(i), chain_args[i]
        return t.shape[c if d is None or d > c else c + 1]

    def folds(args, dims):
        """Whether the call folds (the module docstring), its chain arguments' slices all of one B (else the call per
        slice lets the op's check name the argument)."""
        if not (fold_ok and not always_draws and all(args[i] is not None for i in draw_args)
                and all(i in chain_args or i == stacked for i in dims)):
            return False
        bs = {chains(args, dims, i) for i in chain_args if args[i] is not None}
        if stacked is not None and len(bs) == 1:
            t, d = args[stacked], dims.get(stacked)
            rows = t.shape[0 if d is None or d > 0 else 1]
            b = next(iter(bs))
            return b > 0 and rows % b == 0
        return len(bs) == 1

    def fold(size, args, dims):
        b = next(chains(args, dims, i) for i in chain_args if args[i] is not None)  # B, the chains of one slice
        for i, c in chain_args.items():
            t = args[i]
            if t is not None:
                t = _moved(t, dims[i], c) if i in dims else t.unsqueeze(c).expand(*t.shape[:c], size, *t.shape[c:])
                args[i] = t.reshape(*t.shape[:c], size * b, *t.shape[c + 2:]).contiguous()
        if stacked is not None:  # (V, sets·B, ...) -> (sets, V·B, ...), flattened
            t = args[stacked]
            t = _moved(t, dims[stacked], 0) if stacked in dims else t.expand(size, *t.shape)
            sets = t.shape[1] // b
            args[stacked] = t.reshape(size, sets, b, *t.shape[2:]).transpose(0, 1).reshape(
                sets * size * b, *t.shape[2:]).contiguous()
        result = _each_output(call(args), lambda o, k: o.reshape(*o.shape[:outs[k]], size, b, *o.shape[outs[k] + 1:]))
        return result, outs

    def per_slice(size, args, dims):
        if size == 0:  # no slice to call: the outputs of a zero-filled one, none of them kept
            return _each_output(call(_zero_slice(args, dims)), lambda o, k: o.new_empty((0, *o.shape))), first
        return _stack([call(_select(args, dims, v)) for v in range(size)]), first

    def batched(keyset, *args):
        interpreter = _peek_interpreter()
        level, size = interpreter.level(), _VmapInterpreter(interpreter).batchSize()
        args, dims = unwrapped(args, level)
        with torch._C._ExcludeDispatchKeyGuard(_EXCLUDE_BATCHED):
            if not dims:  # nothing vmapped at this level
                return opobj(*args)
            result, out_dims = (fold if folds(args, dims) else per_slice)(size, args, dims)
        result = _each_output(result, lambda o, k: _add_batch_dim(o, out_dims[k], level))
        return result[0] if single else result
    batched.__name__ = f"{op.name}_vmap"
    return batched


def _moved(t, d, c):
    """t with dim d moved to position c (a permuted view; `movedim` took about 40 µs a call inside the rule)."""
    if d == c:
        return t
    order = [k for k in range(t.dim()) if k != d]
    order.insert(c, d)
    return t.permute(order)


def _each_vmapped(args, dims, fn):
    """The arguments with fn(t, d) in place of each vmapped tensor t, d its vmapped dim (`dims`: by position; a list
    argument's by element)."""
    def one(t, d):
        return t if d is None else fn(t, d)
    return [a if i not in dims else [one(t, e) for t, e in zip(a, dims[i])] if isinstance(dims[i], list)
            else one(a, dims[i]) for i, a in enumerate(args)]


def _select(args, dims, v):
    """Slice v of the arguments."""
    return _each_vmapped(args, dims, lambda t, d: t.select(d, v))


def _zero_slice(args, dims):
    """The arguments with each vmapped tensor replaced by one zero-filled slice (its vmapped dim dropped)."""
    return _each_vmapped(args, dims, lambda t, d: t.new_zeros((*t.shape[:d], *t.shape[d + 1:])))


def _each_output(outs, fn):
    """fn(t, k) over each tensor t of an op's outputs (a tuple of tensors, None and lists of tensors), k its output's
    index."""
    return tuple(None if o is None else [fn(t, k) for t in o] if isinstance(o, list) else fn(o, k)
                 for k, o in enumerate(outs))


def _stack(slices):
    """The per-slice outputs (tuples) stacked along a new first dimension."""
    return tuple(None if o is None else
                 [torch.stack([s[k][j] for s in slices]) for j in range(len(o))] if isinstance(o, list) else
                 torch.stack([s[k] for s in slices]) for k, o in enumerate(slices[0]))
