"""Outsourced diffusion sampling (Venkatraman et al.): sample p(x | y) ∝ p(x) r(x, y) for a
generator x = f(z), z ~ N(0, I), by sampling the noise-space posterior

    log π(z) = −½|z|² + λ log r(f(z), y)

and mapping through f. Samplers, all charged the same budget of reward evaluations
(one call of r∘f, with or without its gradient, per chain); none passes it: whole moves,
iterations or steps that would are not run, and the calls actually made are reported:

  diffusion  a DiffusionSampler in z-space trained with VarGrad (trajectory balance with log Z from
             the batch) against the pinned Brownian reference with σ = 1, whose marginal at t = 1 is
             the prior N(0, I) (so the untrained sampler samples the prior); prior-trajectory
             exploration (bridges from z ~ N(0, I)), a reward-ranked replay buffer, λ annealed from 0
  mala, hmc  annealed MCMC in z-space through fastsamp's fused ops (λ from 0 to its value over
             levels, energy MH, step size adapted towards the optimal acceptance rate)
  guidance   data-space guidance along the flow prior's ODE (the only prior here with a score):
             v ← v + w ∇_y λ log r(σ(ŷ₁)), ŷ₁ = y + (1 − t) v(y, t) the one-step denoised estimate
  prior      z ~ N(0, I), for reference

Under torchrun (or with `group=`) the diffusion sampler trains with DistributedDataParallel (the
per-rank batch, so the budget buys budget // (N·batch) iterations) and samples sharded; annealed
MCMC runs the chains sharded (noise keyed by the global chain index, one all_reduce of the mean
acceptance per level); rank 0 gathers the samples and reports.
"""
from __future__ import annotations

import math
import time
import warnings

import torch

from ..distributed import Comm
from ..protocol import CountingModel
from ..samplers.annealed import mcmc
from ..samplers.diffusion import DiffusionSampler, TrainConfig, train
from . import digits
from .options import MAX_SEED, choice_list, count, positive_float
from .reporting import write_json

SUMMARY = "posterior sampling in the noise space of digit generators"
DESCRIPTION = ("Sample p(x | y) ∝ p(x) r(x, y) through the noise-space posterior of a digit generator x = f(z) "
               "(VAE, GAN, rectified flow), every sampler charged the same budget of reward calls; held-out "
               "accuracy, mean log-reward, diversity and Fréchet distance per cell.")

PRIORS = ("vae", "gan", "flow")
REWARDS = ("class", "inpaint")
SAMPLERS = ("prior", "diffusion", "mala", "hmc", "guidance")


class CountingPosterior(CountingModel):
    """A NoisePosterior that counts reward evaluations (rows of z passed to log_prob/score, in `calls`):
    the samplers' CountingModel, with the posterior's λ read and set through it."""

    @property
    def lam(self):
        return self.model.lam

    @lam.setter
    def lam(self, value):
        self.model.lam = float(value)


def make_reward(kind: str, classifier, digit: int, *, sigma=0.1):
    """`class`: log p(digit | x) of the reward classifier; `inpaint`: the top half of a real test
    digit of that class is observed (Gaussian likelihood with std sigma), the bottom half is free."""
    if kind == "class":
        return digits.ClassReward(classifier, digit)
    if kind == "inpaint":
        x_obs = digits.real_digits(digit, "test")[0]
        mask = torch.zeros(digits.DIM, dtype=torch.bool)
        mask[:32] = True
        return digits.InpaintReward(x_obs, mask, sigma=sigma)
    raise ValueError(f"reward must be one of {REWARDS}, got {kind!r}")


def min_budget(sampler: str, n: int, *, batch_size=128, n_leapfrog=3) -> int:
    """The fewest reward calls with which `sampler` runs at all for n samples: one training iteration and
    the samples (diffusion), one level with one move (mala, hmc), one guided step (guidance)."""
    return {"prior": 0, "diffusion": batch_size + n, "mala": 2 * n, "hmc": (1 + n_leapfrog) * n,
            "guidance": n}[sampler]


def _check_budget(sampler, n, budget, **kw):
    need = min_budget(sampler, n, **kw)
    if budget < need:
        raise ValueError(f"budget {budget} is too small for the {sampler} sampler with n = {n}: it needs at least "
                         f"{need} reward calls")


def sample_diffusion(posterior, n, *, budget, lam, batch_size=128, n_steps=50, hidden=128, anneal=0.5, seed=0,
                     progress=False, group=None):
    """Train the z-space diffusion sampler on the reward evaluations of `budget` left after drawing the n
    samples (each iteration evaluates one batch on every rank, the final samples one call each), then
    draw them (gathered on rank 0; None on the other ranks)."""
    comm = Comm.resolve(group)
    _check_budget("diffusion", n, budget, batch_size=batch_size * comm.world_size)
    iterations = (budget - n) // (batch_size * comm.world_size)
    torch.manual_seed(seed)
    sampler = DiffusionSampler(posterior, sigma=1.0, n_steps=n_steps, hidden=hidden, n_harmonics=64)
    cfg = TrainConfig(objective="vargrad", iterations=iterations, batch_size=batch_size, lr_policy=1e-3,
                      replay=True, prior_every=4, buffer_size=20_000, seed=seed)
    ramp = max(1.0, anneal * iterations)
    log = train(sampler, cfg, progress=progress, group=comm,
                on_iteration=lambda it: setattr(posterior, "lam", lam * min(1.0, (it + 1) / ramp)))
    posterior.lam = lam
    z, _ = sampler.sample(n, seed=seed + 1, group=comm)
    return z, {"iterations": iterations, "seconds_per_iteration": log.seconds_per_iteration}


def mcmc_plan(budget, n, levels, cost) -> list[int]:
    """Moves per level within `budget`: each level costs n evaluations to start and n·cost per move; as many
    levels as can have a move (at most `levels`), and the whole moves that fit spread over them, the later
    levels (nearer the posterior) taking the extra ones."""
    levels = min(levels, budget // (n * (1 + cost)))
    total = (budget - n * levels) // (n * cost)
    base, extra = divmod(total, levels)
    return [base + (level >= levels - extra) for level in range(levels)]


def sample_annealed_mcmc(posterior, n, *, budget, lam, corrector="mala", levels=20, n_leapfrog=3, seed=0,
                         group=None):
    """Annealed MCMC from the prior: λ_l = λ l / L, moves at each level, energy MH, all within `budget`;
    one global step size adapted to the mean acceptance over all chains (of all ranks: one all_reduce per
    level). The samples are gathered on rank 0 (None on the other ranks)."""
    _check_budget(corrector, n, budget, n_leapfrog=n_leapfrog)
    comm = Comm.resolve(group)
    chain0, n_local = comm.shard(n)
    cost = n_leapfrog if corrector == "hmc" else 1  # evaluations per move (plus one per level to start)
    plan = mcmc_plan(budget, n, levels, cost)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, posterior.dim, generator=g)[chain0:chain0 + n_local]
    eps, target_rate, offset = 0.05, (0.574 if corrector == "mala" else 0.65), 0
    for level, moves in enumerate(plan, 1):
        with comm.level(1) as lv:  # Σ acceptance rate over all chains
            posterior.lam = lam * level / len(plan)
            z, rate = mcmc(posterior, z, corrector=corrector, mh="energy", n_steps=moves, step_size=eps,
                           n_leapfrog=n_leapfrog, seed=seed, offset=offset, chain_offset=chain0)
            lv.values[0] = rate.double().sum()
        offset += moves
        eps *= math.exp(float(lv.result[0]) / n - target_rate)
    return comm.gather(z), {"moves_per_level": plan, "levels": len(plan), "final_step_size": eps}


def sample_flow_guidance(flow, reward, n, *, budget, lam, weight=1.0, seed=0):
    """Guided Euler integration of the flow prior's ODE (data-space guidance, logit scale) with
    budget // n steps (one reward gradient per chain and step)."""
    _check_budget("guidance", n, budget)
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(n, digits.DIM, generator=g)
    steps = budget // n
    h = 1.0 / steps
    for i in range(steps):
        t = i * h
        with torch.enable_grad():
            yg = y.detach().requires_grad_(True)
            v = flow.velocity(yg, t)
            x_hat = torch.sigmoid(yg + (1 - t) * v)
            (grad,) = torch.autograd.grad((lam * reward(x_hat)).sum(), yg)
        y = y + h * (v.detach() + weight * grad)
    return torch.sigmoid(y), {"steps": steps}


def run(prior: str, reward_kind: str, sampler: str, *, digit=3, lam=1.0, n=256, budget=60_000, size="full", seed=0,
        progress=False) -> tuple[torch.Tensor, dict]:
    """One (prior, reward, sampler) cell: samples x (n, 64) and the metrics dict. Under torchrun the
    diffusion and MCMC samplers run on every rank and rank 0 returns the cell; the other ranks
    return (None, None)."""
    if prior not in PRIORS:
        raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if sampler == "guidance" and prior != "flow":
        raise ValueError("guidance needs a prior with a score: only the flow prior has one")
    _check_budget(sampler, n, budget)
    if size == "tiny":
        warnings.warn("size='tiny' is for tests only: the tiny VAE and GAN priors are collapsed, so the metrics "
                      "mean nothing; use size='full'", UserWarning, stacklevel=2)
    f = digits.load_or_train(prior, size=size)
    clf = digits.load_or_train("classifier", size=size)
    heldout = digits.load_or_train("heldout_classifier", size=size)
    reward = make_reward(reward_kind, clf, digit)
    post = CountingPosterior(digits.NoisePosterior(f, reward, lam=lam))
    t0 = time.perf_counter()
    if sampler == "prior":
        z = torch.randn(n, post.dim, generator=torch.Generator().manual_seed(seed))
        info = {}
    elif sampler == "diffusion":
        z, info = sample_diffusion(post, n, budget=budget, lam=lam, seed=seed, progress=progress)
    elif sampler in ("mala", "hmc"):
        z, info = sample_annealed_mcmc(post, n, budget=budget, lam=lam, corrector=sampler, seed=seed)
    if sampler == "guidance":
        x, info = sample_flow_guidance(f, reward, n, budget=budget, lam=lam, seed=seed)
        post.calls = n * info["steps"]
    elif z is not None:  # None: a rank other than 0 of a distributed sampler
        with torch.no_grad():
            x = f(z)
    seconds = time.perf_counter() - t0
    comm = Comm.resolve()
    calls = int(comm.all_reduce([post.calls])[0]) if sampler in ("diffusion", "mala", "hmc") else post.calls
    if comm.rank != 0:
        return None, None
    with torch.no_grad():
        log_r = reward(x)
    metrics = digits.sample_metrics(x, digit, heldout, digits.real_digits(digit, "test"))
    metrics.update({"prior": prior, "reward": reward_kind, "sampler": sampler, "digit": digit, "lam": lam,
                    "mean_log_reward": float(log_r.mean()), "reward_calls": calls, "budget": budget,
                    "seconds": seconds, "size": size, "seed": seed, **info})
    return x, metrics


def add_arguments(o):
    """The options of `fastsamp outsourced`."""
    o.add_argument("--priors", type=choice_list(PRIORS), default=",".join(PRIORS),
                   help="comma-separated: " + ", ".join(PRIORS))
    o.add_argument("--rewards", type=choice_list(REWARDS), default="class",
                   help="comma-separated: " + ", ".join(REWARDS))
    o.add_argument("--samplers", type=choice_list(SAMPLERS), default=",".join(SAMPLERS),
                   help="comma-separated: " + ", ".join(SAMPLERS) + " (flow prior only)")
    o.add_argument("--digit", type=count(0, 9), default=3, help="the digit y")
    o.add_argument("--lam", type=positive_float, default=1.0, help="reward exponent λ")
    o.add_argument("--samples", type=count(2), default=256, help="samples per cell")
    o.add_argument("--budget", type=count(1), default=60_000, help="reward evaluations per sampler")
    o.add_argument("--size", default="full", choices=["tiny", "full"],
                   help="prior/classifier size (cached); tiny is for tests only: its VAE and GAN priors are "
                        "collapsed, so its numbers mean nothing")
    o.add_argument("--seed", type=count(0, MAX_SEED), default=0, help="random seed")
    o.add_argument("--json", default=None, help="write the rows as JSON here")
    o.add_argument("--png", default=None, help="write a grid of samples here (one row per cell)")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")


def check(args):
    """--budget must cover the fewest reward calls of every chosen sampler at --samples."""
    need = max(min_budget(s, args.samples) for s in args.samplers.split(","))
    if args.budget < need:
        args.parser.error(f"--budget {args.budget} is below what the samplers need at --samples {args.samples}: "
                          f"at least {need} reward calls")


def main(args) -> int:
    """`fastsamp outsourced`: prior × reward × sampler; JSON and a PNG grid (one row per cell)."""
    rows, grids = [], []
    for prior in args.priors.split(","):
        for reward in args.rewards.split(","):
            for sampler in args.samplers.split(","):
                if sampler == "guidance" and prior != "flow":
                    continue
                x, m = run(prior, reward, sampler, digit=args.digit, lam=args.lam, n=args.samples, budget=args.budget,
                           size=args.size, seed=args.seed, progress=not args.no_progress)
                if m is None:  # not rank 0 of a distributed run
                    continue
                rows.append(m)
                grids.append((f"{prior}/{reward}/{sampler}", x[:16]))
                print(f"{prior:5s} {reward:8s} {sampler:9s} acc {m['heldout_accuracy']:.3f}  "
                      f"log r {m['mean_log_reward']:8.3f}  diversity {m['diversity']:.3f}  "
                      f"Fréchet {m['frechet']:.3f}  ({m['reward_calls']} reward calls, {m['seconds']:.1f} s)",
                      flush=True)
    if not rows:
        return 0
    if args.json:
        write_json(args.json, rows)
    if args.png:
        digits.save_grid(torch.cat([x for _, x in grids]), args.png, nrow=16,
                      title=" | ".join(name for name, _ in grids) if len(grids) <= 3 else None)
    return 0
