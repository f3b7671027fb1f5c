"""Score models: exact Gaussian mixtures, products (composition), any score network,
energy-parameterised models, and a small trained score MLP.

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
from .protocol import has_energy, with_backend
from .schedules import VE, VP


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


def value_and_grad(fn, x):
    """(f(x), ∇f(x)) for f with one value per row, (B,), by one backward pass of Σ_b f(x_b); works
    under torch.no_grad and torch.inference_mode (x is copied out of inference mode). A constant f
    (no graph to x) has gradient 0."""
    with torch.inference_mode(False), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        f = fn(xg)
        if not f.requires_grad:
            return f.detach(), torch.zeros_like(xg)
        (g,) = torch.autograd.grad(f.sum(), xg)
    return f.detach(), g.detach()


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


class ScoreModel(torch.nn.Module):
    """Any callable fn(x, t) -> score (a neural score network) as a model: no energy. An nn.Module
    fn is a submodule (its parameters are this model's); the default schedule is VP."""

    has_energy = False

    def __init__(self, fn, dim, schedule=None):
        super().__init__()
        self.fn, self.dim, self.schedule = fn, int(dim), schedule or VP()

    def score(self, x, t):
        with torch.no_grad():
            return self.fn(x, t)


class EnergyModel(torch.nn.Module):
    """Energy-parameterised model: log p_t(x) = −E(x, t) + const, score = −∇E by autograd. An
    nn.Module energy is a submodule; the default schedule is VP."""

    has_energy = True

    def __init__(self, energy, dim, schedule=None):
        super().__init__()
        self.energy, self.dim, self.schedule = energy, int(dim), schedule or VP()

    def score_and_log_prob(self, x, t):
        e, g = value_and_grad(lambda z: self.energy(z, t), x)
        return -g, -e

    def score(self, x, t):
        return self.score_and_log_prob(x, t)[0]

    def log_prob(self, x, t):
        with torch.no_grad():
            return -self.energy(x, t)


class FourierMLP(torch.nn.Module):
    """What ScoreMLP and EnergyMLP share: f(x, t) = MLP([x, Fourier(t)]) (hidden width `hidden`, three
    SiLU layers, n_freq sinusoidal frequencies of t) and the moment-matched Gaussian of the data
    (mean m, variance σ_d²): at time t it is N(α_t m, v_t I), v_t = α_t² σ_d² + σ_t². Both compute in
    their own dtype and return x's dtype (`casts_input`): a float32 network serves float64 chains."""

    casts_input = True

    def __init__(self, dim, hidden=128, n_freq=16, schedule=None, data_mean=None, data_var=1.0):
        super().__init__()
        self.dim, self.hidden, self.n_freq = int(dim), int(hidden), int(n_freq)
        self.schedule = schedule or VP()
        self.register_buffer("freq", torch.exp(torch.linspace(0, math.log(1000.0), n_freq)))
        self.register_buffer("data_mean", torch.zeros(dim) if data_mean is None else data_mean.float())
        self.register_buffer("data_var", torch.tensor(float(data_var)))
        self.net = torch.nn.Sequential(
            torch.nn.Linear(dim + 2 * n_freq, hidden), torch.nn.SiLU(),
            torch.nn.Linear(hidden, hidden), torch.nn.SiLU(),
            torch.nn.Linear(hidden, hidden), torch.nn.SiLU(),
            torch.nn.Linear(hidden, dim))

    def marginal(self, t):
        """(α_t, σ_t²) of the schedule for a tensor of times."""
        return self.schedule.alpha(t), self.schedule.sigma2(t)

    def gaussian_and_net(self, x, t):
        """(α_t m, v_t, f(x, t)) for a batch x and a time t (scalar or (B,)), in x's dtype, differentiable."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])[:, None]
        alpha, sigma2 = self.marginal(t)
        emb = torch.cat([torch.sin(t * self.freq), torch.cos(t * self.freq)], 1)
        return alpha * self.data_mean, alpha**2 * self.data_var + sigma2, self.net(torch.cat([x, emb], 1))

    def config(self):
        return {"dim": self.dim, "hidden": self.hidden, "n_freq": self.n_freq,
                "schedule": schedule_config(self.schedule)}

    def fusable(self) -> bool:
        """Whether the fused kernels evaluate this network: `net` is Sequential(Linear, SiLU, ..., Linear) with
        biases (a subclass or a replaced `net` may not be) and lives where a kernel takes it (score networks: the C++
        engine on the CPU, the Triton one on CUDA up to its D and width limits; energy networks: the CPU;
        `ops.mlp.has_fused_kernel`); elsewhere the generic path runs, and AnnealedStats.fused says so."""
        mods = list(self.net) if isinstance(self.net, torch.nn.Sequential) else []
        linears, acts = mods[0::2], mods[1::2]
        return (len(mods) % 2 == 1 and all(isinstance(m, torch.nn.Linear) and m.bias is not None for m in linears)
                and all(type(a) is torch.nn.SiLU for a in acts)
                and ops.mlp.has_fused_kernel(linears[0].weight.device, self.dim, linears[0].out_features,
                                             self.FUSED_NET))

    def fused_net(self, t, x):
        """This network at time t as the fused network ops read it (ops.ScoreNet for a ScoreMLP, ops.EnergyNet for
        an EnergyMLP: `FUSED_NET`), its tensors detached and in x's dtype and device; (α_t, σ_t²) from the schedule
        in float64."""
        if not self.fusable():
            raise TypeError(f"{type(self).__name__}.net must be Sequential(Linear, SiLU, ..., Linear) on a device with "
                            f"a fused kernel")
        linears = list(self.net)[0::2]
        conv = lambda p: p.detach().to(dtype=x.dtype, device=x.device)  # noqa: E731
        t = float(t)
        return self.FUSED_NET(tuple(conv(m.weight) for m in linears), tuple(conv(m.bias) for m in linears),
                              conv(self.freq), conv(self.data_mean), float(self.data_var), t,
                              float(self.schedule.alpha(t)), float(self.schedule.sigma2(t)), "silu")

    def fused_corrector(self):
        """The whole-move kernels (ULA / MALA and HMC / U-HMC: ops.mlp_mala and ops.mlp_hmc for a ScoreMLP,
        ops.mlp_energy_mala and ops.mlp_energy_hmc for an EnergyMLP) as one callable (the `fastsamp.protocol`
        hook); None when `net` is not the standard architecture."""
        return self.fused_moves if self.fusable() else None

    def fused_moves(self, x, t, step_size, spec, key):
        """spec.n_steps corrector moves at time t from x with Philox key (seed, offset, chain_offset), the network
        evaluated in x's dtype; returns (x, per-chain acceptance rate)."""
        return mlp_moves(x, [self.fused_net(t, x)], None, step_size, spec, key)

    @classmethod
    def from_saved(cls, config, state):
        config = dict(config, schedule=schedule_from_config(config["schedule"]))
        model = cls(**config)
        model.load_state_dict(state)
        return model


class ScoreMLP(FourierMLP):
    """s_θ(x, t) = (α_t m − x)/v_t + f(x, t)/√v_t (see FourierMLP): the score of the moment-matched
    Gaussian plus a learned correction. The Gaussian part keeps the score well scaled at small t and
    far from the data, where the network has seen little.

    As a model, `score(x, t)` evaluates the network in its own dtype (no grad) and returns the
    score in x's dtype (`casts_input`). `forward` is the differentiable score (training)."""

    has_energy = False

    def forward(self, x, t):
        mean, v, f = self.gaussian_and_net(x, t)
        return (mean - x) / v + f / v.sqrt()

    def score(self, x, t):
        dtype = self.freq.dtype
        with torch.no_grad():
            return self(x.to(dtype), float(t)).to(x.dtype)

    FUSED_NET = ops.ScoreNet

    def score_net(self, t, x):
        """`fused_net`: this network at time t as an ops.ScoreNet."""
        return self.fused_net(t, x)


class EnergyMLP(FourierMLP):
    """Energy-parameterised twin of ScoreMLP (same network, Du et al. 2023's residual form with the
    Gaussian skip): log p_t(x) = −E(x, t) + const,

        E(x, t) = |x − α_t m − √v_t f(x, t)|² / (2 v_t),

    so that for an f that does not depend on x the score −∇_x E equals ScoreMLP's (α_t m − x)/v_t + f/√v_t;
    in general −∇_x E = −r/v_t + J_fᵀ r/√v_t, r = x − α_t m − √v_t f (J_f = ∂f/∂x).
    The score comes by autograd: `score_and_log_prob` is one forward and one backward (it enables grad
    locally, so it works under torch.no_grad); `forward` is the score with create_graph=True (training).
    The samplers' fused path runs ops.mlp_energy_mala / mlp_energy_hmc (energy and score in one forward and
    one backward through the layers inside the kernel), with the exact energy MH (mh="energy") among others;
    ops.mlp_energy(x, net.energy_net(t, x)) is the fused (score, log p)."""

    has_energy = True
    FUSED_NET = ops.EnergyNet

    def energy_net(self, t, x):
        """`fused_net`: this network at time t as an ops.EnergyNet."""
        return self.fused_net(t, x)

    def energy(self, x, t):
        """E(x, t), (B,), differentiable."""
        mean, v, f = self.gaussian_and_net(x, t)
        return ((x - mean - v.sqrt() * f) ** 2).sum(1) / (2 * v[:, 0])

    def forward(self, x, t):
        with torch.enable_grad():
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.energy(x, t).sum(), x, create_graph=True)
        return -g

    def score_and_log_prob(self, x, t):
        e, g = value_and_grad(lambda z: self.energy(z, float(t)), x.to(self.freq.dtype))
        return (-g).to(x.dtype), (-e).to(x.dtype)

    def score(self, x, t):
        return self.score_and_log_prob(x, t)[0]

    def log_prob(self, x, t):
        with torch.no_grad():
            return -self.energy(x.to(self.freq.dtype), float(t)).to(x.dtype)


def mlp_moves(x, nets, mixture, step_size, spec, key):
    """spec.n_steps moves of ops.mlp_mala (ULA / MALA) or ops.mlp_hmc (HMC / U-HMC) on Σ nets (+ mixture)
    with the Philox key of the run, ops.mlp_energy_mala / mlp_energy_hmc when an energy network is among the
    nets; the HMC momentum starts at 0 in the kernel."""
    common = dict(mixture=mixture, step_size=step_size, n_steps=spec.n_steps, seed=key.seed, offset=key.offset,
                  chain_offset=key.chain_offset, backend=spec.backend)
    energy = any(isinstance(n, ops.EnergyNet) for n in nets)
    if spec.is_hmc:
        hmc = ops.mlp_energy_hmc if energy else ops.mlp_hmc
        return hmc(x, nets, n_leapfrog=spec.n_leapfrog, mh="none" if spec.corrector == "uhmc" else spec.mh,
                   damping=spec.damping, **common)
    mala = ops.mlp_energy_mala if energy else ops.mlp_mala
    return mala(x, nets, n_trapezoid=spec.n_trapezoid, mh="none" if spec.corrector == "ula" else spec.mh, **common)


PARAMETERISATIONS = {"score": ScoreMLP, "energy": EnergyMLP}


def train_score_mlp(samples, *, n_iters=3000, batch_size=512, lr=2e-3, hidden=128, t_min=1e-3, seed=0,
                    schedule=None, parameterisation="score") -> ScoreMLP | EnergyMLP:
    """Denoising score matching on data samples (VP schedule): minimise
    E ||σ_t s_θ(α_t x_0 + σ_t z, t) + z||² over t ~ U(t_min, 1). `parameterisation` "score" trains a
    ScoreMLP, "energy" an EnergyMLP (the same network; the loss goes through its autograd score), so that
    score-MH and energy-MH compare on equal networks. Returns the trained model (float32, eval mode),
    a model that saves and loads."""
    if parameterisation not in PARAMETERISATIONS:
        raise ValueError(f"parameterisation must be one of {tuple(PARAMETERISATIONS)}, got {parameterisation!r}")
    schedule = schedule or VP()
    if not isinstance(schedule, VP):
        raise TypeError("train_score_mlp supports the VP schedule")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    data = samples.detach().float().cpu()
    net = PARAMETERISATIONS[parameterisation](data.shape[1], hidden=hidden, schedule=schedule,
                                              data_mean=data.mean(0), data_var=float(data.var(0).mean()))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, n_iters)
    for _ in range(n_iters):
        x0 = data[torch.randint(0, data.shape[0], (batch_size,), generator=g)]
        t = t_min + (1 - t_min) * torch.rand(batch_size, 1, generator=g)
        alpha, sigma2 = net.marginal(t)
        sigma = sigma2.sqrt()
        z = torch.randn(x0.shape, generator=g)
        s = net(alpha * x0 + sigma * z, t[:, 0])
        loss = ((sigma * s + z) ** 2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


# -- saving and loading ------------------------------------------------------------------------------

SCHEDULE_KINDS = {"VP": VP, "VE": VE}


def schedule_config(schedule) -> dict:
    """A VP/VE schedule as plain values."""
    kind = type(schedule).__name__
    if SCHEDULE_KINDS.get(kind) is not type(schedule):
        raise TypeError(f"only VP and VE schedules can be saved, got {kind}")
    return {"kind": kind, **{f: getattr(schedule, f) for f in schedule.__dataclass_fields__}}


def schedule_from_config(config):
    config = dict(config)
    return SCHEDULE_KINDS[config.pop("kind")](**config)


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
