"""Score models: exact Gaussian mixtures, products (composition), any score network,
energy-parameterised models, and the small trained score and energy MLPs (`fastsamp.mlp_models`, importable
from here).

Every model follows the protocol of `fastsamp.protocol`: `dim`, `schedule`, `score(x, t) -> (B, D)`;
models with an energy also have `log_prob(x, t) -> (B,)` (up to a constant for products).
Mixtures (and products of them) compute with fastsamp ops: `with_backend(backend)` gives the
same model on that backend. Every model saves and loads (`save(model, path)`, `load(path)`: a
config of plain values and a state_dict, readable by torch.load(weights_only=True)).
"""
from __future__ import annotations

import math

import torch

from . import ops
from ._model_base import no_grad_call, schedule_config, schedule_from_config
from ._model_base import value_and_grad as value_and_grad
from .mlp_models import PARAMETERISATIONS as PARAMETERISATIONS
from .mlp_models import EnergyMLP, FourierMLP, ScoreMLP, mlp_moves
from .mlp_models import FusedMLP as FusedMLP
from .mlp_models import train_score_mlp as train_score_mlp
from .protocol import has_energy, with_backend
from .schedules import VP


def _float_tensor(name, v, dtype=None, device=None):
    """v as a floating tensor (array-likes through torch.as_tensor); a TypeError naming `name` otherwise."""
    try:
        t = torch.as_tensor(v)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"{name} must be a tensor or an array-like of numbers, got {type(v).__name__}") from e
    if t.is_complex() or not (t.is_floating_point() or t.dtype in (torch.int8, torch.int16, torch.int32,
                                                                    torch.int64, torch.uint8)):
        raise TypeError(f"{name} must hold real numbers, got {type(v).__name__} of {t.dtype}")
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    return t.to(dtype=dtype or t.dtype, device=device or t.device)


class GaussianMixture:
    """p_0 = Σ_k π_k N(μ_k, v_k I), whose diffusion marginal is exact at every t:
    p_t = Σ_k π_k N(α_t μ_k, (α_t² v_k + σ_t²) I)."""

    has_energy = True

    def __init__(self, means, log_weights, variances, schedule=None, backend="auto"):
        """means (K, D), log_weights (K,) (unnormalised), variances (K,): tensors or array-likes (NumPy
        arrays, lists); integer inputs become the default float dtype, the others take means' dtype.
        `backend`: the backend of ops.gmm_score in score/log_prob (`with_backend` changes it)."""
        self.means = _float_tensor("means", means)
        dtype, device = self.means.dtype, self.means.device
        self.log_weights = _float_tensor("log_weights", log_weights, dtype, device)
        self.variances = _float_tensor("variances", variances, dtype, device)
        if self.means.dim() != 2 or 0 in self.means.shape:
            raise ValueError(f"means must have shape (K, D) with K, D >= 1, got {tuple(self.means.shape)}")
        K = self.means.shape[0]
        for name, v in (("log_weights", self.log_weights), ("variances", self.variances)):
            if tuple(v.shape) != (K,):
                raise ValueError(f"{name} must have shape ({K},) like means' K, got {tuple(v.shape)}")
        if not bool(torch.isfinite(self.means).all()):
            raise ValueError("means must be finite")
        if not bool((torch.isfinite(self.variances) & (self.variances > 0)).all()):
            raise ValueError("variances must be finite and > 0")
        lw = self.log_weights
        if bool(torch.isnan(lw).any() | (lw == math.inf).any()) or bool((lw == -math.inf).all()):
            raise ValueError("log_weights must be < inf, not NaN, and not all -inf")
        self.schedule = schedule or VP()
        self.backend = backend
        self.dim = self.means.shape[1]

    def to(self, dtype=None, device=None):
        """A copy with the parameters in `dtype` on `device` (this mixture is unchanged)."""
        conv = lambda t: t.to(dtype=dtype or t.dtype, device=device or t.device)  # noqa: E731
        return GaussianMixture(conv(self.means), conv(self.log_weights), conv(self.variances), self.schedule,
                               self.backend)

    def with_backend(self, backend):
        """This mixture (the same tensors) evaluated by ops.gmm_score on `backend`."""
        return GaussianMixture(self.means, self.log_weights, self.variances, self.schedule, backend)

    def marginal(self, t: float) -> tuple[float, float]:
        return self.schedule.alpha(t), self.schedule.sigma2(t)

    def _params(self, x):
        return [p.to(dtype=x.dtype, device=x.device) for p in (self.means, self.log_weights, self.variances)]

    def score_and_log_prob(self, x, t):
        alpha, sigma2 = self.marginal(t)
        return ops.gmm_score(x, *self._params(x), alpha=alpha, sigma2=sigma2, backend=self.backend)

    def score(self, x, t):
        return self.score_and_log_prob(x, t)[0]

    def log_prob(self, x, t):
        return self.score_and_log_prob(x, t)[1]

    def fused_corrector(self):
        """The whole-move kernels ops.gmm_mala (ULA/MALA) and ops.gmm_hmc (HMC/U-HMC) as one callable
        (the `fastsamp.protocol` hook)."""
        return self.fused_moves

    def fused_moves(self, x, t, step_size, spec, key):
        """spec.n_steps corrector moves (spec: a `fastsamp.samplers.kernels.CorrectorSpec`) at time t from
        x with Philox key (seed, offset, chain_offset); returns (x, per-chain acceptance rate). The HMC
        momentum starts at 0 and is carried across the moves inside the kernel."""
        alpha, sigma2 = self.marginal(t)
        common = dict(step_size=step_size, n_steps=spec.n_steps, alpha=alpha, sigma2=sigma2, seed=key.seed,
                      offset=key.offset, chain_offset=key.chain_offset, backend=spec.backend)
        if spec.corrector in ("hmc", "uhmc"):
            return ops.gmm_hmc(x, *self._params(x), n_leapfrog=spec.n_leapfrog, mh=spec.mh,
                               damping=spec.damping, **common)
        return ops.gmm_mala(x, *self._params(x), n_trapezoid=spec.n_trapezoid,
                            mh="none" if spec.corrector == "ula" else spec.mh, **common)

    def mixture_score(self, t, x):
        """This mixture's marginal at time t as a factor of the score-network ops (ops.MixtureScore)."""
        return ops.MixtureScore(*self._params(x), *self.marginal(t))

    def config(self):
        return {"schedule": schedule_config(self.schedule), "backend": self.backend}

    def state_dict(self):
        return {"means": self.means, "log_weights": self.log_weights, "variances": self.variances}

    @classmethod
    def from_saved(cls, config, state):
        return cls(state["means"], state["log_weights"], state["variances"],
                   schedule_from_config(config["schedule"]), config["backend"])

    def sample(self, n, generator=None, dtype=None):
        """Exact samples of p_0."""
        dtype = dtype or self.means.dtype
        k = torch.multinomial(torch.softmax(self.log_weights.double().cpu(), 0), n, replacement=True,
                              generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means.double().cpu()[k] + self.variances.double().cpu()[k, None].sqrt() * z
        return x.to(dtype=dtype, device=self.means.device)


class Product:
    """Composition p ∝ Π_i p_i: scores and energies add (at every t, as in the
    MCMC-corrected composition; the product of marginals is not the marginal of the product)."""

    def __init__(self, *models):
        if len(models) < 2:
            raise ValueError("Product needs at least two models")
        dims = {m.dim for m in models}
        if len(dims) != 1:
            raise ValueError(f"models have different dims {dims}")
        self.models, self.dim = models, models[0].dim
        self.schedule = models[0].schedule
        self.has_energy = all(has_energy(m) for m in models)

    def with_backend(self, backend):
        return Product(*(with_backend(m, backend) for m in self.models))

    def score(self, x, t):
        return sum(m.score(x, t) for m in self.models)

    def log_prob(self, x, t):
        if not self.has_energy:
            raise TypeError("log_prob needs every factor to have an energy")
        return sum(m.log_prob(x, t) for m in self.models)

    def score_and_log_prob(self, x, t):
        """Σ_i s_i and Σ_i log p_i from one evaluation of each factor (a mixture's kernel or an energy
        network's forward and backward give both at once)."""
        if not self.has_energy:
            raise TypeError("log_prob needs every factor to have an energy")
        pairs = [m.score_and_log_prob(x, t) for m in self.models]
        return sum(s for s, _ in pairs), sum(lp for _, lp in pairs)

    def config(self):
        return {"factors": [saved_form(m) for m in self.models]}

    def state_dict(self):
        return {}

    @classmethod
    def from_saved(cls, config, state):
        return cls(*(from_saved_form(f) for f in config["factors"]))

    def _fusable(self) -> bool:
        """Whether the fused network kernels (ops.mlp_mala / mlp_hmc, with energy networks ops.mlp_energy_mala /
        mlp_energy_hmc) cover this product: ScoreMLP and EnergyMLP factors and at most one GaussianMixture, at
        least one network. (mh="energy" reaches them only when every factor has an energy: annealed_mcmc and mcmc
        refuse it earlier for a product with a ScoreMLP.)"""
        n_nets = sum(isinstance(m, FourierMLP) and m.fusable() for m in self.models)
        n_mix = sum(isinstance(m, GaussianMixture) for m in self.models)
        return n_nets >= 1 and n_mix <= 1 and n_nets + n_mix == len(self.models)

    def fused_corrector(self):
        """The fused network kernels on the sum of the factors' scores (ScoreMLPs, EnergyMLPs and at most one
        mixture), else None."""
        return self.fused_moves if self._fusable() else None

    def fused_moves(self, x, t, step_size, spec, key):
        """spec.n_steps corrector moves at time t on Σ_i s_i (see ScoreMLP.fused_moves)."""
        nets = [m.fused_net(t, x) for m in self.models if isinstance(m, FourierMLP)]
        mixes = [m.mixture_score(t, x) for m in self.models if isinstance(m, GaussianMixture)]
        return mlp_moves(x, nets, mixes[0] if mixes else None, step_size, spec, key)

    def as_mixture(self) -> GaussianMixture:
        """The product of isotropic Gaussian mixtures at t = 0 as one mixture:
        N(μ_i, v_i)·N(μ_j, v_j) = N(μ_i; μ_j, (v_i + v_j) I) · N(μ_ij, v_ij),
        v_ij = v_i v_j/(v_i + v_j), μ_ij = (v_j μ_i + v_i μ_j)/(v_i + v_j)."""
        if not all(isinstance(m, GaussianMixture) for m in self.models):
            raise TypeError("exact product samples exist for products of GaussianMixture models only")
        mu, lw, var = (self.models[0].means.double().cpu(), self.models[0].log_weights.double().cpu(),
                       self.models[0].variances.double().cpu())
        for m in self.models[1:]:
            mu2, lw2, var2 = m.means.double().cpu(), m.log_weights.double().cpu(), m.variances.double().cpu()
            vs = var[:, None] + var2[None, :]
            d2 = ((mu[:, None, :] - mu2[None, :, :]) ** 2).sum(-1)
            lw = (torch.log_softmax(lw, 0)[:, None] + torch.log_softmax(lw2, 0)[None, :]
                  - 0.5 * d2 / vs - 0.5 * self.dim * torch.log(2 * math.pi * vs)).reshape(-1)
            mu = ((var2[None, :, None] * mu[:, None, :] + var[:, None, None] * mu2[None, :, :])
                  / vs[..., None]).reshape(-1, self.dim)
            var = (var[:, None] * var2[None, :] / vs).reshape(-1)
        dtype = self.models[0].means.dtype
        return GaussianMixture(mu.to(dtype), lw.to(dtype), var.to(dtype), self.schedule)

    def sample_exact(self, n, generator=None):
        return self.as_mixture().sample(n, generator)


class TimeAsTensor:
    """A float time t as a 0-d tensor of x's dtype on x's device, for a network called with `time_as_tensor`: a
    torch.compile'd network specialises on a float t (one graph per noise level, then, past the recompile limit,
    eager with a warning), and takes a 0-d tensor as a graph input (one graph for every level). The last level's
    tensor is kept (a sampler calls the network at one t several times in a row); a tensor t is passed as it is."""

    def __init__(self):
        self._last = None

    def __call__(self, t, x):
        if isinstance(t, torch.Tensor):
            return t
        last = self._last
        if last is None or last[0] != t or last[1].dtype != x.dtype or last[1].device != x.device:
            last = self._last = (t, torch.tensor(float(t), dtype=x.dtype, device=x.device))
        return last[1]


class ScoreModel(torch.nn.Module):
    """Any callable fn(x, t) -> score (a neural score network) as a model: no energy. An nn.Module
    fn is a submodule (its parameters are this model's); the default schedule is VP. `time_as_tensor`: fn is
    called with t as a 0-d tensor of x's dtype, not a float (`TimeAsTensor`: for a torch.compile'd fn)."""

    has_energy = False

    def __init__(self, fn, dim, schedule=None, *, time_as_tensor=False):
        super().__init__()
        self.fn, self.dim, self.schedule = fn, int(dim), schedule or VP()
        self._time = TimeAsTensor() if time_as_tensor else None

    def score(self, x, t):
        """fn(x, t) with grad mode off (`no_grad_call`). An nn.Module fn is read from _modules, where `self.fn`
        finds it through nn.Module.__getattr__ (a Python call, 15x a plain attribute's time)."""
        fn = self._modules.get("fn")
        if fn is None:  # fn is a plain callable
            fn = self.fn
        return no_grad_call(fn, x, t if self._time is None else self._time(t, x))


class EnergyModel(torch.nn.Module):
    """Energy-parameterised model: log p_t(x) = −E(x, t) + const, score = −∇E by autograd. An
    nn.Module energy is a submodule; the default schedule is VP. `time_as_tensor`: as ScoreModel's."""

    has_energy = True

    def __init__(self, energy, dim, schedule=None, *, time_as_tensor=False):
        super().__init__()
        self.energy, self.dim, self.schedule = energy, int(dim), schedule or VP()
        self._time = TimeAsTensor() if time_as_tensor else None

    def score_and_log_prob(self, x, t):
        t = t if self._time is None else self._time(t, x)
        e, g = value_and_grad(lambda z: self.energy(z, t), x)
        return -g, -e

    def score(self, x, t):
        return self.score_and_log_prob(x, t)[0]

    def log_prob(self, x, t):
        return -no_grad_call(self.energy, x, t if self._time is None else self._time(t, x))


# -- saving and loading ------------------------------------------------------------------------------

SAVABLE = {"GaussianMixture": GaussianMixture, "Product": Product, "ScoreMLP": ScoreMLP, "EnergyMLP": EnergyMLP}


def saved_form(model) -> dict:
    """{"class", "config", "state"}: the model as plain values and tensors (weights_only-safe)."""
    name = type(model).__name__
    if SAVABLE.get(name) is not type(model):
        raise TypeError(f"{name} cannot be saved: save() knows {', '.join(SAVABLE)}; a ScoreModel or EnergyModel "
                        f"wraps your own code: save its network's state_dict and rebuild the wrapper")
    return {"class": name, "config": model.config(), "state": dict(model.state_dict())}


def from_saved_form(form):
    cls = SAVABLE.get(form.get("class"))
    if cls is None:
        raise ValueError(f"unknown saved model class {form.get('class')!r}; known: {', '.join(SAVABLE)}")
    return cls.from_saved(form["config"], form["state"])


def save(model, path) -> None:
    """Write `model` (GaussianMixture, Product of them, ScoreMLP, EnergyMLP) to `path`: its class name, config and
    state_dict, which `torch.load(path)` reads with the default weights_only=True."""
    torch.save({"format": 1, **saved_form(model)}, path)


def load(path, map_location=None):
    """The model written by `save` (read with weights_only=True)."""
    form = torch.load(path, map_location=map_location, weights_only=True)
    if form.get("format") != 1:
        raise ValueError(f"{path} is not a fastsamp model file (format {form.get('format')!r})")
    return from_saved_form(form)
