"""The small trained MLP models: `ScoreMLP` (a score network) and its energy-parameterised twin `EnergyMLP`,
their shared `FourierMLP` architecture, `train_score_mlp` (denoising score matching for either) and `mlp_moves`,
the fused whole-move kernels on sums of them (fastsamp.ops.mlp); `FusedMLP`, a user's own Sequential MLP evaluated by
the fused network op. Imported from `fastsamp.models` as well."""
from __future__ import annotations

import math

import torch

from . import backends, ops
from ._model_base import no_grad_call, schedule_config, schedule_from_config, value_and_grad
from .ops import _checks
from .schedules import VP


def _mirror_data_var_after_load(module, incompatible_keys):
    """load_state_dict's post hook of a FourierMLP (a module-level function: a model with it pickles)."""
    module._mirror_data_var()


class FourierMLP(torch.nn.Module):
    """What ScoreMLP and EnergyMLP share: f(x, t) = MLP([x, Fourier(t)]) (hidden width `hidden`, three
    SiLU layers, n_freq sinusoidal frequencies of t) and the moment-matched Gaussian of the data
    (mean m, variance σ_d²): at time t it is N(α_t m, v_t I), v_t = α_t² σ_d² + σ_t². Both compute in
    their own dtype and return x's dtype (`casts_input`): a float32 network serves float64 chains. `dtype`
    (default torch's default dtype) is that of the parameters and of the buffers (ω, m, σ_d²), made in it."""

    casts_input = True

    def __init__(self, dim, hidden=128, n_freq=16, schedule=None, data_mean=None, data_var=1.0, dtype=None):
        super().__init__()
        self.dim, self.hidden, self.n_freq = int(dim), int(hidden), int(n_freq)
        self.schedule = schedule or VP()
        dtype = dtype or torch.get_default_dtype()
        self.register_buffer("freq", torch.exp(torch.linspace(0, math.log(1000.0), n_freq, dtype=dtype)))
        self.register_buffer("data_mean", torch.zeros(dim, dtype=dtype) if data_mean is None
                             else data_mean.detach().to(dtype=dtype, copy=True))
        self.register_buffer("data_var", torch.tensor(float(data_var), dtype=dtype))
        self._mirror_data_var()
        self.register_load_state_dict_post_hook(_mirror_data_var_after_load)
        linear = lambda n_in, n_out: torch.nn.Linear(n_in, n_out, dtype=dtype)  # noqa: E731
        self.net = torch.nn.Sequential(
            linear(dim + 2 * n_freq, hidden), torch.nn.SiLU(),
            linear(hidden, hidden), torch.nn.SiLU(),
            linear(hidden, hidden), torch.nn.SiLU(),
            linear(hidden, dim))

    def _mirror_data_var(self):
        """data_var's value as a Python float, what `fused_net` hands the kernels (the buffer stays what state_dict
        saves): read here, so that a step compiled around the fused ops has no `.item()` in it (a graph break, and
        under fullgraph=True a SymFloat the ops' float lists cannot take). Kept at construction, load_state_dict and
        every .to() / .double() / .cuda() (`_apply`, which may round the buffer), and read again by an eager
        `fused_net` when the buffer was written in place or replaced since (`_data_var_now`)."""
        buf = self.data_var
        self._data_var = None if buf.is_meta else float(buf)
        self._data_var_read = (buf, buf._version)

    def _data_var_now(self):
        """σ_d² for `fused_net`: the mirror, read again in eager when the buffer is not the tensor it was read from
        or its version counter moved (an in-place write: `fill_`, `copy_`, an optimizer's step). Under
        torch.compile the mirror as it stands (a compiled step sees such a write after the next eager call)."""
        if not torch.compiler.is_compiling():
            buf, (read, version) = self.data_var, self._data_var_read
            if buf is not read or buf._version != version:
                self._mirror_data_var()
        return self._data_var

    def _apply(self, fn, recurse=True):
        module = super()._apply(fn, recurse)
        self._mirror_data_var()
        return module

    def marginal(self, t):
        """(α_t, σ_t²) of the schedule for a tensor of times."""
        return self.schedule.alpha(t), self.schedule.sigma2(t)

    def gaussian_and_input(self, x, t, marginal=None):
        """(α_t m, v_t, the network's input [x, sin(t ω), cos(t ω)]) for a batch x and a time t (scalar or (B,));
        `marginal`: the caller's (α_t, σ_t²) of these times, (B, 1) each (else computed here)."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])[:, None]
        alpha, sigma2 = self.marginal(t) if marginal is None else marginal
        emb = torch.cat([torch.sin(t * self.freq), torch.cos(t * self.freq)], 1)
        return alpha * self.data_mean, alpha**2 * self.data_var + sigma2, torch.cat([x, emb], 1)

    def gaussian_and_net(self, x, t):
        """(α_t m, v_t, f(x, t)) in x's dtype, differentiable."""
        mean, v, inp = self.gaussian_and_input(x, t)
        return mean, v, self.net(inp)

    def _layers(self):
        """(weights, biases) of `net`'s Linear layers, the parameters themselves (the fused ops' network order)."""
        linears = list(self.net)[0::2]
        return [m.weight for m in linears], [m.bias for m in linears]

    def config(self):
        return {"dim": self.dim, "hidden": self.hidden, "n_freq": self.n_freq,
                "schedule": schedule_config(self.schedule)}

    def has_standard_net(self) -> bool:
        """Whether `net` is Sequential(Linear, SiLU, ..., Linear) with biases, the network the fused ops take (a
        subclass or a replaced `net` may not be)."""
        mods = list(self.net) if isinstance(self.net, torch.nn.Sequential) else []
        linears, acts = mods[0::2], mods[1::2]
        return (len(mods) % 2 == 1 and all(isinstance(m, torch.nn.Linear) and m.bias is not None for m in linears)
                and all(type(a) is torch.nn.SiLU for a in acts))

    def fusable(self) -> bool:
        """Whether the fused kernels evaluate this network: `has_standard_net` and it lives where a kernel takes it
        (the C++ engine on the CPU, the Triton one on CUDA up to its D and width limits, for score and energy
        networks: `ops.mlp.has_fused_kernel`); elsewhere the generic path runs, and AnnealedStats.fused says so."""
        if not self.has_standard_net():
            return False
        first = self.net[0]
        return ops.mlp.has_fused_kernel(first.weight.device, self.dim, first.out_features, self.FUSED_NET)

    def fused_net(self, t, x):
        """This network at time t as the fused network ops read it (ops.ScoreNet for a ScoreMLP, ops.EnergyNet for
        an EnergyMLP: `FUSED_NET`), its tensors detached and in x's dtype and device; (α_t, σ_t²) from the schedule
        in float64; σ_d² the buffer's value (`_data_var_now`)."""
        if not self.fusable():
            raise TypeError(f"{type(self).__name__}.net must be Sequential(Linear, SiLU, ..., Linear) on a device with "
                            f"a fused kernel")
        weights, biases = self._layers()
        conv = lambda p: p.detach().to(dtype=x.dtype, device=x.device)  # noqa: E731
        t = float(t)
        return self.FUSED_NET(tuple(conv(w) for w in weights), tuple(conv(b) for b in biases),
                              conv(self.freq), conv(self.data_mean), self._data_var_now(), t,
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
        """The model `fastsamp.save` wrote, holding the saved tensors themselves (their dtype and the device
        `fastsamp.load`'s map_location put them on). Built on the meta device, then the state assigned: no random
        initialisation to discard (nor a draw from torch's global RNG)."""
        config = dict(config, schedule=schedule_from_config(config["schedule"]))
        with torch.device("meta"):
            model = cls(**config)
        model.load_state_dict(state, assign=True)
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
        return no_grad_call(self, x.to(self.freq.dtype), float(t)).to(x.dtype)

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
        return -no_grad_call(self.energy, x.to(self.freq.dtype), float(t)).to(x.dtype)


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

_FUSED_ACTIVATIONS = {torch.nn.SiLU: "silu", torch.nn.GELU: "gelu"}


class FusedMLP(torch.nn.Module):
    """A user's MLP `torch.nn.Sequential(Linear, act, Linear, act, ..., Linear)` evaluated by the fused network op
    `ops.mlp_net`: f(x) = W_out act(… act(W_0 x + b_0) …) + b_out in one kernel call (and, when a loss is
    differentiated, its backward to every weight in one more), instead of a torch op per layer and activation. The
    Sequential is this module's `net`: the same parameters for state_dict, optimisers and `.to()`. Takes SiLU or
    exact GELU (one kind in every layer), hidden layers of one width, Linear layers with biases (at least two: W_0
    and W_out); a ValueError naming what differs otherwise. x: (..., D_in) in the parameters' dtype (float32 /
    float64) and device. The fused kernels: the C++ one on CPU tensors, the Triton ones on CUDA tensors (D_in and the
    output width up to 128; above them ops.mlp_net runs its PyTorch reference, the Sequential's own ops)."""

    def __init__(self, net: torch.nn.Sequential, *, backend: str = "auto"):
        super().__init__()
        mods = list(net) if isinstance(net, torch.nn.Sequential) else None
        if not mods or len(mods) < 3 or len(mods) % 2 == 0:
            raise ValueError(f"net must be torch.nn.Sequential(Linear, activation, ..., Linear) with at least two "
                             f"Linear layers, got {net!r}")
        linears, acts = mods[0::2], mods[1::2]
        for k, m in enumerate(linears):
            if not isinstance(m, torch.nn.Linear) or m.bias is None:
                raise ValueError(f"net[{2 * k}] must be a torch.nn.Linear with a bias, got {m!r}")
        kinds = {_FUSED_ACTIVATIONS.get(type(a)) if getattr(a, "approximate", "none") == "none" else None
                 for a in acts}
        if len(kinds) != 1 or None in kinds:
            raise ValueError(f"net's activations must all be torch.nn.SiLU or all torch.nn.GELU() (exact), got "
                             f"{[type(a).__name__ for a in acts]}")
        H = linears[0].out_features
        for k, m in enumerate(linears[1:], 1):
            if m.in_features != H or (k < len(linears) - 1 and m.out_features != H):
                raise ValueError(f"net's hidden layers must all have width {H} (the fused op's), got net[{2 * k}] = "
                                 f"{m!r}")
        self.net, self.activation, self.backend = net, kinds.pop(), backend
        self._linears = tuple(linears)  # the Linear layers in order (registered under `net`; a slice of the
        # Sequential in forward would build a new Sequential per call, which torch.compile cannot trace)

    def forward(self, x):
        """f(x) for x (..., D_in), as the Sequential takes it: the leading dims flattened into the op's rows."""
        linears = self._linears
        rows = x.reshape(-1, x.shape[-1]) if x.dim() != 2 else x
        out = ops.mlp_net(rows, [m.weight for m in linears], [m.bias for m in linears], activation=self.activation,
                          backend=self.backend)
        return out if x.dim() == 2 else out.reshape(*x.shape[:-1], out.shape[-1])

    def squared_error(self, x, y):
        """mean_b |f(x_b) − y_b|² over the rows of x (..., D_in) and the targets y (..., O) (the squared error summed
        over the outputs, averaged over the rows: O × F.mse_loss(f(x), y)), the loss and every weight's gradient in
        one kernel call (ops.mlp_net_lsq with c = −y, k = 1), instead of a forward call, autograd through the loss
        and a backward call. x and y are data: they must not require grad. Returns the loss (0-dim)."""
        linears = self._linears
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise TypeError(f"x and y must be tensors, got {type(x).__name__} and {type(y).__name__}")
        if torch.is_grad_enabled() and (x.requires_grad or y.requires_grad):
            raise ValueError("squared_error differentiates the weights and biases only: x and y must not require grad "
                             "(detach them)")
        rows = x.reshape(-1, x.shape[-1])
        targets = _checks.like("y", y, rows, (*x.shape[:-1], linears[-1].out_features)).reshape(rows.shape[0], -1)
        return ops.mlp_net_lsq(rows, [m.weight for m in linears], [m.bias for m in linears], -targets,
                               torch.ones(rows.shape[0], dtype=rows.dtype, device=rows.device),
                               activation=self.activation, backend=self.backend)


def dsm_loss(net, x0, t, z, *, fused=False):
    """The denoising score-matching loss of one batch: mean_b |σ_t s_θ(α_t x0 + σ_t z, t) + z|² (t (B, 1), z (B, D)
    the draws). `fused` (a ScoreMLP or EnergyMLP with `has_standard_net`, else TypeError): the loss and every
    weight's gradient in one kernel call. A ScoreMLP's σ s + z = c + k f with c = σ(α m − x_t)/v + z and k = σ/√v
    constants of the weights: ops.mlp_net_lsq of the network. An EnergyMLP's s = −r/v + J_fᵀ r/√v with
    r = c − √v f, c = x_t − α m: ops.mlp_net_energy_lsq (its gradient goes through J_f: a double backward)."""
    if fused and not (isinstance(net, (ScoreMLP, EnergyMLP)) and net.has_standard_net()):
        net_type = type(getattr(net, "net", None)).__name__
        raise TypeError(f"dsm_loss(fused=True) needs a ScoreMLP or EnergyMLP whose net is Sequential(Linear, SiLU, "
                        f"..., Linear) with biases, got a {type(net).__name__} with net {net_type}: use fused=False")
    alpha, sigma2 = net.marginal(t)
    sigma = sigma2.sqrt()
    xt = alpha * x0 + sigma * z
    if not fused:
        return ((sigma * net(xt, t[:, 0]) + z) ** 2).sum(1).mean()
    mean, v, inp = net.gaussian_and_input(xt, t[:, 0], (alpha, sigma2))
    if isinstance(net, EnergyMLP):
        return ops.mlp_net_energy_lsq(inp, *net._layers(), xt - mean, v[:, 0], sigma[:, 0], z, activation="silu")
    c = sigma * (mean - xt) / v + z
    return ops.mlp_net_lsq(inp, *net._layers(), c, (sigma / v.sqrt())[:, 0], activation="silu")


def train_score_mlp(samples, *, n_iters=3000, batch_size=512, lr=2e-3, hidden=128, t_min=1e-3, seed=0,
                    schedule=None, parameterisation="score", fused=None, dtype=torch.float32) -> ScoreMLP | EnergyMLP:
    """Denoising score matching on data samples (VP schedule): minimise
    E ||σ_t s_θ(α_t x_0 + σ_t z, t) + z||² over t ~ U(t_min, 1) (`dsm_loss`, Adam with a cosine schedule; PyTorch's
    fused Adam, one kernel for all the parameters, on either path).
    `parameterisation` "score" trains a ScoreMLP, "energy" an EnergyMLP (the same network; with fused=False the loss
    goes through its autograd score), so that score-MH and energy-MH compare on equal networks.

    `fused`: the loss and gradient run in the fused C++ engine (ops.mlp_net_lsq for the score parameterisation,
    ops.mlp_net_energy_lsq for the energy one, whose gradient of ∇_x E to the weights, a double backward, the
    kernel does exactly: the network's forward, the loss and the backward to every weight in one kernel call);
    None (default) uses it when the C++ backend is built, False trains in eager PyTorch. Both take the same draws
    and the same loss: the parameters after n steps agree to float rounding.

    Returns the trained model (its parameters and buffers in `dtype`, float32 by default; eval mode), a model that
    saves and loads."""
    if parameterisation not in PARAMETERISATIONS:
        raise ValueError(f"parameterisation must be one of {tuple(PARAMETERISATIONS)}, got {parameterisation!r}")
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    schedule = schedule or VP()
    if not isinstance(schedule, VP):
        raise TypeError("train_score_mlp supports the VP schedule")
    if fused is None:
        fused = backends.is_available("cpp")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    data = samples.detach().to(dtype).cpu()
    net = PARAMETERISATIONS[parameterisation](data.shape[1], hidden=hidden, schedule=schedule, data_mean=data.mean(0),
                                              data_var=float(data.var(0).mean()), dtype=dtype)
    opt = torch.optim.Adam(net.parameters(), lr=lr, fused=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, n_iters)
    for _ in range(n_iters):
        x0 = data[torch.randint(0, data.shape[0], (batch_size,), generator=g)]
        t = t_min + (1 - t_min) * torch.rand(batch_size, 1, generator=g, dtype=dtype)
        z = torch.randn(x0.shape, generator=g, dtype=dtype)
        loss = dsm_loss(net, x0, t, z, fused=fused)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()
