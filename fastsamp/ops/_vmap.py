"""Batching rules of the registered ops (`torch.func.vmap`), one per op from the op table (`_table.py`).

vmap(op) must equal the map of op over the vmapped dimension (slice by slice, then stacked), bit for bit:

* **folded:** when every vmapped tensor is a row argument (its first dimension the op's chain count B: x, the
  scores, the step sizes, given noise or uniforms), every output is row-shaped, and the op draws nothing in the call,
  each chain's result depends on its own rows only, so the V slices of B chains run as one call on V·B chains (the
  row arguments moved to (V, B, ...) and flattened, an unbatched one repeated; the outputs split back to (V, B, ...)).
  One kernel launch instead of V.
* **one call per slice** otherwise (then stacked): an op whose draws depend on the chain index (noise / u not given,
  the whole-move ops, the policy rollouts: folding would hand slice v the chain indices v·B ... v·B + B − 1, where each
  slice of the map draws with chains 0 ... B − 1), a vmapped parameter (mixture, network layers, seed tensor), an
  output summed over the chains (the network ops' parameter gradients), or a row argument not in front (the
  trajectories' (T + 1, B, D) states).

Without these rules torch runs its generic per-slice fallback with a performance warning for every op.
"""
from __future__ import annotations

import re

import torch

from . import _table

DRAW_REPLACED_BY = ("noise", "u")
"""The optional arguments that, given, replace an op's in-kernel draw (the drawn noise ξ of the proposal and SDE ops,
the accept ops' uniforms)."""


def _derived_uses_b(op: _table.Op) -> bool:
    """Whether a dim of `op` other than B is computed from B (score_mh_accept's R = (M + 1)·B rows), so that a
    non-row argument's shape depends on the chain count."""
    return op.dims is not None and re.search(r"\bB\b", op.dims.replace("B, D = x.shape", "")) is not None


def foldable(op: _table.Op) -> bool:
    """Whether `op` folds a vmapped dimension into its chains when only row arguments are vmapped and it draws
    nothing (`kernel`): every output row-shaped, no list output, no dim derived from B."""
    return (op.state is not None and all(o.shape[:1] == ("B",) and not o.like_list for o in op.outs)
            and not _derived_uses_b(op))


_peek_interpreter = torch._C._functorch.peek_interpreter_stack
_VmapInterpreter = torch._C._functorch.CVmapInterpreterPtr
_unwrap_batched = torch._C._functorch._unwrap_batched
_add_batch_dim = torch._C._functorch._add_batch_dim
_EXCLUDE_BATCHED = torch._C.DispatchKeySet(torch._C.DispatchKey.FuncTorchBatched)


def kernel(op: _table.Op, opobj):
    """The op's kernel at the FuncTorchBatched key (called with the dispatch key set): the arguments unwrapped at
    vmap's current level, folded or run once per slice (module docstring) below the key, the outputs wrapped back
    with their batch dim first. (What `torch.library.register_vmap` builds, without its pytree passes over the
    arguments: with a network's list of layers and its ints and floats those cost several hundred µs a call.)"""
    names = [a.name for a in op.schema_args]
    rows = frozenset(i for i, a in enumerate(op.schema_args)
                     if a.kind in ("state", "tensor") and a.shape[:1] == ("B",))
    tensors = [i for i, a in enumerate(op.schema_args) if a.kind in ("state", "tensor")]
    lists = [i for i, a in enumerate(op.schema_args) if a.kind == "tensors"]
    n, fold_ok = len(names), foldable(op)
    draw_args = [names.index(a) for a in DRAW_REPLACED_BY if a in names] if op.u64_args else []
    always_draws = bool(op.u64_args) and not draw_args
    state = names.index(op.state.name) if op.state is not None else None

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
        """The first dim of argument i's slices."""
        t, d = args[i], dims.get(i)
        return t.shape[0] if d is None else t.shape[1 if d == 0 else 0]

    def folds(args, dims):
        """Whether the call folds (the module docstring), its row arguments' slices all of B rows (else the call per
        slice lets the op's check name the argument)."""
        if not (fold_ok and not always_draws and all(args[i] is not None for i in draw_args)
                and all(i in rows for i in dims)):
            return False
        b = chains(args, dims, state)
        return all(args[i] is None or chains(args, dims, i) == b for i in rows)

    def fold(size, args, dims):
        b = chains(args, dims, state)  # B, the chains of one slice
        for i in rows:
            t = args[i]
            if t is not None:
                t = _front(t, dims[i]) if i in dims else t.expand(size, *t.shape)
                args[i] = t.reshape(size * b, *t.shape[2:]).contiguous()
        return _map(lambda o: o.reshape(size, b, *o.shape[1:]), opobj(*args))

    def per_slice(size, args, dims):
        if size == 0:  # no slice to call: the outputs of a zero-filled one, with none of its rows
            return _map(lambda o: o.new_empty((0, *o.shape)), opobj(*_zero_slice(args, dims)))
        return _stack([opobj(*_select(args, dims, v)) for v in range(size)])

    def batched(keyset, *args):
        interpreter = _peek_interpreter()
        level, size = interpreter.level(), _VmapInterpreter(interpreter).batchSize()
        args, dims = unwrapped(args, level)
        with torch._C._ExcludeDispatchKeyGuard(_EXCLUDE_BATCHED):
            if not dims:  # nothing vmapped at this level
                return opobj(*args)
            outs = (fold if folds(args, dims) else per_slice)(size, args, dims)
        return _map(lambda o: _add_batch_dim(o, 0, level), outs)
    batched.__name__ = f"{op.name}_vmap"
    return batched


def _front(t, d):
    """t with dim d moved to the front (a permuted view; `movedim` costs about 40 µs here, under vmap)."""
    return t if d == 0 else t.permute(d, *(k for k in range(t.dim()) if k != d))


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


def _map(fn, outs):
    """fn over each tensor of an op's outputs (a tensor, or a tuple of tensors, None and lists of tensors)."""
    if isinstance(outs, torch.Tensor):
        return fn(outs)
    return tuple(None if o is None else [fn(t) for t in o] if isinstance(o, list) else fn(o) for o in outs)


def _stack(slices):
    """The per-slice outputs stacked along a new first dimension (the structure of one slice's outputs)."""
    first = slices[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(slices)
    return tuple(None if o is None else
                 [torch.stack([s[k][j] for s in slices]) for j in range(len(o))] if isinstance(o, list) else
                 torch.stack([s[k] for s in slices]) for k, o in enumerate(first))
