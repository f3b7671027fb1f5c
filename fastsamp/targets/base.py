"""The base class of the benchmark targets (`fastsamp.targets`): an unnormalised density with its score,
exact samples where known, and float64 parameters evaluated in the dtype and on the device of the input."""
from __future__ import annotations

import math

import torch

_LOG_2PI = math.log(2.0 * math.pi)


class Target:
    """Base class: an unnormalised density log R(x) = −E(x) on R^dim.

    Subclasses set ``name``, ``dim`` and ``log_Z`` (``None`` where unknown), register their float64
    parameters with :meth:`_register`, and implement ``_log_prob`` on a (B, dim) batch; ``_score``
    defaults to autograd of ``_log_prob`` and ``_sample`` to NotImplementedError.
    """

    name: str = "target"
    dim: int = 0
    log_Z: float | None = None

    def __init__(self, device=None, dtype=None):
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.dtype = torch.get_default_dtype() if dtype is None else dtype
        self._params: dict[str, torch.Tensor] = {}
        self._cache: dict[tuple, torch.Tensor] = {}

    # -- parameters ------------------------------------------------------------------------------
    def _register(self, name: str, value) -> None:
        self._params[name] = torch.as_tensor(value, dtype=torch.float64).to(self.device)
        self._cache.clear()

    def _p(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """Parameter ``name`` in the dtype and on the device of ``like`` (cached)."""
        key = (name, like.dtype, like.device)
        t = self._cache.get(key)
        if t is None:
            t = self._params[name].to(device=like.device, dtype=like.dtype)
            self._cache[key] = t
        return t

    def to(self, device=None, dtype=None) -> Target:
        """Move the stored parameters to ``device`` and make ``dtype`` the dtype of ``sample``.

        ``to(torch.float32)`` is read as a dtype. Parameters stay float64 (cast per call); returns self.
        """
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        if device is not None:
            self.device = torch.device(device)
            self._params = {k: v.to(self.device) for k, v in self._params.items()}
            self._cache.clear()
        if dtype is not None:
            if not dtype.is_floating_point:
                raise ValueError(f"dtype must be a floating dtype, got {dtype}")
            self.dtype = dtype
        return self

    # -- public interface ------------------------------------------------------------------------
    def _check(self, x) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"x must be a torch.Tensor of shape (B, {self.dim}), got {type(x).__name__}")
        if x.ndim < 1 or x.shape[-1] != self.dim:
            raise ValueError(f"x must have shape (..., {self.dim}) for target {self.name!r}, "
                             f"got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
        return x

    def log_prob(self, x: torch.Tensor, t=None) -> torch.Tensor:
        """log R(x), shape x.shape[:-1] ((B,) for a (B, D) batch); a time t is ignored (a fixed density)."""
        x = self._check(x)
        lead = x.shape[:-1]
        return self._log_prob(x.reshape(-1, self.dim)).reshape(lead)

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """E(x) = −log R(x)."""
        return -self.log_prob(x)

    def score(self, x: torch.Tensor, t=None) -> torch.Tensor:
        """∇_x log R(x), same shape as x; a time t is ignored."""
        x = self._check(x)
        return self._score(x.reshape(-1, self.dim)).reshape(x.shape)

    def score_kernel(self, dtype: torch.dtype):
        """The C++ policy kernels' description of ``score`` (csrc/cpu/target_score.h), for the Langevin
        parametrisation of the fused diffusion sampler: (kind, means (K, D) in ``dtype`` or None,
        parameter), or None where there is none (also for subclasses that override ``_score``)."""
        return None

    def kernel_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log R(x) of a (B, dim) batch by a fastsamp op where the target has one for its own log-density (the
        mixtures: ``ops.gmm_score``), else ``log_prob``: the same function up to float rounding, for the fused
        diffusion sampler's flows, which need log R at every visited state and detach it. Differentiable like
        ``log_prob`` (``ops.gmm_score`` has autograd)."""
        return self.log_prob(x)

    def _kernel_if_own(self, cls, spec):
        """spec when ``_score`` is that of ``cls`` (a subclass with its own score has no kernel), else None."""
        return spec if type(self)._score is cls._score else None

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` exact samples, shape (n, dim), in ``self.dtype`` on ``self.device``.

        Random numbers are drawn (float64) on the generator's device, or on ``self.device``."""
        n = int(n)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        device = generator.device if generator is not None else self.device
        out = self._sample(n, generator, device)
        return out.to(device=self.device, dtype=self.dtype)

    # -- defaults for subclasses -----------------------------------------------------------------
    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        """Autograd fallback: ∇ of Σ_b log R(x_b)."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self._log_prob(xg).sum(), xg)
        return g

    def _sample(self, n: int, generator, device) -> torch.Tensor:
        raise NotImplementedError(f"target {self.name!r} has no exact sampler")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, log_Z={self.log_Z})"
