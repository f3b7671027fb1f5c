"""Seeded training of the digit generators and classifiers: architectures and recipes per size."""
from __future__ import annotations

import contextlib
import time

import numpy as np
import torch
from torch import nn

from ..training import ema_update
from .data import check_choice, check_labels, check_x
from .networks import DigitClassifier, Discriminator, FlowGenerator, GANGenerator, VAEDecoder, VAEEncoder

SIZES = ("tiny", "full")
KINDS = ("vae", "gan", "flow", "classifier", "heldout_classifier")

# Threads for training. The models are small MLPs: intra-op threads gain little on them, and on a shared CPU
# two threads collapsed to 5-20x slower than one (measured on the 2-core machine under load). One thread also
# makes a trained model independent of the machine's core count. None keeps torch's setting.
TRAIN_THREADS = 1


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


def _config(kind, size, steps):
    check_choice("kind", kind, KINDS)
    check_choice("size", size, SIZES)
    cfg = dict(CONFIGS[kind][size])
    if steps is not None:
        if not isinstance(steps, (int, np.integer)) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        cfg["steps"] = int(steps)
    return cfg


def _data_x(data):
    x = data[0] if isinstance(data, (tuple, list)) else data
    x = torch.as_tensor(x, dtype=torch.float32)
    check_x(x, "data")
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
        dec, enc = VAEDecoder(**cfg["arch"]), VAEEncoder(cfg["arch"]["latent_dim"], cfg["arch"]["hidden"])
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
        gen, disc = GANGenerator(**cfg["arch"]), Discriminator(cfg["arch"]["hidden"])
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
            ema_update(ema, gen, decay)
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
    y = check_labels(data[1], x.shape[0], x.device)
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


TRAINERS = {"vae": train_vae, "gan": train_gan, "flow": train_flow, "classifier": train_classifier,
          "heldout_classifier": train_heldout_classifier}
MODULES = {"vae": VAEDecoder, "gan": GANGenerator, "flow": FlowGenerator, "classifier": DigitClassifier,
            "heldout_classifier": DigitClassifier}
TRAIN_SPLIT = {"vae": "prior", "gan": "prior", "flow": "prior", "classifier": "prior",
                "heldout_classifier": "heldout"}
