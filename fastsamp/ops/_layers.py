"""The one packing of an MLP's layers for the fused network kernels of both families, the score / energy
networks (fastsamp/ops/mlp.py: ScoreNet, EnergyNet) and the DriftNet policy (fastsamp/ops/trajectory.py):

    [W_in, b_in, W_out, b_out, W_1, b_1, ..., W_L, b_L]

the input layer, the output layer, then the L hidden layers, each weight (out, in) row-major beside its
bias. The C kernels take W_in, b_in, W_out, b_out and the hidden lists params[4::2], params[5::2]
(the op table's C orders); a score network's backend list puts its Fourier frequencies and data mean
before these."""
from __future__ import annotations

import torch

from . import _checks


def pack_layers(weights, biases, widths, like: torch.Tensor, *, weight_names, bias_names, like_name: str = "x",
                cast: bool = False) -> list:
    """The layers (weights, biases in network order: input, hidden..., output; widths: each weight's (out, in))
    packed as above, each checked to have its shape and like's dtype and device (cast to like's dtype first,
    detached, when `cast`), contiguous. weight_names / bias_names: each layer's name in error messages."""
    weights, biases = list(weights), list(biases)
    if len(weights) < 2 or len(weights) != len(biases) or len(widths) != len(weights):
        raise ValueError(f"weights and biases must be two lists of the same length >= 2 (input layer, hidden "
                         f"layers, output layer), got {len(weights)} weights and {len(biases)} biases")

    def checked(name, t, shape):
        if cast and isinstance(t, torch.Tensor):
            t = t.detach().to(like.dtype)
        return _checks.like(name, t, like, shape, x_name=like_name)

    return packed([checked(n, w, shape) for n, w, shape in zip(weight_names, weights, widths)],
                  [checked(n, b, (shape[0],)) for n, b, shape in zip(bias_names, biases, widths)])


def packed(weights, biases) -> list:
    """[W_in, b_in, W_out, b_out, W_1, b_1, ..., W_L, b_L] of the layers in network order (no checks)."""
    out = [weights[0], biases[0], weights[-1], biases[-1]]
    for w, b in zip(weights[1:-1], biases[1:-1]):
        out += [w, b]
    return out
