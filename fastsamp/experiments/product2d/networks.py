"""The 2-D product experiment's networks: Du et al.'s residual MLP as an ε-predictor on a discrete
DDPM schedule, in a score version and an energy version, and their training.

ε-prediction at step i (time t = i/T, σ_t = √(1 − ᾱ_i)): the score is s(x, t) = −ε(x, t)/σ_t.

* `EpsScoreNet`: ε = f(x, i), the residual MLP's output; no energy.
* `EpsEnergyNet` (Du et al.'s energy parameterisation): E(x, i) = |f(x, i) − x|², ε = ∇_x E, so
  log p_t(x) = −E(x, i)/σ_t + const and s = −∇_x E/σ_t (autograd).

Both follow the model protocol (`dim`, `schedule`, `score(x, t)`; the energy one `log_prob` and
`score_and_log_prob`) with t one of the schedule's grid times i/T, compute in the network's dtype
(float32 unless converted) and return x's dtype (`casts_input`). `save`/`load` write and read {config, state_dict}.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import os

import torch
from torch import nn
from torch.func import functional_call

from ...ddpm import DDPM
from ...models import value_and_grad
from ...samplers.diffusion import atomic_write
from ..training import ema_update


class ResidualMLP(nn.Module):
    """x → Linear(h) → n_blocks × [LayerNorm, SiLU, Linear(h→wh) + Linear(emb→wh)(e_i), SiLU,
    Linear(wh→wh), SiLU, Linear(wh→h) (zero init)] residual blocks → Linear(h→D) (zero init), with e_i a
    learned embedding of the step i.

    The step's term of each block is computed as one bias, b_h + W_e e_i + b_e: the embedding linear on the
    table of the T steps (T rows, not one per sample), gathered by i; a single step (an int i, as the
    samplers call it) is one bias row for every sample. Batches over `ROWS` rows (a sampler's trapezoid
    points, up to 16,000 rows) are evaluated in chunks of `ROWS`, whose activations stay in cache."""

    ROWS = 2048  # 16,000 rows at once were 30 % slower per row than chunks of 1000-2000 (one thread)

    def __init__(self, n_steps=100, dim=2, hidden=128, n_blocks=4, emb_dim=32, widen=2):
        super().__init__()
        wide = hidden * widen
        self.emb = nn.Embedding(n_steps, emb_dim)
        self.first = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList()
        for _ in range(n_blocks):
            block = nn.ModuleDict({"norm": nn.LayerNorm(hidden), "h": nn.Linear(hidden, wide),
                                   "emb": nn.Linear(emb_dim, wide), "mid": nn.Linear(wide, wide),
                                   "out": nn.Linear(wide, hidden)})
            nn.init.zeros_(block["out"].weight)
            nn.init.zeros_(block["out"].bias)
            self.blocks.append(block)
        self.last = nn.Linear(hidden, dim)
        nn.init.zeros_(self.last.weight)
        nn.init.zeros_(self.last.bias)

    def step_biases(self, i):
        """Per block, b_h + W_e e_i + b_e: (B, wide) for step indices i (B,), (wide,) for one step i (an int)."""
        return [(b["emb"](self.emb.weight) + b["h"].bias)[i] for b in self.blocks]

    def forward(self, x, i):
        """f(x, i), i a (B,) tensor of step indices or one step index (an int) for every row."""
        if x.shape[0] > self.ROWS:
            if isinstance(i, torch.Tensor) and i.dim():
                steps = i.expand(x.shape[0]).split(self.ROWS)  # a (1,) index broadcasts, as unchunked
            else:
                steps = itertools.repeat(i)
            return torch.cat([self(c, j) for c, j in zip(x.split(self.ROWS), steps)])
        h = self.first(x)
        for b, bias in zip(self.blocks, self.step_biases(i)):
            z = torch.addmm(bias, nn.functional.silu(b["norm"](h)), b["h"].weight.t())
            z = b["mid"](nn.functional.silu(z))
            h = h + b["out"](nn.functional.silu(z))
        return self.last(h)


class _EpsNet(nn.Module):
    """The protocol side shared by both versions: schedule, step index of a time, dtype casting."""

    casts_input = True
    dim = 2

    def __init__(self, schedule: DDPM | None = None, **net_config):
        super().__init__()
        self.schedule = schedule or DDPM()
        self.net_config = net_config
        self.net = ResidualMLP(n_steps=self.schedule.n_steps, **net_config)
        self.register_buffer("sigmas", (1 - self.schedule.alpha_bars).sqrt().float())

    def _step(self, x, t):
        """x in the network's dtype, the step index of t and σ_t. The index of a float t, or of a 0-d tensor t, is an
        int (one step for every row: `ResidualMLP.forward` chunks a tensor of indices with the rows)."""
        i = self.schedule.index(t)
        if isinstance(i, torch.Tensor) and i.dim() == 0:
            i = int(i)
        return x.to(self.sigmas.dtype), i, self.sigmas[i]

    def config(self):
        return {"version": self.version, "schedule": self.schedule.config(), "net": self.net_config}


class EpsScoreNet(_EpsNet):
    version = "score"
    has_energy = False

    def eps(self, x, i):
        return self.net(x, i)

    def score(self, x, t):
        xf, i, sigma = self._step(x, t)
        with torch.no_grad():
            return (-self.net(xf, i) / sigma).to(x.dtype)


class EpsEnergyNet(_EpsNet):
    version = "energy"
    has_energy = True

    def energy(self, x, i):
        """E(x, i) = |f(x, i) − x|² per row (i as in `ResidualMLP.forward`)."""
        return ((self.net(x, i) - x) ** 2).sum(1)

    def eps(self, x, i):
        """∇_x E, differentiable (for training)."""
        with torch.enable_grad():
            if not x.requires_grad:
                x = x.requires_grad_(True)
            (g,) = torch.autograd.grad(self.energy(x, i).sum(), x, create_graph=True)
        return g

    def score_and_log_prob(self, x, t):
        xf, i, sigma = self._step(x, t)
        e, g = value_and_grad(lambda z: self.energy(z, i), xf)
        return (-g / sigma).to(x.dtype), (-e / sigma).to(x.dtype)

    def score(self, x, t):
        return self.score_and_log_prob(x, t)[0]

    def log_prob(self, x, t):
        xf, i, sigma = self._step(x, t)
        with torch.no_grad():
            return (-self.energy(xf, i) / sigma).to(x.dtype)


VERSIONS = {"score": EpsScoreNet, "energy": EpsEnergyNet}


def build(version, schedule=None, **net_config):
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {tuple(VERSIONS)}, got {version!r}")
    return VERSIONS[version](schedule, **net_config)


def fingerprint(nets) -> str:
    """SHA-256 (first 16 hex digits) of the networks' parameters and buffers, in order: which trained networks a
    result was sampled with (a network trained again from the same seed on another CPU rounds differently)."""
    h = hashlib.sha256()
    for net in nets:
        for name, t in net.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def atomic_save(obj, path):
    """torch.save through `atomic_write` (a temporary file, then a rename): a killed write leaves the old file."""
    atomic_write(path, lambda f: torch.save(obj, f))


def save(model, path, training=None):
    """Write the network's config, state_dict and (optionally) the settings it was trained with."""
    atomic_save({"config": model.config(), "state": model.state_dict(), "training": training}, path)


def load(path, training=None, map_location=None):
    """The network written by `save`, for sampling (eval mode, no parameter gradients), holding the saved tensors
    themselves (their dtype, on the device map_location put them on): built on the meta device, then the state
    assigned, no random initialisation to discard. With `training`, a ValueError unless it was trained with
    those settings."""
    form = torch.load(path, map_location=map_location, weights_only=True)
    if training is not None and form.get("training") != training:
        raise ValueError(f"{path} was trained with {form.get('training')}, not {training}")
    config = form["config"]
    with torch.device("meta"):  # the schedule's tables are made on the CPU all the same
        model = build(config["version"], DDPM(**config["schedule"]), **config["net"])
    model.load_state_dict(form["state"], assign=True)
    return model.requires_grad_(False).eval()


def eps_loss(net, params, x_t, i, z):
    """|ε_θ(x_t, i) − z|² averaged over the batch, for the architecture `net` (a `_EpsNet`) at the parameters
    `params` ({name: tensor} of net.net), by torch.func (so that torch.compile takes the energy version's
    ε = ∇_x E whole, with the double backward of its training)."""
    if net.version == "score":
        eps = functional_call(net.net, params, (x_t, i))
    else:
        eps = torch.func.grad(lambda x: ((functional_call(net.net, params, (x, i)) - x) ** 2).sum())(x_t)
    return ((eps - z) ** 2).sum(1).mean()


_COMPILED = {}


def compiled_eps_loss(model):
    """`eps_loss` compiled by torch.compile (inductor, C++ on CPU) with a template network of `model`'s
    version and configuration as `net`: one compilation per (version, configuration) and process, whatever
    the number of networks trained (the parameters are inputs). Returns loss(params, x_t, i, z)."""
    key = (model.version, repr(model.net_config), model.schedule.n_steps)
    if key not in _COMPILED:
        template = build(model.version, model.schedule, **model.net_config).requires_grad_(False)
        fn = torch.compile(eps_loss, dynamic=False)
        _COMPILED[key] = lambda params, x_t, i, z: fn(template, params, x_t, i, z)
    return _COMPILED[key]


def training_step(model, opt, sample_data, g, batch_size, compile=False):
    """One Adam step of `train` on a fresh batch (x_0 from sample_data(batch_size, g), i and z from g);
    returns the loss."""
    abar = model.schedule.alpha_bars.float()
    x0 = sample_data(batch_size, g).float()
    i = torch.randint(0, len(abar), (batch_size,), generator=g)
    z = torch.randn(x0.shape, generator=g)
    a = abar[i][:, None]
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * z
    if compile:
        loss = compiled_eps_loss(model)(dict(model.net.named_parameters()), x_t, i, z)
    else:
        loss = ((model.eps(x_t, i) - z) ** 2).sum(1).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


def train(model, sample_data, *, steps, batch_size=2000, lr=1e-3, ema_decay=0.999, seed=0,
          checkpoint=None, checkpoint_every=1000, compile=False, log=None):
    """ε-matching on fresh data each step: minimise E |ε_θ(√ᾱ_i x_0 + √(1−ᾱ_i) z, i) − z|², i uniform
    over the T steps, by Adam; returns the EMA copy in eval mode, with decay min(ema_decay, (1 + k)/(10 + k))
    at step k (the usual warm-up: with 0.999 from the start, a run of a few hundred steps would still
    be mostly its initial weights; at 15,001 steps the difference is nil). With
    `checkpoint` (a path), the training state (weights, EMA, Adam, data generator, step) is saved
    atomically every `checkpoint_every` steps and a run resumes from it: a run killed after step k and
    rerun ends with the same parameters as a run never stopped. `compile`: the loss and its gradient by
    `compiled_eps_loss` (same architecture, data and optimiser; equal to the eager loss up to float32
    rounding, not bit-identical to an eager run)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    start = 0
    if checkpoint is not None and os.path.exists(checkpoint):
        ck = torch.load(checkpoint, weights_only=True)
        model.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
        g.set_state(ck["rng"])
        start = ck["step"]
    for step in range(start, steps):
        loss = training_step(model, opt, sample_data, g, batch_size, compile)
        decay = min(ema_decay, (1 + step) / (10 + step))  # warm-up: a short run is not its initial weights
        ema_update(ema, model, decay)
        if log is not None and (step % 1000 == 0 or step == steps - 1):
            log(f"step {step} loss {loss.item():.4f}")
        if checkpoint is not None and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            atomic_save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                         "rng": g.get_state(), "step": step + 1}, checkpoint)
    if checkpoint is not None and os.path.exists(checkpoint):
        os.remove(checkpoint)
    return ema.eval()
