"""DiffusionSampler: the drift network with the pinned-Brownian reference process, its forward and
backward trajectories (log p_F, log p_B through the fused ops), objectives, sampling and evaluation."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ... import backends, ops
from ...distributed import Comm
from ...ops import _checks, trajectory
from ...profiling import phase
from .networks import DriftNet

OBJECTIVES = ("pis", "tb", "vargrad", "subtb")
SAVE_FORMAT = 1


@dataclass
class Trajectories:
    """A batch of trajectories: states (T+1, B, D), log p_F and log p_B (B, T), log R(x_T) (B,),
    and for SubTB the flows log F (B, T+1)."""
    states: torch.Tensor
    log_pf: torch.Tensor
    log_pb: torch.Tensor
    log_r: torch.Tensor
    log_f: torch.Tensor | None = None

    def log_weights(self):
        """log w = log R(x_T) + Σ log p_B − Σ log p_F: E[w] = Z, E[log w] ≤ log Z."""
        return self.log_r + self.log_pb.sum(-1) - self.log_pf.sum(-1)


def _saved_target(path, cfg):
    """The registered target a saved sampler names, on the point pattern and grid it was trained on (cfg["points"],
    cfg["grid"]: absent for targets without them and in files saved before they were recorded, which take
    get_target's defaults, LGCP's 40×40)."""
    from ...targets import get_target
    kw = {k: cfg[k] for k in ("points", "grid") if k in cfg}
    if kw.get("points") == "user":
        raise ValueError(f"{path} was trained on user-given {cfg['target']} points: pass target=")
    try:
        return get_target(cfg["target"], **kw)
    except FileNotFoundError as e:
        if "points" not in kw:
            raise
        raise FileNotFoundError(f"{path} was trained on the {cfg['points']} {cfg['target']} point pattern, "
                                f"which is not available here: {e}") from e


def _per_row(a, B):
    """(T, ·) per-time features -> (T·B, ·), row t·B + b for chain b at time t."""
    return a[:, None].expand(a.shape[0], B, a.shape[-1]).reshape(a.shape[0] * B, -1)


def subtb_loss(log_f, log_pf, log_pb, lam):
    """The SubTB loss of trajectories with flows log F (B, T+1): the mean over the batch of
    Σ_{i<j} w_ij res_ij², res_ij = log F_i + Σ_{i≤k<j} (log p_F − log p_B)_k − log F_j, w_ij ∝ λ^{j−i} (Σ w = 1).

    With a_i = log F_i − Σ_{k<i} (log p_F − log p_B)_k, res_ij = a_i − a_j and the sum over the (T+1)²/2 pairs is
    Σ_i (r_i + c_i) a_i² − 2 aᵀ W a (r, c the row and column sums of W): elementwise work O(T·B) and one
    (B, T+1) × (T+1, T+1) matrix product, instead of the (B, T+1, T+1) residuals and their backward. It is summed in
    float64 (from the cumulative sum on) on a centred by its row mean (the loss does not change under a_i + const), as
    the expanded square cancels where the residuals are small against a; the loss is returned in log_pf's dtype."""
    if not lam > 0:
        raise ValueError(f"subtb_lambda must be > 0, got {lam}")
    dtype, T = log_pf.dtype, log_pf.shape[1]
    log_f, log_pf, log_pb = log_f.double(), log_pf.double(), log_pb.double()
    zero = torch.zeros_like(log_pf[:, :1])
    a = log_f - torch.cat([zero, (log_pf - log_pb).cumsum(1)], 1)
    a = a - a.mean(1, keepdim=True)
    span = torch.arange(T + 1, device=a.device, dtype=a.dtype)
    span = span[None, :] - span[:, None]
    # λ^span / λ^(the largest span's or 1): the largest weight is 1, so that none overflows for long trajectories
    log_lam = math.log(lam)
    w = torch.where(span > 0, (span * log_lam - max(log_lam, T * log_lam)).exp(), torch.zeros_like(span))
    w = w / w.sum()
    per_traj = (a * a) @ (w.sum(1) + w.sum(0)) - 2 * ((a @ w) * a).sum(1)
    return per_traj.mean().to(dtype)


class DiffusionSampler(nn.Module):
    """Drift network + the pinned-Brownian reference process (σ, T). `fused=True` runs the
    fast path: no-grad simulation, then one batched network evaluation of every visited state
    for the off-policy objectives; `fused=False` is the eager per-step autograd loop with the
    PyTorch reference of the op, on the same Philox noise (so fused = eager; the identity the tests check).
    `torch_noise=True` (eager only) draws the steps' noise with torch's generator instead, as plain PyTorch code
    would: the eager path as the speed baseline it is timed against (the reference's Philox in int64 arithmetic is
    an oracle, not a fair baseline: ~40 % of an eager iteration)."""

    def __init__(self, target, *, sigma: float = 1.0, n_steps: int = 100, fused: bool = True, torch_noise=False,
                 **net_kw):
        super().__init__()
        if torch_noise and fused:
            raise ValueError("torch_noise is for the eager path (fused=False)")
        sigma = _checks.finite_float("sigma", sigma, positive=True)
        n_steps = _checks.integer("n_steps", n_steps, minimum=1)
        self.target, self.sigma, self.n_steps, self.fused = target, sigma, n_steps, fused
        self.torch_noise = bool(torch_noise)
        self.net_config = dict(net_kw)
        self.net = DriftNet(target.dim, **net_kw)
        self.backend = "auto" if fused else "torch"

    # -- saving and loading ---------------------------------------------------------------------
    def config(self) -> dict:
        """The settings that rebuild this sampler (plain values): the target's registered name (None if
        it has none), its point pattern and grid where it has them (LGCP's points_source and grid, as "points" and
        "grid") and dim, σ, T, fused and the DriftNet keyword arguments."""
        cfg = {"target": getattr(self.target, "name", None), "dim": self.target.dim, "sigma": self.sigma,
               "n_steps": self.n_steps, "fused": self.fused, "net": dict(self.net_config)}
        if hasattr(self.target, "points_source"):
            cfg["points"] = self.target.points_source
        if hasattr(self.target, "grid"):
            cfg["grid"] = self.target.grid
        return cfg

    def save(self, path) -> None:
        """Write config and state_dict to `path`; `torch.load(path)` reads it with the default
        weights_only=True, `DiffusionSampler.load(path)` rebuilds the sampler."""
        torch.save({"format": SAVE_FORMAT, "class": "DiffusionSampler", "config": self.config(),
                    "state": self.state_dict()}, path)

    @classmethod
    def load(cls, path, target=None, map_location=None) -> DiffusionSampler:
        """The sampler written by `save`, on `target` (default: the registered target of the saved name,
        `fastsamp.targets.get_target(name)` with its default settings and the saved point pattern and grid, if
        any)."""
        saved = torch.load(path, map_location=map_location, weights_only=True)
        if saved.get("format") != SAVE_FORMAT or saved.get("class") != "DiffusionSampler":
            raise ValueError(f"{path} is not a DiffusionSampler written by DiffusionSampler.save")
        cfg = saved["config"]
        if target is None:
            if cfg["target"] is None:
                raise ValueError(f"{path} was saved with a target that has no registered name: pass target=")
            target = _saved_target(path, cfg)
        if target.dim != cfg["dim"]:
            raise ValueError(f"target has dim {target.dim} but the sampler in {path} was trained for dim {cfg['dim']}")
        sampler = cls(target, sigma=cfg["sigma"], n_steps=cfg["n_steps"], fused=cfg["fused"], **cfg["net"])
        sampler.load_state_dict(saved["state"])
        return sampler

    @property
    def h(self):
        return 1.0 / self.n_steps

    @property
    def device(self):
        """Where the network lives; trajectories are simulated there (`sampler.to(device)` moves it)."""
        return self.net.log_Z.device

    def _grid(self, like):
        return torch.arange(self.n_steps + 1, dtype=like.dtype, device=like.device) * self.h

    def _score(self, x):
        return self.target.score(x).detach() if self.net.langevin else None

    # -- trajectories -------------------------------------------------------------------------
    def forward_trajectories(self, batch_size, *, explore=0.0, reparam=False, seed=0, chain_offset=0,
                             with_flows=False, dtype=torch.float32, device=None):
        """Simulate from x_0 = 0 on `device` (default: the network's). reparam=True keeps the whole
        path differentiable (PIS). The chains are the global chains chain_offset .. chain_offset +
        batch_size − 1 of the Philox draws."""
        T, D = self.n_steps, self.target.dim
        x = torch.zeros(batch_size, D, dtype=dtype, device=self.device if device is None else _checks.device(device))
        ts = self._grid(x)
        offline = self.fused and not reparam
        if self.fused and self._whole_trajectory_kernel(x, rollout=True):
            return self._fused_forward(batch_size, explore, reparam, seed, chain_offset, x, with_flows)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not offline):
            noise = None
            if self.torch_noise:  # (B, D) per step from torch's generator (seeded by seed and chain_offset)
                gen = torch.Generator(device=x.device).manual_seed((seed * 1_000_003 + chain_offset) % (1 << 63))
                noise = lambda: torch.randn(x.shape, generator=gen, dtype=x.dtype, device=x.device)  # noqa: E731
            temb, lgv = self.net.time_features(ts[:-1])
            states, log_pf, log_pb, log_f = [x], [], [], []
            # offline with the Langevin term: the target's scores along the rollout, which log p_F reuses
            scores = x.new_empty(T, *x.shape) if offline and lgv is not None else None
            for i in range(T):
                with phase("policy"):
                    score = self._score(x)
                    drift, log_var, hid = self.net(x, temb[i:i + 1], None if lgv is None else lgv[i:i + 1], score)
                if scores is not None:
                    scores[i] = score
                if with_flows and not offline:
                    log_f.append(self._flow(x, hid, ts[i]))
                draws = dict(noise=noise()) if noise else dict(seed=seed, offset=i, chain_offset=chain_offset)
                x, lpf, lpb = ops.em_step_logprob(x, drift, sigma=self.sigma, t=float(ts[i]), h=self.h, **draws,
                                                  log_var=log_var, explore=explore, reparam=reparam,
                                                  backend=self.backend)
                states.append(x)
                log_pf.append(lpf)
                log_pb.append(lpb)
        states = torch.stack(states)
        log_pb = torch.stack(log_pb, 1)
        if offline:
            log_pf, log_f = self._evaluate(states, with_flows, scores)
        else:
            log_pf = torch.stack(log_pf, 1)
            if with_flows:
                log_f = torch.stack(log_f, 1)
        log_r = self.target.log_prob(states[-1]) if reparam else self.target.log_prob(states[-1].detach()).detach()
        return self._finish(states, log_pf, log_pb, log_r, log_f if with_flows else None)

    def backward_trajectories(self, x_T, *, seed=0, with_flows=False):
        """Brownian-bridge trajectories from the terminal states x_T back to x_0 = 0:
        X_t = t x_T + σ (W_t − t W_1) on the grid, drawn in one shot (in place on W, one time slice at a
        time: the (T+1, B, D) arrays are the largest of an iteration at D = 1600, and a whole-array
        temporary costs fresh pages)."""
        T, (B, D) = self.n_steps, x_T.shape
        ts = self._grid(x_T)
        g = torch.Generator(device=x_T.device).manual_seed(seed)
        dw = torch.randn(T, B, D, generator=g, dtype=x_T.dtype, device=x_T.device).mul_(math.sqrt(self.h))
        states = x_T.new_empty(T + 1, B, D)
        states[0] = 0
        torch.cumsum(dw, 0, out=states[1:])
        del dw
        for i in range(T):  # W_1 = states[T] until it is overwritten by x_T
            states[i].sub_(ts[i] * states[T]).mul_(self.sigma).add_(ts[i] * x_T)
        states[T] = x_T
        log_pf, log_f = self._evaluate(states, with_flows)
        return self._finish(states, log_pf, self._bridge_log_pb(states), self.target.log_prob(x_T).detach(),
                            log_f if with_flows else None)

    def _whole_trajectory_kernel(self, x, rollout=False) -> bool:
        """Whether the C++ whole-trajectory policy kernels (ops.trajectory) serve this network: CPU,
        a fixed variance; with the Langevin term, a rollout also needs the target's score in C++
        (`target.score_kernel`; the log p_F of given states takes its scores from target.score)."""
        if x.device.type != "cpu" or self.net.learned_variance or not backends.is_available("cpp"):
            return False
        return not (rollout and self.net.langevin) or getattr(self.target, "score_kernel", lambda _: None)(
            x.dtype) is not None

    def _fused_forward(self, batch_size, explore, reparam, seed, chain_offset, like, with_flows=False):
        """Forward trajectories by one rollout kernel. Off-policy (no reparam): no grad, and log p_F
        through one kernel whose backward is one kernel (the rollout's log p_F is reused, not
        recomputed; under autograd, for states wider than the hidden layers (LGCP: D = 1600, hidden 64), the
        rollout keeps the network's hidden activations, which the backward reads instead of recomputing them:
        there the input layer's recomputation costs more than writing and re-reading them; for narrow states
        recomputing is cheaper (25GMM TB: 29 against 62 ms per iteration kept; the gradients are the same bits
        either way). reparam (PIS): the rollout is differentiable and its backward is one
        kernel. With the Langevin term the rollout computes the target's scores, which log p_F reuses. The flows
        (`with_flows`) by one batched call of the flow head (`_flows`)."""
        ts = self._grid(like)
        temb, lgv = self.net.time_features(ts[:-1])
        kw = dict(sigma=self.sigma, h=self.h, explore=explore, seed=seed, chain_offset=chain_offset)
        if lgv is not None:
            kw.update(lgv=lgv if reparam else lgv.detach(), target=self.target)
        if reparam:
            with phase("policy"):
                states, log_pf, log_pb, *_ = trajectory.policy_rollout(self.net, temb, batch_size, reparam=True, **kw)
            return self._finish(states, log_pf, log_pb, self.target.log_prob(states[-1]),
                                self._flows(states, temb, ts) if with_flows else None)
        keep = torch.is_grad_enabled() and self.net.state.in_features > self.net.state.out_features
        with torch.no_grad(), phase("policy"):
            states, lpf, lpb, *rest = trajectory.policy_rollout(self.net, temb.detach(), batch_size,
                                                                dtype=like.dtype, keep_activations=keep, **kw)
        lp = {} if lgv is None else dict(lgv=lgv, scores=rest[0])
        if keep:
            lp["activations"] = rest[-1]
        with phase("policy"):
            log_pf = trajectory.policy_log_pf(self.net, states, temb, sigma=self.sigma, h=self.h, log_pf=lpf, **lp)
        return self._finish(states, log_pf, lpb, self.target.log_prob(states[-1]).detach(),
                            self._flows(states, temb, ts) if with_flows else None)

    def _evaluate(self, states, with_flows, scores=None):
        """log p_F of every transition of fixed trajectories (and the flows): one batched network
        call over all T·B states and one fused op call (uniform h, so one variance); for the plain
        network on the CPU, one whole-trajectory kernel. With the Langevin term, `scores` (T, B, D):
        the target's scores at states[:-1] when the caller has them (a rollout's), else computed here."""
        T, B, D = states.shape[0] - 1, states.shape[1], states.shape[2]
        ts = self._grid(states)
        temb, lgv = self.net.time_features(ts[:-1])
        if self.fused and self._whole_trajectory_kernel(states):
            lp = {} if lgv is None else dict(lgv=lgv, target=self.target, scores=scores)
            with phase("policy"):
                log_pf = trajectory.policy_log_pf(self.net, states, temb, sigma=self.sigma, h=self.h, **lp)
            return log_pf, self._flows(states, temb, ts) if with_flows else None
        x = states[:-1].reshape(T * B, D)
        with phase("policy"):
            score = self._score(x) if scores is None else scores.view(T * B, D)
            drift, log_var, hid = self.net(x, _per_row(temb, B), None if lgv is None else _per_row(lgv, B), score)
        _, log_pf, _ = ops.em_step_logprob(x, drift, sigma=self.sigma, t=0.0, h=self.h, log_var=log_var,
                                           x_next=states[1:].reshape(T * B, D), backend=self.backend)
        return log_pf.view(T, B).T, self._flows(states, temb, ts, hid) if with_flows else None

    def _bridge_log_pb(self, states):
        """log p_B(x_i | x_{i+1}) = log N(x_i; (t_i/t_{i+1}) x_{i+1}, σ² h t_i/t_{i+1}); 0 for i = 0 (one time
        slice at a time: no (T, B, D) temporaries)."""
        ts = self._grid(states)
        c = ts[1:-1] / ts[2:]
        var = self.sigma ** 2 * self.h * c
        log_2pi_var = torch.log(2 * math.pi * var)
        lpb = [torch.zeros_like(states[0, :, 0])]
        for i in range(len(c)):
            u = (c[i] * states[i + 2]).sub_(states[i + 1])  # −(x_i − c x_{i+1}), exactly: the same square
            lpb.append(-0.5 * (u * u).div_(var[i]).add_(log_2pi_var[i]).sum(-1))
        return torch.stack(lpb).T  # (B, T) with the whole-array version's strides: sums over time round the same

    def _flows(self, states, temb, ts, hid=None):
        """log F at states[:-1] as (B, T): the flow head (`_flow`) in one batched call over the T·B states, on their
        hidden features `hid` (T·B, H) (None: state(x) + temb by `DriftNet.trajectory_hidden`, as next to the
        whole-trajectory kernels); on the fused path on the CPU by the fused ops (`_flow`)."""
        T, B, D = states.shape[0] - 1, states.shape[1], states.shape[2]
        x = states[:-1].reshape(T * B, D)
        if hid is None:
            hid = self.net.trajectory_hidden(x, temb, B)
        fused = self.fused and x.device.type == "cpu"
        return self._flow(x, hid, ts[:-1].repeat_interleave(B), fused).view(T, B).T

    def _flow(self, x, hid, t, fused=False):
        """Forward-looking flow log F(x, t) = F_θ(x, t) + (1 − t) log N(x; 0, σ² max(t, h)) + t log R(x) (fused: F_θ by
        `DriftNet.flow_of`'s fused MLP op, log R by the target's kernel where it has one, `Target.kernel_log_prob`)."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        var = self.sigma ** 2 * torch.clamp(t, min=self.h)
        log_ref = -0.5 * ((x * x).sum(-1) / var + x.shape[1] * torch.log(2 * math.pi * var))
        log_r = self.target.kernel_log_prob(x.detach()) if fused else self.target.log_prob(x).detach()
        return self.net.flow_of(hid, fused) + (1 - t) * log_ref + t * log_r

    def _finish(self, states, log_pf, log_pb, log_r, log_f):
        if log_f is not None:
            log_f = torch.cat([log_f, log_r[:, None]], 1)
        return Trajectories(states, log_pf, log_pb, log_r, log_f)

    # -- objectives ---------------------------------------------------------------------------
    def loss(self, traj: Trajectories, objective: str, subtb_lambda: float = 2.0, comm: Comm | None = None):
        """The objective's loss on a batch of trajectories. Distributed (`comm` of N ranks), VarGrad's
        batch log Z (the mean log w) is the mean over the trajectories of every rank (one all_reduce),
        so that N ranks with batch b give the gradient of one process with batch N·b."""
        if objective == "pis":
            return (-traj.log_weights()).mean() / self.target.dim
        if objective == "tb":
            return 0.5 * ((self.net.log_Z - traj.log_weights()) ** 2).mean()
        if objective == "vargrad":
            log_w = traj.log_weights()
            if comm is not None and comm.distributed:
                total, count = comm.all_reduce([float(log_w.detach().double().sum()), log_w.shape[0]])
                baseline = float(total / count)  # Σ (log w − mean) = 0: no gradient through the mean
            else:
                baseline = log_w.mean()
            return 0.5 * ((log_w - baseline) ** 2).mean()
        if objective == "subtb":
            return subtb_loss(traj.log_f, traj.log_pf, traj.log_pb, subtb_lambda)
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")

    # -- sampling and evaluation ----------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n, *, seed=0, dtype=torch.float32, device=None, group=None, gather=True):
        """n samples and their log weights log w (E[w] = Z).

        Distributed (torchrun or `group=`): each rank simulates its share of the n chains with noise
        keyed by the global chain index; gather=True returns all of them on rank 0 ((None, None)
        elsewhere), gather=False each rank's own."""
        n = _checks.integer("n", n, minimum=1)
        net_dtype = self.net.log_Z.dtype
        if dtype != net_dtype:
            raise ValueError(f"dtype must be the network's dtype {net_dtype} (convert the sampler with .to({dtype}) "
                             f"first), got {dtype}")
        comm = Comm.resolve(group)
        chain0, n_local = comm.shard(n)
        traj = self.forward_trajectories(n_local, seed=seed, chain_offset=chain0, dtype=dtype, device=device)
        x, log_w = traj.states[-1], traj.log_weights()
        if not (gather and comm.distributed):
            return x, log_w
        both = comm.gather(torch.cat([x, log_w[:, None]], 1))
        return (None, None) if both is None else (both[:, :-1], both[:, -1])

    @torch.no_grad()
    def evaluate(self, n=2000, *, seed=10**6, exact_samples=None, n_eubo_repeats=1, samples=None):
        """log Z estimates (ELBO = mean log w, importance-weighted log-mean-exp), ESS/n, learned log Z,
        and with exact samples the EUBO and the 2-Wasserstein distance. `samples`: the (x, log w) of
        `sample(n, seed=seed)` when the caller has drawn them already (not drawn again)."""
        from ... import metrics
        n = _checks.integer("n", n, minimum=2)
        if exact_samples is not None and (not isinstance(exact_samples, torch.Tensor) or exact_samples.dim() != 2
                                          or exact_samples.shape[1] != self.target.dim):
            got = (tuple(exact_samples.shape) if isinstance(exact_samples, torch.Tensor)
                   else type(exact_samples).__name__)
            raise ValueError(f"exact_samples must be an (m, {self.target.dim}) tensor, got {got}")
        x, log_w = self.sample(n, seed=seed, group=Comm(None),
                               dtype=self.net.log_Z.dtype) if samples is None else samples
        out = metrics.log_z_estimates(log_w)
        out["log_Z_learned"] = float(self.net.log_Z)
        if exact_samples is not None:
            exact_samples = exact_samples.to(self.device)
            out["w2"] = metrics.wasserstein2(x, exact_samples)
            lw = torch.cat([self.backward_trajectories(exact_samples, seed=seed + r).log_weights()
                            for r in range(n_eubo_repeats)])
            out["eubo"] = float(lw.mean())
        return out
