"""Noise schedules (docs/design.md: data at t = 0, noise at t = 1).

A forward SDE dx = f(t) x dt + g(t) dW with marginal x_t | x_0 ~ N(α_t x_0, σ_t² I).
Every method takes a time as a python float (returning a float) or as a floating tensor of times
(returning a tensor of the same shape, dtype and device, computed with the same formulas; not
range-checked, so that no host synchronisation is needed). A float time is checked to be finite and
in [0, 1] when the value checks run (`fastsamp.ops._checks.validating()`: validation switched on and
not under torch.compile tracing), so a step whose t changes between calls compiles without a graph break.

Under torch.compile a float time is a constant of the graph: a new value recompiles the step (the ops
take their t-dependent coefficients as float arguments, which torch specializes anyway). A 0-d tensor
time is an input of the graph: new values reuse it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .ops import _ieee
from .ops._checks import validating


def _check_t(t, name: str = "t"):
    """A float time (in [0, 1]: a value check), or a floating tensor of times (returned as it is)."""
    if isinstance(t, torch.Tensor):
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a float or a floating tensor, got a tensor of {t.dtype}")
        return t
    t = float(t)
    if torch.compiler.is_compiling():
        return _graph_constant(t)
    if validating() and not (math.isfinite(t) and 0.0 <= t <= 1.0):
        raise ValueError(f"{name} must be a finite time in [0, 1], got {t!r}")
    return t


def _graph_constant(t: float) -> float:
    """t itself (copysign(|t|, t) = t, NaN and −0.0 included), made a constant of the graph when torch.compile
    traces it as a symbolic float (a float input turns symbolic at its first recompile): math.fabs has no
    symbolic form, so torch specializes t here, guarding on `t == value`. Otherwise torch would specialize
    expressions of t further on (math.expm1 and the ops' float arguments have no symbolic form), and torch
    2.13's guard on such an expression can fail by a rounding difference on the frame that created it
    (AssertionError: "Guard failed on the same frame it was created")."""
    return math.copysign(math.fabs(t), t)


def _exp(v):
    return v.exp() if isinstance(v, torch.Tensor) else math.exp(v)


def _expm1(v):
    return torch.expm1(v) if isinstance(v, torch.Tensor) else math.expm1(v)


def _sqrt(v):
    return v.sqrt() if isinstance(v, torch.Tensor) else math.sqrt(v)


@dataclass(frozen=True)
class VP:
    """Variance preserving: β(t) = β_min + t(β_max − β_min), f = −½β, g² = β,
    α_t = exp(−½∫₀ᵗβ), σ_t² = 1 − α_t²."""

    beta_min: float = 0.1
    beta_max: float = 20.0

    def __post_init__(self):
        if not (0 <= self.beta_min <= self.beta_max and math.isfinite(self.beta_max)):
            raise ValueError(f"VP needs 0 <= beta_min <= beta_max < inf, got {self.beta_min}, {self.beta_max}")

    def beta(self, t: float) -> float:
        return self.beta_min + _check_t(t) * (self.beta_max - self.beta_min)

    def log_alpha(self, t: float) -> float:
        t = _check_t(t)
        return -0.5 * (self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t)

    def alpha(self, t: float) -> float:
        return _exp(self.log_alpha(t))

    def sigma2(self, t: float) -> float:
        return -_expm1(2.0 * self.log_alpha(t))

    def sigma(self, t: float) -> float:
        return _sqrt(self.sigma2(t))

    def drift_coef(self, t: float) -> float:
        """f(t) in dx = f(t) x dt + g dW."""
        return -0.5 * self.beta(t)

    def g2(self, t: float) -> float:
        return self.beta(t)


@dataclass(frozen=True)
class VE:
    """Variance exploding: σ(t) = σ_min (σ_max/σ_min)^t, f = 0,
    g² = dσ²/dt = 2σ(t)² log(σ_max/σ_min), α_t = 1, σ_t² = σ(t)² − σ_min²."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0

    def __post_init__(self):
        if not (0 < self.sigma_min < self.sigma_max and math.isfinite(self.sigma_max)):
            raise ValueError(f"VE needs 0 < sigma_min < sigma_max < inf, got {self.sigma_min}, {self.sigma_max}")

    def sigma_t(self, t: float) -> float:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** _check_t(t)

    def alpha(self, t: float) -> float:
        t = _check_t(t)
        return torch.ones_like(t) if isinstance(t, torch.Tensor) else 1.0

    def sigma2(self, t: float) -> float:
        return self.sigma_t(t) ** 2 - self.sigma_min**2

    def sigma(self, t: float) -> float:
        return _sqrt(self.sigma2(t))

    def drift_coef(self, t: float) -> float:
        t = _check_t(t)
        return torch.zeros_like(t) if isinstance(t, torch.Tensor) else 0.0

    def g2(self, t: float) -> float:
        return 2.0 * self.sigma_t(t) ** 2 * math.log(self.sigma_max / self.sigma_min)


def reverse_em_coefficients(schedule, t: float, h: float) -> tuple[float, float, float]:
    """(a, c_s, c_n) of the reverse Euler–Maruyama step t → t − h:
    x ← x + h[−f x + g²(s + e)] + g√h ξ = a x + c_s (s + e) + c_n ξ.
    (Float kernel arguments: under torch.compile, t and h are constants of the graph, `_graph_constant`.)"""
    if torch.compiler.is_compiling():
        h = _graph_constant(h)
    g2 = schedule.g2(t)
    return 1.0 - h * schedule.drift_coef(t), h * g2, _ieee.sqrt(h * g2)
