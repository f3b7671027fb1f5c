"""The drift network of a DiffusionSampler (the PIS architecture) and its Fourier time embedding."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ... import ops


class FourierTime(nn.Module):
    """t ↦ MLP([sin(ω t + φ), cos(ω t + φ)]), ω = linspace(0.1, 100, n_harmonics), φ learned."""

    def __init__(self, n_harmonics: int, hidden: int, out: int, n_layers: int = 1):
        super().__init__()
        self.register_buffer("omega", torch.linspace(0.1, 100.0, n_harmonics)[None])
        self.phase = nn.Parameter(torch.randn(1, n_harmonics))
        layers = [nn.Linear(2 * n_harmonics, hidden)]
        for _ in range(n_layers - 1):
            layers += [nn.GELU(), nn.Linear(hidden, hidden)]
        self.mlp = nn.Sequential(*layers, nn.GELU(), nn.Linear(hidden, out))

    def forward(self, t):
        arg = t[:, None] * self.omega + self.phase
        return self.mlp(torch.cat([arg.sin(), arg.cos()], -1))


def _head(hidden: int, out: int, n_layers: int, zero_init: bool) -> nn.Sequential:
    layers = [nn.GELU()]
    for _ in range(n_layers):
        layers += [nn.Linear(hidden, hidden), nn.GELU()]
    last = nn.Linear(hidden, out)
    if zero_init:
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    return nn.Sequential(*layers, last)


class DriftNet(nn.Module):
    """The PIS architecture: state embedding + Fourier time embedding → MLP → (drift, log-variance).

    Optional pieces: the Langevin parametrisation (a time-only scale NN₂(t), zero-initialised
    to 0.01, times the clipped target score), a learned per-dimension variance
    (log_var = log_var_range·tanh(raw)), a conditional flow F_θ(x, t) for SubTB, and a scalar
    log Z for TB.
    """

    def __init__(self, dim: int, *, hidden: int = 64, n_harmonics: int = 64, n_layers: int = 2,
                 langevin: bool = False, lgv_layers: int = 3, lgv_per_dim: bool = False,
                 learned_variance: bool = False, log_var_range: float = 4.0, flow: bool = False,
                 lgv_clip: float = 1e2, clip: float = 1e4):
        super().__init__()
        for name, v, minimum in (("dim", dim, 1), ("hidden", hidden, 1), ("n_harmonics", n_harmonics, 1),
                                 ("n_layers", n_layers, 0), ("lgv_layers", lgv_layers, 1)):
            ops._checks.integer(name, v, minimum=minimum)
        self.dim, self.langevin, self.learned_variance = dim, langevin, learned_variance
        self.log_var_range, self.lgv_clip, self.clip = log_var_range, lgv_clip, clip
        self.time = FourierTime(n_harmonics, hidden, hidden)
        self.state = nn.Linear(dim, hidden)
        self.joint = _head(hidden, 2 * dim, n_layers, zero_init=True)
        self.log_Z = nn.Parameter(torch.zeros(()))
        self.lgv_scale = None
        if langevin:
            self.lgv_scale = FourierTime(n_harmonics, hidden, dim if lgv_per_dim else 1, n_layers=lgv_layers)
            nn.init.zeros_(self.lgv_scale.mlp[-1].weight)
            nn.init.constant_(self.lgv_scale.mlp[-1].bias, 0.01)
        self.flow = _head(hidden, 1, n_layers, zero_init=True) if flow else None

    def time_features(self, ts):
        """Per-time quantities shared by every chain: (embedding (T, H), Langevin scale (T, 1|D) or None)."""
        return self.time(ts), (self.lgv_scale(ts) if self.langevin else None)

    def trajectory_hidden(self, x, temb, B):
        """hid = state(x) + temb of the T·B states of B trajectories, x (T·B, D) in rows t·B + b, temb (T, H): temb
        broadcast over the B chains (no per-row copy) and the state layer as addmm with the weight transposed
        contiguous, so that its weight gradient is formed as (xᵀ g)ᵀ; with nn.Linear's layout torch's CPU mm forms
        gᵀ x, about 10× slower at 30,000 rows and D ≤ 10 (forward + backward at D = 2 / 10: 2.6 / 3.7 against
        5.6 / 6.4 ms, one thread; D = 32 equal). Values: those of state(x) + temb up to rounding."""
        T, H = temb.shape
        z = torch.addmm(self.state.bias, x, self.state.weight.t().contiguous())
        return (z.view(T, B, H) + temb[:, None]).view(T * B, H)

    def flow_of(self, hid, fused=False):
        """The flow F_θ (N,) from the hidden features hid = state(x) + temb (N, H): the flow head, or with fused=True
        the same function with the head's layers after its first GELU in one fused MLP op (ops.mlp_net: on the CPU
        one C++ kernel call forward and one backward, instead of the Sequential's six modules and their autograd).
        A head with a single Linear (n_layers=0) is not an MLP for the op and stays the Sequential."""
        linear = self.flow[1::2]  # Sequential(GELU, [Linear, GELU] × n_layers, Linear)
        if not fused or len(linear) < 2:
            return self.flow(hid).squeeze(-1)
        return ops.mlp_net(F.gelu(hid), [m.weight for m in linear], [m.bias for m in linear],
                           activation="gelu").squeeze(-1)

    def forward(self, x, temb, lgv, score=None):
        """x (N, D), temb (N|1, H), lgv (N|1, ·) → drift (N, D), log_var (N, D) or None, hidden (N, H)."""
        hid = self.state(x) + temb
        out = self.joint(hid)
        drift, raw = out[:, :self.dim], out[:, self.dim:]
        if self.langevin:
            drift = drift + lgv * score.clamp(-self.lgv_clip, self.lgv_clip)
        drift = drift.clamp(-self.clip, self.clip)
        log_var = self.log_var_range * torch.tanh(raw.clamp(-self.clip, self.clip)) if self.learned_variance else None
        return drift, log_var, hid
