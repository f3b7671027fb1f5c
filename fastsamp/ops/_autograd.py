"""Backward formulas of the registered ops that users differentiate (the Autograd kernels of `_library.py`).

Each entry is (setup_context, backward) for `torch.ops.fastsamp.<op>`; backward returns one gradient per
schema argument (None for scalars, absent optional tensors and inputs without a gradient). The streaming
steps are linear (or bilinear) in their inputs: closed forms below. gmm_score's backward recomputes the
vector-Jacobian product through the PyTorch reference (`torch.func.vjp` of `reference.gmm_score`: one
(B, K, D) evaluation, the cost of the reference forward), which gives the gradients of logp and score
w.r.t. x, means, log_weights and variances, so a mixture can be fitted by likelihood.
ξ is the op's noise: the given `noise`, or the Philox draw (a constant: no gradient).
Forward mode (torch.func.jvp / jacfwd / hessian, torch.autograd.forward_ad): each op with a backward has a
`<op>_jvp` (`JVPS`): given one tangent per schema argument (None: no tangent), the tangents of the outputs. The
linear steps' are the op's linear part applied to the tangents; gmm_score's is the reference's lines differentiated
forward by hand (a Hessian-vector product in x, about the cost of one reference forward): torch.func.jvp of the
reference, as its backward takes the reference's vjp, cannot run inside the op's jvp. Under nested torch.func
transforms (hessian, jacfwd(jacfwd), ...; regular autograd over torch.func.grad too) the op runs its reference
instead (`_library._reference_test`).
`first_order` makes the fused backwards of the ops' autograd.Functions (mlp.py, trajectory.py) raise, naming the
op, when differentiated again.
"""
from __future__ import annotations

import math

import torch
from torch._functorch.utils import unwrap_dead_wrappers as _unwrap_dead_wrappers

from . import reference


def _dot(a, b):
    return (a * b).sum(-1)


def _setup_all(ctx, inputs, output):
    """Save the tensor inputs (None kept in place) and the scalars; the output too (for the backward and the jvp)."""
    ctx.tensor_at = [i for i, a in enumerate(inputs) if isinstance(a, torch.Tensor)]
    saved = (*(inputs[i] for i in ctx.tensor_at), *(output if isinstance(output, tuple) else (output,)))
    ctx.save_for_backward(*saved)
    ctx.save_for_forward(*saved)
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


def _constant(t):
    """t's value as a constant (detached): the formulas take from the outputs only constants (the drawn noise) and
    recompute the rest from the inputs. The Function runs at one level only (under nested differentiating
    transforms the op runs its reference), so detaching is enough; unwrapping torch.func's wrappers too would strip
    vmap's batching (vmap(jacrev(...)) of a drawn-noise mala_propose came out wrong)."""
    return t.detach()


def _mala_noise_term(x, score, eps, root, noise, x_prop):
    """ξ/√(2ε) of x' = x + ε score + √(2ε) ξ; a drawn ξ (noise None) read back from x' as a constant."""
    if noise is not None:
        return noise / root
    return _constant((x_prop - x - eps * score) / root) / root


def mala_propose_backward(ctx, g):
    """x' = x + ε score + √(2ε) ξ: ∂/∂ε = score + ξ/√(2ε)."""
    (x, score, step_size, noise, *_), (x_prop,) = _saved(ctx)
    eps = step_size[:, None]
    root = torch.sqrt(2 * eps)
    g_eps = _dot(g, score + _mala_noise_term(x, score, eps, root, noise, x_prop))
    return (g, eps * g, g_eps, None if noise is None else root * g, None, None, None)


def line_points_backward(ctx, g):
    """points[i−1] = x + t_i (x' − x), t_i = i/n."""
    (x, _, n), _ = _saved(ctx)
    t = (torch.arange(1, n, dtype=x.dtype, device=x.device) / n)[:, None, None]
    g_prop = (t * g).sum(0)
    return g.sum(0) - g_prop, g_prop, None


def leapfrog_backward(ctx, g_x, g_p):
    """p½ = p + (ε/2) s, x_next = x + ε p½ (p½ recomputed from the inputs, not read back from the outputs)."""
    (x, p, score, step_size), _ = _saved(ctx)
    eps = step_size[:, None]
    p_half = p + 0.5 * eps * score
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


def _linear(like, *terms):
    """Σ c·t over the terms (c, t) whose tangent t is given (None: no tangent); zeros like `like` if none is."""
    out = None
    for c, t in terms:
        if t is not None:
            out = c * t if out is None else out + c * t
    return torch.zeros_like(like) if out is None else out


def gmm_score_jvp(ctx, dx, d_means, d_log_weights, d_variances, *_):
    """The reference's lines (reference.gmm_score) differentiated forward, absent tangents as zeros:
    s = α² v + σ², ℓ_k = lw_k − ½|c_k|²/s_k − ½ D log(2π s_k) with c_k = α μ_k − x and lw = log w − lse(log w),
    logp = lse_k ℓ_k, r = softmax_k ℓ, score = Σ_k (r_k/s_k) c_k; so dlogp = Σ_k r_k dℓ_k, dr = r (dℓ − dlogp),
    dscore = Σ_k ((dr_k − r_k ds_k/s_k)/s_k) c_k + (r_k/s_k) dc_k (in x, a Hessian-vector product of log p)."""
    (x, means, log_weights, variances, alpha, sigma2), _ = _saved(ctx)
    dx, d_means, d_log_weights, d_variances = (torch.zeros_like(p) if t is None else t for p, t in zip(
        (x, means, log_weights, variances), (dx, d_means, d_log_weights, d_variances)))
    s, ds = alpha * alpha * variances + sigma2, alpha * alpha * d_variances
    d_lw = d_log_weights - _dot(torch.softmax(log_weights, 0), d_log_weights)
    c = alpha * means[None] - x[:, None]  # (B, K, D)
    dc = alpha * d_means[None] - dx[:, None]
    q, dq = _dot(c, c), 2 * _dot(c, dc)
    ell = log_weights - torch.logsumexp(log_weights, 0) - 0.5 * q / s - 0.5 * x.shape[1] * torch.log(2 * math.pi * s)
    d_ell = d_lw - 0.5 * dq / s + 0.5 * q * ds / (s * s) - 0.5 * x.shape[1] * ds / s
    r = torch.softmax(ell, 1)
    d_logp = _dot(r, d_ell)
    dr = r * (d_ell - d_logp[:, None])
    d_score = torch.einsum("bk,bkd->bd", (dr - r * ds / s) / s, c) + torch.einsum("bk,bkd->bd", r / s, dc)
    return d_score, d_logp


def sde_step_jvp(ctx, dx, d_score, d_extra, d_noise, *_):
    """x_new = a·x + c_s·(score + extra_drift) + c_n·ξ."""
    inputs, (x_new,) = _saved(ctx)
    a, c_s, c_n = inputs[7:10]
    return _linear(x_new, (a, dx), (c_s, d_score), (c_s, d_extra), (c_n, d_noise))


def guided_sde_step_jvp(ctx, dx, d_score, d_shift, dv, d_noise, *_):
    """x_new = a·x + c_s·(score + c_v·v + c_diff·(score_shift − score)) + c_n·ξ."""
    inputs, (x_new,) = _saved(ctx)
    a, c_s, c_v, c_diff, c_n = inputs[8:13]
    return _linear(x_new, (a, dx), (c_s * (1.0 - c_diff), d_score), (c_s * c_diff, d_shift), (c_s * c_v, dv),
                   (c_n, d_noise))


def mala_propose_jvp(ctx, dx, d_score, d_eps, d_noise, *_):
    """x' = x + ε score + √(2ε) ξ: dx' = dx + ε d_score + dε (score + ξ/√(2ε)) + √(2ε) dξ."""
    (x, score, step_size, noise, *_), (x_prop,) = _saved(ctx)
    eps = step_size[:, None]
    root = torch.sqrt(2 * eps)
    d_eps = None if d_eps is None else d_eps[:, None]
    xi_term = _mala_noise_term(x, score, eps, root, noise, x_prop)
    return _linear(x_prop, (1.0, dx), (eps, d_score), (score + xi_term, d_eps), (root, d_noise))


def line_points_jvp(ctx, dx, dx_prop, _n):
    """points[i−1] = x + t_i (x' − x), t_i = i/n."""
    (x, _, n), (points,) = _saved(ctx)
    t = (torch.arange(1, n, dtype=x.dtype, device=x.device) / n)[:, None, None]
    return _linear(points, (1.0 - t, dx), (t, dx_prop))


def leapfrog_jvp(ctx, dx, dp, d_score, d_eps):
    """p½ = p + (ε/2) s, x_next = x + ε p½."""
    (x, p, score, step_size), (x_next, _) = _saved(ctx)
    eps = step_size[:, None]
    p_half = p + 0.5 * eps * score
    d_eps = None if d_eps is None else d_eps[:, None]
    dp_half = _linear(p_half, (1.0, dp), (0.5 * eps, d_score), (0.5 * score, d_eps))
    return _linear(x_next, (1.0, dx), (eps, dp_half), (p_half, d_eps)), dp_half


def leapfrog_finish_jvp(ctx, dx, dx_next, dp_half, d_score, d_score_next, d_eps, d_delta):
    """p_next = p½ + (ε/2) s', Δ' = Δ + ½ (s + s')·(x' − x)."""
    (x, x_next, _, score, score_next, step_size, _), (p_next, delta_next) = _saved(ctx)
    eps = step_size[:, None]
    d_eps = None if d_eps is None else d_eps[:, None]
    dp_next = _linear(p_next, (1.0, dp_half), (0.5 * eps, d_score_next), (0.5 * score_next, d_eps))
    half_sum, half_step = 0.5 * (score + score_next), 0.5 * (x_next - x)
    d_delta_next = _linear(delta_next, (1.0, d_delta), *(
        (1.0, None if t is None else _dot(c, t)) for c, t in
        ((half_step, d_score), (half_step, d_score_next), (half_sum, dx_next), (-half_sum, dx))))
    return dp_next, d_delta_next


def momentum_refresh_jvp(ctx, dp, _damping, d_noise, *_):
    """p' = damping·p + √(1 − damping²) ξ."""
    inputs, (p_new,) = _saved(ctx)
    damping = inputs[1]
    return _linear(p_new, (damping, dp), ((1.0 - damping * damping) ** 0.5, d_noise))


_FUNCTION_APPLY = vars(torch._C._FunctionBase)["apply"]
"""autograd's own apply of an autograd.Function (what `Function.apply` calls outside torch.func's transforms)."""


def apply(function, *args):
    """function.apply(*args) for fastsamp's autograd.Functions (positional arguments, no defaults): outside torch.func's
    transforms autograd's own apply, as `Function.apply` calls it but without its per-call binding of the arguments
    to forward's signature (inspect.signature, ~13 µs a call, for defaults these Functions do not have); inside a
    transform `Function.apply` itself (torch.func's custom_function_call), and while torch.compile traces (dynamo
    traces Function.apply, not autograd's own)."""
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return function.apply(*args)
    return _FUNCTION_APPLY.__get__(None, function)(*_unwrap_dead_wrappers(args))


class _FirstOrderGrads(torch.autograd.Function):
    """The gradients of a fused op's backward unchanged, tied (under create_graph=True) to what they depend on: the
    cotangents and the saved inputs. Differentiating them raises, naming the op: the backward kernels are first order
    (once_differentiable ties them to the cotangents alone, so a second grad to a weight reached only through the
    saved tensors would silently lack those terms)."""

    generate_vmap_rule = True  # torch.func: forward and setup_context apart, vmap by running forward batched

    @staticmethod
    def forward(op, n, *tensors):
        return tuple(t.view_as(t) for t in tensors[:n])  # the gradients; the other tensors only link the graph

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.op = inputs[0]

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
        for k, g in zip(kept, apply(_FirstOrderGrads, op, len(kept), *(grads[k] for k in kept), *links)):
            grads[k] = g
    return grads


FORMULAS = {name[:-len("_backward")]: fn for name, fn in dict(globals()).items() if name.endswith("_backward")}
JVPS = {name[:-len("_jvp")]: fn for name, fn in dict(globals()).items() if name.endswith("_jvp")}
SETUP = _setup_all
