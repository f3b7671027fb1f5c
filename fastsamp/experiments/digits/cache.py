"""The cache of trained digit networks: train once per (kind, size, seed), load afterwards."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from .data import check_choice, load_digits_data
from .training import CONFIGS, KINDS, MODULES, SIZES, TRAIN_SPLIT, TRAINERS

# Bump when an architecture, a training recipe or the split changes: old cache files are then ignored.
CACHE_VERSION = "v1"

# The held-out classifier is seeded apart from the reward classifier even for the same user seed.
HELDOUT_SEED_OFFSET = 7919


def cache_root(cache_dir=None) -> Path:
    """`cache_dir`, else `$FASTSAMP_CACHE`, else ~/.cache/fastsamp/generative."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("FASTSAMP_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "fastsamp" / "generative"


def cache_file(prefix, kind, kinds, size, sizes, seed, version, cache_dir=None) -> Path:
    """`cache_root(cache_dir)/<prefix><kind>-<size>-seed<seed>-<version>.pt`, after checking kind and size against
    their choices and seed (an integer, not a bool); shared by the digits and guided-digits caches."""
    check_choice("kind", kind, kinds)
    check_choice("size", size, sizes)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int, got {seed!r}")
    return cache_root(cache_dir) / f"{prefix}{kind}-{size}-seed{int(seed)}-{version}.pt"


def cache_path(kind, *, size="full", seed=0, cache_dir=None) -> Path:
    """The cache file of a digits network (`cache_file`)."""
    return cache_file("", kind, KINDS, size, SIZES, seed, CACHE_VERSION, cache_dir)


def load_or_train(kind, *, size="full", seed=0, cache_dir=None, verbose=False):
    """The trained module of `kind` ("vae", "gan", "flow", "classifier", "heldout_classifier"), from the cache
    when there, else trained on its split ("heldout" for the held-out classifier, "prior" otherwise) and saved.

    The cache file is `<dir>/<kind>-<size>-seed<seed>-<CACHE_VERSION>.pt`, `<dir>` from `cache_root(cache_dir)`; it
    holds the architecture, the state dict and the training info (torch.save, read back with
    weights_only=True); an unreadable file is retrained over, with a warning. Writes are atomic (temporary
    file + rename). The module comes back frozen (eval mode, parameters without grad) with an `info` dict
    (training time, steps, last loss, `cached`)."""
    path = cache_path(kind, size=size, seed=seed, cache_dir=cache_dir)
    module = load_cached(path, MODULES[kind])
    if module is not None:
        return module
    split = TRAIN_SPLIT[kind]
    x, y = load_digits_data(split)
    data = (x, y) if kind.endswith("classifier") else x
    train_seed = int(seed) + (HELDOUT_SEED_OFFSET if kind == "heldout_classifier" else 0)
    if verbose:
        print(f"training {kind} ({size}, seed {seed}) on the {split!r} split ...", flush=True)
    module = TRAINERS[kind](data, seed=train_seed, size=size)
    arch = {k: (list(v) if isinstance(v, tuple) else v) for k, v in CONFIGS[kind][size]["arch"].items()}
    return save_cached(path, module, arch, version=CACHE_VERSION, kind=kind)


def load_cached(path: Path, make):
    """The module saved at `path` by `save_cached` (a weights_only load; `make(**arch)` builds it), frozen
    (eval mode, no grad) with `info["cached"] = True`; None when there is no file or it is unreadable
    (with a warning: the caller trains again and overwrites it)."""
    if not path.exists():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        module = make(**blob["arch"])
        module.load_state_dict(blob["state_dict"])
    except Exception as e:  # an unreadable or stale file
        warnings.warn(f"ignoring unreadable cache file {path} ({type(e).__name__}: {e}); retraining", stacklevel=3)
        return None
    module.eval().requires_grad_(False)
    module.info = dict(blob["info"], cached=True)
    return module


def save_cached(path: Path, module, arch: dict, **extra):
    """Save a trained module's architecture, state dict and `info` at `path` atomically (temporary file +
    rename); returns it with `info["cached"] = False`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save({**extra, "arch": arch, "state_dict": module.state_dict(), "info": module.info}, tmp)
    os.replace(tmp, path)
    module.info = dict(module.info, cached=False)
    return module
