"""Score-network ops: sums of MLP networks, alone or with an analytic Gaussian mixture (the composition
p ∝ Π_i p_i of `fastsamp.models.Product`), and the fused whole-move MALA and HMC kernels on them.

One network at time t, with the marginal (α, σ²) of its schedule at t, v = α² σ_d² + σ² and

    f(x) = W_out act(W_L act(… act(W_0 [x, sin(t ω), cos(t ω)] + b_0) …) + b_L) + b_out,   act = SiLU or exact GELU,

is either a score network (`ScoreNet`, `fastsamp.models.ScoreMLP`): s(x) = (α m − x)/v + f(x)/√v, or an
energy network (`EnergyNet`, `fastsamp.models.EnergyMLP`):

    E(x) = |r|²/(2v),  r = x − α m − √v f(x),  log p = −E,
    s(x) = −∇E = −(I − √v J_f)ᵀ r / v = −r/v + J_f(x)ᵀ r / √v   (J_f = ∂f/∂x),

whose score the kernel computes by one backward through the layers after the forward: energy and score in
one pass.

* `mlp_score`, `mlp_mala`, `mlp_hmc`: sums of score networks (MH by the score trapezoid or none);
* `mlp_energy` (score and log-density of energy networks), `mlp_energy_mala`, `mlp_energy_hmc`: sums of
  networks of both kinds, with MH by the exact energy too when every factor has one.

The C++ kernel evaluates every network on blocks of chains with register-tiled GEMMs (the MLP engine
of csrc/cpu/mlp.h, shared with the DriftNet policy kernels); on CUDA tensors the Triton kernels of
kernels/mlp.py (one program per block of chains, its activations on chip) run the network-sum and move ops, and
kernels/mlp_train.py the ops of one MLP (`mlp_net` and its backward, `mlp_net_lsq`, `mlp_net_energy_lsq`); the
reference is plain PyTorch (autograd for an energy network's score).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from .. import backends
from . import _autograd, _checks, _dispatch, _layers, _library

ACTIVATIONS = {"gelu": 0, "silu": 1}
_N_TRAPEZOID = ("n_trapezoid", 4096)  # (name, largest value) of the whole-move ops' evaluation counts
_N_LEAPFROG = ("n_leapfrog", _checks.MAX_COUNT)


@dataclass(frozen=True)
class _NetAtTime:
    """One network at one time t, as the mlp ops read it.

    weights: W_0 (H, D + 2F), then L hidden (H, H), then W_out (D, H); biases: (H,) ... (D,);
    freq ω (F,); data_mean m (D,); data_var σ_d² > 0; t, alpha α, sigma2 σ² ≥ 0 python floats;
    activation "silu" or "gelu"."""

    weights: tuple
    biases: tuple
    freq: torch.Tensor
    data_mean: torch.Tensor
    data_var: float
    t: float
    alpha: float
    sigma2: float
    activation: str = "silu"


class ScoreNet(_NetAtTime):
    """A score network: s(x) = (α m − x)/v + f(x)/√v (`ScoreMLP.score_net(t, x)` builds it; fields: see
    `_NetAtTime`)."""


class EnergyNet(_NetAtTime):
    """An energy network: log p(x) = −|x − α m − √v f(x)|²/(2v) (`EnergyMLP.energy_net(t, x)` builds it;
    fields as ScoreNet's)."""


class MixtureScore(NamedTuple):
    """A Gaussian-mixture factor of a sum of scores: the mixture of `ops.gmm_score` at (alpha, sigma2)."""

    means: torch.Tensor
    log_weights: torch.Tensor
    variances: torch.Tensor
    alpha: float
    sigma2: float


def _net_params(x, net, i, kinds):
    """The validated tensors of network i (an instance of one of `kinds`) as the backends take them, its dims
    and its scalars (not memoised: the samplers build a new ScoreNet / EnergyNet per level, `FourierMLP.fused_net`,
    so a memo per object never hits there and its key and store cost more than the checks save)."""
    name = f"nets[{i}]"
    if not isinstance(net, kinds):
        allowed = " or ".join(f"fastsamp.ops.{k.__name__}" for k in kinds)
        hint = " (energy networks go to ops.mlp_energy, mlp_energy_mala, mlp_energy_hmc)" if isinstance(
            net, EnergyNet) else ""
        raise TypeError(f"{name} must be a {allowed}, got {type(net).__name__}{hint}")
    D = x.shape[1]
    weights, biases = net.weights, net.biases
    if type(weights) is not tuple or type(biases) is not tuple:
        weights, biases = _layer_lists(f"{name}.", weights, biases)
    if len(weights) < 2 or len(weights) != len(biases):
        raise ValueError(f"{name}: weights and biases must be two lists of the same length >= 2 (input layer, "
                         f"hidden layers, output layer), got {len(weights)} weights and {len(biases)} biases")
    freq, mean, w0 = net.freq, net.data_mean, weights[0]
    if not isinstance(freq, torch.Tensor):
        freq = _checks.from_dlpack(f"{name}.freq", freq)
    if not isinstance(freq, torch.Tensor) or freq.dim() != 1:
        raise ValueError(f"{name}.freq must be a 1-D tensor (n_freq,), got {getattr(freq, 'shape', freq)}")
    F = freq.shape[0]
    if not _checks.all_like((freq, mean), ((F,), (D,)), x):
        freq = _checks.like(f"{name}.freq", freq, x, (F,))
        mean = _checks.like(f"{name}.data_mean", mean, x, (D,))
    if not isinstance(w0, torch.Tensor):
        w0 = _checks.from_dlpack(f"{name}.weights[0]", w0)
    if not isinstance(w0, torch.Tensor) or w0.dim() != 2 or w0.shape[0] < 1:
        raise ValueError(f"{name}.weights[0] must be an (H, D + 2·n_freq) tensor, got "
                         f"{tuple(getattr(w0, 'shape', ()))}")
    H, last = w0.shape[0], len(weights) - 1
    widths = [(H, D + 2 * F)] + [(H, H)] * (last - 1) + [(D, H)]
    layers = _layers.pack_layers(
        weights, biases, widths, x, bias_names=lambda k: f"{name}.biases[{k}]",
        weight_names=lambda k: f"{name}.weights[{k}] ({_LAYER_KINDS[min(k, 1) + (k == last)]})")
    if not isinstance(net.activation, str) or net.activation not in ACTIVATIONS:
        raise ValueError(f"{name}.activation must be one of {tuple(ACTIVATIONS)}, got {net.activation!r}")
    t = _checks.finite_float(f"{name}.t", net.t, dtype=x.dtype)
    alpha = _checks.finite_float(f"{name}.alpha", net.alpha, dtype=x.dtype)
    sigma2 = _checks.finite_float(f"{name}.sigma2", net.sigma2, nonnegative=True, dtype=x.dtype)
    data_var = _checks.finite_float(f"{name}.data_var", net.data_var, positive=True, dtype=x.dtype)
    _checks.in_dtype(f"{name}: alpha**2 * data_var + sigma2", alpha * alpha * data_var + sigma2, x.dtype, positive=True)
    return [freq, mean] + layers, [F, H, len(weights) - 2, ACTIVATIONS[net.activation]], [t, alpha, sigma2, data_var]


def _layer_lists(prefix: str, weights, biases) -> tuple:
    """(weights, biases) as tuples, each given as a sequence (of tensors, checked later), or a TypeError naming it."""
    lists = []
    for what, v in (("weights", weights), ("biases", biases)):
        try:
            lists.append(tuple(v))
        except TypeError:
            raise TypeError(f"{prefix}{what} must be a list or tuple of tensors, got {type(v).__name__}") from None
    return tuple(lists)


_LAYER_KINDS = ("input layer: (H, D + 2·n_freq)", "hidden layer: (H, H)", "output: (D, H)")


class _FlatNet(NamedTuple):
    """One network of the flat backend lists (`_unflatten`): its tensors params[start:start + 6 + 2L] in the
    order freq, mean, W_0, b_0, W_out, b_out, (W_k, b_k) per hidden layer; dims F, H, L, act; scalars t, α, σ², σ_d²."""

    start: int
    tensors: list
    F: int
    H: int
    L: int
    act: int
    t: float
    alpha: float
    sigma2: float
    data_var: float


def _unflatten(params, dims, scalars):
    """The networks of the flat lists of `_net_params` (params, dims [F, H, L, act] and scalars [t, α, σ², σ_d²]
    of every network, concatenated), one `_FlatNet` each."""
    start = 0
    for i in range(0, len(dims), 4):
        F, H, L, act = (int(v) for v in dims[i:i + 4])
        t, alpha, sigma2, data_var = (float(v) for v in scalars[i:i + 4])
        end = start + 6 + 2 * L
        yield _FlatNet(start, list(params[start:end]), F, H, L, act, t, alpha, sigma2, data_var)
        start = end


def _sum_args(x, nets, mixture, kinds):
    """The backend arguments of a sum of networks (instances of `kinds`) and a mixture: x, the flat network
    lists params, dims, scalars, the per-network energy flags, then means, log_weights, variances (None without
    a mixture), mix_alpha, mix_sigma2."""
    x = _checks.state("x", x)
    if isinstance(nets, _NetAtTime):
        nets = [nets]
    if not isinstance(nets, (list, tuple)):
        raise TypeError(f"nets must be a network ({' or '.join(k.__name__ for k in kinds)}) or a list of them, got "
                        f"{type(nets).__name__}")
    params, dims, scalars = [], [], []
    for i, net in enumerate(nets):
        p, d, s = _net_params(x, net, i, kinds)
        params += p
        dims += d
        scalars += s
    if mixture is None:
        if not nets:
            raise ValueError("nets is empty and no mixture is given: nothing to evaluate")
        mix = (None, None, None, 1.0, 0.0)
    elif not isinstance(mixture, MixtureScore):
        raise TypeError(f"mixture must be a fastsamp.ops.MixtureScore or None, got {type(mixture).__name__}")
    else:
        mix = _checks.mixture(x, *mixture)
    energy = [int(isinstance(n, EnergyNet)) for n in nets]
    return (x, params, dims, scalars, energy) + tuple(mix)


def _score_sum_args(x, nets, mixture):
    """`_sum_args` of score networks, without the energy flags (the mlp_score / mlp_mala / mlp_hmc signature)."""
    args = _sum_args(x, nets, mixture, (ScoreNet,))
    return args[:4] + args[5:]


def _energy_sum_args(x, nets, mixture, *, need_energy):
    """`_sum_args` of score and energy networks; need_energy: a log-density is asked for (mlp_energy, the energy
    test), which every factor must have."""
    args = _sum_args(x, nets, mixture, (ScoreNet, EnergyNet))
    if need_energy and 0 in args[4]:
        raise ValueError(f"nets[{args[4].index(0)}] is a ScoreNet: the log-density (mh='energy', mlp_energy) needs "
                         f"every factor's energy (EnergyNets and the mixture)")
    return args


def has_fused_kernel(device, dim=1, hidden=1, net_type=None) -> bool:
    """Whether backend="auto" runs a compiled kernel for networks of `net_type` (ScoreNet, the default, or EnergyNet)
    of width `hidden` on `dim`-dimensional chains on `device`: the C++ engine on the CPU (any size), the Triton one
    (kernels/mlp.py) on CUDA when triton is installed and the sizes are within its limits (`_library.max_d`,
    `_library.max_hidden`: MLP_MAX_D, MLP_MAX_HIDDEN)."""
    device = torch.device(device)
    if device.type == "cpu":
        return True
    op = "mlp_energy_mala" if net_type is EnergyNet else "mlp_mala"
    fn = backends.resolve("auto", op, device)
    if _dispatch.is_reference(fn):
        return False
    max_d, max_h = _library.max_d(fn, op), _library.max_hidden(fn, op)
    return (max_d is None or dim <= max_d) and (max_h is None or hidden <= max_h)


def _route(backend, op, args, *tensors):
    """`_dispatch.route` of a network-sum op (args: `_score_sum_args` or, for the mlp_energy ops, `_energy_sum_args`,
    both ending with the mixture's three tensors and two floats); backend="auto" runs the reference above a compiled
    kernel's size limits, D and the hidden width (`_library._above_limits`)."""
    return _dispatch.route(backend, op, args[0], *args[1], *args[-5:-2], *tensors)


def mlp_score(x, nets, *, mixture=None, backend="auto"):
    """Σ_i s_i(x) (+ the mixture's score): the scores of the `ScoreNet`s `nets` (one or a list) and of
    the optional `MixtureScore`, at x (B, D). Every tensor in x's dtype and device. Returns (B, D)."""
    args = _score_sum_args(x, nets, mixture)
    return _route(backend, "mlp_score", args)(*args)


def mlp_energy(x, nets, *, mixture=None, backend="auto"):
    """(Σ_i s_i(x), Σ_i log p_i(x)) of the `EnergyNet`s `nets` (one or a list) and the optional `MixtureScore`
    at x (B, D): each network's energy and score −∇E from one forward and one backward pass (the mixture's
    log-density is exact, the networks' are −E, up to their constants). Returns ((B, D), (B,))."""
    args = _sum_args(x, nets, mixture, (EnergyNet,))
    return _route(backend, "mlp_energy", args)(*args)


def _net_out(backend, act, x, params):
    """f(x) (B, O): the backend's mlp_net."""
    return _dispatch.route(backend, "mlp_net", x, *params)(x, list(params), act)


KEEP_ACTIVATIONS_BYTES = 1 << 28
"""The most memory the training forward of `mlp_net` keeps for its backward (mlp_net_train's act_hidden, 2(L+1)·B·H
values: as many as eager PyTorch saves); above it the backward recomputes the forward block by block instead."""


def _keeps_activations(backend, x, params) -> bool:
    """Whether the training forward of `mlp_net` keeps the hidden activations for its backward (the C++ kernels:
    mlp_net_train, on CPU tensors with backend "auto" or "cpp", up to KEEP_ACTIVATIONS_BYTES)."""
    return (x.is_cpu and backend in ("auto", "cpp") and backends.is_available("cpp")
            and (len(params) - 2) * x.shape[0] * params[0].shape[0] * x.element_size() <= KEEP_ACTIVATIONS_BYTES)


class _MLPNet(torch.autograd.Function):
    """Forward: (f(x), the hidden activations or None): the C++ kernels' mlp_net_train (u_k and act'(z_k) of every row
    kept, (2(L+1), B, H): as many values as eager PyTorch saves; up to KEEP_ACTIVATIONS_BYTES), elsewhere the
    backend's mlp_net; backward: its mlp_net_backward, one kernel call for every parameter's gradient (and x's when x
    requires grad), from the kept activations (the C++ kernel; without them it recomputes the forward of each block
    of rows, the Triton kernel in registers). First order (`_autograd.first_order`). torch.func's transforms take it
    (setup_context apart; vmap runs forward and backward on batched tensors)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(backend, act, x, *params):
        if _keeps_activations(backend, x, params):
            return _dispatch.route(backend, "mlp_net_train", x, *params)(x, list(params), act)
        return _net_out(backend, act, x, params), None

    @staticmethod
    def setup_context(ctx, inputs, output):
        backend, act, x, *params = inputs
        act_hidden = output[1]
        ctx.meta = backend, act
        if act_hidden is not None:
            ctx.mark_non_differentiable(act_hidden)
        ctx.save_for_backward(x, act_hidden, *params)

    @staticmethod
    def backward(ctx, g_out, _):
        backend, act = ctx.meta
        x, act_hidden, *params = ctx.saved_tensors
        with torch.no_grad():
            bwd = _dispatch.route(backend, "mlp_net_backward", x, *params)
            g_x, g_params = bwd(x, params, act, g_out.contiguous(), ctx.needs_input_grad[2],
                                None if act_hidden is None else act_hidden.contiguous())  # (vmap: a slice's view)
        return (None, None, *_autograd.first_order("mlp_net", [g_x, *g_params], g_out, x, *params))


def mlp_net(x, weights, biases, *, activation="silu", backend="auto"):
    """One MLP on its input rows x (B, D_in), the training pass of the fused engine:

        f(x) = W_out act(W_L act(… act(W_0 x + b_0) …) + b_L) + b_out,   act = SiLU or exact GELU,

    weights in network order [W_0 (H, D_in), W_1 … W_L (H, H), W_out (O, H)] (L >= 0) and their biases, all in x's
    dtype (float32 / float64) and device. Differentiable (first order: a second derivative raises): the forward is
    one kernel call, the backward one more that gives the gradients of every weight and bias (and of x when it
    requires grad); the C++ kernel on the CPU, the Triton one on CUDA tensors (D_in and O up to 128, the reference
    above), the PyTorch reference elsewhere or with backend="torch": the network alone, for any loss (training a
    ScoreMLP goes through `mlp_net_lsq`, the loss and the gradients in one call). Returns (B, O)."""
    x = _checks.state("x", x)
    layers, act = _net_layers(x, weights, biases, activation)
    _dispatch.refuse_forward_mode("mlp_net", x, *layers)
    if _dispatch.nothing_to_differentiate(x, layers):
        return _net_out(backend, act, x, layers)
    return _autograd.apply(_MLPNet, backend, act, x, *layers)[0]


def _net_layers(x, weights, biases, activation):
    """The checked, packed layers of `mlp_net`'s arguments (`_layers.pack_layers`) and the activation's code."""
    weights, biases = _layer_lists("", weights, biases)
    weights = [w if isinstance(w, torch.Tensor) else _checks.from_dlpack(f"weights[{k}]", w)
               for k, w in enumerate(weights)]
    for k in (0, -1):
        w = weights[k] if weights else None
        if not isinstance(w, torch.Tensor) or w.dim() != 2 or min(w.shape) < 1:
            raise ValueError(f"weights[{k}] must be a 2-D tensor ({'(H, D_in)' if k == 0 else '(O, H)'}), got "
                             f"{tuple(getattr(w, 'shape', ())) if w is not None else 'no weights'}")
    H, O, L = weights[0].shape[0], weights[-1].shape[0], len(weights) - 2
    widths = [(H, x.shape[1])] + [(H, H)] * L + [(O, H)]
    layers = _layers.pack_layers(weights, biases, widths, x, weight_names=lambda k: f"weights[{k}] {widths[k]}",
                                 bias_names=lambda k: f"biases[{k}]")
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
    return layers, ACTIVATIONS[activation]


def _loss_rows(backend, op, act, x, consts, params):
    """(the per-row losses (B,), every parameter's gradient of their mean): the backend's loss op `op`."""
    return _dispatch.route(backend, op, x, *consts, *params)(x, list(params), act, *consts)


def _loss(backend, op, act, x, consts, layers):
    """The mean loss of loss op `op` (`_MLPNetLsq`, or its forward alone when nothing requires grad)."""
    if _dispatch.nothing_to_differentiate(x, (*consts, *layers)):
        return _loss_rows(backend, op, act, x, consts, layers)[0].mean()
    return _autograd.apply(_MLPNetLsq, backend, op, act, x, consts, *layers)[0]


class _MLPNetLsq(torch.autograd.Function):
    """Forward: the backend's loss op `op` (mlp_net_lsq, mlp_net_energy_lsq) of x and its constants `consts`, the
    mean loss, with every parameter's gradient from the same kernel call (returned after the loss, not
    differentiable, and kept); backward: those gradients times the loss's cotangent. First order
    (`_autograd.first_order`: the kept gradients depend on the parameters). torch.func's transforms take it
    (setup_context apart, the kept gradients outputs; vmap runs it on batched tensors)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(backend, op, act, x, consts, *params):
        rows, grads = _loss_rows(backend, op, act, x, consts, params)
        return (rows.mean(), *grads)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, op, _, _, _, *params = inputs
        ctx.op = op
        ctx.mark_non_differentiable(*output[1:])
        ctx.save_for_backward(*output[1:], *params)

    @staticmethod
    def backward(ctx, g, *_):
        saved = ctx.saved_tensors
        grads, params = saved[:len(saved) // 2], saved[len(saved) // 2:]
        with torch.no_grad():
            g_params = [g * gp for gp in grads]
        return (None,) * 5 + tuple(_autograd.first_order(ctx.op, g_params, g, *params))


def _constants(op, x, **tensors):
    """The loss op's constants (name: (tensor, shape)) checked like x; none may require grad (nor x)."""
    checked = [_checks.like(name, t, x, shape) for name, (t, shape) in tensors.items()]
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, *checked)):
        raise ValueError(f"{op} differentiates the weights and biases only: x, {', '.join(tensors)} must not require "
                         f"grad")
    return tuple(checked)


def mlp_net_lsq(x, weights, biases, c, k, *, activation="silu", backend="auto"):
    """mean_b |c_b + k_b f(x_b)|², f the MLP of `mlp_net` (c (B, O), k (B,) constants), differentiable in the weights
    and biases: one kernel call gives the loss and every parameter's gradient (the block's activations stay in cache
    from the forward to the backward; the loss's cotangent never leaves the kernel). The denoising score-matching
    loss of a ScoreMLP is one (`fastsamp.models.dsm_loss`: σ s + z = c + k f with c = σ(α m − x)/v + z,
    k = σ/√v). Returns the loss (0-dim)."""
    x = _checks.state("x", x)
    layers, act = _net_layers(x, weights, biases, activation)
    B, O = x.shape[0], layers[2].shape[0]
    consts = _constants("mlp_net_lsq", x, c=(c, (B, O)), k=(k, (B,)))
    _dispatch.refuse_forward_mode("mlp_net_lsq", x, *consts, *layers)
    return _loss(backend, "mlp_net_lsq", act, x, consts, layers)


def mlp_net_energy_lsq(x, weights, biases, c, v, sigma, z, *, activation="silu", backend="auto"):
    """mean_b |σ_b s_b + z_b|² for the score of an energy network, f the MLP of `mlp_net`:

        E_b = |r_b|² / (2 v_b),  r_b = c_b − √v_b f(x_b),  s_b = −∇E_b = −r_b / v_b + J_f(x_b)ᵀ r_b / √v_b,

    J_f the Jacobian of f in the first O columns of x (the state; O <= D_in), c, z (B, O) and v > 0, sigma (B,)
    constants. Differentiable in the weights and biases: one kernel call gives the loss and every parameter's
    gradient, through J_f exactly (a double backward: the forward, the VJP J_fᵀ r, a tangent forward along the
    score's cotangent and one reverse pass through both streams): the C++ kernel on the CPU, the Triton one on CUDA
    (D_in <= 128, else the reference). The denoising score-matching loss of an EnergyMLP is one
    (`fastsamp.models.dsm_loss`: c = x_t − α m). Returns the loss (0-dim)."""
    x = _checks.state("x", x)
    layers, act = _net_layers(x, weights, biases, activation)
    B, O = x.shape[0], layers[2].shape[0]
    if O > x.shape[1]:
        raise ValueError(f"mlp_net_energy_lsq needs the output width O = weights[-1].shape[0] <= x.shape[1] (the "
                         f"state is x's first O columns), got O = {O}, x.shape[1] = {x.shape[1]}")
    consts = _constants("mlp_net_energy_lsq", x, c=(c, (B, O)), v=(v, (B,)), sigma=(sigma, (B,)), z=(z, (B, O)))
    if _checks.validating() and _checks.has_values(consts[1]) and not _checks._all_positive_finite(
            _checks.level0(consts[1])):
        raise ValueError("v must be finite and > 0 for every row")
    _dispatch.refuse_forward_mode("mlp_net_energy_lsq", x, *consts, *layers)
    return _loss(backend, "mlp_net_energy_lsq", act, x, consts, layers)


def _mh_code(mh, energy_ok):
    if energy_ok:
        return _checks.mh_code(mh)
    return _checks.mh_code(mh, {k: v for k, v in _checks.MH_CODES.items() if k != "energy"},
                           " (a score network has no energy: mlp_energy_mala / mlp_energy_hmc take EnergyNets)")


def mlp_mala(x, nets, *, mixture=None, step_size, n_steps, n_trapezoid=1, seed=0, offset=0, chain_offset=0,
             mh="score", backend="auto"):
    """`n_steps` MALA moves on the score of `mlp_score(x, nets, mixture=mixture)`, fused in one kernel.

    As `ops.gmm_mala`: move m draws ξ and u from Philox (seed, offset + m), chain b as the global chain
    chain_offset + b; x' = x + ε s(x) + √(2ε) ξ; log α = ΔlogP + log q(x|x') − log q(x'|x) with ΔlogP the
    trapezoid of the score with `n_trapezoid` sub-intervals (mh="score"), or no test (mh="none": ULA).
    The score at the current state is carried across moves: a move costs `n_trapezoid` evaluations of
    every network (one batch of the proposal and the interior points).

    Returns (x after n_steps moves (B, D), per-chain acceptance rate (B,)).
    """
    args = _score_sum_args(x, nets, mixture)
    return _moves("mlp_mala", args, backend, step_size, n_steps, _N_TRAPEZOID, n_trapezoid, seed, offset,
                  chain_offset, _mh_code(mh, False))


def mlp_energy_mala(x, nets, *, mixture=None, step_size, n_steps, n_trapezoid=1, seed=0, offset=0, chain_offset=0,
                    mh="energy", backend="auto"):
    """`n_steps` MALA moves (as `mlp_mala`) on Σ_i s_i of score and energy networks (`ScoreNet`s and
    `EnergyNet`s) and the optional mixture, fused in one kernel, with MH by the exact energy (mh="energy":
    ΔlogP = log p(x') − log p(x), one evaluation per move; every factor an EnergyNet or the mixture), the
    score trapezoid (mh="score") or none (mh="none").

    Returns (x after n_steps moves (B, D), per-chain acceptance rate (B,)).
    """
    code = _mh_code(mh, True)
    args = _energy_sum_args(x, nets, mixture, need_energy=code == _checks.MH_CODES["energy"])
    return _moves("mlp_energy_mala", args, backend, step_size, n_steps, _N_TRAPEZOID, n_trapezoid, seed, offset,
                  chain_offset, code)


def mlp_hmc(x, nets, *, mixture=None, step_size, n_steps, n_leapfrog=1, seed=0, offset=0, chain_offset=0,
            mh="score", damping=0.0, backend="auto"):
    """`n_steps` HMC moves on the score of `mlp_score(x, nets, mixture=mixture)`, fused in one kernel.

    As `ops.gmm_hmc`: p starts at 0 and is carried across moves; move m draws ξ and u from Philox
    (seed, offset + m) and refreshes p0 = damping·p + √(1 − damping²) ξ, then `n_leapfrog` leapfrog steps
    with ΔlogP the trapezoid of the score along the path (mh="score") or no test (mh="none"); on rejection
    x stays and p = −p0. A move costs `n_leapfrog` evaluations of every network.

    Returns (x after n_steps moves (B, D), per-chain acceptance rate (B,)).
    """
    args = _score_sum_args(x, nets, mixture)
    return _moves("mlp_hmc", args, backend, step_size, n_steps, _N_LEAPFROG, n_leapfrog, seed, offset,
                  chain_offset, _mh_code(mh, False), damping)


def mlp_energy_hmc(x, nets, *, mixture=None, step_size, n_steps, n_leapfrog=1, seed=0, offset=0, chain_offset=0,
                   mh="energy", damping=0.0, backend="auto"):
    """`n_steps` HMC moves (as `mlp_hmc`) on Σ_i s_i of score and energy networks and the optional mixture,
    fused in one kernel, with ΔlogP the exact log p(end) − log p(start) (mh="energy": every factor an
    EnergyNet or the mixture), the trapezoid along the path (mh="score") or no test (mh="none").

    Returns (x after n_steps moves (B, D), per-chain acceptance rate (B,)).
    """
    code = _mh_code(mh, True)
    args = _energy_sum_args(x, nets, mixture, need_energy=code == _checks.MH_CODES["energy"])
    return _moves("mlp_energy_hmc", args, backend, step_size, n_steps, _N_LEAPFROG, n_leapfrog, seed, offset,
                  chain_offset, code, damping)


def _moves(op, args, backend, step_size, n_steps, n_limit, n, seed, offset, chain_offset, mh, *damping):
    """The call of whole-move op `op` on the network sum `args` with the checked move arguments: n is n_trapezoid or
    n_leapfrog, n_limit its (name, largest value); damping for HMC."""
    x = args[0]
    eps, n_steps, seed, offset, chain_offset = _checks.whole_moves(x, step_size, n_steps, seed, offset, chain_offset,
                                                                   leapfrog=op.endswith("hmc"))
    n_name, n_max = n_limit
    n = _checks.integer(n_name, n, minimum=1, maximum=n_max)
    damping = tuple(_checks.damping(d) for d in damping)
    return _route(backend, op, args, eps)(*args, eps, n_steps, n, seed, offset, chain_offset, mh, *damping)
