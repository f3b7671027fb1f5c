"""Small trained generative priors, classifiers and rewards on scikit-learn's 8×8 digits, for
outsourced diffusion sampling (Venkatraman et al.): sample p(x | y) ∝ p(x) r(x, y) of a generator
x = f(z), z ~ N(0, I), in its noise space, log π(z) = −½|z|² + λ log r(f(z), y).

Data (`load_digits_data`): the 1797 digits of `sklearn.datasets.load_digits`, pixels / 16 in [0, 1],
flattened to (N, 64), split once, deterministically (seed `SPLIT_SEED`) and stratified by class into
three disjoint parts:

    "prior"   1000 digits: trains the generators and the reward classifier,
    "heldout"  400 digits: trains the held-out evaluation classifier,
    "test"     397 digits: evaluation (accuracies, reference digits for Fréchet distances).

Generators (nn.Modules with `latent_dim` and `forward(z) -> x`, x in (0, 1)^64, differentiable in z;
returned frozen: eval mode, parameters without grad):

    VAEDecoder     MLP decoder of a VAE (Gaussian encoder, Bernoulli/BCE likelihood), latent 12,
    GANGenerator   MLP generator of a GAN (non-saturating loss, R1 penalty on the reals), latent 16,
    FlowGenerator  rectified flow: x = sigmoid(Φ(z)), Φ a fixed-step Heun integration from t = 0 to 1
                   of a learned velocity MLP, latent 64; the solver is plain torch, so f is differentiable.
                   The flow is trained on dequantised, squeezed logits of the pixels:
                   target = logit(α + (1 − 2α) x̃), x̃ = (16 x + u)/17, u ~ U(0, 1), α = 0.02, so its
                   samples sit on that (dequantised) scale: background pixels come out ≈ 0.02–0.08, not 0.

Each has `train_<kind>(data, *, steps=None, seed=0, size="full")`; `size="full"` trains in 1–3 minutes
(classifiers: 10–20 s) on one thread of a busy 2-core machine (`TRAIN_THREADS`), `size="tiny"` in well under
a second (for tests). Training is seeded and leaves the global RNG alone. `load_or_train(kind, ...)` caches
the weights (see its docstring). Sampling cost: f(z) is one MLP for the VAE and GAN, 15 velocity-MLP
evaluations for the flow (8 Heun steps, the last one Euler).

Classifiers (`DigitClassifier`, MLP 64 → 10 with `log_prob(x, y)` and `features(x)`): the reward
classifier (widths 256, 128, trained on "prior") and the held-out evaluation classifier (widths 128, 32,
trained on "heldout", another seed).

Rewards (`ClassReward`, `InpaintReward`), the noise-space target (`NoisePosterior`) and metrics
(`sample_metrics`, `prior_metrics`, `frechet_distance`, `mean_pairwise_distance`), and `save_grid`.

scikit-learn (the data) and scipy (`frechet_distance`) are imported lazily, as is matplotlib.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .models import value_and_grad

__all__ = [
    "SPLITS", "SPLIT_SIZES", "SPLIT_SEED", "KINDS", "SIZES", "CACHE_VERSION",
    "load_digits_data", "real_digits",
    "VAEDecoder", "GANGenerator", "FlowGenerator", "DigitClassifier",
    "train_vae", "train_gan", "train_flow", "train_classifier", "train_heldout_classifier",
    "load_or_train", "cache_root", "cache_path", "sample_prior",
    "ClassReward", "InpaintReward", "NoisePosterior",
    "frechet_distance", "mean_pairwise_distance", "classifier_accuracy", "sample_metrics", "prior_metrics",
    "save_grid",
]

DIM = 64
N_CLASSES = 10
SPLIT_SEED = 20240607
SPLITS = ("prior", "heldout", "test")
SPLIT_SIZES = {"prior": 1000, "heldout": 400, "test": 397}
SIZES = ("tiny", "full")
KINDS = ("vae", "gan", "flow", "classifier", "heldout_classifier")
# Bump when an architecture, a training recipe or the split changes: old cache files are then ignored.
CACHE_VERSION = "v1"
# Threads for training. The models are small MLPs: intra-op threads gain little on them, and on a shared CPU
# two threads collapsed to 5-20x slower than one (measured on the 2-core machine under load). One thread also
# makes a trained model independent of the machine's core count. None keeps torch's setting.
TRAIN_THREADS = 1
# The held-out classifier is seeded apart from the reward classifier even for the same user seed.
_HELDOUT_SEED_OFFSET = 7919

# Architectures and training recipes per size. Steps are optimiser steps.
CONFIGS = {
    "vae": {
        "tiny": {"arch": {"latent_dim": 8, "hidden": 64}, "steps": 150, "batch": 128, "lr": 3e-3},
        "full": {"arch": {"latent_dim": 12, "hidden": 512}, "steps": 8000, "batch": 128, "lr": 1e-3},
    },
    "gan": {
        "tiny": {"arch": {"latent_dim": 16, "hidden": 64}, "steps": 100, "batch": 64, "lr": 5e-4, "r1": 1.0},
        "full": {"arch": {"latent_dim": 16, "hidden": 256}, "steps": 8000, "batch": 128, "lr": 2e-4, "r1": 1.0},
    },
    "flow": {
        "tiny": {"arch": {"hidden": 64, "n_steps": 4}, "steps": 100, "batch": 128, "lr": 2e-3},
        "full": {"arch": {"hidden": 512, "n_steps": 8}, "steps": 8000, "batch": 256, "lr": 1e-3},
    },
    "classifier": {
        "tiny": {"arch": {"hidden": (64, 32)}, "steps": 300, "batch": 128, "lr": 3e-3},
        "full": {"arch": {"hidden": (256, 128)}, "steps": 3000, "batch": 128, "lr": 1e-3},
    },
    "heldout_classifier": {
        "tiny": {"arch": {"hidden": (32, 16)}, "steps": 300, "batch": 128, "lr": 3e-3},
        "full": {"arch": {"hidden": (128, 32)}, "steps": 3000, "batch": 128, "lr": 1e-3},
    },
}


# ----------------------------------------------------------------------------------------------- data

def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(map(repr, choices))}")


@functools.lru_cache(maxsize=1)
def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.asarray(d.data, dtype=np.float32) / 16.0
    y = np.asarray(d.target, dtype=np.int64)
    # Stratified split with exact sizes: shuffle within each class, give every digit its fractional rank
    # (i + ½)/n_class inside its class, order all digits by that rank (ties broken at random) and cut.
    rng = np.random.default_rng(SPLIT_SEED)
    rank = np.empty(len(y))
    for c in range(N_CLASSES):
        idx = np.flatnonzero(y == c)
        rank[rng.permutation(idx)] = (np.arange(len(idx)) + 0.5) / len(idx)
    order = np.lexsort((rng.random(len(y)), rank))
    if sum(SPLIT_SIZES.values()) != len(y):
        raise RuntimeError(f"split sizes {SPLIT_SIZES} do not add up to the {len(y)} digits")
    bounds = np.cumsum([0] + [SPLIT_SIZES[s] for s in SPLITS])
    index = {s: np.sort(order[bounds[i]:bounds[i + 1]]) for i, s in enumerate(SPLITS)}
    return x, y, index


def load_digits_data(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, labels) of one split: x float32 (N, 64) in [0, 1] (pixel / 16), labels int64 (N,).
    Splits (disjoint, stratified, fixed seed): "prior" 1000, "heldout" 400, "test" 397."""
    _check_choice("split", split, SPLITS)
    x, y, index = _digits()
    i = index[split]
    return torch.from_numpy(x[i].copy()), torch.from_numpy(y[i].copy())


def split_indices(split: str) -> np.ndarray:
    """Indices into `sklearn.datasets.load_digits()` of one split (sorted)."""
    _check_choice("split", split, SPLITS)
    return _digits()[2][split].copy()


def real_digits(digit: int, split: str = "test") -> torch.Tensor:
    """The real digits of class `digit` in `split`, (n, 64)."""
    if not (isinstance(digit, (int, np.integer)) and 0 <= digit < N_CLASSES):
        raise ValueError(f"digit must be an int in [0, 9], got {digit!r}")
    x, y = load_digits_data(split)
    return x[y == int(digit)]


def _check_x(x, name="x", dim=DIM):
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != dim:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a (N, {dim}) tensor, got {shape}")


# ----------------------------------------------------------------------------------------------- models

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
        _check_x(z, "z", self.latent_dim)

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


class _VAEEncoder(nn.Module):
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


class _Discriminator(nn.Module):
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
        _check_x(x)
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
        y = _labels(y, x.shape[0], x.device)
        return lp.gather(1, y[:, None])[:, 0]

    @torch.no_grad()
    def predict(self, x):
        return self(x).argmax(1)


def _labels(y, n, device):
    y = torch.as_tensor(y, device=device)
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.dim() > 1:
        raise ValueError(f"labels must be an int or a 1-D integer tensor, got {y.dtype} {tuple(y.shape)}")
    y = y.long().reshape(-1)
    if y.numel() == 1:
        y = y.expand(n)
    if y.numel() != n:
        raise ValueError(f"got {y.numel()} labels for {n} inputs")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= N_CLASSES):
        raise ValueError(f"labels must lie in [0, {N_CLASSES - 1}]")
    return y


# ----------------------------------------------------------------------------------------------- training

def _config(kind, size, steps):
    _check_choice("kind", kind, KINDS)
    _check_choice("size", size, SIZES)
    cfg = dict(CONFIGS[kind][size])
    if steps is not None:
        if not isinstance(steps, (int, np.integer)) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        cfg["steps"] = int(steps)
    return cfg


def _data_x(data):
    x = data[0] if isinstance(data, (tuple, list)) else data
    x = torch.as_tensor(x, dtype=torch.float32)
    _check_x(x, "data")
    return x


def _finish(module, kind, size, seed, cfg, t0, loss):
    module.eval().requires_grad_(False)
    module.info = {"kind": kind, "size": size, "seed": int(seed), "steps": cfg["steps"],
                   "train_seconds": time.perf_counter() - t0, "final_loss": float(loss.detach())}
    return module


@contextlib.contextmanager
def _training(seed):
    """Seeded training that leaves the global RNG state alone, on TRAIN_THREADS threads; yields a generator."""
    n_threads = torch.get_num_threads()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if TRAIN_THREADS:
            torch.set_num_threads(TRAIN_THREADS)
        try:
            yield torch.Generator().manual_seed(seed)
        finally:
            torch.set_num_threads(n_threads)


def _batches(n, batch, g):
    return torch.randint(0, n, (batch,), generator=g)


def train_vae(data, *, steps=None, seed=0, size="full") -> VAEDecoder:
    """A VAE on [0, 1] pixels: Gaussian encoder q(z|x), decoder logits with the Bernoulli (BCE) likelihood,
    standard normal prior, negative ELBO per digit; Adam with a cosine schedule. Returns the decoder."""
    cfg = _config("vae", size, steps)
    x = _data_x(data)
    t0 = time.perf_counter()
    with _training(seed) as g:
        dec, enc = VAEDecoder(**cfg["arch"]), _VAEEncoder(cfg["arch"]["latent_dim"], cfg["arch"]["hidden"])
        params = list(dec.parameters()) + list(enc.parameters())
        opt = torch.optim.Adam(params, lr=cfg["lr"])
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg["steps"])
        for _ in range(cfg["steps"]):
            xb = x[_batches(len(x), cfg["batch"], g)]
            mu, log_var = enc(xb)
            z = mu + (0.5 * log_var).exp() * torch.randn(mu.shape, generator=g)
            rec = nn.functional.binary_cross_entropy_with_logits(dec.logits(z), xb, reduction="none").sum(1)
            kl = 0.5 * (mu**2 + log_var.exp() - 1 - log_var).sum(1)
            loss = (rec + kl).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return _finish(dec, "vae", size, seed, cfg, t0, loss)


def train_gan(data, *, steps=None, seed=0, size="full") -> GANGenerator:
    """A GAN with MLP generator and discriminator: non-saturating loss, R1 gradient penalty
    (γ/2) E|∇D(x_real)|², Adam(β = 0.5, 0.99), and an exponential moving average of the generator
    weights (decay 0.999, or 0.9 for tiny), which is what is returned."""
    cfg = _config("gan", size, steps)
    x = _data_x(data)
    t0 = time.perf_counter()
    softplus = nn.functional.softplus
    with _training(seed) as g:
        gen, disc = GANGenerator(**cfg["arch"]), _Discriminator(cfg["arch"]["hidden"])
        ema = GANGenerator(**cfg["arch"])
        ema.load_state_dict(gen.state_dict())
        ema.requires_grad_(False)
        decay = 0.999 if size == "full" else 0.9
        opt_g = torch.optim.Adam(gen.parameters(), lr=cfg["lr"], betas=(0.5, 0.99))
        opt_d = torch.optim.Adam(disc.parameters(), lr=cfg["lr"], betas=(0.5, 0.99))
        n, b, d = len(x), cfg["batch"], cfg["arch"]["latent_dim"]
        for _ in range(cfg["steps"]):
            # discriminator
            xr = x[_batches(n, b, g)].requires_grad_(True)
            with torch.no_grad():
                xf = gen(torch.randn(b, d, generator=g))
            dr = disc(xr)
            (grad,) = torch.autograd.grad(dr.sum(), xr, create_graph=True)
            loss_d = softplus(-dr).mean() + softplus(disc(xf)).mean() + 0.5 * cfg["r1"] * grad.pow(2).sum(1).mean()
            opt_d.zero_grad()
            loss_d.backward()
            opt_d.step()
            # generator (non-saturating)
            loss_g = softplus(-disc(gen(torch.randn(b, d, generator=g)))).mean()
            opt_g.zero_grad()
            loss_g.backward()
            opt_g.step()
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), gen.parameters()):
                    pe.lerp_(p, 1 - decay)
    return _finish(ema, "gan", size, seed, cfg, t0, loss_g)


def train_flow(data, *, steps=None, seed=0, size="full") -> FlowGenerator:
    """Rectified flow / flow matching: y_t = (1 − t) z + t y_1, t ~ U(0, 1), regress v(y_t, t) on y_1 − z,
    y_1 the dequantised squeezed logits of the data; Adam with a cosine schedule."""
    cfg = _config("flow", size, steps)
    x = _data_x(data)
    t0 = time.perf_counter()
    with _training(seed) as g:
        flow = FlowGenerator(**cfg["arch"])
        opt = torch.optim.Adam(flow.parameters(), lr=cfg["lr"])
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg["steps"])
        b = cfg["batch"]
        for _ in range(cfg["steps"]):
            xb = x[_batches(len(x), b, g)]
            y1 = FlowGenerator.encode_data(xb, torch.rand(xb.shape, generator=g))
            z = torch.randn(xb.shape, generator=g)
            t = torch.rand(b, 1, generator=g)
            v = flow.velocity(t * y1 + (1 - t) * z, t[:, 0])
            loss = ((v - (y1 - z)) ** 2).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return _finish(flow, "flow", size, seed, cfg, t0, loss)


def _train_classifier(kind, data, steps, seed, size):
    cfg = _config(kind, size, steps)
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise ValueError("classifier data must be a pair (x, labels)")
    x = _data_x(data)
    y = _labels(data[1], x.shape[0], x.device)
    t0 = time.perf_counter()
    with _training(seed) as g:
        clf = DigitClassifier(**cfg["arch"])
        opt = torch.optim.AdamW(clf.parameters(), lr=cfg["lr"], weight_decay=1e-3)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg["steps"])
        for _ in range(cfg["steps"]):
            i = _batches(len(x), cfg["batch"], g)
            # light Gaussian input noise, so that the classifier is smooth off the data (it scores samples)
            xb = x[i] + 0.05 * torch.randn(x[i].shape, generator=g)
            loss = nn.functional.cross_entropy(clf(xb), y[i], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return _finish(clf, kind, size, seed, cfg, t0, loss)


def train_classifier(data, *, steps=None, seed=0, size="full") -> DigitClassifier:
    """The reward classifier (widths 256, 128; tiny 64, 32): cross-entropy (label smoothing 0.05), input noise
    σ = 0.05, AdamW (weight decay 1e-3) with a cosine schedule. `data` = (x, labels)."""
    return _train_classifier("classifier", data, steps, seed, size)


def train_heldout_classifier(data, *, steps=None, seed=0, size="full") -> DigitClassifier:
    """The held-out evaluation classifier: as `train_classifier` with widths 128, 32 (tiny 32, 16)."""
    return _train_classifier("heldout_classifier", data, steps, seed, size)


_TRAIN = {"vae": train_vae, "gan": train_gan, "flow": train_flow, "classifier": train_classifier,
          "heldout_classifier": train_heldout_classifier}
_MODULES = {"vae": VAEDecoder, "gan": GANGenerator, "flow": FlowGenerator, "classifier": DigitClassifier,
            "heldout_classifier": DigitClassifier}
_TRAIN_SPLIT = {"vae": "prior", "gan": "prior", "flow": "prior", "classifier": "prior",
                "heldout_classifier": "heldout"}


# ----------------------------------------------------------------------------------------------- cache

def cache_root(cache_dir=None) -> Path:
    """`cache_dir`, else `$FASTSAMP_CACHE`, else ~/.cache/fastsamp/generative."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("FASTSAMP_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "fastsamp" / "generative"


def cache_path(kind, *, size="full", seed=0, cache_dir=None) -> Path:
    _check_choice("kind", kind, KINDS)
    _check_choice("size", size, SIZES)
    return cache_root(cache_dir) / f"{kind}-{size}-seed{int(seed)}-{CACHE_VERSION}.pt"


def load_or_train(kind, *, size="full", seed=0, cache_dir=None, verbose=False):
    """The trained module of `kind` ("vae", "gan", "flow", "classifier", "heldout_classifier"), from the cache
    when there, else trained on its split ("heldout" for the held-out classifier, "prior" otherwise) and saved.

    The cache file is `<dir>/<kind>-<size>-seed<seed>-<CACHE_VERSION>.pt`, `<dir>` from `cache_root(cache_dir)`; it
    holds the architecture, the state dict and the training info (torch.save, read back with
    weights_only=True); an unreadable file is retrained over, with a warning. Writes are atomic (temporary
    file + rename). The module comes back frozen (eval mode, parameters without grad) with an `info` dict
    (training time, steps, last loss, `cached`)."""
    if not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int, got {seed!r}")
    path = cache_path(kind, size=size, seed=seed, cache_dir=cache_dir)
    if path.exists():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            module = _MODULES[kind](**blob["arch"])
            module.load_state_dict(blob["state_dict"])
        except Exception as e:  # an unreadable or stale file: train again and overwrite it
            warnings.warn(f"ignoring unreadable cache file {path} ({type(e).__name__}: {e}); retraining", stacklevel=2)
        else:
            module.eval().requires_grad_(False)
            module.info = dict(blob["info"], cached=True)
            return module
    split = _TRAIN_SPLIT[kind]
    x, y = load_digits_data(split)
    data = (x, y) if kind.endswith("classifier") else x
    train_seed = int(seed) + (_HELDOUT_SEED_OFFSET if kind == "heldout_classifier" else 0)
    if verbose:
        print(f"training {kind} ({size}, seed {seed}) on the {split!r} split ...", flush=True)
    module = _TRAIN[kind](data, seed=train_seed, size=size)
    arch = {k: (list(v) if isinstance(v, tuple) else v) for k, v in CONFIGS[kind][size]["arch"].items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save({"version": CACHE_VERSION, "kind": kind, "arch": arch, "state_dict": module.state_dict(),
                "info": module.info}, tmp)
    os.replace(tmp, path)
    module.info = dict(module.info, cached=False)
    return module


def sample_prior(generator, n: int, seed: int = 0) -> torch.Tensor:
    """n unconditional samples f(z), z ~ N(0, I) (float32, seeded), without grad."""
    g = torch.Generator().manual_seed(seed)
    p = next(generator.parameters())
    z = torch.randn(n, generator.latent_dim, generator=g).to(dtype=p.dtype, device=p.device)
    with torch.no_grad():
        return generator(z)


# ----------------------------------------------------------------------------------------------- rewards

class ClassReward:
    """log r(x) = log p(y | x) under `classifier` (a DigitClassifier); y an int or (N,) labels."""

    def __init__(self, classifier, y):
        self.classifier = classifier
        self.y = y if isinstance(y, torch.Tensor) else int(y)
        _labels(self.y, 1 if not isinstance(y, torch.Tensor) else max(y.numel(), 1), "cpu")

    def __call__(self, x):
        _check_x(x)
        return self.classifier.log_prob(x, self.y)


class InpaintReward:
    """Gaussian log-likelihood of the observed pixels, log r(x) = −½ Σ_mask (x − x_obs)² / σ².
    x_observed: (64,) or (N, 64); mask: bool/0-1, (64,) or (N, 64); sigma > 0."""

    def __init__(self, x_observed, mask, sigma=0.1):
        x_obs = torch.as_tensor(x_observed, dtype=torch.float32)
        mask = torch.as_tensor(mask)
        for name, t in (("x_observed", x_obs), ("mask", mask)):
            if t.dim() not in (1, 2) or t.shape[-1] != DIM:
                raise ValueError(f"{name} must be (64,) or (N, 64), got {tuple(t.shape)}")
        if not float(sigma) > 0:
            raise ValueError(f"sigma must be positive, got {sigma!r}")
        if mask.dtype != torch.bool:
            if not bool(((mask == 0) | (mask == 1)).all()):
                raise ValueError("mask must be boolean or 0/1")
            mask = mask.bool()
        self.x_observed, self.mask, self.sigma = x_obs, mask, float(sigma)

    def __call__(self, x):
        _check_x(x)
        n = x.shape[0]
        for name, t in (("x_observed", self.x_observed), ("mask", self.mask)):
            if t.dim() == 2 and t.shape[0] not in (1, n):
                raise ValueError(f"{name} has {t.shape[0]} rows for {n} inputs")
        x_obs = self.x_observed.to(dtype=x.dtype, device=x.device)
        m = self.mask.to(device=x.device, dtype=x.dtype)
        return -0.5 * (m * (x - x_obs) ** 2).sum(-1).expand(n) / self.sigma**2


# ----------------------------------------------------------------------------------------------- target

class NoisePosterior:
    """The posterior of the generator's noise, log π(z) = −½|z|² + λ log r(f(z)) (up to a constant).
    `dim` = generator.latent_dim. z is evaluated in the generator's dtype/device and results are returned
    in z's dtype/device. `energy(z, t=None)` = −log π(z) for `models.EnergyModel` (t ignored)."""

    has_energy = True

    def __init__(self, generator, reward, lam=1.0):
        if not hasattr(generator, "latent_dim"):
            raise ValueError("generator must have a latent_dim attribute")
        if not callable(reward):
            raise ValueError("reward must be callable on (N, 64) samples")
        self.generator, self.reward, self.lam = generator, reward, float(lam)
        self.dim = int(generator.latent_dim)

    def _cast(self, z):
        _check_x(z, "z", self.dim)
        p = next(self.generator.parameters(), None)
        return z if p is None else z.to(dtype=p.dtype, device=p.device)

    def decode(self, z):
        return self.generator(self._cast(z))

    def log_reward(self, z):
        """log r(f(z)), (N,)."""
        return self.reward(self.decode(z)).to(dtype=z.dtype, device=z.device)

    def _log_prob(self, z):
        zc = self._cast(z)
        lp = -0.5 * (zc**2).sum(1)
        if self.lam != 0.0:
            lp = lp + self.lam * self.reward(self.generator(zc))
        return lp

    def log_prob(self, z):
        """log π(z), (N,)."""
        with torch.no_grad():
            return self._log_prob(z).to(dtype=z.dtype, device=z.device)

    def score_and_log_prob(self, z):
        """(∇ log π(z), log π(z)) by autograd (also under torch.no_grad or torch.inference_mode)."""
        lp, g = value_and_grad(self._log_prob, z)
        return g.to(dtype=z.dtype, device=z.device), lp.to(dtype=z.dtype, device=z.device)

    def score(self, z):
        """∇_z log π(z), (N, dim)."""
        return self.score_and_log_prob(z)[0]

    def energy(self, z, t=None):
        return -self._log_prob(z).to(dtype=z.dtype, device=z.device)


# ----------------------------------------------------------------------------------------------- metrics

def frechet_distance(a, b) -> float:
    """Fréchet distance between Gaussian fits of two feature sets (rows = samples):
    |μ_a − μ_b|² + tr(C_a + C_b − 2 (C_a C_b)^½), the matrix root by scipy.linalg.sqrtm (real part).
    Biased upwards for few samples; compare values computed with equal sample sizes."""
    from scipy import linalg

    a = torch.as_tensor(a).detach().double().cpu().numpy()
    b = torch.as_tensor(b).detach().double().cpu().numpy()
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two (n >= 2, d) feature sets of equal d, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = linalg.sqrtm(ca @ cb)
    covmean = np.real(covmean)
    fd = float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * np.trace(covmean))
    return max(fd, 0.0)


def mean_pairwise_distance(x) -> float:
    """Mean Euclidean distance over distinct pairs of rows."""
    x = torch.as_tensor(x).detach().double().cpu()
    n = x.shape[0]
    if x.dim() != 2 or n < 2:
        raise ValueError(f"need (n >= 2, d) samples, got {tuple(x.shape)}")
    return float(torch.cdist(x, x).sum() / (n * (n - 1)))


def classifier_accuracy(classifier, x, y) -> float:
    _check_x(x)
    with torch.no_grad():
        return float((classifier.predict(x) == _labels(y, x.shape[0], x.device)).double().mean())


def sample_metrics(x, y, heldout_classifier, real_x_of_class) -> dict:
    """Quality of samples x (N, 64) meant to be of class y: `heldout_accuracy` (fraction the held-out
    classifier labels y), `diversity` (mean pairwise Euclidean distance of x), `frechet` (Fréchet distance
    between Gaussian fits of heldout_classifier.features of x and of real_x_of_class) and, for reference,
    `real_diversity` of the real digits. (The mean log-reward is computed by the caller.)"""
    _check_x(x)
    _check_x(real_x_of_class, "real_x_of_class")
    x = x.detach()
    p = next(heldout_classifier.parameters())
    xc, rc = x.to(dtype=p.dtype, device=p.device), real_x_of_class.detach().to(dtype=p.dtype, device=p.device)
    with torch.no_grad():
        fx, fr = heldout_classifier.features(xc), heldout_classifier.features(rc)
    return {"heldout_accuracy": classifier_accuracy(heldout_classifier, xc, y),
            "diversity": mean_pairwise_distance(x),
            "frechet": frechet_distance(fx, fr),
            "real_diversity": mean_pairwise_distance(real_x_of_class),
            "n": int(x.shape[0])}


def prior_metrics(generator, heldout_classifier, n=1000, seed=0, split="test") -> dict:
    """Unconditional samples of a generator against the held-out classifier: the class histogram
    (`class_fractions`, ≈ 0.1 each for a prior that covers the digits evenly), its entropy in nats
    (log 10 ≈ 2.303 at most), `diversity`, and the Fréchet distance of all features to the real `split`."""
    x = sample_prior(generator, n, seed)
    p = next(heldout_classifier.parameters())
    xc = x.to(dtype=p.dtype, device=p.device)
    real = load_digits_data(split)[0].to(dtype=p.dtype, device=p.device)
    with torch.no_grad():
        frac = torch.bincount(heldout_classifier.predict(xc), minlength=N_CLASSES).double() / n
        fd = frechet_distance(heldout_classifier.features(xc), heldout_classifier.features(real))
    nz = frac[frac > 0]
    return {"class_fractions": frac.tolist(), "class_entropy": float(-(nz * nz.log()).sum()),
            "diversity": mean_pairwise_distance(x), "frechet": fd, "n": n}


# ----------------------------------------------------------------------------------------------- plots

def save_grid(x, path, nrow=None, title=None, dpi=100):
    """Save (N, 64) samples in [0, 1] as a PNG grid of 8×8 digits (white background, dark strokes,
    like the sklearn images); returns the path."""
    from matplotlib.figure import Figure  # no pyplot: leaves the global backend alone

    x = torch.as_tensor(x).detach().float().cpu()
    _check_x(x)
    n = x.shape[0]
    if n == 0:
        raise ValueError("no samples to plot")
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    ncol = int(math.ceil(n / nrow))
    pad = 1
    canvas = np.ones((ncol * (8 + pad) + pad, nrow * (8 + pad) + pad), dtype=np.float32)
    imgs = (1.0 - x.clamp(0, 1)).reshape(n, 8, 8).numpy()
    for k in range(n):
        r, c = divmod(k, nrow)
        canvas[pad + r * (8 + pad): pad + r * (8 + pad) + 8, pad + c * (8 + pad): pad + c * (8 + pad) + 8] = imgs[k]
    fig = Figure(figsize=(max(2.0, 0.12 * canvas.shape[1]), max(2.0, 0.12 * canvas.shape[0]) + (0.3 if title else 0)))
    ax = fig.add_axes([0, 0, 1, 1 if not title else 0.92])
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
