"""Score-network ops: the score of `fastsamp.models.ScoreMLP` networks, alone or summed with each other
and with an analytic Gaussian mixture (the composition p ∝ Π_i p_i of `fastsamp.models.Product`), and
the fused whole-move MALA and HMC kernels on that score.

One network (`ScoreNet`) at time t, with the marginal (α, σ²) of its schedule at t:

    s(x) = (α m − x)/v + f([x, sin(t ω), cos(t ω)])/√v,   v = α² σ_d² + σ²,
    f(z) = W_out act(W_L act(… act(W_0 z + b_0) …) + b_L) + b_out,   act = SiLU (ScoreMLP) or exact GELU.

The C++ kernel evaluates every network on blocks of chains with register-tiled GEMMs (the MLP engine
of csrc/cpu/mlp.h, shared with the DriftNet policy kernels); on CUDA tensors the Triton kernels of
kernels/mlp.py (one program per block of chains, its activations on chip) run; the reference is plain PyTorch.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .. import backends
from . import _checks, _dispatch

ACTIVATIONS = {"gelu": 0, "silu": 1}
_MH_MODES = {"score": 0, "none": 2}


@dataclass(frozen=True)
class ScoreNet:
    """One score network at one time t, as the mlp ops read it (`ScoreMLP.score_net(t, x)` builds it).

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


class MixtureScore(NamedTuple):
    """A Gaussian-mixture factor of a sum of scores: the mixture of `ops.gmm_score` at (alpha, sigma2)."""

    means: torch.Tensor
    log_weights: torch.Tensor
    variances: torch.Tensor
    alpha: float
    sigma2: float


def _net_params(x, net, i):
    """The validated tensors of network i as the backends take them, its dims and its scalars."""
    name = f"nets[{i}]"
    if not isinstance(net, ScoreNet):
        raise TypeError(f"{name} must be a fastsamp.ops.ScoreNet, got {type(net).__name__}")
    D = x.shape[1]
    weights, biases = tuple(net.weights), tuple(net.biases)
    if len(weights) < 2 or len(weights) != len(biases):
        raise ValueError(f"{name}: weights and biases must be two lists of the same length >= 2 (input layer, "
                         f"hidden layers, output layer), got {len(weights)} weights and {len(biases)} biases")
    if not isinstance(net.freq, torch.Tensor) or net.freq.dim() != 1:
        raise ValueError(f"{name}.freq must be a 1-D tensor (n_freq,), got {getattr(net.freq, 'shape', net.freq)}")
    F = net.freq.shape[0]
    freq = _checks.like(f"{name}.freq", net.freq, x, (F,))
    mean = _checks.like(f"{name}.data_mean", net.data_mean, x, (D,))
    w0 = weights[0]
    if not isinstance(w0, torch.Tensor) or w0.dim() != 2 or w0.shape[0] < 1:
        raise ValueError(f"{name}.weights[0] must be an (H, D + 2·n_freq) tensor, got "
                         f"{tuple(getattr(w0, 'shape', ()))}")
    H = w0.shape[0]
    widths = [(H, D + 2 * F)] + [(H, H)] * (len(weights) - 2) + [(D, H)]
    what = ["input layer: (H, D + 2·n_freq)"] + ["hidden layer: (H, H)"] * (len(weights) - 2) + ["output: (D, H)"]
    ws = [_checks.like(f"{name}.weights[{k}] ({what[k]})", w, x, shape) for k, (w, shape) in
          enumerate(zip(weights, widths))]
    bs = [_checks.like(f"{name}.biases[{k}]", b, x, (shape[0],)) for k, (b, shape) in enumerate(zip(biases, widths))]
    if net.activation not in ACTIVATIONS:
        raise ValueError(f"{name}.activation must be one of {tuple(ACTIVATIONS)}, got {net.activation!r}")
    t = _checks.finite_float(f"{name}.t", net.t)
    alpha = _checks.finite_float(f"{name}.alpha", net.alpha, dtype=x.dtype)
    sigma2 = _checks.finite_float(f"{name}.sigma2", net.sigma2, nonnegative=True)
    data_var = _checks.finite_float(f"{name}.data_var", net.data_var, positive=True)
    _checks.in_dtype(f"{name}: alpha**2 * data_var + sigma2", alpha * alpha * data_var + sigma2, x.dtype, positive=True)
    params = [freq, mean, ws[0], bs[0], ws[-1], bs[-1]]
    for w, b in zip(ws[1:-1], bs[1:-1]):
        params += [w, b]
    return params, [F, H, len(weights) - 2, ACTIVATIONS[net.activation]], [t, alpha, sigma2, data_var]


def _score_sum_args(x, nets, mixture):
    """The backend arguments of a sum of networks and a mixture: x, the flat network lists params, dims,
    scalars, then means, log_weights, variances (None without a mixture), mix_alpha, mix_sigma2."""
    x = _checks.state("x", x)
    if isinstance(nets, ScoreNet):
        nets = [nets]
    if not isinstance(nets, (list, tuple)):
        raise TypeError(f"nets must be a ScoreNet or a list of them, got {type(nets).__name__}")
    params, dims, scalars = [], [], []
    for i, net in enumerate(nets):
        p, d, s = _net_params(x, net, i)
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
    return (x, params, dims, scalars) + tuple(mix)


def has_fused_kernel(device, dim=1, hidden=1) -> bool:
    """Whether backend="auto" runs a compiled score-network kernel for networks of width `hidden` on `dim`-dimensional
    chains on `device`: the C++ engine on the CPU (any size), the Triton one (kernels/mlp.py) on CUDA when triton is
    installed and the sizes are within its limits (MLP_MAX_D, MLP_MAX_HIDDEN)."""
    device = torch.device(device)
    if device.type == "cpu":
        return True
    fn = backends.resolve("auto", "mlp_mala", device)
    if _dispatch.is_reference(fn):
        return False
    module = inspect.getmodule(fn)
    max_d, max_h = getattr(module, "MLP_MAX_D", None), getattr(module, "MLP_MAX_HIDDEN", None)
    return (max_d is None or dim <= max_d) and (max_h is None or hidden <= max_h)


def _route(backend, op, args, *tensors):
    """`_dispatch.route` of a score-sum op (args: `_score_sum_args`), except that backend="auto" runs the reference
    off the CPU where no compiled kernel takes the call (`has_fused_kernel`: the Triton engine's size limits)."""
    x = args[0]
    if backend == "auto" and not x.is_cpu and not has_fused_kernel(x.device, x.shape[1], max(args[2][1::4], default=1)):
        backend = "torch"
    return _dispatch.route(backend, op, x, *args[1], *args[4:7], *tensors)


def mlp_score(x, nets, *, mixture=None, backend="auto"):
    """Σ_i s_i(x) (+ the mixture's score): the scores of the `ScoreNet`s `nets` (one or a list) and of
    the optional `MixtureScore`, at x (B, D). Every tensor in x's dtype and device. Returns (B, D)."""
    args = _score_sum_args(x, nets, mixture)
    return _route(backend, "mlp_score", args)(*args)


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
    x = args[0]
    eps = _checks.step_size(step_size, x)
    n_steps = _checks.integer("n_steps", n_steps, minimum=1)
    n_trapezoid = _checks.integer("n_trapezoid", n_trapezoid, minimum=1, maximum=4096)
    seed, offset = _checks.seed_offset(seed, offset, n_steps, x.device)
    chain_offset = _checks.chain_offset(chain_offset, x.shape[0], x.device)
    fn = _route(backend, "mlp_mala", args, eps)
    return fn(*args, eps, n_steps, n_trapezoid, seed, offset, chain_offset, _mh_code(mh))


def _mh_code(mh):
    if not isinstance(mh, str) or mh not in _MH_MODES:
        raise ValueError(f"mh must be one of {tuple(_MH_MODES)} (a score network has no energy), got {mh!r}")
    return _MH_MODES[mh]


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
    x = args[0]
    eps = _checks.step_size(step_size, x)
    n_steps = _checks.integer("n_steps", n_steps, minimum=1)
    n_leapfrog = _checks.integer("n_leapfrog", n_leapfrog, minimum=1)
    seed, offset = _checks.seed_offset(seed, offset, n_steps, x.device)
    chain_offset = _checks.chain_offset(chain_offset, x.shape[0], x.device)
    damping = _checks.finite_float("damping", damping, lo=0.0, hi=1.0)
    fn = _route(backend, "mlp_hmc", args, eps)
    return fn(*args, eps, n_steps, n_leapfrog, seed, offset, chain_offset, _mh_code(mh), damping)
