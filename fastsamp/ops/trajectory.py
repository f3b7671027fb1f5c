"""The trajectory family: Euler–Maruyama transitions with their forward/backward log-densities,
for training diffusion samplers (PIS, trajectory balance, VarGrad, SubTB) on unnormalised
densities, and the whole-trajectory kernels of the drift network of the trained diffusion
sampler (`fastsamp.samplers.diffusion.DriftNet` with a fixed variance):

    em_step_logprob(x, drift, ...)              one step and its log p_F / log p_B (fused backward)
    policy_rollout(net, temb, B, sigma=…)       the whole simulation in one kernel call (no grad; with
                                                reparam=True differentiable, PIS: one kernel call backward)
    policy_log_pf(net, states, temb, sigma=…)   log p_F (B, T) of given trajectories in one kernel
                                                call; autograd: one kernel call for the gradients
                                                w.r.t. temb and every weight and bias it reads

Per step i (t_i = i h) and chain x ∈ R^D the network is

    z_0 = W_s x + b_s + temb[i];  u_0 = gelu(z_0);  z_k = W_k u_{k-1} + b_k, u_k = gelu(z_k)  (k = 1..L)
    drift = clamp((W_o u_L + b_o)[:D] (+ lgv[i] ⊙ clamp(∇log R(x), ±lgv_clip) with the Langevin term), -clip, clip)

(`DriftNet.state` is (W_s, b_s), `DriftNet.joint` = Sequential(GELU, [Linear(H, H), GELU] × L,
Linear(H, 2D)); the last D outputs, the unused raw log-variance, are never computed), and the
transition is `em_step_logprob` with log_var = None: x_{i+1} = x_i + h·drift + √(σ²h + explore²) ξ_i,
ξ_i the Philox draw (seed, offset = i). The policy ops have a C++ kernel (CPU, float32/float64, all
tensors in one dtype) and the PyTorch reference (`backend="torch"`, any device; not for the Langevin
term, whose reference is the sampler's eager path, `DiffusionSampler(fused=False)`).
"""
from __future__ import annotations

import functools
import weakref

import torch
from torch import nn

from .. import backends
from ..schedules import _graph_constant
from . import _autograd, _checks, _dispatch, _ieee, _layers


def _em_step(x, drift, log_var, x_next, backend, noise, *scalars):
    """(x_next, log_pf, log_pb): the backend's em_step_logprob (scalars: seed, offset, chain_offset, h, s2, e2, c,
    b2)."""
    fwd = _dispatch.route(backend, "em_step_logprob", x, drift, log_var, x_next, noise)
    return fwd(x, drift, log_var, x_next, noise, *scalars)


class _EMStepLogProb(torch.autograd.Function):
    """Fused forward kernel; the backward is a second fused kernel (first order: `_autograd.first_order`). Forward and
    setup_context apart, and vmap by running forward on batched tensors (the registered ops' batching rules), so
    torch.func's transforms take it."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, drift, log_var, x_next, backend, noise, seed, offset, chain_offset, h, s2, e2, c, b2, reparam):
        y, log_pf, log_pb = _em_step(x, drift, log_var, x_next, backend, noise, seed, offset, chain_offset, h, s2, e2,
                                     c, b2)
        return (y, log_pf, log_pb) if x_next is None else (log_pf, log_pb)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, drift, log_var, x_next, backend, _, _, _, _, h, s2, e2, c, b2, reparam = inputs
        sampled = x_next is None
        y = output[0] if sampled else x_next
        ctx.save_for_backward(x, drift, log_var, y)
        ctx.args = (backend, h, s2, e2, c, b2, reparam and sampled, sampled)
        if sampled and not reparam:
            ctx.mark_non_differentiable(y)

    @staticmethod
    def backward(ctx, *grads):
        backend, h, s2, e2, c, b2, reparam, sampled = ctx.args
        x, drift, log_var, y = ctx.saved_tensors
        with torch.no_grad():
            g_y, g_pf, g_pb = grads if sampled else (None,) + grads
            g_pf = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device) if g_pf is None else g_pf.contiguous()
            g_pb = torch.zeros_like(g_pf) if g_pb is None else g_pb.contiguous()
            g_y = g_y.contiguous() if (reparam and g_y is not None) else None
            bwd = _dispatch.route(backend, "em_step_logprob_backward", x, drift, log_var, y, g_y, g_pf, g_pb)
            want_g_y = not sampled and ctx.needs_input_grad[3]
            out = bwd(x, drift, log_var, y, g_y, g_pf, g_pb, h, s2, e2, c, b2, reparam, want_g_y)
        return tuple(_autograd.first_order("em_step_logprob", out, *grads, x, drift, log_var, y)) + (None,) * 11


def em_step_logprob(x, drift, *, sigma, t, h, noise=None, seed=None, offset=0, chain_offset=0, log_var=None,
                    explore=0.0, x_next=None, reparam=None, backend="auto"):
    """One Euler–Maruyama step t → t + h of dx = drift dt + σ e^{log_var/2} dW with the
    log-densities that trajectory objectives need, in one fused pass:

        x_next = x + h·drift + √(σ²h e^{log_var} + explore²) ξ
        log_pf = log N(x_next; x + h·drift, σ²h e^{log_var})          (per chain, summed over D)
        log_pb = log N(x; (t/(t+h)) x_next, σ² h t/(t+h))              (Brownian bridge; 0 at t = 0)

    ξ is `noise` if given, else the Philox draw (seed, offset) of global chains chain_offset + b.
    `explore` ≥ 0 widens the sampling noise only (off-policy exploration); log_pf stays the model's density.
    With `x_next` given, nothing is sampled: the transition x → x_next is evaluated (for
    trajectories drawn backwards from a replay buffer).

    Autograd: differentiable (first order) in x, drift, log_var (and a given x_next). `reparam` (default
    True when sampling) makes x_next a differentiable function of x, drift, log_var (the
    path-space KL of PIS); reparam=False treats the sample as a constant (trajectory balance
    and the other off-policy objectives). Returns (x_next, log_pf, log_pb).
    """
    x = _checks.state("x", x)
    drift = _checks.like("drift", drift, x)
    if log_var is not None:
        log_var = _checks.like("log_var", log_var, x)
    sigma = _checks.finite_float("sigma", sigma, positive=True, dtype=x.dtype)
    t = _checks.finite_float("t", t, nonnegative=True, dtype=x.dtype)
    h = _checks.finite_float("h", h, positive=True, dtype=x.dtype)
    explore = _checks.finite_float("explore", explore, nonnegative=True, dtype=x.dtype)
    if x_next is not None:
        x_next = _checks.like("x_next", x_next, x)
        if noise is not None or seed is not None:
            raise ValueError("give x_next (evaluate a transition) or noise/seed (sample one), not both")
        if reparam:
            raise ValueError("reparam=True needs a sampled x_next; a given x_next is a constant of the step")
        if explore != 0.0:
            raise ValueError("explore only widens sampling; it must be 0 when x_next is given")
        reparam = False
        seed, offset = _checks.seed_offset(0, offset, device=x.device)
    else:
        noise, seed, offset = _checks.noise_or_seed(noise, seed, offset, x)
        reparam = True if reparam is None else bool(reparam)
    chain_offset = _checks.chain_offset(chain_offset, x.shape[0], x.device)
    if torch.compiler.is_compiling():  # constants of the graph, as the schedules' t and h (schedules._graph_constant)
        sigma, t, h, explore = (_graph_constant(v) for v in (sigma, t, h, explore))
    s2 = _check_variance(sigma, h, x.dtype)
    c = _ieee.div(t, t + h)
    b2 = s2 * c
    _checks.coefficients(x.dtype, "sigma, h or explore", explore2=explore * explore, b2=b2)
    if b2 != 0:  # t > 0: log p_B's variance, whose log the kernels take (a subnormal one they would flush to 0)
        _checks.in_dtype("the bridge variance sigma**2 * h * t / (t + h)", b2, x.dtype, positive=True)
    _dispatch.refuse_forward_mode("em_step_logprob", x, drift, log_var, x_next, noise)
    if _dispatch.nothing_to_differentiate(x, (drift, log_var, x_next, noise)):
        out = _em_step(x, drift, log_var, x_next, backend, noise, seed, offset, chain_offset, h, s2,
                       explore * explore, c, b2)
        return tuple(out) if x_next is None else (x_next,) + tuple(out[1:])
    out = _autograd.apply(_EMStepLogProb, x, drift, log_var, x_next, backend, noise, seed, offset, chain_offset, h, s2,
                          explore * explore, c, b2, reparam)
    return tuple(out) if x_next is None else (x_next,) + tuple(out)


_CHECKED = weakref.WeakKeyDictionary()  # DriftNet -> its memo of checked, packed layers (`PolicyParams.checked`)


class PolicyParams:
    """The layers of a DriftNet that the policy ops read (the module's parameters): in network order
    weights [W_s (H, D), W_1 .. W_L (H, H), W_o (2D, H)] and their biases, packed for the kernels as every
    fused network is (`_layers.pack_layers`: [ws, bs, wo, bo, W_1, b_1, ..., W_L, b_L]); clip, D, H; with
    the Langevin parametrisation (net.langevin) its lgv_clip and the width (1 or D) of its scale lgv."""

    def __init__(self, net):
        if not (isinstance(net, nn.Module) and isinstance(getattr(net, "state", None), nn.Linear)
                and isinstance(getattr(net, "joint", None), nn.Sequential) and hasattr(net, "dim")
                and hasattr(net, "clip")):
            raise TypeError(f"net must be a DriftNet (fastsamp.samplers.diffusion: a module with a Linear .state, a "
                            f"Sequential .joint, .dim and .clip), got {type(net).__name__}")
        # not read while tracing (`_layers.memoised`), nor touched: a trace would guard on _CHECKED's contents, which
        # an eager call changes (a compiled op as the net's first call would compile again on its second)
        self._memo = {} if torch.compiler.is_compiling() else _CHECKED.setdefault(net, {})
        self.langevin = bool(getattr(net, "langevin", False))
        if self.langevin:
            self.lgv_clip = float(net.lgv_clip)
            self.lgv_width = int(net.lgv_scale.mlp[-1].out_features)
        if getattr(net, "learned_variance", False):
            raise ValueError("the fused policy kernels need a fixed variance (net.learned_variance is set)")
        mods = list(net.joint)
        gelus = mods[0:-1:2]
        linears = mods[1:-1:2]
        ok = (len(mods) % 2 == 0 and len(mods) >= 2 and isinstance(mods[-1], nn.Linear)
              and all(isinstance(g, nn.GELU) and g.approximate == "none" for g in gelus)
              and all(isinstance(m, nn.Linear) for m in linears))
        if not ok:
            raise ValueError("net.joint must be Sequential(GELU, [Linear(H, H), GELU] * L, Linear(H, 2D)), "
                             "exact (erf) GELU")
        self.D, self.H = int(net.dim), int(net.state.out_features)
        self.clip = float(net.clip)
        layers = [net.state] + linears + [mods[-1]]
        self.weights, self.biases = [m.weight for m in layers], [m.bias for m in layers]
        self.widths = [(self.H, self.D)] + [(self.H, self.H)] * len(linears) + [(2 * self.D, self.H)]
        if any(b is None for b in self.biases):
            raise ValueError("the DriftNet's linear layers need biases")
        L = len(linears)
        self._names = (["ws"] + [f"W_{k}" for k in range(1, L + 1)] + ["wo"],
                       ["bs"] + [f"b_{k}" for k in range(1, L + 1)] + ["bo"])

    def tensors(self):
        """The packed layers [ws, bs, wo, bo, W_1, b_1, ..., W_L, b_L] (the backends' `params`)."""
        return _layers.packed(self.weights, self.biases)

    def checked_lgv(self, lgv, like: torch.Tensor, like_name: str, T: int):
        """lgv (T, 1|D) like `like` (None without the Langevin term); a Langevin net needs it."""
        if self.langevin != (lgv is not None):
            raise ValueError("a DriftNet with the Langevin parametrisation (net.langevin) needs lgv = "
                             "net.time_features(ts)[1], and only such a net takes it")
        return None if lgv is None else _checks.like("lgv", lgv, like, (T, self.lgv_width), x_name=like_name)

    def checked(self, like: torch.Tensor, like_name: str, cast: bool = False):
        """tensors() checked to have like's dtype (cast to it when `cast`, detached) and device, contiguous; kept
        for the net while its layers are unchanged (`_layers.memoised`)."""
        def pack():
            weight_names, bias_names = self._names
            return _layers.pack_layers(self.weights, self.biases, self.widths, like,
                                       weight_names=lambda k: "net parameter " + weight_names[k],
                                       bias_names=lambda k: "net parameter " + bias_names[k], like_name=like_name,
                                       cast=cast)
        context = (like.dtype, like.device, cast, tuple(self.widths), torch.is_grad_enabled())
        return _layers.memoised(self._memo, context, self.weights + self.biases, pack)


def _computed_times(T: int, h: float, dtype) -> torch.Tensor:
    """The step times t_i = i·h (i < T), computed in `dtype` and held in float64 (T,): the kernels' ts."""
    return (torch.arange(T + 1, dtype=dtype) * h)[:-1].to(torch.float64).contiguous()


_kept_times = functools.lru_cache(maxsize=64)(_computed_times)


def _times(T: int, h: float, dtype) -> torch.Tensor:
    """`_computed_times`, kept per (T, h, dtype) in eager (read-only: the ops never write it); computed afresh
    under torch.compile tracing, in inference mode (whose tensors could not be kept for later autograd) and under
    torch.func's transforms (whose tensors are wrappers that die with the transform)."""
    if (torch.compiler.is_compiling() or torch.is_inference_mode_enabled()
            or _dispatch._functorch_level() is not None):
        return _computed_times(T, h, dtype)
    return _kept_times(T, h, dtype)


def _step(T: int, h) -> float:
    return _checks.finite_float("h", 1.0 / T if h is None else h, positive=True)


def _check_variance(sigma: float, h: float, dtype) -> float:
    """s² = σ²h, the transition density's variance, checked > 0 in `dtype` (it is the log-density's log s²)."""
    s2 = sigma * sigma * h
    _checks.in_dtype("sigma**2 * h", s2, dtype, positive=True)
    return s2


def policy_rollout(net, temb, batch_size, *, sigma, h=None, explore=0.0, seed=0, chain_offset=0, x0=None,
                   dtype=None, reparam=False, lgv=None, target=None, keep_activations=False, n_threads=None,
                   backend="auto"):
    """Simulate `batch_size` chains for T = temb.shape[0] steps from x0 (default 0) in one kernel call.

    temb (T, H) is `net.time_features(ts[:-1])[0]` with ts = arange(T + 1)·h in `dtype`; h defaults
    to 1/T. Returns (states (T+1, B, D), log_pf (B, T), log_pb (B, T)) in `dtype` (default temb's),
    equal to T calls of `ops.em_step_logprob(x, drift, sigma=σ, t=ts[i], h=h, seed=seed, offset=i,
    chain_offset=chain_offset, explore=explore)` with drift = net(x, temb[i]) — the C++ em_step_logprob
    kernel's Philox normals and transition arithmetic exactly; the network itself up to float rounding.
    `n_threads`: the C++ kernel's threads (default torch.get_num_threads()).

    reparam=False: no autograd. reparam=True (PIS): the path x_{i+1} = x_i + h·drift(x_i, t_i) + qξ_i is
    differentiable — states and log_pb w.r.t. temb and the net's weights and biases (x0 and the
    noise are constants; log_pf = log N(qξ_i; 0, σ²h) has no gradient: v = qξ_i does not depend on
    them). Forward and backward are registered ops (torch.ops.fastsamp.policy_rollout, or
    policy_langevin_rollout, and policy_reparam_backward: torch.compile sees them); the backward is one
    kernel call (an adjoint sweep T−1 .. 0 that recomputes each step's activations); the reference
    (`backend="torch"`) is differentiated by autograd. With reparam, temb and the weights must already be in `dtype`.

    Langevin parametrisation (net.langevin, C++ backend): drift = clamp(net(x, temb[i]) + lgv[i] ⊙
    clamp(∇log R(x), ±lgv_clip), ±clip) with lgv (T, 1|D) = net.time_features(ts[:-1])[1] (differentiable
    like temb) and ∇log R computed in the kernel for `target` (a fastsamp.targets target whose
    `score_kernel` is not None; the score is a constant, as in the sampler). Then also returns the
    scores (T, B, D) at states[:-1], for policy_log_pf.

    keep_activations=True (reparam=False): also returns, last, the network's hidden activations at every
    state (`activations` (T, 2(L+1), B, H): per step i, u_k = gelu(z_k) at [i, k] and gelu'(z_k) at [i, L+1+k];
    8·T·B·(L+1)·H bytes in float32) for `policy_log_pf(..., log_pf=, activations=)`, whose backward then reads
    them instead of recomputing the hidden layers (the same values; it recomputes only the output layer).
    """
    p = PolicyParams(net)
    temb = _checks.from_dlpack("temb", temb)
    if not isinstance(temb, torch.Tensor) or temb.dim() != 2 or temb.shape[1] != p.H:
        raise ValueError(f"temb must be (T, {p.H}), got {tuple(getattr(temb, 'shape', ()))}")
    dtype = _checks.float_dtype("temb" if dtype is None else "dtype", temb.dtype if dtype is None else dtype)
    T, B = _checks.integer("T = temb.shape[0]", temb.shape[0], minimum=1), _checks.integer("batch_size", batch_size,
                                                                                          minimum=0)
    h = _step(T, h)
    sigma = _checks.finite_float("sigma", sigma, positive=True)
    explore = _checks.finite_float("explore", explore, nonnegative=True)
    # the T em_step_logprob calls' coefficient checks: the density's variance s² = σ²h, the smallest bridge variance
    # of log p_B (step 1's, s²·t/(t + h) at t = h) and the widened noise
    s2 = _check_variance(sigma, h, dtype)
    if T > 1:
        _checks.in_dtype("the bridge variance sigma**2 * h / 2 (of step 1)", s2 / 2, dtype, positive=True)
    _checks.coefficients(dtype, "sigma, h or explore", explore2=explore * explore)
    seed, _ = _checks.seed_offset(seed, 0, T, temb.device)
    chain_offset = _checks.chain_offset(chain_offset, B, temb.device)
    n_threads = _checks.threads(n_threads)
    if x0 is not None:
        x0 = _checks.like("x0", _checks.as_tensor("x0", x0).detach().to(dtype), temb.detach().to(dtype), (B, p.D),
                          x_name="temb")
    ts = _times(T, h, dtype)
    args = (ts, B, sigma, h, explore, p.clip, seed, chain_offset, n_threads)
    if keep_activations and reparam:
        raise ValueError("keep_activations is for the no-grad rollout (reparam=False): the reparameterised "
                         "rollout's backward is its own kernel")
    lp = None
    if p.langevin or lgv is not None:
        lgv = p.checked_lgv(lgv, temb, "temb", T)
        spec = getattr(target, "score_kernel", lambda _: None)(dtype)
        if spec is None:
            raise ValueError(f"the Langevin rollout needs a target with a C++ score (score_kernel), got {target!r}")
        _cpp_only(backend, temb.device, "the Langevin parametrisation")
        lp = (p.lgv_clip, spec)
    if not reparam:
        with torch.no_grad():
            temb = _checks.resolved(temb.detach().to(dtype))
            params = p.checked(temb, "temb", cast=True)
            return _rollout(backend, x0, temb, params, args, None if lp is None else lgv.detach().to(dtype), lp,
                            bool(keep_activations))
    if temb.dtype != dtype:
        raise ValueError(f"reparam=True needs temb in dtype {dtype}, got {temb.dtype}")
    temb = _checks.resolved(temb)
    params = p.checked(temb, "temb")
    if lp is None:
        fn = backends.resolve(backend, "policy_rollout", temb.device)
        if _dispatch.is_reference(fn):
            with torch.enable_grad():
                return fn(x0, temb, params, *args, False)[:3]
        _cpp_only(backend, temb.device, "reparam=True")
    _dispatch.refuse_forward_mode("policy_rollout", temb, lgv, *params, hint=_TORCH_HINT)
    return _autograd.apply(_PolicyReparam, (backend, x0, args, lp), temb,
                           _checks.resolved(lgv) if lgv is not None else None, *params)


_TORCH_HINT = "; backend='torch' (the reference, differentiated by autograd) takes forward mode"


def _cpp_only(backend, device, what):
    if backend not in ("auto", "cpp") or device.type != "cpu" or not backends.is_available("cpp"):
        raise ValueError(f"{what} has fused kernels on the C++ CPU backend only (backend='auto' or 'cpp' "
                         f"with CPU tensors), got backend={backend!r} on {device}")


class _PolicyReparam(torch.autograd.Function):
    """Forward: the registered op policy_rollout (policy_langevin_rollout with the Langevin term); backward: its
    adjoint sweep, the registered op policy_reparam_backward (torch.compile traces both as opaque ops).
    meta = (backend: "auto" or "cpp", x0, args, None or (lgv_clip, target spec)); lgv None without the Langevin
    term. torch.func's transforms take it (setup_context apart; vmap runs it on batched tensors)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(meta, temb, lgv, *params):
        backend, x0, args, langevin = meta
        return _rollout(backend, x0, temb, params, args, lgv, langevin)

    @staticmethod
    def setup_context(ctx, inputs, output):
        (backend, _, args, langevin), temb, lgv, *params = inputs
        scores = None if lgv is None else output[3]
        ctx.backend, ctx.args, ctx.lgv_clip = backend, args, 0.0 if lgv is None else langevin[0]
        ctx.save_for_backward(output[0], temb, lgv, scores, *params)
        ctx.mark_non_differentiable(*output[1:2], *output[3:])

    @staticmethod
    def backward(ctx, g_states_in, _g_log_pf, g_log_pb_in, *_g_scores):
        states, temb, lgv, scores, *params = ctx.saved_tensors
        ts, _, sigma, h, _, clip, _, _, n_threads = ctx.args
        with torch.no_grad():
            g_states = None if g_states_in is None else g_states_in.contiguous()
            g_log_pb = None if g_log_pb_in is None else g_log_pb_in.contiguous()
            bwd = _dispatch.route(ctx.backend, "policy_reparam_backward", states, temb, g_states, g_log_pb, lgv,
                                  scores, *params)
            g_temb, g_params, g_lgv = bwd(states, temb, params, ts, g_states, g_log_pb, sigma, h, clip, n_threads,
                                          lgv, ctx.lgv_clip, scores)
        grads = _autograd.first_order("policy_rollout", [g_temb, g_lgv, *g_params], g_states_in, g_log_pb_in,
                                      states, temb, lgv, *params)
        return (None, *grads)


def _rollout(backend, x0, temb, params, args, lgv, langevin, keep=False):
    """The rollout's op: policy_rollout, or with the Langevin term (lgv not None; langevin = (lgv_clip, the
    target's score_kernel spec)) policy_langevin_rollout (`_langevin_rollout`); the kept activations (the op's
    last output) only with `keep`."""
    if lgv is None:
        out = _dispatch.route(backend, "policy_rollout", temb, x0, *params)(x0, temb, list(params), *args, keep)
    else:
        out = _langevin_rollout(backend, x0, temb, list(params), args, lgv, *langevin, keep)
    return tuple(out) if keep else tuple(out[:-1])


def _langevin_rollout(backend, x0, temb, params, args, lgv, lgv_clip, target, keep):
    """The rollout with the Langevin term (the registered op policy_langevin_rollout; backend "auto" or "cpp"):
    (states, log_pf, log_pb, scores (T, B, D), act_hidden (None unless `keep`)); target: the (kind, means,
    parameter) of the target's score_kernel."""
    ts, B, sigma, h, explore, clip, seed, chain_offset, n_threads = args
    kind, means, param = target
    lgv = lgv.contiguous()
    fn = _dispatch.route(backend, "policy_langevin_rollout", temb, x0, lgv, means, *params)
    return fn(x0, temb, params, lgv, lgv_clip, ts, B, sigma, h, explore, clip, seed, chain_offset, kind, means, param,
              n_threads, keep)


def _log_pf_values(meta, states, temb, lgv, params):
    """log p_F (B, T): the backend's policy_log_pf, its Langevin variant, or the given values (meta: see
    `policy_log_pf`)."""
    backend, sigma, h, clip, n_threads, given, lgv_clip, scores, target, _ = meta
    if given is not None:
        return given.detach().clone()
    if lgv is None:
        return _dispatch.route(backend, "policy_log_pf", states, temb, *params)(states, temb, params, sigma, h, clip,
                                                                                n_threads)
    # not a registered op: it writes the target's scores into `scores` when it computes them
    if any(t is not None and _checks.is_wrapped(t) for t in (states, temb, lgv, *params)):
        raise NotImplementedError("policy_log_pf with the Langevin term (lgv) has no batching rule for torch.func.vmap "
                                  "(its kernel writes the target's scores into `scores`): call it once per slice")
    _dispatch.refuse_jit_trace("policy_log_pf", "with the Langevin term (lgv)")
    kind, means, param = target
    fn = backends.resolve("cpp", "policy_langevin_log_pf", states.device)
    return fn(states, temb, params, lgv, lgv_clip, scores, kind, means, param, sigma, h, clip, n_threads)


class _PolicyLogPF(torch.autograd.Function):
    """Forward: the backend's policy_log_pf (or the given values); backward: its policy_log_pf_backward
    (the states are constants), from the rollout's kept activations where given. With the Langevin term
    (lgv, scores; C++ only) the kernels take it and the backward also gives lgv's gradient. torch.func's transforms
    take it (setup_context apart; vmap runs it on batched tensors)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(meta, states, temb, lgv, *params):
        return _log_pf_values(meta, states, temb, lgv, params)

    @staticmethod
    def setup_context(ctx, inputs, output):
        meta, states, temb, lgv, *params = inputs
        backend, sigma, h, clip, n_threads, _, lgv_clip, scores, _, kept = meta
        ctx.meta = backend, sigma, h, clip, n_threads, lgv_clip
        # the tensors the backward reads are saved tensors (freed after it, checked against in-place changes)
        ctx.save_for_backward(states, temb, lgv, scores, kept, *params)

    @staticmethod
    def backward(ctx, g_log_pf):
        backend, sigma, h, clip, n_threads, lgv_clip = ctx.meta
        states, temb, lgv, scores, kept, *params = ctx.saved_tensors
        with torch.no_grad():
            bwd = _dispatch.route(backend, "policy_log_pf_backward", states, temb, *params)
            g_temb, g_params, g_lgv = bwd(states, temb, params, g_log_pf.contiguous(), sigma, h, clip, n_threads,
                                          lgv, lgv_clip, scores if lgv is not None else None, kept)
        grads = _autograd.first_order("policy_log_pf", [g_temb, g_lgv, *g_params], g_log_pf, temb, lgv, *params)
        return (None, None, *grads)


def policy_log_pf(net, states, temb, *, sigma, h=None, log_pf=None, lgv=None, scores=None, target=None,
                  activations=None, n_threads=None, backend="auto"):
    """log p_F (B, T) of the transitions states[i] → states[i+1] (states (T+1, B, D)) under the
    policy: −½ Σ_d (v²/s² + log 2π s²), v = x_{i+1} − x_i − h·drift(x_i, t_i), s² = σ²h, h default 1/T.

    One kernel call forward; `backward()` is one kernel call that gives the gradients w.r.t. temb
    (T, H) and the net's state / joint weights and biases (the states are treated as constants,
    as in the off-policy objectives); the reference (`backend="torch"`) is differentiated by
    autograd. All tensors in one dtype (float32/64) on one device. Equal to
    `DiffusionSampler._evaluate(states, False)[0]` for the same net.

    `log_pf`: the values, when already known — the log_pf that `policy_rollout` returned for these
    states with the same net and temb is bit for bit what the forward kernel would compute — so
    that the forward call is skipped and only the backward runs. `activations` (with `log_pf`): the
    rollout's kept hidden activations of these states (`policy_rollout(..., keep_activations=True)`), which
    the backward kernel reads instead of recomputing them (the same values: the same gradients, bit for bit).
    The reference backend takes and ignores them.

    Langevin parametrisation (net.langevin; C++ backend): lgv (T, 1|D) as in policy_rollout (its
    gradient too) and the target's ∇log R at states[:-1] (constants): `scores` (T, B, D) (required with
    `log_pf`: the rollout's), or computed from `target` — in the forward kernel when it has a
    `score_kernel`, else by target.score.
    """
    p = PolicyParams(net)
    states = _checks.from_dlpack("states", states)
    if not isinstance(states, torch.Tensor) or states.dim() != 3 or states.shape[2] != p.D or states.shape[0] < 2:
        raise ValueError(f"states must be (T+1, B, {p.D}) with T >= 1, got {tuple(getattr(states, 'shape', ()))}")
    T, B = states.shape[0] - 1, states.shape[1]
    _checks.float_dtype("states", states.dtype)
    _checks.integer("B = states.shape[1]", B, minimum=0)
    states = _checks.resolved(states.detach())
    temb = _checks.like("temb", temb, states, (T, p.H), x_name="states")
    params = p.checked(states, "states")
    lgv = p.checked_lgv(lgv, states, "states", T)
    spec = (0, None, 0.0)
    if lgv is not None:
        _cpp_only(backend, states.device, "the Langevin parametrisation")
        if scores is None and (log_pf is not None or target is None):
            raise ValueError("the Langevin term needs scores= (always with log_pf=) or target=")
        if scores is None:
            spec = getattr(target, "score_kernel", lambda _: None)(states.dtype)
            if spec is None:
                scores, spec = target.score(states[:-1]).detach(), (0, None, 0.0)
            else:
                scores = torch.empty(T, B, p.D, dtype=states.dtype)
        scores = _checks.resolved(_checks.like("scores", scores, states, (T, B, p.D), x_name="states").detach())
    if log_pf is not None:
        log_pf = _checks.like("log_pf", log_pf, states, (B, T), x_name="states")
    kept = None if activations is None else _checked_activations(activations, log_pf, states, p)
    sigma = _checks.finite_float("sigma", sigma, positive=True)
    h, n_threads = _step(T, h), _checks.threads(n_threads)
    _check_variance(sigma, h, states.dtype)
    fn = backends.resolve(backend, "policy_log_pf", states.device)
    if lgv is None and _dispatch.is_reference(fn):
        return fn(states, temb, params, sigma, h, p.clip, n_threads)
    meta = (backend, sigma, h, p.clip, n_threads, log_pf, p.lgv_clip if lgv is not None else 0.0, scores, spec, kept)
    _dispatch.refuse_forward_mode("policy_log_pf", temb, lgv, *params, hint=_TORCH_HINT)
    if _dispatch.nothing_to_differentiate(temb, (lgv, *params)):
        return _log_pf_values(meta, states, temb, lgv, params)  # no autograd.Function
    return _autograd.apply(_PolicyLogPF, meta, states, temb, lgv, *params)


def _checked_activations(activations, log_pf, states, p: PolicyParams):
    """The act_hidden (T, 2(L+1), B, H) of policy_rollout(keep_activations=True), checked against the states
    (T+1, B, D); only with the rollout's log_pf (they are the rollout's)."""
    if log_pf is None:
        raise ValueError("activations= are a rollout's: give its log_pf= with them")
    T, B = states.shape[0] - 1, states.shape[1]
    shape = (T, 2 * len(p.weights) - 2, B, p.H)
    return _checks.resolved(_checks.like("activations", activations, states, shape, x_name="states").detach())
