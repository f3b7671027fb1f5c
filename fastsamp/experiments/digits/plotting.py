"""PNG grids of 8×8 digits."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .data import check_x


def save_grid(x, path, nrow=None, title=None, dpi=100):
    """Save (N, 64) samples in [0, 1] as a PNG grid of 8×8 digits (white background, dark strokes,
    like the sklearn images); returns the path."""
    from matplotlib.figure import Figure  # no pyplot: leaves the global backend alone

    x = torch.as_tensor(x).detach().float().cpu()
    check_x(x)
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
