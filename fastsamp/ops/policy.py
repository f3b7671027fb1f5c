"""Fused whole-trajectory kernels for the drift network of the trained diffusion sampler
(`fastsamp.samplers.diffusion.DriftNet`, plain case: no Langevin term, fixed variance).

Per step i (t_i = i h) and chain x ∈ R^D the network is

    z_0 = W_s x + b_s + temb[i];  u_0 = gelu(z_0);  z_k = W_k u_{k-1} + b_k, u_k = gelu(z_k)  (k = 1..L)
    drift = clamp((W_o u_L + b_o)[:D], -clip, clip)

(`DriftNet.state` is (W_s, b_s), `DriftNet.joint` = Sequential(GELU, [Linear(H, H), GELU] × L,
Linear(H, 2D)); the last D outputs, the unused raw log-variance, are never computed), and the
transition is the Euler–Maruyama step of `ops.em_step_logprob` with log_var = None:
x_{i+1} = x_i + h·drift + √(σ²h + explore²) ξ_i, ξ_i the Philox draw (seed, offset = i).

    policy_rollout(net, temb, B, sigma=…, seed=…)   the whole simulation in one C++ call (no grad)
    policy_log_pf(net, states, temb, sigma=…)       log p_F (B, T) of given trajectories, one C++
                                                    call; autograd: one C++ call for the gradients
                                                    w.r.t. temb and every weight and bias it reads
    reference_rollout / reference_log_pf            the same math in PyTorch (the test oracle)

CPU only, float32 or float64 (all tensors in one dtype). The C++ kernels run on
`n_threads` OpenMP threads (default `torch.get_num_threads()`).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from . import _checks, trajectory

_DTYPES = {torch.float32: 0, torch.float64: 1}


class PolicyParams:
    """The tensors of a DriftNet that the kernels read (views of the module's parameters):
    ws (H, D), bs (H), hidden [(W_k (H, H), b_k (H))] × L, wo (2D, H), bo (2D); clip, D, H."""

    def __init__(self, net):
        if getattr(net, "langevin", False):
            raise ValueError("the fused policy kernels do not support the Langevin parametrisation (net.langevin)")
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
        self.ws, self.bs = net.state.weight, net.state.bias
        self.hidden = [(m.weight, m.bias) for m in linears]
        self.wo, self.bo = mods[-1].weight, mods[-1].bias
        shapes_ok = (tuple(self.ws.shape) == (self.H, self.D) and tuple(self.wo.shape) == (2 * self.D, self.H)
                     and all(tuple(w.shape) == (self.H, self.H) for w, _ in self.hidden))
        if not shapes_ok or any(b is None for b in [self.bs, self.bo] + [b for _, b in self.hidden]):
            raise ValueError("DriftNet layers have unexpected shapes or no bias")

    def tensors(self):
        """[ws, bs, wo, bo, W_1, b_1, ..., W_L, b_L]"""
        out = [self.ws, self.bs, self.wo, self.bo]
        for w, b in self.hidden:
            out += [w, b]
        return out


def _check_dtype(name, t, dtype):
    if t.dtype != dtype:
        raise TypeError(f"{name} has dtype {t.dtype}, expected {dtype} (the fused policy's tensors share one dtype)")
    if t.device.type != "cpu":
        raise ValueError(f"the fused policy kernels run on the CPU, {name} is on {t.device}")


def _kernels():
    from fastsamp import _C  # the compiled extension (imported on first use)
    return _C


def _threads(n_threads):
    return torch.get_num_threads() if n_threads is None else _checks.integer("n_threads", n_threads, minimum=1)


def _step(T, h):
    h = 1.0 / T if h is None else float(h)
    if not (math.isfinite(h) and h > 0):
        raise ValueError(f"h must be a positive finite float, got {h}")
    return h


def _sigma(sigma):
    sigma = float(sigma)
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive finite float, got {sigma}")
    return sigma


@torch.no_grad()
def policy_rollout(net, temb, batch_size, *, sigma, h=None, explore=0.0, seed=0, chain_offset=0, x0=None,
                   dtype=None, n_threads=None):
    """Simulate `batch_size` chains for T = temb.shape[0] steps from x0 (default 0) in one kernel call.

    temb (T, H) is `net.time_features(ts[:-1])[0]` with ts = arange(T + 1)·h in `dtype`; h defaults
    to 1/T. Returns (states (T+1, B, D), log_pf (B, T), log_pb (B, T)) in `dtype` (default temb's),
    equal to T calls of `ops.em_step_logprob(x, drift, sigma=σ, t=ts[i], h=h, seed=seed, offset=i,
    chain_offset=chain_offset, explore=explore)` with drift = net(x, temb[i]) — the C++ em_step_logprob
    kernel's Philox normals and transition arithmetic exactly; the network itself up to float rounding. No autograd.
    """
    p = PolicyParams(net)
    dtype = temb.dtype if dtype is None else dtype
    if dtype not in _DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    if temb.dim() != 2 or temb.shape[1] != p.H:
        raise ValueError(f"temb must be (T, {p.H}), got {tuple(temb.shape)}")
    T, B, D = int(temb.shape[0]), _checks.integer("batch_size", batch_size, minimum=0), p.D
    _checks.integer("T = temb.shape[0]", T, minimum=1)
    h, sigma = _step(T, h), _sigma(sigma)
    explore = float(explore)
    if not (math.isfinite(explore) and explore >= 0):
        raise ValueError(f"explore must be a finite float >= 0, got {explore}")
    seed, _ = _checks.seed_offset(seed, 0, T)
    chain_offset = _checks.chain_offset(chain_offset, B)
    cast = [t.detach().to(dtype).contiguous() for t in [temb] + p.tensors()]
    for t in cast:
        _check_dtype("temb and the net's parameters", t, dtype)
    temb_c, ws, bs, wo, bo, *hid = cast
    if x0 is not None:
        if tuple(x0.shape) != (B, D):
            raise ValueError(f"x0 must be ({B}, {D}), got {tuple(x0.shape)}")
        x0 = x0.detach().to(dtype).contiguous()
        _check_dtype("x0", x0, dtype)
    ts = (torch.arange(T + 1, dtype=dtype) * h)[:-1].to(torch.float64).contiguous()
    states = torch.empty(T + 1, B, D, dtype=dtype)
    log_pf = torch.empty(B, T, dtype=dtype)
    log_pb = torch.empty(B, T, dtype=dtype)
    if B > 0:
        hw, hb = [w.data_ptr() for w in hid[0::2]], [b.data_ptr() for b in hid[1::2]]
        _kernels().cpu_policy_rollout(_DTYPES[dtype], 0 if x0 is None else x0.data_ptr(), temb_c.data_ptr(),
                                      ws.data_ptr(), bs.data_ptr(), hw, hb, wo.data_ptr(), bo.data_ptr(),
                                      ts.data_ptr(), B, D, p.H, T, sigma, h, explore, p.clip, seed,
                                      chain_offset, _threads(n_threads), states.data_ptr(), log_pf.data_ptr(),
                                      log_pb.data_ptr())
    return states, log_pf, log_pb


class _PolicyLogPF(torch.autograd.Function):
    """Forward: kernel cpu_policy_log_pf; backward: cpu_policy_log_pf_backward (states are constants)."""

    @staticmethod
    def forward(ctx, meta, states, temb, ws, bs, wo, bo, *hidden):
        D, H, clip, sigma, h, n_threads, given = meta
        T, B = states.shape[0] - 1, states.shape[1]
        dt = _DTYPES[states.dtype]
        log_pf = torch.empty(B, T, dtype=states.dtype) if given is None else given.detach().clone()
        if B > 0 and given is None:
            hw, hb = [w.data_ptr() for w in hidden[0::2]], [b.data_ptr() for b in hidden[1::2]]
            _kernels().cpu_policy_log_pf(dt, states.data_ptr(), temb.data_ptr(), ws.data_ptr(), bs.data_ptr(), hw, hb,
                                         wo.data_ptr(), bo.data_ptr(), B, D, H, T, sigma, h, clip, n_threads,
                                         log_pf.data_ptr())
        ctx.meta = meta
        ctx.save_for_backward(states, temb, ws, bs, wo, bo, *hidden)
        return log_pf

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_log_pf):
        D, H, clip, sigma, h, n_threads, _ = ctx.meta
        states, temb, ws, bs, wo, bo, *hidden = ctx.saved_tensors
        T, B = states.shape[0] - 1, states.shape[1]
        g = g_log_pf.contiguous()
        g_temb, g_ws, g_bs = torch.empty_like(temb), torch.empty_like(ws), torch.empty_like(bs)
        g_wo, g_bo = torch.empty_like(wo), torch.empty_like(bo)
        g_hidden = [torch.empty_like(t) for t in hidden]
        if B > 0:
            hw, hb = [w.data_ptr() for w in hidden[0::2]], [b.data_ptr() for b in hidden[1::2]]
            g_hw, g_hb = [t.data_ptr() for t in g_hidden[0::2]], [t.data_ptr() for t in g_hidden[1::2]]
            _kernels().cpu_policy_log_pf_backward(_DTYPES[states.dtype], states.data_ptr(), temb.data_ptr(),
                                                  ws.data_ptr(), bs.data_ptr(), hw, hb, wo.data_ptr(), bo.data_ptr(),
                                                  g.data_ptr(), B, D, H, T, sigma, h, clip, n_threads,
                                                  g_temb.data_ptr(), g_ws.data_ptr(), g_bs.data_ptr(), g_hw, g_hb,
                                                  g_wo.data_ptr(), g_bo.data_ptr())
        else:
            for t in [g_temb, g_ws, g_bs, g_wo, g_bo] + g_hidden:
                t.zero_()
        return (None, None, g_temb, g_ws, g_bs, g_wo, g_bo, *g_hidden)


def policy_log_pf(net, states, temb, *, sigma, h=None, log_pf=None, n_threads=None):
    """log p_F (B, T) of the transitions states[i] → states[i+1] (states (T+1, B, D)) under the
    policy: −½ Σ_d (v²/s² + log 2π s²), v = x_{i+1} − x_i − h·drift(x_i, t_i), s² = σ²h, h default 1/T.

    One kernel call forward; `backward()` is one kernel call that gives the gradients w.r.t. temb
    (T, H) and the net's state / joint weights and biases (the states are treated as constants,
    as in the off-policy objectives). All tensors must be CPU tensors of one dtype (float32/64).
    Equal to `DiffusionSampler._evaluate(states, False)[0]` for the same net.

    `log_pf`: the values, when already known — the log_pf that `policy_rollout` returned for these
    states with the same net and temb is bit for bit what the forward kernel would compute — so
    that the forward call is skipped and only the backward runs.
    """
    p = PolicyParams(net)
    if states.dim() != 3 or states.shape[2] != p.D or states.shape[0] < 2:
        raise ValueError(f"states must be (T+1, B, {p.D}) with T >= 1, got {tuple(states.shape)}")
    T = states.shape[0] - 1
    if tuple(temb.shape) != (T, p.H):
        raise ValueError(f"temb must be ({T}, {p.H}), got {tuple(temb.shape)}")
    dtype = states.dtype
    if dtype not in _DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    _check_dtype("states", states, dtype)
    _check_dtype("temb", temb, dtype)
    params = p.tensors()
    for i, t in enumerate(params):
        _check_dtype(f"net parameter {i}", t, dtype)
    if log_pf is not None:
        if tuple(log_pf.shape) != (states.shape[1], T):
            raise ValueError(f"log_pf must be ({states.shape[1]}, {T}), got {tuple(log_pf.shape)}")
        _check_dtype("log_pf", log_pf, dtype)
    meta = (p.D, p.H, p.clip, _sigma(sigma), _step(T, h), _threads(n_threads), log_pf)
    return _PolicyLogPF.apply(meta, states.detach().contiguous(), temb.contiguous(),
                              *[t.contiguous() for t in params])


# ---------------------------------------------------------------- PyTorch reference
def _drift(net, x, temb_rows, D, clip):
    return net.joint(net.state(x) + temb_rows)[:, :D].clamp(-clip, clip)


def reference_rollout(net, temb, batch_size, *, sigma, h=None, explore=0.0, seed=0, chain_offset=0, x0=None,
                      dtype=None, backend="torch"):
    """The per-step path of policy_rollout in PyTorch: T calls of the net and of ops.em_step_logprob."""
    p = PolicyParams(net)
    dtype = temb.dtype if dtype is None else dtype
    T, B = temb.shape[0], int(batch_size)
    h = _step(T, h)
    x = torch.zeros(B, p.D, dtype=dtype) if x0 is None else x0.to(dtype)
    ts = torch.arange(T + 1, dtype=dtype) * h
    states, log_pf, log_pb = [x], [], []
    for i in range(T):
        drift = _drift(net, x, temb[i:i + 1], p.D, p.clip)
        x, lpf, lpb = trajectory.em_step_logprob(x, drift, sigma=sigma, t=float(ts[i]), h=h, seed=seed, offset=i,
                                                 chain_offset=chain_offset, explore=explore, reparam=False,
                                                 backend=backend)
        states.append(x)
        log_pf.append(lpf)
        log_pb.append(lpb)
    return torch.stack(states), torch.stack(log_pf, 1), torch.stack(log_pb, 1)


def reference_log_pf(net, states, temb, *, sigma, h=None):
    """policy_log_pf in PyTorch (one batched net call over all T·B states; differentiable)."""
    p = PolicyParams(net)
    T, B, D = states.shape
    T -= 1
    h = _step(T, h)
    x = states[:-1].reshape(T * B, D)
    drift = _drift(net, x, temb[:, None].expand(T, B, temb.shape[1]).reshape(T * B, -1), D, p.clip)
    s2 = sigma * sigma * h
    v = states[1:].reshape(T * B, D) - x - h * drift
    log_pf = -0.5 * (v * v / s2 + math.log(2 * math.pi * s2)).sum(-1)
    return log_pf.view(T, B).T
