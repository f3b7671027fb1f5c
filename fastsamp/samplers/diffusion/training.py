"""Training of a DiffusionSampler: the hyper-parameters (TrainConfig), the log, the resumable
training loop (one checkpoint file of the whole state, written atomically) and DDP."""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
import tempfile
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ...distributed import Comm
from ...ops import _checks
from ...profiling import machine
from .replay import ReplayBuffer, local_search
from .sampler import OBJECTIVES, DiffusionSampler


@dataclass
class TrainConfig:
    """Training hyper-parameters; the defaults are those of Sendera et al. (2024)."""
    objective: str = "tb"
    iterations: int = 25000
    batch_size: int = 300
    lr_policy: float = 1e-3
    lr_flow: float = 1e-1            # log Z (TB) or the flow network (SubTB: 1e-2 in the paper)
    explore: float = 0.0             # extra sampling std per step, decayed linearly to 0 over explore_decay
    explore_decay: int = 5000        # iterations (gfn-diffusion's --exploration_wd: 5000, whatever the run length)
    local_search: bool = False       # alternate forward and buffer (backward) trajectories with MALA local search
    replay: bool = False             # alternate forward and backward trajectories from the buffer (no local search)
    prior_every: int = 0             # every k-th iteration: backward trajectories from x_T ~ N(0, σ² I), the
                                     # reference process's marginal (prior-trajectory exploration)
    buffer_size: int = 600_000
    rank_weight: float = 1e-2
    ls_every: int = 100
    ls_steps: int = 200
    ls_burn_in: int = 100
    ls_step_size: float = 0.1       # initial MALA step ε, adapted per move (--ld_step 0.1 --ld_schedule)
    ls_target_acceptance: float = 0.574
    subtb_lambda: float = 2.0
    grad_clip: float | None = None
    seed: int = 0
    eval_every: int = 0              # 0: no periodic evaluation
    eval_samples: int = 2000

    def __post_init__(self):
        """Every field checked by name: a negative learning rate or gradient clip would silently train towards a
        higher loss (Adam and clip_grad_norm_ take them), a zero ls_every would divide by zero mid-run."""
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        for name, minimum in (("iterations", 0), ("batch_size", 1), ("explore_decay", 0), ("prior_every", 0),
                              ("buffer_size", 1), ("ls_every", 1), ("ls_steps", 1), ("ls_burn_in", 0), ("seed", 0),
                              ("eval_every", 0), ("eval_samples", 2)):
            setattr(self, name, _checks.integer(f"TrainConfig.{name}", getattr(self, name), minimum=minimum,
                                                maximum=2**63 - 1))
        for name, positive in (("lr_policy", False), ("lr_flow", False), ("explore", False), ("rank_weight", False),
                               ("ls_step_size", True), ("subtb_lambda", True)):
            setattr(self, name, _config_float(name, getattr(self, name), positive))
        if self.grad_clip is not None:
            self.grad_clip = _config_float("grad_clip", self.grad_clip, True)
        if not 0 < _config_float("ls_target_acceptance", self.ls_target_acceptance, True) < 1:
            raise ValueError(f"TrainConfig.ls_target_acceptance must be in (0, 1), got {self.ls_target_acceptance}")
        if self.local_search and self.ls_burn_in >= self.ls_steps:
            raise ValueError(f"TrainConfig.ls_burn_in must be < ls_steps (the local search keeps the moves after "
                             f"its burn-in), got {self.ls_burn_in} >= {self.ls_steps}")
        if self.objective == "vargrad" and self.batch_size < 2:
            raise ValueError("TrainConfig.batch_size must be >= 2 for vargrad (its log Z is the batch's mean: with "
                             "one trajectory the loss is 0)")


def _config_float(name: str, v, positive: bool) -> float:
    """A finite real TrainConfig field, >= 0 (> 0 if `positive`)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"TrainConfig.{name} must be a real number, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise ValueError(f"TrainConfig.{name} must be finite and {'> 0' if positive else '>= 0'}, got {v}")
    return v


@dataclass
class TrainLog:
    """Per-iteration losses, wall and process-CPU seconds of training (checkpoint writes excluded,
    summed over resumed calls), periodic evaluations, the iterations the run was resumed from, and its
    segments: per train() call that ran iterations, {"first", "last" (iterations [first, last)), "machine"
    (`profiling.machine`; None for the part of a run resumed from a checkpoint that did not record it), "device",
    "seconds", "cpu_seconds"}, so that a run resumed on another machine keeps each machine's times apart."""
    loss: list = field(default_factory=list)
    seconds: float = 0.0
    evals: list = field(default_factory=list)
    cpu_seconds: float = 0.0
    resumed_from: list = field(default_factory=list)
    segments: list = field(default_factory=list)

    @property
    def seconds_per_iteration(self):
        return self.seconds / max(len(self.loss), 1)

    @property
    def cpu_seconds_per_iteration(self):
        """Process CPU time per iteration: unaffected by pauses and, for a one-thread run, by other jobs."""
        return self.cpu_seconds / max(len(self.loss), 1)

    def loss_curve(self, windows: int = 50) -> dict:
        """The training curve: the losses of iterations [k·N, (k + 1)·N) per window k, N = ⌈iterations / windows⌉
        ("every"; so at most `windows` windows, the last one possibly shorter), as each window's last iteration
        ("iterations", counted from 1), mean, min and max (NaN when a loss of the window is NaN). A checkpoint holds
        every loss, so a resumed run's curve starts at iteration 0 (bitwise an uninterrupted run's under the
        resume test's conditions: one thread, same seeds and device)."""
        n = len(self.loss)
        every = max(1, -(-n // windows))
        parts = [self.loss[i:i + every] for i in range(0, n, every)]

        def extreme(f, w):  # NaN if a loss of w is: Python's min/max would depend on where the NaN is
            return math.nan if any(map(math.isnan, w)) else f(w)
        return {"every": every, "iterations": [min(i + every, n) for i in range(0, n, every)],
                "mean": [sum(w) / len(w) for w in parts], "min": [extreme(min, w) for w in parts],
                "max": [extreme(max, w) for w in parts]}


class _Iteration(nn.Module):
    """One training iteration's loss as a module forward, so that DistributedDataParallel sees the
    forward and all-reduces (averages) the gradients of the sampler's parameters in the backward."""

    def __init__(self, sampler, step):
        super().__init__()
        self.sampler, self.step = sampler, step

    def forward(self, it):
        return self.step(it)


class TrainingDiverged(FloatingPointError):
    """Training stopped at the first iteration whose loss (distributed: whose all-reduced gradients) is non-finite,
    before its optimizer step, or at a checkpoint that would have saved non-finite parameters (the file then keeps
    the last finite state). `iteration`: that iteration; `log`: the TrainLog up to it (its times included)."""

    def __init__(self, iteration: int, what: str, log):
        super().__init__(f"training diverged at iteration {iteration}: {what}; the run stops there (the last "
                         f"checkpoint, if any, holds the finite state before it, from which a resume replays the "
                         f"same iterations)")
        self.iteration, self.what, self.log = iteration, what, log


def _gradient_sum(params) -> float:
    """Σ of every gradient entry in float64 (non-finite exactly when a gradient entry is: float32 sums of this size
    cannot overflow float64): the distributed check, whose all-reduced gradients every rank agrees on."""
    grads = [p.grad for p in params if p.grad is not None]
    return float(torch.stack([g.sum(dtype=torch.float64) for g in grads]).sum()) if grads else 0.0


def train(sampler: DiffusionSampler, config: TrainConfig, *, progress=True, callback=None,
          on_iteration=None, checkpoint=None, checkpoint_every=0, until=None, on_checkpoint=None,
          group=None) -> TrainLog:
    """Train `sampler` with config.objective on forward (on-policy + exploration) trajectories; with
    local_search or replay every other iteration uses backward trajectories from the buffer, and
    prior_every = k makes every k-th iteration use backward trajectories from the reference marginal.
    `on_iteration(it)` runs before each iteration (e.g. to anneal the target); `callback(it)` every
    eval_every iterations, its results collected in the log.

    Resumable: with `checkpoint` (a path) the whole training state — model, optimizer, replay
    buffers, every RNG state, the iteration count, the loss history and the elapsed time — is
    written there (atomically) every `checkpoint_every` iterations and when the call returns, and
    a call that finds the file resumes from it: a run stopped and resumed follows the same path as
    an uninterrupted one. `until` stops before that iteration (default: config.iterations);
    `on_checkpoint(iteration, log)` runs after each checkpoint write.
    Trajectories are simulated on `sampler.device`; the replay buffers stay in CPU memory.

    Distributed (torchrun or `group=` with N ranks): DistributedDataParallel, each rank simulating
    config.batch_size forward trajectories as the global chains rank·b .. (rank + 1)·b − 1, so that
    N ranks with batch b train like one process with batch N·b (VarGrad's batch log Z is reduced over
    all ranks). Buffer, local-search and prior trajectories are drawn per rank (generators seeded with
    the rank); each rank checkpoints to `checkpoint` + ".rank{r}". The logged loss is this rank's.

    Divergence: a non-finite loss (distributed: non-finite all-reduced gradients, which every rank sees alike) stops
    training before that iteration's step with `TrainingDiverged`, as does a checkpoint that would hold non-finite
    parameters (not written: the file keeps the last finite state)."""
    cfg = config
    if cfg.objective == "pis" and (cfg.local_search or cfg.replay or cfg.prior_every or cfg.explore > 0):
        raise ValueError("pis is on-policy: it takes no local_search, replay, prior_every or explore")
    if cfg.objective == "subtb" and sampler.net.flow is None:
        raise ValueError("objective 'subtb' needs a DriftNet built with flow=True")
    if checkpoint_every < 0 or (checkpoint_every and checkpoint is None):
        raise ValueError(f"checkpoint_every must be >= 0 and needs a checkpoint path, got {checkpoint_every}")
    until = cfg.iterations if until is None else min(int(until), cfg.iterations)
    comm = Comm.resolve(group)
    if comm.distributed and checkpoint is not None:
        checkpoint = rank_checkpoint(checkpoint, comm.rank)
    torch.manual_seed(cfg.seed)
    flow_params = [sampler.net.log_Z] + (list(sampler.net.flow.parameters()) if sampler.net.flow is not None else [])
    flow_ids = {id(p) for p in flow_params}
    policy = [p for p in sampler.net.parameters() if id(p) not in flow_ids]
    opt = torch.optim.Adam([{"params": policy, "lr": cfg.lr_policy}, {"params": flow_params, "lr": cfg.lr_flow}])
    D, device = sampler.target.dim, sampler.device
    buffers = {}
    if cfg.local_search or cfg.replay:
        buffers["replay"] = ReplayBuffer(cfg.buffer_size, D, rank_weight=cfg.rank_weight)
    if cfg.local_search:
        buffers["local_search"] = ReplayBuffer(cfg.buffer_size, D, rank_weight=cfg.rank_weight)
    buffer, buffer_ls = buffers.get("replay"), buffers.get("local_search")
    gen = torch.Generator().manual_seed(cfg.seed + 7919 * comm.rank)
    log = TrainLog()
    training = TrainingState(sampler, opt, buffers, gen, log, cfg)
    first = 0
    if checkpoint is not None and os.path.exists(checkpoint):
        first = _load_checkpoint(checkpoint, training)
        log.resumed_from.append(first)
    bar = _progress(cfg.iterations, progress and comm.rank == 0, first)
    with_flows = cfg.objective == "subtb"
    chain0 = comm.rank * cfg.batch_size

    def iteration_loss(it):
        seed = cfg.seed * 1_000_003 + it
        bwd_seed = seed + 7919 * comm.rank  # backward trajectories: per-rank torch generator noise
        explore = exploration_std(cfg, it)
        if cfg.prior_every and it % cfg.prior_every == cfg.prior_every - 1:
            x_T = sampler.sigma * torch.randn(cfg.batch_size, D, generator=gen)
            traj = sampler.backward_trajectories(x_T.to(device), seed=bwd_seed, with_flows=with_flows)
        elif buffer is not None and it % 2 == 1:
            if cfg.local_search:
                if it % cfg.ls_every < 2:
                    start_x, _ = buffer.sample(cfg.batch_size, gen)
                    found, found_r, _ = local_search(sampler.target, start_x.to(device), n_steps=cfg.ls_steps,
                                                     burn_in=cfg.ls_burn_in, step_size=cfg.ls_step_size,
                                                     target_acceptance=cfg.ls_target_acceptance, seed=bwd_seed)
                    buffer_ls.add(found, found_r)
                x_T, _ = buffer_ls.sample(cfg.batch_size, gen)
            else:
                x_T, _ = buffer.sample(cfg.batch_size, gen)
            traj = sampler.backward_trajectories(x_T.to(device), seed=bwd_seed, with_flows=with_flows)
        else:
            traj = sampler.forward_trajectories(cfg.batch_size, explore=explore, reparam=cfg.objective == "pis",
                                                seed=seed, chain_offset=chain0, with_flows=with_flows)
            if buffer is not None:
                buffer.add(traj.states[-1], traj.log_r)
        return sampler.loss(traj, cfg.objective, cfg.subtb_lambda, comm)

    step = _Iteration(sampler, iteration_loss)
    if comm.distributed:
        step = torch.nn.parallel.DistributedDataParallel(step, process_group=comm.group,
                                                         find_unused_parameters=True)
    prior_seconds, prior_cpu = log.seconds, log.cpu_seconds
    segment = {"first": first, "last": first, "machine": machine(device), "device": str(device)}
    start, start_cpu = time.perf_counter(), time.process_time()
    saving = [0.0, 0.0]  # wall and CPU seconds spent writing checkpoints (not training time)

    def elapsed():
        log.seconds = prior_seconds + time.perf_counter() - start - saving[0]
        log.cpu_seconds = prior_cpu + time.process_time() - start_cpu - saving[1]
        if len(log.loss) > first:
            segment.update(last=len(log.loss), seconds=log.seconds - prior_seconds,
                           cpu_seconds=log.cpu_seconds - prior_cpu)
            if not log.segments or log.segments[-1] is not segment:
                log.segments.append(segment)

    def save(it):
        elapsed()
        if not all(bool(torch.isfinite(p).all()) for p in sampler.parameters()):
            raise TrainingDiverged(it - 1, "the parameters are non-finite after its step", log)
        t0, c0 = time.perf_counter(), time.process_time()
        _save_checkpoint(checkpoint, it, training)
        saving[0] += time.perf_counter() - t0
        saving[1] += time.process_time() - c0
        if on_checkpoint is not None:
            on_checkpoint(it, log)

    try:
        for it in range(first, until):
            if on_iteration is not None:
                on_iteration(it)
            opt.zero_grad(set_to_none=True)
            loss = step(it)
            loss.backward()
            value = float(loss.detach())
            if not math.isfinite(_gradient_sum(sampler.parameters()) if comm.distributed else value):
                elapsed()
                raise TrainingDiverged(it, f"the loss is {value}" + (" (gradients non-finite on some rank)"
                                                                       if comm.distributed else ""), log)
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(sampler.parameters(), cfg.grad_clip)
            opt.step()
            log.loss.append(value)
            if bar is not None:
                bar.update(1)
                if it % 50 == 0:
                    bar.set_postfix(loss=f"{log.loss[-1]:.3g}")
            if cfg.eval_every and (it + 1) % cfg.eval_every == 0 and callback is not None:
                elapsed()
                log.evals.append(callback(it + 1))
            if checkpoint_every and (it + 1) % checkpoint_every == 0 and it + 1 < until:
                save(it + 1)
        elapsed()
        if checkpoint is not None:
            save(max(first, until))
    finally:  # also when training diverges
        if bar is not None:
            bar.close()
    return log


def exploration_std(cfg: TrainConfig, it: int) -> float:
    """The extra sampling std of iteration `it`: explore · max(0, 1 − it / explore_decay), a linear decay
    to 0 at iteration explore_decay (gfn-diffusion's get_exploration_std with --exploration_wd)."""
    return cfg.explore * max(0.0, 1.0 - it / max(cfg.explore_decay, 1))


CHECKPOINT_FORMAT = 1


@dataclass
class TrainingState:
    """Everything a checkpoint holds besides the iteration: the sampler, its optimizer, the replay
    buffers, the buffer generator, the log and the config it must match."""
    sampler: DiffusionSampler
    opt: torch.optim.Optimizer
    buffers: dict
    gen: torch.Generator
    log: TrainLog
    cfg: TrainConfig


def _save_checkpoint(path, iteration, training: TrainingState):
    """Write the training state to `path` atomically (a temporary file in the same folder, then rename)."""
    sampler, opt, buffers, gen, log, cfg = (training.sampler, training.opt, training.buffers, training.gen,
                                            training.log, training.cfg)
    state = {
        "format": CHECKPOINT_FORMAT, "iteration": iteration, "config": dataclasses.asdict(cfg),
        "model": sampler.state_dict(), "optimizer": opt.state_dict(),
        "buffers": {name: buf.state_dict() for name, buf in buffers.items()},
        "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        "loss": log.loss, "evals": log.evals, "seconds": log.seconds, "cpu_seconds": log.cpu_seconds,
        "resumed_from": log.resumed_from, "segments": log.segments,
    }
    if hasattr(sampler.target, "points_source"):  # LGCP: the point pattern the run trains on
        state["target_points"] = sampler.target.points_source
    atomic_write(path, lambda f: torch.save(state, f))


def atomic_write(path, write):
    """Call write(f) on a temporary binary file beside `path`, sync it, and rename it to `path`, so
    that `path` holds either the old or the new content, never a partial one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _load_checkpoint(path, training: TrainingState) -> int:
    """Restore the state written by `_save_checkpoint`; returns the iteration to continue from."""
    sampler, opt, buffers, gen, log, cfg = (training.sampler, training.opt, training.buffers, training.gen,
                                            training.log, training.cfg)
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {path} has format {state.get('format')}, expected {CHECKPOINT_FORMAT}")
    if state["config"] != dataclasses.asdict(cfg):
        diff = {k: (v, state["config"].get(k)) for k, v in dataclasses.asdict(cfg).items()
                if state["config"].get(k) != v}
        raise ValueError(f"checkpoint {path} was written with another TrainConfig (now, then): {diff}")
    _check_target_points(path, state, sampler.target)
    if set(state["buffers"]) != set(buffers):
        raise ValueError(f"checkpoint {path} holds buffers {sorted(state['buffers'])}, expected {sorted(buffers)}")
    sampler.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    for name, buf in buffers.items():
        buf.load_state_dict(state["buffers"][name])
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    log.loss, log.evals = list(state["loss"]), list(state["evals"])
    log.seconds, log.cpu_seconds = state["seconds"], state["cpu_seconds"]
    log.resumed_from = list(state["resumed_from"])
    unrecorded = [{"first": 0, "last": len(log.loss), "machine": None, "seconds": log.seconds,
                   "cpu_seconds": log.cpu_seconds}] if log.loss else []
    log.segments = [dict(seg) for seg in state.get("segments", unrecorded)]
    return int(state["iteration"])


def _check_target_points(path, state, target):
    """Refuse to resume a run on another point pattern than the one its checkpoint was written on (the
    "target_points" of LGCP checkpoints; checkpoints of other targets, and those written before it was
    recorded, have none and resume as before)."""
    then, now = state.get("target_points"), getattr(target, "points_source", None)
    if "target_points" in state and then != now:
        raise ValueError(f"checkpoint {path} was written on the {then} {target.name} point pattern, but this run's "
                         f"target uses the {now} one (fastsamp.datasets): use another checkpoint path")


def rank_checkpoint(path: str, rank: int) -> str:
    """The checkpoint of `rank` in a distributed `train` at `path`."""
    return f"{path}.rank{rank}"


def read_checkpoint_iteration(path) -> int:
    """The iteration count stored in a checkpoint (0 when there is none, also when it is removed before it can be
    opened: its run finished meanwhile in another process, `run_table`'s workers; an open checkpoint stays readable
    when removed or replaced). Memory-mapped: its tensors are not read (an LGCP checkpoint, 773 MB: 4.5 -> 0.1 s)."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False, mmap=True)["iteration"])
    except FileNotFoundError:
        return 0


def _progress(total, enabled, initial=0):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, dynamic_ncols=True, leave=False)
