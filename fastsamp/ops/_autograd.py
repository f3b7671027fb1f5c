"""Backward formulas of the registered ops that users differentiate (the Autograd kernels of `_library.py`).

Each entry is (setup_context, backward) for `torch.ops.fastsamp.<op>`; backward returns one gradient per
schema argument (None for scalars, absent optional tensors and inputs without a gradient). The streaming
steps are linear (or bilinear) in their inputs: closed forms below. gmm_score's backward recomputes the
vector-Jacobian product through the PyTorch reference (`torch.func.vjp` of `reference.gmm_score`: one
(B, K, D) evaluation, the cost of the reference forward), which gives the gradients of logp and score
w.r.t. x, means, log_weights and variances, so a mixture can be fitted by likelihood.
ξ is the op's noise: the given `noise`, or the Philox draw (a constant: no gradient).
`first_order` makes the fused backwards of the ops' autograd.Functions (mlp.py, trajectory.py) raise, naming the
op, when differentiated again.
"""
from __future__ import annotations

import torch

from . import reference


def _dot(a, b):
    return (a * b).sum(-1)


def _setup_all(ctx, inputs, output):
    """Save the tensor inputs (None kept in place) and the scalars; the output too."""
    ctx.tensor_at = [i for i, a in enumerate(inputs) if isinstance(a, torch.Tensor)]
    ctx.save_for_backward(*(inputs[i] for i in ctx.tensor_at), *(output if isinstance(output, tuple) else (output,)))
    ctx.inputs = [None if isinstance(a, torch.Tensor) else a for a in inputs]
    ctx.n_out = len(output) if isinstance(output, tuple) else 1


def _saved(ctx):
    """(inputs with the saved tensors put back, outputs)."""
    saved = ctx.saved_tensors
    inputs = list(ctx.inputs)
    for k, i in enumerate(ctx.tensor_at):
        inputs[i] = saved[k]
    return inputs, saved[len(ctx.tensor_at):]


def _only(inputs, grads):
    """grads with None where the input is absent (an optional tensor not given)."""
    return tuple(None if a is None else g for a, g in zip(inputs, grads))


def gmm_score_backward(ctx, g_score, g_logp):
    (x, means, log_weights, variances, alpha, sigma2), _ = _saved(ctx)
    _, vjp = torch.func.vjp(lambda *t: reference.gmm_score(*t, alpha, sigma2), x, means, log_weights, variances)
    return (*vjp((g_score, g_logp)), None, None)


def sde_step_backward(ctx, g):
    """x_new = a·x + c_s·(score + extra_drift) + c_n·ξ."""
    inputs, _ = _saved(ctx)
    a, c_s, c_n = inputs[7:10]
    return _only(inputs, (a * g, c_s * g, c_s * g, c_n * g)) + (None,) * 6


def guided_sde_step_backward(ctx, g):
    """x_new = a·x + c_s·(score + c_v·v + c_diff·(score_shift − score)) + c_n·ξ."""
    inputs, _ = _saved(ctx)
    a, c_s, c_v, c_diff, c_n = inputs[8:13]
    grads = (a * g, (c_s * (1.0 - c_diff)) * g, (c_s * c_diff) * g, (c_s * c_v) * g, c_n * g)
    return _only(inputs, grads) + (None,) * 8


def mala_propose_backward(ctx, g):
    """x' = x + ε score + √(2ε) ξ: ∂/∂ε = score + ξ/√(2ε), with ξ/√(2ε) = (x' − x − ε score)/(2ε) when ξ was
    drawn."""
    (x, score, step_size, noise, *_), (x_prop,) = _saved(ctx)
    eps = step_size[:, None]
    root = torch.sqrt(2 * eps)
    xi_term = noise / root if noise is not None else (x_prop - x - eps * score) / (2 * eps)
    g_eps = _dot(g, score + xi_term)
    return (g, eps * g, g_eps, None if noise is None else root * g, None, None, None)


def line_points_backward(ctx, g):
    """points[i−1] = x + t_i (x' − x), t_i = i/n."""
    (x, _, n), _ = _saved(ctx)
    t = (torch.arange(1, n, dtype=x.dtype, device=x.device) / n)[:, None, None]
    g_prop = (t * g).sum(0)
    return g.sum(0) - g_prop, g_prop, None


def leapfrog_backward(ctx, g_x, g_p):
    """p½ = p + (ε/2) s, x_next = x + ε p½."""
    (x, p, score, step_size), (_, p_half) = _saved(ctx)
    eps = step_size[:, None]
    kick = g_p + eps * g_x
    return g_x, kick, 0.5 * eps * kick, _dot(0.5 * score, kick) + _dot(g_x, p_half)


def leapfrog_finish_backward(ctx, g_p, g_delta):
    """p_next = p½ + (ε/2) s', Δ' = Δ + ½ (s + s')·(x' − x)."""
    (x, x_next, _, score, score_next, step_size, _), _ = _saved(ctx)
    gd = g_delta[:, None]
    half_sum, half_step = 0.5 * gd * (score + score_next), 0.5 * gd * (x_next - x)
    eps = step_size[:, None]
    return (-half_sum, half_sum, g_p, half_step, 0.5 * eps * g_p + half_step, _dot(0.5 * score_next, g_p), g_delta)


def momentum_refresh_backward(ctx, g):
    """p' = damping·p + √(1 − damping²) ξ."""
    inputs, _ = _saved(ctx)
    damping = inputs[1]
    return (damping * g, None, None if inputs[2] is None else (1.0 - damping * damping) ** 0.5 * g, None, None, None)


class _FirstOrderGrads(torch.autograd.Function):
    """The gradients of a fused op's backward unchanged, tied (under create_graph=True) to what they depend on: the
    cotangents and the saved inputs. Differentiating them raises, naming the op: the backward kernels are first order
    (once_differentiable ties them to the cotangents alone, so a second grad to a weight reached only through the
    saved tensors would silently lack those terms)."""

    @staticmethod
    def forward(ctx, op, n, *tensors):
        ctx.op = op
        return tuple(t.view_as(t) for t in tensors[:n])  # the gradients; the other tensors only link the graph

    @staticmethod
    def backward(ctx, *_):
        raise RuntimeError(f"{ctx.op} is differentiable once: its backward kernel has no backward, so a second "
                           "derivative through it (autograd.grad(create_graph=True), then another grad) is not "
                           "available; use the PyTorch reference (backend=\"torch\", or torch.func) for higher "
                           "derivatives")


def first_order(op, grads, *depends_on):
    """`grads` (a sequence, None entries kept) as a list; when a backward runs with grad mode on
    (create_graph=True) and a tensor of grads or `depends_on` (the cotangents and saved inputs; None skipped)
    requires grad, each gradient is tied to them through `_FirstOrderGrads`, so a second derivative raises."""
    grads = list(grads)
    links = [t for t in depends_on if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in (*links, *(g for g in grads if g is not None))):
        kept = [k for k, g in enumerate(grads) if g is not None]
        for k, g in zip(kept, _FirstOrderGrads.apply(op, len(kept), *(grads[k] for k in kept), *links)):
            grads[k] = g
    return grads


FORMULAS = {name[:-len("_backward")]: fn for name, fn in dict(globals()).items() if name.endswith("_backward")}
SETUP = _setup_all
