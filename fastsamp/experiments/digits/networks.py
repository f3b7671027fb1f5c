"""The digit networks: three generators x = f(z) (VAE decoder, GAN generator, rectified flow), the
classifier, and the training-only VAE encoder and GAN discriminator."""
from __future__ import annotations

import math

import torch
from torch import nn

from .data import DIM, N_CLASSES, check_labels, check_x


def _mlp(widths, act=nn.SiLU, out_act=None):
    layers = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(act())
    if out_act is not None:
        layers.append(out_act())
    return nn.Sequential(*layers)


class _Generator(nn.Module):
    latent_dim: int

    def _check_z(self, z):
        check_x(z, "z", self.latent_dim)

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """n unconditional samples f(z), z ~ N(0, I) drawn with `seed`."""
        return sample_prior(self, n, seed)


class VAEDecoder(_Generator):
    """x = sigmoid(MLP(z)): latent_dim → hidden → hidden → 64 (SiLU)."""

    def __init__(self, latent_dim: int = 12, hidden: int = 512):
        super().__init__()
        self.latent_dim, self.hidden = latent_dim, hidden
        self.net = _mlp([latent_dim, hidden, hidden, DIM])

    def logits(self, z):
        return self.net(z)

    def forward(self, z):
        self._check_z(z)
        return torch.sigmoid(self.net(z))


class VAEEncoder(nn.Module):
    def __init__(self, latent_dim, hidden):
        super().__init__()
        self.net = _mlp([DIM, hidden, hidden, 2 * latent_dim])

    def forward(self, x):
        mu, log_var = self.net(x).chunk(2, dim=1)
        return mu, log_var.clamp(-12.0, 6.0)


class GANGenerator(_Generator):
    """x = sigmoid(MLP(z)): latent_dim → hidden → hidden → hidden → 64 (LeakyReLU 0.2)."""

    def __init__(self, latent_dim: int = 16, hidden: int = 256):
        super().__init__()
        self.latent_dim, self.hidden = latent_dim, hidden
        self.net = _mlp([latent_dim, hidden, hidden, hidden, DIM], act=lambda: nn.LeakyReLU(0.2))

    def forward(self, z):
        self._check_z(z)
        return torch.sigmoid(self.net(z))


class Discriminator(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.net = _mlp([DIM, hidden, hidden, 1], act=lambda: nn.LeakyReLU(0.2))

    def forward(self, x):
        return self.net(x)[:, 0]


class FlowGenerator(_Generator):
    """Rectified flow x = sigmoid(Φ(z)), z ∈ R^64: Φ integrates dy/dt = v(y, t) from y(0) = z to t = 1 with
    `n_steps` Heun steps (the last one Euler: 2 n_steps − 1 velocity evaluations). v is an MLP
    [y, Fourier(t)] → hidden → hidden → hidden → 64 (SiLU). Targets are the dequantised squeezed logits
    logit(α + (1 − 2α) x̃) (module docstring), so samples are on the x̃ scale."""

    ALPHA = 0.02

    def __init__(self, hidden: int = 512, n_steps: int = 8, n_freq: int = 16):
        super().__init__()
        self.latent_dim, self.hidden, self.n_steps, self.n_freq = DIM, hidden, n_steps, n_freq
        self.register_buffer("freq", math.pi * torch.exp(torch.linspace(0.0, math.log(100.0), n_freq)))
        self.velocity_net = _mlp([DIM + 2 * n_freq, hidden, hidden, hidden, DIM])

    def velocity(self, y, t):
        t = torch.as_tensor(t, dtype=y.dtype, device=y.device).expand(y.shape[0])[:, None]
        ft = t * self.freq.to(y.dtype)
        return self.velocity_net(torch.cat([y, torch.sin(ft), torch.cos(ft)], 1))

    def flow(self, z, n_steps=None):
        """Φ(z): the ODE solution at t = 1 (logit scale)."""
        n = n_steps or self.n_steps
        h = 1.0 / n
        y = z
        for i in range(n):
            t = i * h
            v = self.velocity(y, t)
            if i == n - 1:
                y = y + h * v
            else:
                y_pred = y + h * v
                y = y + 0.5 * h * (v + self.velocity(y_pred, t + h))
        return y

    def forward(self, z, n_steps=None):
        self._check_z(z)
        return torch.sigmoid(self.flow(z, n_steps))

    @classmethod
    def encode_data(cls, x, u):
        """Training targets: logit(α + (1 − 2α)(16 x + u)/17)."""
        p = cls.ALPHA + (1 - 2 * cls.ALPHA) * (16.0 * x + u) / 17.0
        return torch.log(p) - torch.log1p(-p)


class DigitClassifier(nn.Module):
    """MLP 64 → hidden[0] → hidden[1] → 10 (SiLU). `features` is the last hidden layer."""

    def __init__(self, hidden=(256, 128)):
        super().__init__()
        self.hidden = tuple(int(h) for h in hidden)
        self.body = _mlp([DIM, *self.hidden], out_act=nn.SiLU)
        self.head = nn.Linear(self.hidden[-1], N_CLASSES)

    def features(self, x):
        check_x(x)
        return self.body(x)

    def forward(self, x):
        """Logits (N, 10)."""
        return self.head(self.features(x))

    def log_probs(self, x):
        """log p(· | x), (N, 10)."""
        return torch.log_softmax(self(x), dim=1)

    def log_prob(self, x, y):
        """log p(y | x), (N,); y an int or a (N,) / (1,) tensor of labels."""
        lp = self.log_probs(x)
        y = check_labels(y, x.shape[0], x.device)
        return lp.gather(1, y[:, None])[:, 0]

    @torch.no_grad()
    def predict(self, x):
        return self(x).argmax(1)


def sample_prior(generator, n: int, seed: int = 0) -> torch.Tensor:
    """n unconditional samples f(z), z ~ N(0, I) (float32, seeded), without grad."""
    g = torch.Generator().manual_seed(seed)
    p = next(generator.parameters())
    z = torch.randn(n, generator.latent_dim, generator=g).to(dtype=p.dtype, device=p.device)
    with torch.no_grad():
        return generator(z)
