"""Discrete DDPM noise schedules (Ho et al. 2020; cosine: Nichol & Dhariwal 2021) next to the
continuous VP/VE ones of `fastsamp.schedules`.

T steps i = 1..T with β_i; ᾱ_i = Π_{j≤i} (1 − β_j); the marginal x_i | x_0 ~ N(√ᾱ_i x_0, (1 − ᾱ_i) I).

* linear: β_i evenly spaced from β_start to β_end;
* cosine: ᾱ(u) = f(u)/f(0), f(u) = cos²((u + s)/(1 + s) · π/2) at u = i/T, with
  β_i = min(1 − ᾱ(i/T)/ᾱ((i−1)/T), β_max) (β_max = 0.999 clips the last steps).

A step i is the time t = i/T of the model protocol, so `alpha(t)`, `sigma(t)`, `sigma2(t)` take a
python float (a float back; t must be one of the grid times i/T) or a floating tensor of grid
times (a tensor back of the same shape, dtype and device). `index(t)` is the step i − 1 counted
from 0 (the row of a learned time embedding).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch

KINDS = ("cosine", "linear")


@dataclass(frozen=True)
class DDPM:
    """A discrete DDPM schedule of `n_steps` steps, `kind` "cosine" (offset s) or "linear"
    (β_start → β_end)."""

    n_steps: int = 100
    kind: str = "cosine"
    s: float = 0.008
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_max: float = 0.999

    def __post_init__(self):
        if not isinstance(self.n_steps, int) or isinstance(self.n_steps, bool) or self.n_steps < 1:
            raise ValueError(f"n_steps must be an int >= 1, got {self.n_steps!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if not 0.0 <= self.s < 1.0:
            raise ValueError(f"s must be in [0, 1), got {self.s!r}")
        if not 0.0 < self.beta_start <= self.beta_end < 1.0:
            raise ValueError(f"DDPM needs 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}")
        if not 0.0 < self.beta_max < 1.0:
            raise ValueError(f"beta_max must be in (0, 1), got {self.beta_max!r}")

    def cosine_alpha_bar(self, u):
        """The cosine rule's unclipped ᾱ(u) = f(u)/f(0) at a fraction u ∈ [0, 1] of the steps."""
        f = lambda v: math.cos((v + self.s) / (1 + self.s) * math.pi / 2) ** 2  # noqa: E731
        return f(u) / f(0.0)

    @cached_property
    def betas(self) -> torch.Tensor:
        """β_1..β_T, float64 (T,), on the CPU (also under a device context such as torch.device("meta"))."""
        T = self.n_steps
        if self.kind == "linear":
            return torch.linspace(self.beta_start, self.beta_end, T, dtype=torch.float64, device="cpu")
        ab = torch.tensor([self.cosine_alpha_bar(i / T) for i in range(T + 1)], dtype=torch.float64, device="cpu")
        return (1 - ab[1:] / ab[:-1]).clamp(max=self.beta_max)

    @cached_property
    def alpha_bars(self) -> torch.Tensor:
        """ᾱ_1..ᾱ_T, float64 (T,), on the CPU."""
        return torch.cumprod(1 - self.betas, 0)

    def times(self) -> list[float]:
        """The grid times t_i = i/T, i = 1..T."""
        return [i / self.n_steps for i in range(1, self.n_steps + 1)]

    def index(self, t):
        """The step index i − 1 ∈ [0, T) of a grid time t = i/T (an int, or a long tensor for a tensor)."""
        T = self.n_steps
        if isinstance(t, torch.Tensor):
            if not t.is_floating_point():
                raise TypeError(f"t must be a float or a floating tensor, got a tensor of {t.dtype}")
            return (t * T).round().long().clamp(1, T) - 1
        t = float(t)
        i = round(t * T)
        if not (math.isfinite(t) and 1 <= i <= T and abs(t * T - i) < 1e-6):
            raise ValueError(f"t must be one of the DDPM grid times i/{T}, i = 1..{T}, got {t!r}")
        return i - 1

    def _at(self, table, t):
        i = self.index(t)
        if isinstance(t, torch.Tensor):
            return table.to(device=t.device)[i].to(t.dtype)
        return float(table[i])

    def alpha(self, t):
        """α_t = √ᾱ_i."""
        return self._at(self.alpha_bars.sqrt(), t)

    def sigma2(self, t):
        """σ_t² = 1 − ᾱ_i."""
        return self._at(1 - self.alpha_bars, t)

    def sigma(self, t):
        return self._at((1 - self.alpha_bars).sqrt(), t)

    def beta(self, t):
        return self._at(self.betas, t)

    def config(self) -> dict:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}
