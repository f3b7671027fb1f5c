"""Per-call eager latency of the registered ops at small batch (issue 10): raw backend function against the
registered op, and torch.library.Library define/impl (what fastsamp registers) against torch.library.custom_op.

    python benchmarks/op_latency.py [--B 64] [--D 8] [--calls 500] [--repeats 21] [--against REV]

Columns (µs per call, median of `repeats` timings of `calls` calls each, the columns timed in turn within
each repeat; one intra-op thread, float32):
  raw          the backend function itself (fastsamp.backends.cpp.<op>: output allocation + the _C call)
  library      torch.ops.fastsamp.<op> below the autograd key (`_library.Entry.eager`: how the public ops call it
               in eager while the profiler or a dispatch mode watches)
  library+ag   torch.ops.fastsamp.<op> called plainly (through its Python autograd kernel)
  ag @REV      with --against REV: the same call of the op as fastsamp/ops/_library.py registered it at git revision
               REV (registered again in this process under the namespace fastsamp_at_REV: a before/after
               comparison timed in turn with the other columns)
  custom_op    the same kernel, fake and autograd formula registered with torch.library.custom_op
  public auto  fastsamp.ops.<public>(..., backend="auto") with validation off: checks + `_dispatch.route`, which in
               plain eager calls the kernel of the registered op directly
  public cpp   the same with backend="cpp" (checks + the raw backend function)
A call through the dispatcher adds `library - raw` (`library+ag - raw` from user code calling
torch.ops.fastsamp.<op> directly). Timings depend on the machine's load.
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import time
import types
from functools import partial
from pathlib import Path

import torch

import fastsamp
from fastsamp import VP, backends, ops
from fastsamp.ops import _autograd, _library, _table


def args_for(name, B, D, K=4):
    """Backend-signature arguments at (B, D), seeds past int64 in the schema's encoding."""
    x, s, xi = torch.randn(B, D), torch.randn(B, D), torch.randn(B, D)
    eps, u = torch.full((B,), 0.05), torch.rand(B)
    mix = torch.randn(K, D), torch.zeros(K), torch.ones(K)
    seed, offset = _library.encode_u64(2**64 - 3), 5
    return {
        "gmm_score": (x, *mix, 0.8, 0.3),
        "sde_step": (x, s, None, None, seed, offset, 0, 1.01, 0.02, 0.1),
        "guided_sde_step": (x, s, s, xi, None, seed, offset, 0, 1.01, 0.02, 0.5, 3.0, 0.1),
        "mala_propose": (x, s, eps, None, seed, offset, 0),
        "line_points": (x, s, 3),
        "score_mh_accept": (x, s, s, xi, eps, u, torch.randn(2, B, D), 0, 0, 0),
        "energy_mh_accept": (x, s, s, xi, u, u, eps, u, 0, 0, 0),
        "leapfrog": (x, xi, s, eps),
        "leapfrog_finish": (x, s, xi, s, xi, eps, u),
        "hmc_accept": (x, s, s, xi, xi, s, u, u, 0, 0, 0),
        "momentum_refresh": (x, 0.3, None, seed, offset, 0),
        "gmm_mala": (x, *mix, eps, 1, 1, 0.9, 0.1, seed, offset, 0, 0),
        "gmm_hmc": (x, *mix, eps, 1, 1, 0.9, 0.1, seed, offset, 0, 0, 0.5),
        "em_step_logprob": (x, s, None, None, None, seed, offset, 0, 0.01, 0.5, 0.0, 0.9, 0.45),
        "normal": (seed, offset, B, D, torch.float32, torch.device("cpu"), 0),
        "uniform": (seed, offset, B, torch.float32, torch.device("cpu"), 0),
    }[name]


def public_call(name, backend, B, D, K=4):
    """A call of the public op (validation switched off by the caller)."""
    x, s, xi = torch.randn(B, D), torch.randn(B, D), torch.randn(B, D)
    eps, u = torch.full((B,), 0.05), torch.rand(B)
    mix = torch.randn(K, D), torch.zeros(K), torch.ones(K)
    inner = torch.randn(2, B, D)
    kw = dict(backend=backend)
    return {
        "gmm_score": lambda: ops.gmm_score(x, *mix, alpha=0.8, sigma2=0.3, **kw),
        "sde_step": lambda: ops.reverse_sde_step(x, s, t=0.5, h=0.01, schedule=VP(), seed=1, **kw),
        "guided_sde_step": lambda: ops.guided_sde_step(x, s, s, xi, t=0.5, h=0.01, schedule=VP(), fd_eps=1e-3,
                                                       seed=1, **kw),
        "mala_propose": lambda: ops.mala_propose(x, s, eps, seed=1, **kw),
        "line_points": lambda: ops.line_points(x, s, 3, **kw),
        "score_mh_accept": lambda: ops.score_mh_accept(x, s, s, xi, eps, u, interior_scores=inner, **kw),
        "energy_mh_accept": lambda: ops.energy_mh_accept(x, s, s, xi, u, u, eps, u, **kw),
        "leapfrog": lambda: ops.leapfrog(x, xi, s, eps, **kw),
        "leapfrog_finish": lambda: ops.leapfrog_finish(x, s, xi, s, xi, eps, u, **kw),
        "hmc_accept": lambda: ops.hmc_accept(x, s, s, xi, xi, s, u, u, **kw),
        "momentum_refresh": lambda: ops.momentum_refresh(x, 0.3, seed=1, **kw),
        "gmm_mala": lambda: ops.gmm_mala(x, *mix, step_size=eps, n_steps=1, seed=1, **kw),
        "gmm_hmc": lambda: ops.gmm_hmc(x, *mix, step_size=eps, n_steps=1, seed=1, **kw),
        "em_step_logprob": lambda: ops.em_step_logprob(x, s, sigma=1.0, t=0.5, h=0.01, seed=1, **kw),
        "normal": lambda: ops.normal(1, 5, B, D, torch.float32, **kw),
        "uniform": lambda: ops.uniform(1, 5, B, torch.float32, **kw),
    }[name]


def custom_op_of(op: _table.Op):
    """The registered op re-registered with torch.library.custom_op (same schema, kernels, fake, autograd)."""
    kernel = _library.device_kernel(op.name, "cpu")
    schema = op.schema()
    schema = schema[schema.index("("):]
    name = f"fastsamp_bench::{op.name}"
    if not any(arg.kind in ("state", "tensor") for arg in op.args):
        return None  # a factory op (normal, uniform): custom_op cannot dispatch a call without a tensor argument
    custom = torch.library.custom_op(name, kernel, mutates_args=(), device_types="cpu", schema=schema)
    namespace = {"torch": torch}
    exec(_table.outputs_source(op, "fake"), namespace)
    custom.register_fake(namespace["fake"])
    if op.grad:
        custom.register_autograd(_autograd.FORMULAS[op.name], setup_context=_autograd.SETUP)
    return custom


def registered_at(rev: str):
    """torch.ops.<namespace> of the op table's ops registered by fastsamp/ops/_library.py as it was at git revision
    `rev` (with today's op table, kernels and formulas), under the namespace fastsamp_at_<rev>."""
    source = subprocess.run(["git", "show", f"{rev}:fastsamp/ops/_library.py"], capture_output=True, text=True,
                            check=True, cwd=Path(__file__).resolve().parent).stdout
    namespace = "fastsamp_at_" + re.sub(r"\W", "_", rev)
    module = types.ModuleType(f"fastsamp.ops._library_{namespace}")
    module.__package__ = "fastsamp.ops"
    exec(compile(source.replace('NAMESPACE = "fastsamp"', f'NAMESPACE = "{namespace}"'), f"{rev}:_library.py", "exec"),
         module.__dict__)
    return getattr(torch.ops, namespace)


def medians_us(fns, calls, repeats):
    """Median µs per call of each function; the functions are timed in turn within each repeat, so that a
    load change on the machine shifts them alike."""
    for fn in fns:
        for _ in range(min(calls, 200)):
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            t.append((time.perf_counter() - t0) / calls * 1e6)
    return [statistics.median(t) for t in times]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--B", type=int, default=64)
    parser.add_argument("--D", type=int, default=8)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--against", metavar="REV", help="also time the op as registered at this git revision")
    a = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if not backends.is_available("cpp"):
        raise SystemExit("needs the cpp backend (fastsamp._C)")
    cpp = backends._load("cpp")[0]
    print(f"B = {a.B}, D = {a.D}, float32, 1 thread, median of {a.repeats} x {a.calls} calls (µs per call)")
    before = registered_at(a.against) if a.against else None
    cols = ("op", "raw", "library", "library+ag") + ((f"ag @{a.against}",) if before else ()) + (
        "custom_op", "public auto", "public cpp")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    fastsamp.set_validation(False)
    for op in _table.registered():
        if op.public is None or any(arg.kind == "tensors" for arg in op.args):
            continue  # backward kernels; the policy ops (whole trajectories, not a per-move op)
        args = args_for(op.name, a.B, a.D)
        raw_args = [v & _table.U64_MASK if s.kind == "u64" else v for v, s in zip(args, op.schema_args)]
        entry, opobj = _library.ENTRIES[op.name], getattr(torch.ops.fastsamp, op.name).default
        raw_fn = getattr(cpp, op.name, None)
        custom = custom_op_of(op)
        fns = [raw_fn and partial(raw_fn, *raw_args), partial(entry.eager, *args), partial(opobj, *args)]
        present = [raw_fn is not None, True, True]
        if before:
            fns.append(partial(getattr(before, op.name).default, *args))
            present.append(True)
        fns += [custom and partial(custom, *args), public_call(op.name, "auto", a.B, a.D),
                public_call(op.name, "cpp", a.B, a.D)]
        present += [custom is not None, True, raw_fn is not None]
        timed = iter(medians_us([f for f, p in zip(fns, present) if p], a.calls, a.repeats))
        row = [next(timed) if p else float("nan") for p in present]
        print(f"| {op.name} | " + " | ".join(f"{v:.1f}" for v in row) + " |", flush=True)


if __name__ == "__main__":
    main()
