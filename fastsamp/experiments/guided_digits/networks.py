"""The networks of the guided-digits experiment, all functions of (x, t) with x (B, 64) in the diffusion's
[−1, 1] pixel scale and t a DDPM grid time i/T (a python float, or a (B,) tensor):

    EpsNet          ε-prediction ε_θ(x, t); its score is s_θ(x, t) = −ε_θ(x, t)/σ_t;
    EnergyNet       E_θ(x, t) = ½|x − f_θ(x, t)|²/σ_t (Salimans & Ho 2021): log p_t = −E_θ + const, score −∇E_θ,
                    trained so that σ_t ∇E_θ predicts ε;
    TimeClassifier  noise-aware logits of p_t(y | x_t) (trained on noised digits at random levels).

Each is a residual MLP (`ResMLP`) on [x, sinusoidal embedding of the step i = tT]."""
from __future__ import annotations

import math

import torch
from torch import nn

from ...ddpm import DDPM
from ..digits import DIM, N_CLASSES


class ResMLP(nn.Module):
    """x (B, d_in) → Linear → `n_blocks` residual blocks h ← h + W₂ SiLU(W₁ SiLU(h) + W_e e(t)) → SiLU →
    Linear (B, d_out); e(t) the sinusoidal embedding (n_freq sines and cosines) of the step tT."""

    def __init__(self, d_in=DIM, d_out=DIM, hidden=256, n_blocks=3, n_freq=16, n_steps=1000):
        super().__init__()
        self.n_steps = int(n_steps)
        self.register_buffer("freq", torch.exp(-math.log(10000.0) * torch.arange(n_freq) / n_freq))
        self.inp = nn.Linear(d_in, hidden)
        self.emb = nn.Sequential(nn.Linear(2 * n_freq, hidden), nn.SiLU())
        self.blocks = nn.ModuleList(nn.ModuleDict({"w1": nn.Linear(hidden, hidden), "we": nn.Linear(hidden, hidden),
                                                   "w2": nn.Linear(hidden, hidden)}) for _ in range(n_blocks))
        self.out = nn.Linear(hidden, d_out)

    def forward(self, x, t):
        """x (B, d_in), t a float (the embedding is computed once and broadcast) or a (B,) tensor."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1, 1)
        arg = t * self.n_steps * self.freq.to(x.dtype)
        e = self.emb(torch.cat([arg.sin(), arg.cos()], 1))
        h = self.inp(x)
        act = nn.functional.silu
        for b in self.blocks:
            h = h + b["w2"](act(b["w1"](act(h)) + b["we"](e)))
        return self.out(act(h))


class _Diffusion(nn.Module):
    """Shared: the DDPM schedule (linear β, T steps) and σ_t as a (B, 1) column."""

    def __init__(self, hidden, n_blocks, n_steps, d_out):
        super().__init__()
        self.arch = {"hidden": int(hidden), "n_blocks": int(n_blocks), "n_steps": int(n_steps)}
        self.schedule = DDPM(n_steps=int(n_steps), kind="linear")
        self.net = ResMLP(DIM, d_out, hidden, n_blocks, n_steps=n_steps)
        self.dim = DIM

    def sigma(self, x, t):
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        return self.schedule.sigma(t)[:, None]


class EpsNet(_Diffusion):
    """ε_θ(x, t); `score` = −ε_θ/σ_t (a `fastsamp.models.ScoreModel` function)."""

    def __init__(self, hidden=256, n_blocks=3, n_steps=1000):
        super().__init__(hidden, n_blocks, n_steps, DIM)

    def forward(self, x, t):
        return self.net(x, t)

    def score(self, x, t):
        return -self.net(x, t) / self.sigma(x, t)

    def eps_loss(self, x_t, t, eps):
        return ((self(x_t, t) - eps) ** 2).sum(1).mean()


class EnergyNet(_Diffusion):
    """E_θ(x, t) = ½|x − f_θ(x, t)|²/σ_t, (B,) (a `fastsamp.models.EnergyModel` energy)."""

    def __init__(self, hidden=256, n_blocks=3, n_steps=1000):
        super().__init__(hidden, n_blocks, n_steps, DIM)

    def forward(self, x, t):
        return 0.5 * ((x - self.net(x, t)) ** 2).sum(1) / self.sigma(x, t)[:, 0]

    def eps_loss(self, x_t, t, eps):
        """|σ_t ∇_x E_θ(x_t, t) − ε|² (the graph kept for the parameter gradient)."""
        x_t = x_t.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(self(x_t, t).sum(), x_t, create_graph=True)
        return ((self.sigma(x_t, t) * g - eps) ** 2).sum(1).mean()


class TimeClassifier(nn.Module):
    """Logits of p_t(y | x_t), (B, 10), for noised digits x_t at grid time t."""

    def __init__(self, hidden=256, n_blocks=2, n_steps=1000):
        super().__init__()
        self.arch = {"hidden": int(hidden), "n_blocks": int(n_blocks), "n_steps": int(n_steps)}
        self.net = ResMLP(DIM, N_CLASSES, hidden, n_blocks, n_steps=n_steps)

    def forward(self, x, t):
        return self.net(x, t)

    def log_prob(self, x, t, y):
        """log p_t(y | x), (B,); y a (B,) long tensor."""
        return torch.log_softmax(self(x, t), 1).gather(1, y[:, None])[:, 0]
