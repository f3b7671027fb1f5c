"""Seeded, cached training of the guided-digits networks on the "prior" split of the digits.

Data: the digits code's pixels p ∈ [0, 1] (`fastsamp.experiments.digits`), mapped to x₀ = 2p − 1 ∈ [−1, 1]
(the DDPM convention); `to_pixels` maps samples back for the held-out classifier and the pictures.
Noising: i ~ U{1..T}, x_i = √ᾱ_i x₀ + √(1 − ᾱ_i) ε (linear β 1e-4 → 0.02, T = 1000; "tiny": T = 50).

    eps         EpsNet, loss |ε_θ(x_i, i/T) − ε|²;
    energy      EnergyNet, loss |σ_i ∇E_θ(x_i, i/T) − ε|² (double backprop);
    classifier  TimeClassifier, cross-entropy of p_t(y | x_i) (the guidance classifier).

Adam with a cosine schedule, one thread (the digits code's TRAIN_THREADS), an EMA (decay 0.999; 0.9 for
"tiny") of the diffusion networks' weights is what is returned. Sizes (CONFIGS): "full" is what the
experiment runs, "tiny" trains in a second for tests. `load_or_train` caches the weights under the digits
cache root ($FASTSAMP_CACHE or ~/.cache/fastsamp/generative) as guided-<kind>-<size>-seed<s>-<version>.pt."""
from __future__ import annotations

import copy
import time

import torch

from ...ddpm import DDPM
from ..digits import load_digits_data
from ..digits.cache import cache_file as digits_cache_file
from ..digits.cache import load_cached, save_cached
from ..digits.data import check_choice
from ..digits.training import _training
from ..training import ema_update
from .networks import EnergyNet, EpsNet, TimeClassifier

KINDS = ("eps", "energy", "classifier")
SIZES = ("tiny", "full")
MODULES = {"eps": EpsNet, "energy": EnergyNet, "classifier": TimeClassifier}
CACHE_VERSION = "v1"

CONFIGS = {
    kind: {"tiny": {"arch": {"hidden": 32, "n_blocks": 1, "n_steps": 50}, "steps": 150, "batch": 128, "lr": 3e-3},
           "full": {"arch": {"hidden": 256, "n_blocks": blocks, "n_steps": 1000}, "steps": steps, "batch": 256,
                    "lr": 1e-3}}
    for kind, blocks, steps in (("eps", 3, 6000), ("energy", 3, 5000), ("classifier", 2, 3000))
}


def to_diffusion(pixels):
    """Pixels in [0, 1] → x₀ = 2p − 1."""
    return 2.0 * pixels - 1.0


def to_pixels(x):
    """Diffusion samples → pixels (x + 1)/2 clamped to [0, 1]."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def train(kind, *, size="full", seed=0):
    """One network of `kind` trained on the "prior" split (module docstring); frozen, with an `info` dict."""
    check_choice("kind", kind, KINDS)
    check_choice("size", size, SIZES)
    cfg = CONFIGS[kind][size]
    pixels, labels = load_digits_data("prior")
    x0 = to_diffusion(pixels)
    t0 = time.perf_counter()
    n_steps = cfg["arch"]["n_steps"]
    with _training(seed) as g:
        net = MODULES[kind](**cfg["arch"])
        ema = copy.deepcopy(net).requires_grad_(False)
        decay = 0.999 if size == "full" else 0.9
        alpha_bars = DDPM(n_steps=n_steps, kind="linear").alpha_bars.float()
        opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"])
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg["steps"])
        for _ in range(cfg["steps"]):
            idx = torch.randint(0, len(x0), (cfg["batch"],), generator=g)
            step = torch.randint(0, n_steps, (cfg["batch"],), generator=g)
            ab = alpha_bars[step][:, None]
            eps = torch.randn(cfg["batch"], x0.shape[1], generator=g)
            x_t = ab.sqrt() * x0[idx] + (1 - ab).sqrt() * eps
            t = (step + 1).float() / n_steps
            if kind == "classifier":
                loss = torch.nn.functional.cross_entropy(net(x_t, t), labels[idx])
            else:
                loss = net.eps_loss(x_t, t, eps)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            ema_update(ema, net, decay)
    out = ema if kind != "classifier" else net
    out.eval().requires_grad_(False)
    out.info = {"kind": kind, "size": size, "seed": int(seed), "steps": cfg["steps"], "batch": cfg["batch"],
                "arch": dict(out.arch), "train_seconds": time.perf_counter() - t0, "final_loss": float(loss.detach())}
    return out


def cache_file(kind, *, size="full", seed=0, cache_dir=None):
    """The cache file of a guided-digits network (`digits.cache.cache_file`, prefix "guided-")."""
    return digits_cache_file("guided-", kind, KINDS, size, SIZES, seed, CACHE_VERSION, cache_dir)


def load_or_train(kind, *, size="full", seed=0, cache_dir=None, verbose=False):
    """The network of `kind`, from the cache when there (weights_only load), else trained and saved
    atomically; an unreadable cache file is retrained over with a warning. `info["cached"]` says which."""
    path = cache_file(kind, size=size, seed=seed, cache_dir=cache_dir)
    net = load_cached(path, MODULES[kind])
    if net is not None:
        return net
    if verbose:
        print(f"training guided-digits {kind} ({size}, seed {seed}) ...", flush=True)
    net = train(kind, size=size, seed=seed)
    return save_cached(path, net, net.arch)
