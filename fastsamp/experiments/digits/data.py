"""The 8×8 digits of scikit-learn, split once into "prior", "heldout" and "test", and the shape and
label checks shared by the digits modules."""
from __future__ import annotations

import functools

import numpy as np
import torch

DIM = 64
N_CLASSES = 10
SPLIT_SEED = 20240607
SPLITS = ("prior", "heldout", "test")
SPLIT_SIZES = {"prior": 1000, "heldout": 400, "test": 397}


def check_choice(name, value, choices):
    """ValueError naming `name` unless value is one of `choices`."""
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
    check_choice("split", split, SPLITS)
    x, y, index = _digits()
    i = index[split]
    return torch.from_numpy(x[i].copy()), torch.from_numpy(y[i].copy())


def split_indices(split: str) -> np.ndarray:
    """Indices into `sklearn.datasets.load_digits()` of one split (sorted)."""
    check_choice("split", split, SPLITS)
    return _digits()[2][split].copy()


def real_digits(digit: int, split: str = "test") -> torch.Tensor:
    """The real digits of class `digit` in `split`, (n, 64)."""
    if not (isinstance(digit, (int, np.integer)) and 0 <= digit < N_CLASSES):
        raise ValueError(f"digit must be an int in [0, 9], got {digit!r}")
    x, y = load_digits_data(split)
    return x[y == int(digit)]


def check_x(x, name="x", dim=DIM):
    """ValueError naming `name` unless x is a (N, dim) tensor."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != dim:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a (N, {dim}) tensor, got {shape}")


def check_labels(y, n, device):
    """Labels y (an int, or a (n,) / (1,) integer tensor in [0, 9]) as a (n,) int64 tensor on `device`."""
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
