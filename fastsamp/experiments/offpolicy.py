"""Experiments with off-policy trained diffusion samplers (`fastsamp train`): any
(target, objective, exploration) combination, the method presets of Sendera et al. (2024)'s
main table, evaluation against ground truth (offpolicy_eval.py), JSON (with the training's loss curve) and
saved models, and a resumable runner for the whole table (`plan_table`, `run_table`, `table_progress`): each
run checkpoints its full training state every N iterations, and a rerun skips finished runs and resumes the
others; the finished runs' saved models evaluated again (`reevaluate`: their metrics; `repeat_evaluations`: the
table's repeated evaluations)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

import torch

from ..distributed import Comm
from ..samplers.diffusion import DiffusionSampler, TrainConfig, atomic_write, read_checkpoint_iteration, train
from ..samplers.diffusion.training import TrainingDiverged, rank_checkpoint
from ..targets import TARGETS, get_target
from .memory import freed_memory_kept, keep_freed_memory
from .offpolicy_eval import evaluate
from .options import MAX_SEED, count, device_arg, resolve_device

SUMMARY = "train an off-policy diffusion sampler on a benchmark target and evaluate it"
DESCRIPTION = ("Train a preset of the off-policy diffusion sampler (Sendera et al. 2024) on a benchmark target, "
               "evaluate log Z, ESS and W2, save the model and print/write JSON.")

# σ² of the reference process per target (Sendera et al., §5.1 / App. D); 40gmm, which the paper does not
# have: gfn-diffusion train.py's default --t_scale 5 (at 9697e5d, whose train.py offers 40gmm; checks/gmm40.md §2)
SIGMA2 = {"25gmm": 5.0, "funnel": 1.0, "manywell": 1.0, "40gmm": 5.0, "lgcp": 5.0}

# a run's evaluation at the end of training draws with seed EVAL_SEED_BASE + its training seed (`run`, `reevaluate`);
# its repeated evaluations add k·10⁶ to that (`evaluation_seeds`)
EVAL_SEED_BASE = 10_000

# method name -> (TrainConfig overrides, DriftNet options, paper iterations)
METHODS = {
    "pis": (dict(objective="pis"), {}, 25000),
    "pis+lp": (dict(objective="pis"), dict(langevin=True), 10000),
    "tb": (dict(objective="tb"), {}, 25000),
    "tb+expl": (dict(objective="tb", explore=0.2), {}, 25000),
    "vargrad+expl": (dict(objective="vargrad", explore=0.2), {}, 25000),
    "subtb": (dict(objective="subtb", lr_flow=1e-2), dict(flow=True), 25000),
    "subtb+lp": (dict(objective="subtb", lr_flow=1e-2), dict(flow=True, langevin=True), 10000),
    "tb+expl+ls": (dict(objective="tb", explore=0.1, local_search=True), {}, 25000),
    "tb+expl+lp": (dict(objective="tb", explore=0.2), dict(langevin=True), 10000),
    "tb+expl+lp+ls": (dict(objective="tb", explore=0.1, local_search=True), dict(langevin=True), 10000),
    "vargrad+expl+lp+ls": (dict(objective="vargrad", explore=0.1, local_search=True), dict(langevin=True), 10000),
}


# TrainConfig overrides per target. LGCP: the replay buffers hold 60,000 states instead of 600,000, as
# two buffers of 600,000 × 1600 float32 states (7.7 GB) do not fit beside other jobs on a 23 GB machine.
TARGET_OVERRIDES = {"lgcp": dict(buffer_size=60_000)}


def build(target_name: str, method: str, *, seed: int = 0, iterations: int | None = None, fused: bool = True,
          n_steps: int = 100, batch_size: int = 300, hidden: int = 64, device="cpu", **overrides):
    """(sampler, TrainConfig) for a method preset on `device`; `overrides` replace TrainConfig fields.
    On a GPU the sampler runs the per-step path with the fused em_step_logprob op (CUDA/Triton); the
    whole-trajectory kernels ops.policy_rollout / ops.policy_log_pf serve the plain network on the CPU."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {tuple(METHODS)}, got {method!r}")
    dev = resolve_device(device)
    target = get_target(target_name).to(dev)
    cfg_kw, net_kw, paper_iters = METHODS[method]
    cfg = TrainConfig(**{**cfg_kw, "iterations": paper_iters if iterations is None else iterations,
                         "batch_size": batch_size, "seed": seed, **TARGET_OVERRIDES.get(target_name, {}), **overrides})
    torch.manual_seed(seed)
    sampler = DiffusionSampler(target, sigma=math.sqrt(SIGMA2.get(target_name, 1.0)), n_steps=n_steps,
                               fused=fused, hidden=hidden, n_harmonics=hidden, **net_kw)
    return sampler.to(dev), cfg


def run_stem(out_dir: str, target_name: str, method: str, seed: int) -> str:
    """out_dir/<target>_<method>_seed<s>: + .json (result), + .pt (model)."""
    return os.path.join(out_dir, f"{target_name}_{method}_seed{seed}")


def checkpoint_path(out_dir: str, target_name: str, method: str, seed: int) -> str:
    """out_dir/checkpoints/<target>_<method>_seed<s>.ckpt: the training state of an unfinished run."""
    return os.path.join(out_dir, "checkpoints", f"{target_name}_{method}_seed{seed}.ckpt")


def write_result(stem: str, res: dict):
    """Write a run's result to stem.json atomically (`atomic_write`: a process killed while writing leaves the
    old file)."""
    atomic_write(stem + ".json", lambda f: f.write(json.dumps(res, indent=2).encode()))


def format_errors(m: dict, sep: str = "  ") -> str:
    """'Δlog Z a<sep>Δlog Z^RW b' of metrics `m`; where log Z is unknown (LGCP), 'ELBO a<sep>log Z^RW b'."""
    if "delta_log_Z" in m:
        return f"Δlog Z {m['delta_log_Z']:.3f}{sep}Δlog Z^RW {m['delta_log_Z_rw']:.3f}"
    return f"ELBO {m['elbo']:.2f}{sep}log Z^RW {m['log_Z']:.2f}"


def run(target_name: str, method: str, *, seed=0, iterations=None, out_dir=None, progress=True, eval_samples=2000,
        device="cpu", checkpoint_every=0, log=None, **kw) -> dict:
    """Train one (target, method, seed) and evaluate; writes model + JSON into out_dir when given.
    With out_dir and checkpoint_every > 0 the run checkpoints every checkpoint_every iterations and
    resumes from its checkpoint if one exists (the checkpoint is deleted once the JSON is written);
    `log(text)` gets a line per checkpoint. Under torchrun every rank trains (DistributedDataParallel,
    batch_size per rank) and rank 0 evaluates and writes (the losses: the mean over the ranks of each one's batch
    loss); the other ranks return None."""
    sampler, cfg = build(target_name, method, seed=seed, iterations=iterations, device=device, **kw)
    ckpt = checkpoint_path(out_dir, target_name, method, seed) if out_dir and checkpoint_every else None

    def saved(it, so_far):
        if log is not None:
            ms = 1e3 * (so_far.cpu_seconds if sampler.device.type == "cpu" else so_far.seconds) / max(it, 1)
            log(f"  {target_name} {method} seed {seed}: {it}/{cfg.iterations} iterations ({ms:.0f} ms/it)")

    comm, diverged = Comm.resolve(), None
    try:
        train_log = train(sampler, cfg, progress=progress, checkpoint=ckpt, checkpoint_every=checkpoint_every,
                          on_checkpoint=saved)
    except TrainingDiverged as e:  # every rank raises at the same iteration (`train`)
        train_log, diverged = e.log, {"iteration": e.iteration, "what": e.what}
    if comm.distributed:  # each rank logged its own batch's loss: the mean over the ranks is the whole batch's
        train_log.loss = (comm.all_reduce(train_log.loss) / comm.world_size).tolist()
    if comm.rank != 0:
        return None
    t0 = time.perf_counter()
    metrics = {} if diverged else evaluate(sampler, sampler.target, n=eval_samples, seed=EVAL_SEED_BASE + seed)
    result = {
        "target": target_name, "method": method, "seed": seed, "iterations": cfg.iterations,
        "paper_iterations": METHODS[method][2], "seconds_per_iteration": train_log.seconds_per_iteration,
        "cpu_seconds_per_iteration": train_log.cpu_seconds_per_iteration, "train_seconds": train_log.seconds,
        "train_cpu_seconds": train_log.cpu_seconds, "eval_seconds": time.perf_counter() - t0,
        "final_loss": sum(train_log.loss[-100:]) / max(len(train_log.loss[-100:]), 1),
        "loss_curve": train_log.loss_curve(),
        "metrics": metrics, "config": dataclasses.asdict(cfg), "sigma": sampler.sigma, "fused": sampler.fused,
        "device": str(sampler.device), "torch_threads": torch.get_num_threads(),
        "freed_memory_kept": freed_memory_kept(),  # glibc malloc's settings (`memory.keep_freed_memory`)
        "resumed_from": train_log.resumed_from, "checkpoint_every": checkpoint_every,
        "segments": train_log.segments,  # the machine of each stretch of iterations, with its times
        # the table's timing: CPU time on the CPU (one thread; immune to pauses and other jobs), wall time on a GPU
        "ms_per_iteration": 1e3 * (train_log.cpu_seconds_per_iteration if sampler.device.type == "cpu"
                                   else train_log.seconds_per_iteration),
    }
    if target_name == "lgcp":
        result["lgcp_points"] = sampler.target.points_source
    if diverged:  # no model to keep; the last checkpoint, the finite state before it, is kept (`diverged_checkpoint`)
        result["diverged"] = dict(diverged, checkpoint=diverged_checkpoint(ckpt) if ckpt else None)
        if log is not None:
            log(f"  {target_name} {method} seed {seed}: DIVERGED at iteration {diverged['iteration']} "
                f"({diverged['what']})")
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        stem = run_stem(out_dir, target_name, method, seed)
        if not diverged:
            sampler.save(stem + ".pt")  # config + state_dict: DiffusionSampler.load(path)
        write_result(stem, result)
        if not diverged:
            result["model_path"] = stem + ".pt"
        # the JSON written, the checkpoints go: each rank's (`rank_checkpoint`; every rank wrote its last one before
        # the loss all_reduce above; out_dir is shared by the ranks, as the JSON's skip logic assumes); a diverged
        # run's are renamed, kept to replay the iterations before the divergence
        if ckpt is not None:
            for r in range(comm.world_size):  # 1 unless distributed
                path = rank_checkpoint(ckpt, r) if comm.distributed else ckpt
                if os.path.exists(path):
                    if diverged:
                        os.replace(path, diverged_checkpoint(path))
                    else:
                        os.remove(path)
    return result


def diverged_checkpoint(path: str) -> str:
    """Where a diverged run's last checkpoint is kept: <target>_<method>_seed<s>.diverged.ckpt beside it (a rank's
    `.rank<r>` suffix kept), out of the table runner's way (a rerun does not resume it: the run's JSON says it
    diverged, and the same seed would diverge again at the same iteration)."""
    head, ckpt, tail = path.rpartition(".ckpt")
    return f"{head}.diverged{ckpt}{tail}"


# -- the resumable table runner ---------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PlannedRun:
    target: str
    method: str
    seed: int
    iterations: int


def plan_table(targets, methods, seeds, *, fraction=1.0, iterations=None) -> list[PlannedRun]:
    """Every (target, method, seed) at `fraction` of the paper's iteration count (or `iterations`),
    seed-major (seed 0 of every method first), then in the order of `methods`, then of `targets`."""
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"method must be one of {tuple(METHODS)}, got {m!r}")
    for t in targets:
        if t not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {t!r}")
    return [PlannedRun(t, m, s, iterations or max(1, round(METHODS[m][2] * fraction)))
            for s in seeds for m in methods for t in targets]


def finished_result(run: PlannedRun, out_dir: str, batch_size: int | None = None) -> dict | None:
    """The JSON of a finished run, None if there is none; a JSON of the same run with another iteration
    count or batch size is an error (the table would mix protocols), not something to overwrite."""
    path = run_stem(out_dir, run.target, run.method, run.seed) + ".json"
    if not os.path.exists(path):
        return None
    with open(path) as f:
        res = json.load(f)
    batch = res["config"]["batch_size"]
    if res["iterations"] != run.iterations or (batch_size is not None and batch != batch_size):
        raise ValueError(f"{path} holds a run of {res['iterations']} iterations (batch {batch}), the plan asks "
                         f"for {run.iterations} (batch {batch_size}): use another out directory")
    return res


def table_progress(plan, out_dir: str, batch_size: int | None = None) -> dict:
    """How far along the table is: finished runs, and iterations done (finished runs + checkpoints). Safe while
    `run_table`'s workers run: a run's checkpoint is read before its JSON, so that a run finishing in between (its
    JSON written, then its checkpoint removed) counts as finished, not as nothing or as a missing file."""
    runs_done = iters_done = 0
    for r in plan:
        checkpointed = read_checkpoint_iteration(checkpoint_path(out_dir, r.target, r.method, r.seed))
        if finished_result(r, out_dir, batch_size) is not None:
            runs_done += 1
            iters_done += r.iterations
        else:
            iters_done += checkpointed
    return {"runs_done": runs_done, "runs_planned": len(plan), "iterations_done": iters_done,
            "iterations_planned": sum(r.iterations for r in plan)}


def format_progress(p: dict) -> str:
    share = 100 * p["iterations_done"] / max(p["iterations_planned"], 1)
    return (f"table: {p['runs_done']}/{p['runs_planned']} runs done, "
            f"{p['iterations_done']:,}/{p['iterations_planned']:,} iterations done ({share:.1f}%)")


def _run_planned(job):
    planned, out_dir, kw = job
    torch.set_num_threads(1)
    return run(planned.target, planned.method, seed=planned.seed, iterations=planned.iterations, out_dir=out_dir,
               progress=False, **kw)


def run_table(plan, out_dir: str, *, jobs=1, device="cpu", checkpoint_every=500, batch_size=300, eval_samples=2000,
              repeats=0, log=print, **kw) -> list[dict]:
    """Run every planned run that has no JSON yet (resuming from its checkpoint), `jobs` at a time, one
    thread each (jobs = 1 runs in this process); logs each finished run and the table's progress, and
    gives it its `repeats` evaluations (`repeat_evaluations`) as soon as it finishes, so that a table
    stopped later leaves no finished run unscored. Returns the results of the runs done in this call."""
    resolve_device(device)
    todo = [r for r in plan if finished_result(r, out_dir, batch_size) is None]
    log(format_progress(table_progress(plan, out_dir, batch_size)) + f"; {len(todo)} runs to do")
    kw = dict(kw, device=device, checkpoint_every=checkpoint_every, batch_size=batch_size, eval_samples=eval_samples,
              log=log if jobs <= 1 else None)
    results = []

    def finished(run, res):
        m = res["metrics"]
        outcome = (f"DIVERGED at iteration {res['diverged']['iteration']}" if "diverged" in res else
                   f"{format_errors(m)}  W2 {m.get('w2', float('nan')):.3f}")
        log(f"{res['target']:9s} {res['method']:19s} seed {res['seed']}: {outcome}  "
            f"{res['ms_per_iteration']:.0f} ms/it on {res['device']}")
        log(format_progress(table_progress(plan, out_dir, batch_size)))
        if repeats:
            repeat_evaluations([run], out_dir, repeats=repeats, batch_size=batch_size, log=log)
        results.append(res)

    jobs_ = [(r, out_dir, kw) for r in todo]
    if jobs <= 1:
        for job in jobs_:
            finished(job[0], _run_planned(job))
    else:
        with ProcessPoolExecutor(jobs, initializer=keep_freed_memory if freed_memory_kept() else None) as pool:
            futures = {pool.submit(_run_planned, job): job[0] for job in jobs_}
            for fut in as_completed(futures):
                finished(futures[fut], fut.result())
    return results


def kept_models(plan, out_dir: str, batch_size: int | None = None, *, log=print, skipped: str):
    """(run, stem, JSON) of each finished run of `plan` whose model is kept (stem.pt, `run_stem`); a finished run
    without one is logged as '<target> <method> seed <s>: no saved model, <skipped>'."""
    for r in plan:
        res = finished_result(r, out_dir, batch_size)
        if res is None:
            continue
        stem = run_stem(out_dir, r.target, r.method, r.seed)
        if "diverged" in res:
            continue  # no model, nothing to score
        if not os.path.exists(stem + ".pt"):
            log(f"{r.target} {r.method} seed {r.seed}: no saved model, {skipped}")
            continue
        yield r, stem, res


def reevaluate(plan, out_dir: str, *, batch_size: int | None = None, log=print) -> list[dict]:
    """Recompute the metrics of the finished runs of `plan` from their saved models (.pt), with the
    evaluation `run` made (`evaluate`, the JSON's sample count, seed EVAL_SEED_BASE + seed), and rewrite each
    JSON (atomically) with the new metrics. Metrics whose value changed keep their old value under
    'reevaluation' → 'changed'; where metrics changed or were added, the run's repeated evaluations
    ('evaluations', `repeat_evaluations`), made by the old evaluation, are dropped (logged) for `evaluate` to
    recompute; runs without a model are reported and left as they are."""
    done = []
    for r, stem, res in kept_models(plan, out_dir, batch_size, log=log, skipped="metrics left as they are"):
        sampler = DiffusionSampler.load(stem + ".pt", map_location="cpu")
        new = evaluate(sampler, sampler.target, n=res["metrics"]["n"], seed=EVAL_SEED_BASE + r.seed)
        old = res["metrics"]
        changed = {k: [old[k], new.get(k)] for k in old if old[k] != new.get(k)}
        res["metrics"] = new
        res["reevaluation"] = {"added": sorted(set(new) - set(old)), "changed": changed}
        stale = res.pop("evaluations", None) if changed or res["reevaluation"]["added"] else None
        write_result(stem, res)
        log(f"{r.target} {r.method} seed {r.seed}: " + (f"CHANGED {sorted(changed)}" if changed else
                                                          "metrics reproduced") + f", added {len(new) - len(old)}"
            + (f"; its {len(stale['seeds'])} repeated evaluations dropped (stale): evaluate recomputes them"
               if stale else ""))
        done.append(res)
    return done


def evaluation_seeds(seed: int, repeats: int) -> list[int]:
    """The evaluation seeds of run `seed`'s repeated evaluations: EVAL_SEED_BASE + seed + k·10⁶, k = 1..repeats.
    Fresh against its evaluation at the end of training (EVAL_SEED_BASE + seed) and, for repeats < 1000, against the
    offsets `evaluate` adds to a seed (+10⁹: the second exact sample, +2·10⁹: the 25GMM equal-count set)."""
    return [EVAL_SEED_BASE + seed + k * 10**6 for k in range(1, repeats + 1)]


def _scalars(metrics: dict) -> dict:
    """The scalar metrics of one evaluation (mode_weights, a list, left out)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def repeat_evaluations(plan, out_dir: str, *, repeats: int, batch_size: int | None = None, log=print) -> list[dict]:
    """Give each finished run of `plan` whose model is kept (.pt) `repeats` evaluations of that model
    (`evaluate`, the sample count of its JSON, `evaluation_seeds`), written into its JSON (atomically) under
    'evaluations': per scalar metric the values, their mean and sd (over the evaluations). A run that has some
    gets only the missing ones. 'metrics' stays the run's one evaluation at the end of training; a run without
    a model keeps only that one (logged). Returns the JSONs that gained evaluations."""
    updated = []
    for r, stem, res in kept_models(plan, out_dir, batch_size, log=log, skipped="scored by its one evaluation"):
        n, seeds = res["metrics"]["n"], evaluation_seeds(r.seed, repeats)
        have = res.get("evaluations", {"n": n, "seeds": [], "values": {}, "cpu_seconds": 0.0})
        if have["n"] != n or have["seeds"] != evaluation_seeds(r.seed, len(have["seeds"])):
            raise ValueError(f"{stem}.json holds evaluations of {have['n']} samples with seeds {have['seeds']}, not "
                             f"those of evaluation_seeds with {n} samples")
        if len(have["seeds"]) >= repeats:
            continue
        sampler = DiffusionSampler.load(stem + ".pt", map_location="cpu")
        values, t0 = {k: list(v) for k, v in have["values"].items()}, time.process_time()
        for s in seeds[len(have["seeds"]):]:
            m = _scalars(evaluate(sampler, sampler.target, n=n, seed=s))
            if values and m.keys() != values.keys():
                raise ValueError(f"{stem}.json: the evaluation gives {sorted(m)}, the stored ones {sorted(values)}")
            for k, v in m.items():
                values.setdefault(k, []).append(v)
        res["evaluations"] = {
            "about": f"evaluations of the saved model with fresh seeds ({EVAL_SEED_BASE:,} + seed + k·10⁶, k = 1, 2, "
                     "...), n samples each: the table's score of the run is their mean; 'metrics' is the one "
                     f"evaluation at the end of training (seed {EVAL_SEED_BASE:,} + seed), how the paper's released "
                     "code scores a run",
            "n": n, "seeds": seeds, "values": values,
            "mean": {k: statistics.mean(v) for k, v in values.items()},
            "sd": {k: statistics.stdev(v) if len(v) > 1 else None for k, v in values.items()},
            "cpu_seconds": have["cpu_seconds"] + time.process_time() - t0}
        write_result(stem, res)
        mean = res["evaluations"]["mean"]
        log(f"{r.target} {r.method} seed {r.seed}: {repeats} evaluations, mean {format_errors(mean, sep=', ')}"
            + (f", W2 {mean['w2']:.3f}" if "w2" in mean else "")
            + f" (one evaluation: {res['metrics'].get('delta_log_Z', res['metrics']['elbo']):.3f})")
        updated.append(res)
    return updated


def time_paths(target_name: str, method: str, paths, *, iterations=None, segment=None, warmup=3, seed=0,
               device="cpu", **build_kw):
    """({path: [ms per iteration of each segment]}, clock, segment): the training iterations of the preset on the
    interleaved paths ("fused": DiffusionSampler(fused=True), the whole-trajectory kernels; "eager": the per-step
    autograd loop on the reference op, its noise from torch's generator (torch_noise); "compile": the eager path
    with DriftNet.forward under torch.compile, static shapes, a fresh dynamo cache). Each path trains its own
    sampler from the same initialisation through `train()` itself, `warmup` untimed iterations first, then resumed
    from a checkpoint every `segment` iterations so that
    the paths run interleaved (fused, eager, compile, fused, ...) on the same machine state (checkpoint writes are
    not timed). segment None: 20, or one local-search period (ls_every) for presets with local search, so that a
    segment charges one search per period as training does (at most `iterations`); iterations None: 3 segments.
    The time is process CPU time on the CPU with one torch thread (other jobs on the machine do not count), else
    wall time (waiting threads would count as CPU time). build_kw: build's options (batch_size, hidden,
    TrainConfig fields ...)."""
    runs, total = {}, None
    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            sampler, cfg = build(target_name, method, seed=seed, fused=path == "fused", device=device, **build_kw)
            sampler.torch_noise = path != "fused"  # the baselines draw their noise as plain PyTorch does
            if total is None:
                segment = min(segment or (cfg.ls_every if cfg.local_search else 20), iterations or math.inf)
                total = warmup + (iterations or 3 * segment)
            cfg = dataclasses.replace(cfg, iterations=total)
            if path == "compile":  # a fresh cache per cell: the cells share DriftNet.forward's code object, and
                torch._dynamo.reset()  # past dynamo's recompile limit the later cells would silently run eager
                sampler.net.forward = torch.compile(sampler.net.forward, dynamic=False)
            ckpt = os.path.join(tmp, f"{path}.ckpt")
            log = train(sampler, cfg, progress=False, checkpoint=ckpt, until=warmup)
            runs[path] = (sampler, cfg, ckpt, log, [])
        cpu_clock = sampler.device.type == "cpu" and torch.get_num_threads() == 1
        clock = (lambda log: log.cpu_seconds) if cpu_clock else (lambda log: log.seconds)
        for start in range(warmup, total, segment):
            stop = min(start + segment, total)
            for path in paths:
                sampler, cfg, ckpt, prev, per = runs[path]
                log = train(sampler, cfg, progress=False, checkpoint=ckpt, until=stop)
                per.append(1e3 * (clock(log) - clock(prev)) / (stop - start))
                runs[path] = (sampler, cfg, ckpt, log, per)
    return {path: run[4] for path, run in runs.items()}, "process CPU" if cpu_clock else "wall", segment


def time_fused_vs_eager(target_name: str, method: str, *, compile=False, **kw) -> dict:
    """ms per training iteration, fused against eager (`time_paths`; kw: its options): fused_ms, eager_ms (the
    medians over the segments), speedup = eager / fused, clock, iterations_per_round (the segment), rounds_ms
    (every segment's) and mean_ms per path; with compile also the compiled eager path: compile_ms and
    best_pytorch_over_fused = min(eager, compile) / fused. `fastsamp train --time` prints it, and
    benchmarks/offpolicy.py `timing` stores it per cell."""
    paths = ["fused", "eager"] + (["compile"] if compile else [])
    per, clock, segment = time_paths(target_name, method, paths, **kw)
    med = {k: statistics.median(v) for k, v in per.items()}
    r = {"fused_ms": med["fused"], "eager_ms": med["eager"], "speedup": med["eager"] / med["fused"], "clock": clock,
         "iterations_per_round": segment, "rounds_ms": per, "mean_ms": {k: statistics.mean(v) for k, v in per.items()}}
    if compile:
        r["compile_ms"] = med["compile"]
        r["best_pytorch_over_fused"] = min(med["eager"], med["compile"]) / med["fused"]
    return r


def add_arguments(r):
    """The options of `fastsamp train`."""
    r.add_argument("--target", default="25gmm", choices=TARGETS, help="benchmark target")
    r.add_argument("--method", default="tb+expl+lp+ls", choices=tuple(METHODS), help="training preset")
    r.add_argument("--iterations", type=count(1), default=None,
                   help="training iterations (None: the paper's count for the method)")
    r.add_argument("--batch-size", type=count(1), default=300, help="trajectories per iteration")
    r.add_argument("--seed", type=count(0, MAX_SEED), default=0, help="random seed")
    r.add_argument("--eval-samples", type=count(2), default=2000, help="samples for the evaluation (at least 2)")
    r.add_argument("--out", default=None, help="directory for the model (.pt) and the JSON")
    r.add_argument("--device", type=device_arg, default="cpu",
                   help="cpu or cuda[:N] (network, target and trajectories)")
    r.add_argument("--checkpoint-every", type=count(0), default=0,
                   help="with --out: checkpoint every N iterations into OUT/checkpoints/ and resume from there")
    r.add_argument("--eager", action="store_true", help="train on the eager PyTorch path instead of the fused one")
    r.add_argument("--time", action="store_true", help="only time fused vs eager iterations (interleaved segments; "
                   "--iterations: the timed iterations per path, default 3 segments)")
    r.add_argument("--threads", type=count(1), default=None,
                   help="torch threads (default: 1 with --time, as every timing command of the project; torch's "
                        "otherwise)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--verbose", action="store_true", help="print the full result JSON")


def check(args):
    """--checkpoint-every needs --out; --out is a directory (made if missing)."""
    if args.checkpoint_every and not args.out:
        args.parser.error("--checkpoint-every needs --out (the checkpoint goes to OUT/checkpoints/)")
    if args.out and os.path.exists(args.out) and not os.path.isdir(args.out):
        args.parser.error(f"--out {args.out}: is not a directory")


process_setup = keep_freed_memory  # `fastsamp train` from the command line owns its process (`memory.py`)


def main(args) -> int:
    """`fastsamp train`: train, evaluate, save; prints the JSON summary (with --time, the timing and its thread
    count)."""
    threads = args.threads or (1 if args.time else None)
    if threads:
        torch.set_num_threads(threads)
    if args.time:
        res = time_fused_vs_eager(args.target, args.method, iterations=args.iterations, seed=args.seed,
                                  batch_size=args.batch_size, device=args.device)
        print(json.dumps({"threads": torch.get_num_threads(), **res}, indent=2))
        return 0
    res = run(args.target, args.method, seed=args.seed, iterations=args.iterations, out_dir=args.out,
              progress=not args.no_progress, batch_size=args.batch_size, fused=not args.eager,
              eval_samples=args.eval_samples, device=args.device, checkpoint_every=args.checkpoint_every)
    if res is None:  # not rank 0 of a distributed run
        return 0
    m = res["metrics"]
    print(json.dumps(res if args.verbose else {k: res[k] for k in ("target", "method", "seed", "iterations",
                                                                    "seconds_per_iteration", "device",
                                                                    "metrics")}, indent=2))
    if "diverged" in res:
        print(f"{args.target} {args.method} seed {args.seed}: training diverged at iteration "
              f"{res['diverged']['iteration']} ({res['diverged']['what']}); no model, no evaluation", file=sys.stderr)
        return 1
    if args.target in TARGETS and "delta_log_Z" in m:
        print(f"{args.target} {args.method}: {format_errors(m)}  "
              f"W2 {m.get('w2', float('nan')):.3f}  ({res['seconds_per_iteration'] * 1e3:.1f} ms/iteration)")
    return 0
