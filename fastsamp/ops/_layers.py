"""The one packing of an MLP's layers for the fused network kernels of both families, the score / energy
networks (fastsamp/ops/mlp.py: ScoreNet, EnergyNet) and the DriftNet policy (fastsamp/ops/trajectory.py):

    [W_in, b_in, W_out, b_out, W_1, b_1, ..., W_L, b_L]

the input layer, the output layer, then the L hidden layers, each weight (out, in) row-major beside its
bias. The C kernels take W_in, b_in, W_out, b_out and the hidden lists params[4::2], params[5::2]
(the op table's C orders); a score network's backend list puts its Fourier frequencies and data mean
before these.

The policy ops check and pack a DriftNet's layers once per state of its tensors (`memoised`; the score / energy
networks are checked at every call: the samplers build a new ScoreNet per level): a repeated call with unchanged
layers reuses the checked list. Only a list whose tensors are the network's own (the same
memory, no autograd node) is kept, so the kernels always read the live values: a write that bumps no version
counter (a fused optimizer step, `p.data.mul_()`) is then seen too, and a new tensor, dtype, device, shape,
strides or requires_grad is seen at the next call. A cast or contiguous copy is rebuilt every call."""
from __future__ import annotations

import torch

from . import _checks


def pack_layers(weights, biases, widths, like: torch.Tensor, *, weight_names, bias_names, like_name: str = "x",
                cast: bool = False) -> list:
    """The layers (weights, biases in network order: input, hidden..., output; widths: each weight's (out, in))
    packed as above, each checked to have its shape and like's dtype and device (cast to like's dtype first,
    detached, when `cast`), contiguous. weight_names / bias_names: k -> layer k's name in error messages (called
    only when a check fails: the names of a call that passes are never built)."""
    weights, biases = list(weights), list(biases)
    if len(weights) < 2 or len(weights) != len(biases) or len(widths) != len(weights):
        raise ValueError(f"weights and biases must be two lists of the same length >= 2 (input layer, hidden "
                         f"layers, output layer), got {len(weights)} weights and {len(biases)} biases")
    bias_widths = [(w[0],) for w in widths]
    if not cast and _checks.all_like(weights + biases, [*widths, *bias_widths], like):
        return packed(weights, biases)

    def checked(name, t, shape):
        if cast and isinstance(t, torch.Tensor):
            t = t.detach().to(like.dtype)
        return _checks.like(name, t, like, shape, x_name=like_name)

    return packed([checked(weight_names(k), w, shape) for k, (w, shape) in enumerate(zip(weights, widths))],
                  [checked(bias_names(k), b, shape) for k, (b, shape) in enumerate(zip(biases, bias_widths))])


def packed(weights, biases) -> list:
    """[W_in, b_in, W_out, b_out, W_1, b_1, ..., W_L, b_L] of the layers in network order (no checks)."""
    out = [weights[0], biases[0], weights[-1], biases[-1]]
    for w, b in zip(weights[1:-1], biases[1:-1]):
        out += [w, b]
    return out


def tensors_key(tensors) -> tuple | None:
    """What can change a check or a packing of `tensors` (other than their values, which a kept packing reads
    live: `memoised`): per tensor its identity, version counter, data pointer, dtype, device, shape, strides and
    requires_grad (`.data =` and `requires_grad_` bump no version; `w.data = w.data.t()` on a square layer changes
    only the strides). None when one of them is not a torch.Tensor, or there are none: not memoised."""
    try:
        key = tuple((id(t), t._version, t.data_ptr(), t.dtype, t.device, t.shape, t.stride(), t.requires_grad)
                    for t in tensors)
    except (AttributeError, RuntimeError, TypeError):  # not a tensor, or one without storage (fake, meta-less)
        return None
    return key or None


def memoised(memo: dict, context, tensors, build):
    """build() (the checked, packed layers of `tensors`), kept in `memo` (the network's own dict) per `context`
    (hashable: what else the result depends on, e.g. the dtype, device and width of the chains, whether values are
    validated, grad mode) and reused while `tensors_key(tensors)` is unchanged. Kept only when every tensor of the
    result is one of `tensors`' memory with no autograd node (`_aliases`): a copy (a cast, a contiguous copy) would
    hold stale values after a write that bumps no version counter (a fused optimizer step, `.data.mul_()`), and a
    copy of a tensor that requires grad belongs to one graph. The entry keeps the tensors alive, so that no new
    tensor can take a kept one's identity; a miss drops the entries of other keys (so no old storage is kept alive
    after a dtype or device change). Not memoised under torch.compile tracing (the plain path is traced)."""
    if torch.compiler.is_compiling():
        return build()
    tensors = tuple(tensors)
    key = tensors_key(tensors)
    if key is None:
        return build()
    entry = memo.get(context)
    if entry is not None and entry[0] == key:
        return entry[2]
    for stale in [c for c, e in memo.items() if e[0] != key]:
        del memo[stale]
    out = build()
    if _aliases(out, {k[2] for k in key}):
        memo[context] = (key, tensors, out)
    return out


def _aliases(v, data_ptrs: set) -> bool:
    """Whether every tensor of v (a tensor, or lists and tuples of them and of other values) starts at one of
    `data_ptrs` and has no autograd node (is an input's own memory, not a copy)."""
    if isinstance(v, (list, tuple)):
        return all(_aliases(e, data_ptrs) for e in v)
    return not isinstance(v, torch.Tensor) or (v.grad_fn is None and v.data_ptr() in data_ptrs)
