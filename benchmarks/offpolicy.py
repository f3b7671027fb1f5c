"""Off-policy diffusion samplers: the main table of Sendera et al. (2024) next to the published
numbers, and the time per training iteration of the fused path against the eager PyTorch path.

    python benchmarks/offpolicy.py table  [--fraction 1] [--seeds 0 1 2 3 4] [--jobs 1] [--device cpu] [--repeats 10]
    python benchmarks/offpolicy.py report [--out DIR] [--seeds ...]
    python benchmarks/offpolicy.py reevaluate [--out DIR] [--targets ...] [--methods ...] [--seeds ...]
    python benchmarks/offpolicy.py evaluate [--repeats 10] [--out DIR] [--targets ...] [--methods ...] [--seeds ...]
    python benchmarks/offpolicy.py timing [--out DIR] [--targets ...] [--methods ...] [--device cpu]
                                          [--iterations N] [--segment N] [--compile] [--profile] [--force]
    python benchmarks/offpolicy.py curve  OUT/<target>_<method>_seed<s>.json ...

`table` runs the plan (default: every method preset on 25GMM, Funnel and Manywell, and TB and
TB + Expl. + LP + LS on 40GMM and LGCP) at `--fraction` of the paper's iteration counts (25k, 10k
with LP; batch 300, T = 100, 2000 evaluation samples), seed 0 of every run first. It is resumable:
each run writes OUT/<target>_<method>_seed<s>.json (+ the model .pt) when done and checkpoints its
whole training state to OUT/checkpoints/ every --checkpoint-every iterations; a rerun skips finished
runs and resumes the others. It prints runs done / planned and iterations done / planned. Each run gets
--repeats evaluations of its saved model (as with `evaluate`) as soon as it finishes, and at the end any
finished run of the plan that still lacks some.
LGCP runs use the Finnish pines where they are installed (fastsamp.datasets), else the synthetic
pattern: each run's JSON (lgcp_points) and table.md say which, and `table` refuses to add runs on
one pattern to an out directory that holds runs on the other.
`evaluate` gives each finished run whose model is kept --repeats evaluations of it with fresh seeds (deterministic
from the run's seed; values, mean and sd per metric into its JSON's 'evaluations'; 'metrics' stays the one evaluation
at the end of training, how the paper's released code scores a run): a run's score in the table is their mean.
`report` prints the table (mean ± std over the finished seeds of the runs' scores; the same over their one
evaluation in its own column) of the runs asked for from the JSONs;
`table` and `report` (without --brief) write the whole plan's table to OUT/table.md (every cell, seeds
0-4 and any others asked for), whatever subset they ran or printed.
`reevaluate` recomputes the finished runs' metrics from their saved models with the current
evaluation (the old metrics are reproduced bit for bit; the JSON gains the new diagnostics).
`timing` measures ms per training iteration, fused against eager, for every cell of the plan (or the
--targets / --methods asked for) into OUT/timing_<device>_<threads>thread.json (resumable: timed cells are
skipped unless --force); `report` shows it. It is fastsamp.experiments.offpolicy.time_fused_vs_eager (also
`fastsamp train --time`): each path (fused: DiffusionSampler(fused=True), the whole-trajectory
kernels; eager: the per-step autograd loop on the reference op, its noise from torch.randn as plain PyTorch draws
it (cells timed before 2026-12-06 drew the reference's int64 Philox, ~1.7x slower); with --compile, the eager path
with its DriftNet compiled, torch.compile of DriftNet.forward with static shapes after warm-up, a fresh dynamo cache per
cell) trains its own sampler of the preset from the same initialisation through `train()` itself, resumed from
a checkpoint every --segment iterations so that the paths run interleaved (fused, eager, compile, fused, ...) on
the same machine state (checkpoint writes are not timed). Reported per path: the median over the segments of
the time per iteration (process CPU time on the CPU with one thread, else wall time), the mean, and the ratios
eager / fused and (--compile) best PyTorch / fused, "best PyTorch" the faster of eager and compile. Default
segments: 20 iterations, or one local-search period (ls_every: 100) for presets with local search, so that each
segment charges one search per period as training does; default --iterations: 3 segments.
--profile adds the share of the fused iterations spent in the policy kernels.
`curve` prints a run's training curve from its JSON ('loss_curve': mean, min and max of the loss over at most 50
windows of its iterations, each row a window's last iteration; runs that finished before the JSON recorded it have
none); a file that is not a run JSON gets a line saying so.
Run as a script, every subcommand runs with glibc's malloc keeping freed memory (as `fastsamp train`:
`fastsamp.experiments.memory.keep_freed_memory`): an iteration's large temporaries reuse the previous iteration's
pages instead of faulting in fresh ones (the same values; each run's JSON records it as `freed_memory_kept`).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

import torch

from fastsamp.experiments.memory import keep_freed_memory
from fastsamp.experiments.offpolicy import (
    METHODS,
    build,
    checkpoint_path,
    finished_result,
    format_progress,
    plan_table,
    reevaluate,
    repeat_evaluations,
    run_table,
    table_progress,
    time_fused_vs_eager,
)
from fastsamp.experiments.options import MAX_SEED, count, device_arg, positive_float
from fastsamp.profiling import PREFIX
from fastsamp.samplers.diffusion import train
from fastsamp.targets import LGCP, TARGETS

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "results", "offpolicy_full")

MAIN_TARGETS = ("25gmm", "funnel", "manywell")
# every preset of fastsamp.experiments.offpolicy.METHODS, the paper's headline method first
MAIN_METHODS = ("tb+expl+lp+ls", "tb", "pis", "tb+expl", "vargrad+expl", "tb+expl+ls", "tb+expl+lp",
                "vargrad+expl+lp+ls", "pis+lp", "subtb", "subtb+lp")
EXTRA_TARGETS = ("40gmm", "lgcp")
EXTRA_METHODS = ("tb", "tb+expl+lp+ls")
# Sendera et al. 2024 (NeurIPS), Table C.1: mean ± std over 5 runs of Δlog Z, Δlog Z^RW, W2 ("W2²" in the header;
# the released code logs sqrt(emd2), i.e. W2). Only these rows were available to this project.
PUBLISHED = {
    ("25gmm", "pis"): ("1.769±0.104", "1.274±0.218", "6.37±0.65"),
    ("25gmm", "tb"): ("1.176±0.109", "1.071±0.112", "4.83±0.45"),
    ("25gmm", "tb+expl+lp+ls"): ("0.190±0.013", "0.007±0.011", "1.31±0.07"),
    ("funnel", "pis"): ("0.534±0.008", "0.262±0.008", "22.0±4.0"),
    ("funnel", "tb"): ("0.690±0.018", "0.239±0.192", "22.4±4.0"),
    ("funnel", "tb+expl+lp+ls"): ("0.768±0.052", "0.264±0.063", "21.8±3.9"),
    ("manywell", "pis"): ("3.85±0.03", "2.69±0.04", "6.15±0.02"),
    ("manywell", "tb"): ("4.01±0.04", "2.67±0.02", "6.14±0.02"),
    ("manywell", "tb+expl+lp+ls"): ("4.68±0.49", "0.07±0.17", "5.33±0.03"),
}
METRICS = ("delta_log_Z", "delta_log_Z_rw", "w2")
SEEDS = (0, 1, 2, 3, 4)  # the paper's 5 runs per cell
# evaluations of each saved model behind the table's scores (`evaluations`; the released code scores a run by one)
REPEATS = 10


def make_plan(args, *, whole=False):
    """The runs asked for (--targets, --methods, --seeds; default: the whole plan); with `whole`, the
    whole plan (the paper's seeds and any others asked for) whatever the filters."""
    filtered = not whole and (args.targets or args.methods)
    groups = ([(args.targets, args.methods)] if filtered else
              [(MAIN_TARGETS, MAIN_METHODS), (EXTRA_TARGETS, EXTRA_METHODS)])
    seeds = sorted(set(args.seeds) | set(SEEDS)) if whole else args.seeds
    plan = [r for targets, methods in groups
            for r in plan_table(targets or MAIN_TARGETS, methods or MAIN_METHODS, seeds,
                                fraction=args.fraction, iterations=args.iterations)]
    return sorted(plan, key=lambda r: r.seed)  # stable: seed 0 of every run first


def _print(text):
    print(text, flush=True)


def table(args):
    """Run the plan (resumable), give its finished runs their --repeats evaluations, print the table."""
    torch.set_num_threads(1)
    plan = make_plan(args)
    _check_lgcp_points(plan, args)
    run_table(plan, args.out, jobs=args.jobs, device=args.device, checkpoint_every=args.checkpoint_every,
              batch_size=args.batch_size, eval_samples=args.eval_samples, repeats=args.repeats, log=_print)
    if args.repeats:  # the finished runs of earlier calls that still lack some
        repeat_evaluations(plan, args.out, repeats=args.repeats, batch_size=args.batch_size, log=_print)
    report(args)


def evaluations(args):
    """fastsamp.experiments.offpolicy.repeat_evaluations of the finished runs asked for (one thread)."""
    torch.set_num_threads(1)
    repeat_evaluations(make_plan(args), args.out, repeats=args.repeats, batch_size=args.batch_size, log=_print)


def _lgcp_points(plan, args) -> dict:
    """{point pattern: finished LGCP runs of `plan` on it}: each run's JSON says which (lgcp_points; a run
    from before the Finnish pines were supported has no such field and used the synthetic pattern)."""
    done = [res.get("lgcp_points", "synthetic") for r in plan if r.target == "lgcp"
            and (res := finished_result(r, args.out, args.batch_size))]
    return {p: done.count(p) for p in sorted(set(done))}


def _check_lgcp_points(plan, args):
    """LGCP runs started here use the Finnish pines where they are installed, else the synthetic pattern
    (LGCP.default_points); a table whose finished LGCP runs used the other pattern is an error, not a mix."""
    done = _lgcp_points(plan, args)
    if not done:
        return
    here = LGCP.default_points()
    other = sorted(set(done) - {here})
    if other:
        raise ValueError(f"{args.out} holds LGCP runs on the {' and '.join(other)} point pattern, but runs started "
                         f"here use the {here} one (fastsamp.datasets): use another out directory")


def _stats(values, empty="planned"):
    if not values:
        return empty
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f}±{statistics.stdev(values):.3f}"


def _outside(values, published):
    """Whether the mean of our values lies outside the published mean ± std."""
    mean, std = (float(v) for v in published.split("±"))
    return abs(statistics.mean(values) - mean) > std


def _score(res, key, single=False):
    """A run's value of metric `key`: the mean of its repeated evaluations (`repeat_evaluations`) where it has
    them, else (and with `single`) its one evaluation at the end of training; None if it lacks the metric."""
    if "evaluations" in res and not single:
        return res["evaluations"]["mean"].get(key)
    return res["metrics"].get(key)


def _values(done, key, single=False):
    """`_score` of every finished run, or None if some run lacks the metric (not re-evaluated)."""
    values = [_score(d, key, single) for d in done]
    return values if done and None not in values else None


def _w2_cells(done, empty, single=False):
    """W2 (ours) and W2 of exact samples against the same reference; on 25GMM also against the paper's
    80-per-mode reference set ("80/mode"), which is what the published W2 was computed against."""
    ours = _stats(_values(done, "w2", single) or [], empty)
    exact = _stats(_values(done, "w2_exact", single) or [], "–")
    equal = _values(done, "w2_equal_counts", single)
    if equal:
        ours += f" (80/mode: {_stats(equal)})"
        exact += f" (80/mode: {_stats(_values(done, 'w2_exact_equal_counts', single))})"
    return ours, exact


def _ours(done, empty, single=False) -> tuple[list[str], str]:
    """The cells Δlog Z, Δlog Z^RW and W2 (ours) of the finished runs `done` (log Z unknown, LGCP: the ELBO and
    log Z^RW themselves), from their scores (`_score`), and the cell W2 of exact samples (`_w2_cells`)."""
    w2, w2_exact = _w2_cells(done, empty, single)
    if done and "delta_log_Z" not in done[0]["metrics"]:
        return [f"ELBO {_stats(_values(done, 'elbo', single))}", f"log Z^RW {_stats(_values(done, 'log_Z', single))}",
                w2], w2_exact
    return [_stats(_values(done, k, single) or [], empty) for k in METRICS[:2]] + [w2], w2_exact


def _seeds_done(planned: int, finished) -> str:
    """'done/planned', the seeds of the finished runs ((seed, JSON) pairs) scored by their one evaluation, and those
    whose training diverged (no score: `TrainingDiverged`)."""
    single = [str(seed) for seed, res in finished if "evaluations" not in res and "diverged" not in res]
    notes = [f"{'seeds' if len(single) > 1 else 'seed'} {', '.join(single)}: one evaluation"] if single else []
    notes += [f"seed {seed} diverged at iteration {_diverged_at(res['diverged'])}" for seed, res in finished
              if "diverged" in res]
    return f"{len(finished)}/{planned}" + (f" ({'; '.join(notes)})" if notes else "")


def _diverged_at(diverged: dict) -> str:
    """The iteration a run diverged at, or the window of iterations it was found in afterwards (a run from before
    training stopped at the first non-finite loss)."""
    window = diverged.get("window")
    return f"{window[0]:,}–{window[1]:,}" if window else f"{diverged['iteration']:,}"


def timing_path(out: str, device: str, threads: int) -> str:
    """OUT/timing_<device, colon dropped>_<threads>thread.json: where `timing` writes and `report` reads."""
    return os.path.join(out, f"timing_{device.replace(':', '')}_{threads}thread.json")


def _timed(out, target, method):
    """'fused / eager ms (speed-up)' of the timing JSONs in out (CPU, one thread; GPU where one was timed)."""
    cells = []
    for device, label in (("cpu", ""), ("cuda", "GPU "), ("cuda:0", "GPU ")):
        path = timing_path(out, device, 1)
        if os.path.exists(path):
            with open(path) as f:
                r = json.load(f)["results"].get(f"{target}/{method}")
            if r:
                cells.append(f"{label}{r['fused_ms']:.0f} / {r['eager_ms']:.0f} ({r['speedup']:.1f}×)")
    return "; ".join(cells) or "–"


def report(args) -> str:
    """Print the markdown table of the runs asked for (finished ones with mean ± std, the published
    numbers beside them) and, without --brief, write the whole plan's table to OUT/table.md, so that a
    `table` or `report` of a subset never leaves table.md holding only that subset. Returns the printed table."""
    text = _table(make_plan(args), args, brief=args.brief)
    print(text)
    if not args.brief:
        with open(os.path.join(args.out, "table.md"), "w") as f:
            f.write(_table(make_plan(args, whole=True), args, brief=False))
    return text


def _table(plan, args, *, brief) -> str:
    """The markdown table of the finished runs of `plan`, with the published numbers; `brief`: only the
    cells with results, a run in progress or published numbers."""
    counts = set()  # how many repeated evaluations the finished runs have
    rows = [("| target | method | seeds done | iterations | Δlog Z (ours) | Δlog Z (paper) | Δlog Z^RW (ours) "
             "| Δlog Z^RW (paper) | W2 (ours) | W2 (paper) | W2, exact samples "
             "| Δlog Z / Δlog Z^RW / W2, one evaluation (ours) | ms / iteration | fused / eager ms (timed) "
             "| outside paper ± std |"), "|" + "---|" * 15]
    targets = list(dict.fromkeys(r.target for r in plan))
    cells = sorted(dict.fromkeys((r.target, r.method) for r in plan), key=lambda c: targets.index(c[0]))
    for target, method in cells:
        runs = [r for r in plan if (r.target, r.method) == (target, method)]
        finished = [(r.seed, res) for r in runs if (res := finished_result(r, args.out, args.batch_size)) is not None]
        done = [res for _, res in finished if "diverged" not in res]  # the scored runs
        counts |= {len(d["evaluations"]["seeds"]) for d in done if "evaluations" in d}
        running = any(os.path.exists(checkpoint_path(args.out, r.target, r.method, r.seed)) for r in runs)
        empty = "running" if running else "diverged" if finished and not done else "planned"
        pub = PUBLISHED.get((target, method))
        if brief and not (finished or running or pub):
            continue
        missing = "–" if done else empty  # a metric the finished runs lack (LGCP: W2) is not pending
        ours, w2_exact = _ours(done, missing)
        one = " / ".join(_ours(done, missing, single=True)[0]) if done else empty
        # like with like: the 25GMM W2 against the paper's reference set where the runs have it
        compared = {k: _values(done, k) for k in METRICS}
        compared["w2"] = _values(done, "w2_equal_counts") or compared["w2"]
        outside = [k for i, k in enumerate(METRICS) if done and pub and "delta_log_Z" in done[0]["metrics"]
                   and _outside(compared[k], pub[i])]
        exact = _values(done, "w2_exact_equal_counts") or _values(done, "w2_exact")
        if "w2" in outside and exact and statistics.mean(exact) > sum(float(v) for v in pub[2].split("±")):
            outside[outside.index("w2")] = "w2 (the paper's is below exact samples')"
        ms = _ms_per_iteration(done) if done else "–"
        pub = pub or ("n/a", "n/a", "n/a")
        rows.append(f"| {target} | {method} | {_seeds_done(len(runs), finished)} | {runs[0].iterations} | {ours[0]} "
                    f"| {pub[0]} | {ours[1]} | {pub[1]} | {ours[2]} | {pub[2]} | {w2_exact} | {one} | {ms} "
                    f"| {_timed(args.out, target, method)} | {', '.join(outside) or '–'} |")
    progress = format_progress(table_progress(plan, args.out, args.batch_size))
    seeds = sorted(dict.fromkeys(r.seed for r in plan))
    text = "\n".join(rows) + f"\n\n{progress}; seeds {seeds}; {args.eval_samples} evaluation samples.\n"
    text += _scoring(counts)
    if any(r.target == "lgcp" for r in plan):
        finished = ", ".join(f"{p} ({n} finished)" for p, n in _lgcp_points(plan, args).items()) or "no run finished"
        text += (f"LGCP point pattern: {finished}; runs started here use {LGCP.default_points()} "
                 "(finpines: the Finnish pines of the paper; synthetic: drawn from the model).\n")
    return text


UNRECORDED = "AVX-512"  # the processor class of the runs and checkpoints that did not record their machine


def _processor_class(machine) -> str:
    """What a stretch of training is timed under: the CPU's vector ISA level (the tail of `profiling.cpu_model`),
    or the GPU's name; UNRECORDED for None (every run before machines were recorded trained on AVX-512 CPUs)."""
    if machine is None:
        return UNRECORDED
    _, sep, isa = machine.rpartition(", ")
    return isa[:-1] if sep and isa.endswith(")") else machine


def _ms_per_iteration(done) -> str:
    """The cell's time per training iteration, per processor class (`_processor_class`): the mean over the runs
    of each run's ms per iteration on that class (from its "segments": CPU time on the CPU, wall time on a GPU, by
    each segment's device), AVX-512 unlabelled and first; "(wall)" where a run predates the CPU-time record."""
    per_class, wall = {}, set()
    for d in done:
        if not d.get("segments"):  # run before segments were recorded: one unrecorded stretch
            if "ms_per_iteration" not in d:
                wall.add(UNRECORDED)
            ms = d["ms_per_iteration"] if "ms_per_iteration" in d else 1e3 * d["seconds_per_iteration"]
            per_class.setdefault(UNRECORDED, []).append(ms)
            continue
        spent = {}
        for seg in d["segments"]:
            clock = "cpu_seconds" if seg.get("device", d["device"]) == "cpu" else "seconds"
            cls = _processor_class(seg["machine"])
            t, n = spent.get(cls, (0.0, 0))
            spent[cls] = (t + seg[clock], n + seg["last"] - seg["first"])
        for cls, (t, n) in spent.items():
            if n:
                per_class.setdefault(cls, []).append(1e3 * t / n)
    order = sorted(per_class, key=lambda c: c != UNRECORDED)
    return " · ".join(f"{statistics.mean(per_class[c]):.0f}" + ("" if c == UNRECORDED else f" ({c})")
                      + (" (wall)" if c in wall else "") for c in order)


def _scoring(counts) -> str:
    """The line under the table that says how its columns are computed (`counts`: the numbers of repeated
    evaluations of the finished runs)."""
    k = " or ".join(map(str, sorted(counts))) or "K"
    return (f"(ours): each run's score is the mean of {k} evaluations of its saved model (fresh evaluation seeds, "
            "the samples above each), then mean ± std over the finished seeds; \"one evaluation\": the same over "
            "each run's one evaluation at the end of training, how the paper's released code scores a run; a run "
            "without a saved model is scored by its one evaluation (\"seeds done\" names it); \"outside paper ± "
            "std\" compares the scores.\n")


def profile_fused(target, method, *, iterations, batch_size, device):
    """Shares of the fused iterations' wall time (under torch.profiler): the policy kernels (the
    sampler's `fastsamp.policy` ranges around the rollout / log p_F calls, and their backward
    nodes), and the rest (the target's log-density, the time-embedding MLP, Adam, Python, ...),
    with the largest torch events of the rest."""
    sampler, cfg = build(target, method, seed=0, iterations=iterations + 2, batch_size=batch_size, device=device)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "fused.ckpt")
        before = train(sampler, cfg, progress=False, checkpoint=ckpt, until=2).seconds
        with torch.profiler.profile() as prof:
            log = train(sampler, cfg, progress=False, checkpoint=ckpt)
    total = 1e6 * (log.seconds - before)
    events = prof.key_averages()
    ranges = sum(e.cpu_time_total for e in events if e.key == PREFIX + "policy")
    backward = [e for e in events if (e.key.startswith("_Policy") and "Backward" in e.key)
                or (e.key.startswith("fastsamp::policy") and e.key.endswith("_backward"))]
    backward_ids = {id(e) for e in backward}
    backward = sum(e.self_cpu_time_total for e in backward)
    rest = [e for e in events if e.key != PREFIX + "policy" and id(e) not in backward_ids
            and not e.key.startswith(("_Policy", "fastsamp::policy"))]
    return {"kernels": (ranges + backward) / total, "other": 1 - (ranges + backward) / total,
            "top_rest": [(e.key, round(e.self_cpu_time_total / total, 3))
                         for e in sorted(rest, key=lambda e: -e.self_cpu_time_total)[:5]]}


def time_cell(target, method, args) -> dict:
    """The timing JSON's entry of one cell: fastsamp.experiments.offpolicy.time_fused_vs_eager's (fused_ms, eager_ms,
    speedup, clock, iterations_per_round, rounds_ms, mean_ms; with --compile compile_ms and best_pytorch_over_fused),
    with --profile also fused_profile."""
    r = time_fused_vs_eager(target, method, compile=args.compile, iterations=args.iterations, segment=args.segment,
                            warmup=args.warmup, batch_size=args.batch_size, device=args.device)
    if args.profile:
        r["fused_profile"] = profile_fused(target, method, iterations=r["iterations_per_round"],
                                           batch_size=args.batch_size, device=args.device)
    return r


def timing(args):
    """ms per iteration of every cell of the plan, fused against eager (`time_cell`), merged into
    OUT/timing_<device>_<threads>thread.json; cells already there are skipped unless --force."""
    torch.set_num_threads(args.threads)
    path = timing_path(args.out, args.device, args.threads)
    saved = {"threads": args.threads, "device": args.device, "results": {}}
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
    print(f"ms per training iteration (median of interleaved segments; {args.threads} thread(s), batch "
          f"{args.batch_size}, T = 100)", flush=True)
    for target, method in dict.fromkeys((r.target, r.method) for r in make_plan(args)):
        key = f"{target}/{method}"
        if key in saved["results"] and not args.force:
            continue
        saved["results"][key] = r = time_cell(target, method, args)
        line = (f"{target:9s} {method:19s} fused {r['fused_ms']:8.1f} ms  eager {r['eager_ms']:8.1f} ms  "
                f"speed-up {r['speedup']:.2f}x")
        if args.compile:
            line += f"  compile {r['compile_ms']:8.1f} ms  best PyTorch / fused {r['best_pytorch_over_fused']:.2f}x"
        line += (f"  ({len(r['rounds_ms']['fused'])} segments of {r['iterations_per_round']}, {r['clock']} time; "
                 f"mean: fused {r['mean_ms']['fused']:.1f}, eager {r['mean_ms']['eager']:.1f})")
        if args.profile:
            line += f"  fused: {100 * r['fused_profile']['kernels']:.0f}% in the policy kernels"
        print(line, flush=True)
        with open(path, "w") as f:  # after every cell: an interrupted timing keeps what it measured
            json.dump(saved, f, indent=2)


def reevaluate_runs(args):
    """Recompute the finished runs' metrics from their saved models (fastsamp.experiments.offpolicy.reevaluate)."""
    torch.set_num_threads(1)
    reevaluate(make_plan(args), args.out, batch_size=args.batch_size, log=_print)


def curve(args):
    """Print each run JSON's training curve ('loss_curve': the loss per window of iterations) as a table."""
    for path in args.json:
        try:
            with open(path) as f:
                res = json.load(f)
            c = res.get("loss_curve")
            head = f"{res['target']} {res['method']} seed {res['seed']}, {res['iterations']:,} iterations"
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:  # e.g. OUT/timing_*.json
            _print(f"{path}: not a run JSON ({type(e).__name__}: {e})")
            continue
        if c is None:
            _print(f"{head}: no loss curve (the run finished before runs recorded one); final loss "
                   f"{res['final_loss']:.4g}")
            continue
        n = c["every"]
        _print(f"{head}: loss over windows of {n} iteration{'s' if n != 1 else ''}\n{'last iteration':>14} "
               f"{'mean':>11} {'min':>11} {'max':>11}")
        for row in zip(c["iterations"], c["mean"], c["min"], c["max"]):
            _print(f"{row[0]:>14,} " + " ".join(f"{v:>11.4g}" for v in row[1:]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("curve")
    c.add_argument("json", nargs="+", help="run JSONs (OUT/<target>_<method>_seed<s>.json)")
    c.set_defaults(fn=curve)
    for name, fn in (("table", table), ("report", report), ("reevaluate", reevaluate_runs), ("evaluate", evaluations),
                     ("timing", timing)):
        a = sub.add_parser(name)
        a.add_argument("--fraction", type=positive_float, default=1.0, help="fraction of the paper's iteration counts")
        a.add_argument("--iterations", type=count(1), default=None,
                       help="iterations of every run (overrides --fraction); timing: timed iterations per path "
                       "(default: 3 segments)")
        a.add_argument("--seeds", type=count(0, MAX_SEED), nargs="+", default=list(SEEDS))
        a.add_argument("--targets", nargs="+", choices=TARGETS, default=None,
                       help="default: the full plan (module docstring)")
        a.add_argument("--methods", nargs="+", choices=tuple(METHODS), default=None)
        a.add_argument("--batch-size", type=count(1), default=300)
        a.add_argument("--out", default=OUT, help="directory for the per-run JSON/models, checkpoints, table.md "
                       "and the timing JSON")
        if name in ("table", "report"):
            a.add_argument("--eval-samples", type=count(2), default=2000)
            a.add_argument("--brief", action="store_true", help="only cells with results, a run in progress or "
                           "published numbers, and no table.md (for the README)")
        if name in ("table", "timing"):
            a.add_argument("--device", type=device_arg, default="cpu", help="cpu or cuda[:N]")
        if name in ("table", "evaluate"):
            a.add_argument("--repeats", type=count(0 if name == "table" else 1, 999), default=REPEATS,
                           help="evaluations of each finished run's saved model, its score in the table"
                           + (" (0: none)" if name == "table" else ""))
        if name == "table":
            a.add_argument("--jobs", type=count(1), default=1, help="parallel runs (one thread each)")
            a.add_argument("--checkpoint-every", type=count(0), default=500)
        if name == "timing":
            a.add_argument("--threads", type=count(1), default=1)
            a.add_argument("--segment", type=count(1), default=None, help="iterations per interleaved segment "
                           "(default: 20, one local-search period for presets with local search)")
            a.add_argument("--warmup", type=count(1), default=3, help="untimed iterations of each path first")
            a.add_argument("--compile", action="store_true", help="also time the eager path with a compiled DriftNet")
            a.add_argument("--profile", action="store_true", help="also profile the fused iterations")
            a.add_argument("--force", action="store_true", help="time again the cells already in the timing JSON")
        a.set_defaults(fn=fn)
    args = p.parse_args(argv)
    os.makedirs(getattr(args, "out", OUT), exist_ok=True)
    args.fn(args)
    return 0


if __name__ == "__main__":
    keep_freed_memory()  # the script's own process: malloc keeps freed pages for the next iteration (`memory.py`)
    sys.exit(main())
