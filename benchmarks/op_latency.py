"""Per-call eager latency of the registered ops at small batch (issue 10): raw backend function against the
registered op, and torch.library.Library define/impl (what fastsamp registers) against torch.library.custom_op.

    python benchmarks/op_latency.py [--B 64] [--D 8] [--calls 500] [--repeats 21] [--against REV] [--clock cpu]
                                    [--ops OP ...]

Every registered op (`_table.registered()`: the public ops, their backward kernels, the policy and network ops
with their lists of layers, built from a small DriftNet and score / energy / plain MLPs at (B, D)).
Columns (µs per call, median of `repeats` timings of `calls` calls each, the columns timed in turn within
each repeat; one intra-op thread, float32; `--clock cpu` times the thread's CPU time instead of wall time;
nan: no such function, e.g. no public op for a backward kernel, no custom_op for a factory op):
  raw          the backend function itself (fastsamp.backends.cpp.<op>: output allocation + the _C call)
  bare         the same backend function registered plainly as a trivial op's CPU kernel (`bare_op`: no Autograd
               kernel): the least a Python-registered kernel costs, torch's boxing of the arguments into Python
               and back, paid after the kernel's own work (which evicts the dispatcher's code from the caches, so
               `bare - raw` exceeds `floor`); `library+ag - bare` is what fastsamp's Autograd kernel adds
  library      torch.ops.fastsamp.<op> as `_library.Entry.eager` calls it (how the public ops call it in eager while
               the profiler or a dispatch mode watches: below the autograd key)
  library+ag   torch.ops.fastsamp.<op> called plainly (through its Python Autograd kernel)
  floor        a trivial op with the same schema (`floor_op`: its kernel returns precomputed outputs): torch's own
               cost of the arguments through the dispatcher (the autograd key included); `library+ag - raw - floor`
               is what fastsamp's Python adds
  ag @REV      with --against REV: the same call of the op as fastsamp/ops/_library.py registered it at git revision
               REV, with the argument checks _codegen.py generated there (registered again in this process under the
               namespace fastsamp_at_REV: a before/after comparison timed in turn with the other columns)
  custom_op    the same kernel, fake and autograd formula registered with torch.library.custom_op
  public auto  fastsamp.ops.<public>(..., backend="auto") with validation off: checks + `_dispatch.route`, which in
               plain eager calls the kernel of the registered op directly
  public cpp   the same with backend="cpp" (checks + the raw backend function)
A call through the dispatcher adds `library - raw` (`library+ag - raw` from user code calling
torch.ops.fastsamp.<op> directly). Timings depend on the machine's load.
`--list-floor` first prints the floor of a list of N tensors (`list_floor`) and of its check's metadata reads
(`metadata_floor`); `--boxing OP` first prints what the number of boxed elements costs for OP's call (`boxing_costs`).
"""
from __future__ import annotations

import argparse
import functools
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
from fastsamp.ops import _autograd, _layers, _library, _table
from fastsamp.ops.trajectory import PolicyParams
from fastsamp.samplers.diffusion import DriftNet


class Nets:
    """The networks of the list-taking ops at (B, D): a DriftNet policy (T = 4 steps, hidden width H, one hidden
    layer) with its time embedding, states and gradients; one score network and one energy network (F = 2 Fourier
    frequencies, one hidden layer), flat as the mlp ops take them (`params`, `dims`, `scalars`) and as the public
    ScoreNet / EnergyNet; one MLP for mlp_net (O = D outputs)."""

    def __init__(self, B, D, T=4, H=16, F=2):
        self.T = T
        self.policy = DriftNet(D, hidden=H, n_harmonics=4, n_layers=1).requires_grad_(False)
        self.temb = torch.randn(T, H)
        self.policy_params = PolicyParams(self.policy).tensors()
        self.ts = torch.arange(T, dtype=torch.float64) / T  # the step times t_0 .. t_{T-1} (T,)
        self.lgv = torch.full((T, 1), 0.01)
        self.states = torch.randn(T + 1, B, D)
        self.g_states, self.g_log = torch.randn(T + 1, B, D), torch.randn(B, T)
        self.scores = torch.randn(T, B, D)
        weights = [0.3 * torch.randn(H, D + 2 * F), 0.3 * torch.randn(H, H), 0.3 * torch.randn(D, H)]
        biases = [torch.zeros(H), torch.zeros(H), torch.zeros(D)]
        freq, mean = torch.linspace(0.5, 2.0, F), torch.zeros(D)
        at = dict(data_var=1.0, t=0.5, alpha=0.8, sigma2=0.3)
        self.score_net = ops.ScoreNet(weights, biases, freq, mean, **at)
        self.energy_net = ops.EnergyNet(weights, biases, freq, mean, **at)
        self.mlp_params = [freq, mean] + _layers.packed(weights, biases)
        self.dims, self.scalars = [F, H, 1, 0], [at["t"], at["alpha"], at["sigma2"], at["data_var"]]
        self.weights = [0.3 * torch.randn(H, D), 0.3 * torch.randn(H, H), 0.3 * torch.randn(D, H)]
        self.biases = [torch.zeros(H), torch.zeros(H), torch.zeros(D)]
        self.net_params = _layers.packed(self.weights, self.biases)


def args_for(name, B, D, nets, K=4):
    """Backend-signature arguments at (B, D), seeds past int64 in the schema's encoding."""
    x, s, xi = torch.randn(B, D), torch.randn(B, D), torch.randn(B, D)
    eps, u = torch.full((B,), 0.05), torch.rand(B)
    mix = torch.randn(K, D), torch.zeros(K), torch.ones(K)
    seed, offset = _library.encode_u64(2**64 - 3), 5
    n = nets
    policy, lgv = (n.temb, n.policy_params), (n.lgv, 0.3)
    score_sum = (x, n.mlp_params, n.dims, n.scalars)
    no_mix = (None, None, None, 1.0, 0.0)
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
        "em_step_logprob_backward": (x, s, None, xi, None, u, u, 0.01, 0.5, 0.0, 0.9, 0.45, False, False),
        "policy_rollout": (None, *policy, n.ts, B, 1.0, 1 / n.T, 0.0, 1e4, seed, 0, 1, False),
        "policy_langevin_rollout": (None, *policy, *lgv, n.ts, B, 1.0, 1 / n.T, 0.0, 1e4, seed, 0, 2, None, 3.0, 1,
                                    False),
        "policy_log_pf": (n.states, *policy, 1.0, 1 / n.T, 1e4, 1),
        "policy_log_pf_backward": (n.states, *policy, n.g_log, 1.0, 1 / n.T, 1e4, 1, *lgv, n.scores, None),
        "policy_reparam_backward": (n.states, *policy, n.ts, n.g_states, n.g_log, 1.0, 1 / n.T, 1e4, 1, *lgv,
                                    n.scores),
        "mlp_score": (*score_sum, *no_mix),
        "mlp_mala": (*score_sum, *no_mix, eps, 1, 1, seed, offset, 0, 0),
        "mlp_hmc": (*score_sum, *no_mix, eps, 1, 1, seed, offset, 0, 0, 0.5),
        "mlp_energy": (*score_sum, [1], *no_mix),
        "mlp_energy_mala": (*score_sum, [1], *no_mix, eps, 1, 1, seed, offset, 0, 1),
        "mlp_energy_hmc": (*score_sum, [1], *no_mix, eps, 1, 1, seed, offset, 0, 1, 0.5),
        "mlp_net": (x, n.net_params, 0),
        "mlp_net_train": (x, n.net_params, 0),
        "mlp_net_backward": (x, n.net_params, 0, s, True, None),
        "mlp_net_lsq": (x, n.net_params, 0, s, u),
        "mlp_net_energy_lsq": (x, n.net_params, 0, s, eps, u, xi),
    }[name]


def public_call(name, backend, B, D, nets, K=4):
    """A call of the public op (validation switched off by the caller); None for an op without one."""
    x, s, xi = torch.randn(B, D), torch.randn(B, D), torch.randn(B, D)
    eps, u = torch.full((B,), 0.05), torch.rand(B)
    mix = torch.randn(K, D), torch.zeros(K), torch.ones(K)
    inner = torch.randn(2, B, D)
    kw = dict(backend=backend)
    n = nets
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
        "policy_rollout": lambda: ops.policy_rollout(n.policy, n.temb, B, sigma=1.0, seed=1, **kw),
        "policy_log_pf": lambda: ops.policy_log_pf(n.policy, n.states, n.temb, sigma=1.0, **kw),
        "mlp_score": lambda: ops.mlp_score(x, n.score_net, **kw),
        "mlp_mala": lambda: ops.mlp_mala(x, n.score_net, step_size=eps, n_steps=1, seed=1, **kw),
        "mlp_hmc": lambda: ops.mlp_hmc(x, n.score_net, step_size=eps, n_steps=1, seed=1, **kw),
        "mlp_energy": lambda: ops.mlp_energy(x, n.energy_net, **kw),
        "mlp_energy_mala": lambda: ops.mlp_energy_mala(x, n.energy_net, step_size=eps, n_steps=1, seed=1, **kw),
        "mlp_energy_hmc": lambda: ops.mlp_energy_hmc(x, n.energy_net, step_size=eps, n_steps=1, seed=1, **kw),
        "mlp_net": lambda: ops.mlp_net(x, n.weights, n.biases, **kw),
        "mlp_net_lsq": lambda: ops.mlp_net_lsq(x, n.weights, n.biases, s, u, **kw),
        "mlp_net_energy_lsq": lambda: ops.mlp_net_energy_lsq(x, n.weights, n.biases, s, eps, u, xi, **kw),
    }.get(name)


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


@functools.cache
def _lib(namespace: str):
    """The benchmark's own library `namespace` (DEF), made on first use (not at import: one DEF per namespace)."""
    return torch.library.Library(namespace, "DEF")


def trivial_op(namespace: str, op: _table.Op, kernel):
    """The op's schema registered under `namespace` with `kernel` as its only kernel (CompositeExplicitAutograd)."""
    _lib(namespace).define(op.schema())
    _lib(namespace).impl(op.name, kernel, "CompositeExplicitAutograd")
    return getattr(getattr(torch.ops, namespace), op.name).default


def floor_op(op: _table.Op, outputs):
    """The op's schema under fastsamp_floor with a kernel that returns `outputs` (one call's, computed beforehand):
    what the dispatcher costs for these arguments alone (parsing them, boxing them for a Python kernel and back),
    whatever the kernel does."""
    return trivial_op("fastsamp_floor", op, lambda *args: outputs)


def bare_op(op: _table.Op, fn):
    """The op's schema under fastsamp_bare with backend function `fn` itself as its only kernel (`fn` takes the
    schema's u64 encoding)."""
    return trivial_op("fastsamp_bare", op, fn)


def list_floor(calls, repeats, clock, sizes=(0, 1, 2, 4, 8, 16, 32)):
    """µs per call of a trivial registered op `(Tensor x, Tensor[] tensors) -> Tensor` (its kernel returns x)
    against the list's length: torch's own cost of a list of tensors through the dispatcher into Python."""
    _lib("fastsamp_floor").define("tensor_list(Tensor x, Tensor[] tensors) -> Tensor")
    _lib("fastsamp_floor").impl("tensor_list", lambda x, tensors: x, "CompositeExplicitAutograd")
    x = torch.randn(8, 8)
    fn = torch.ops.fastsamp_floor.tensor_list.default
    return medians_us([partial(fn, x, [torch.randn(8) for _ in range(n)]) for n in sizes], calls, repeats, clock)


def metadata_floor(calls, repeats, clock, n=16):
    """µs per tensor of the metadata reads a list's check and glue make (`_codegen._layout_source`, `_pointers`):
    .shape, .dtype, .is_contiguous(), .data_ptr(), and the three tests of a check together, over n tensors (8, 8)."""
    ts, dt = [torch.randn(8, 8) for _ in range(n)], torch.float32

    def check():
        for t in ts:
            if t.shape != (8, 8) or t.dtype is not dt or not t.is_contiguous():
                raise AssertionError
    fns = {"shape": lambda: [t.shape for t in ts], "dtype": lambda: [t.dtype for t in ts],
           "is_contiguous()": lambda: [t.is_contiguous() for t in ts], "data_ptr()": lambda: [t.data_ptr() for t in ts],
           "empty loop": lambda: [t for t in ts], "check (shape, dtype, contiguity)": check}
    return dict(zip(fns, (v / n for v in medians_us(list(fns.values()), calls, repeats, clock))))


def boxing_costs(op: _table.Op, fn, args, calls, repeats, clock):
    """µs per call of backend function `fn` run on `args` (its work, in the schema's encoding) as the only kernel of
    three trivial ops: the call as it is (`fn` itself), under the op's schema, under a 4-argument schema
    (Tensor x, Tensor[] tensors, int[] ints, float[] floats) holding the same elements (every tensor, int and float
    of the arguments, lists' elements included; the kernel ignores them and runs `fn(*args)`) and under (Tensor x)
    alone: how torch's cost of a Python kernel grows with the elements it boxes, after the kernel's work."""
    lib = torch.library.Library(f"fastsamp_boxing_{op.name}", "DEF")
    run = partial(fn, *args)
    groups = {"tensor": [], "int": [], "float": []}
    for a, v in zip(op.schema_args, args):
        if a.kind == "state":
            continue
        for e in (v if a.kind in ("tensors", "ints", "floats") else (v,)):
            kind = ("tensor" if isinstance(e, torch.Tensor) else "float" if isinstance(e, float) else "int"
                    if isinstance(e, int) else None)
            if kind is not None:
                groups[kind].append(e)
    x = args[[a.kind for a in op.schema_args].index("state")]
    schemas = {"schema": (op.schema()[len(op.name):], args),
               "packed": ("(Tensor x, Tensor[] tensors, int[] ints, float[] floats) -> Any",
                          (x, groups["tensor"], groups["int"], groups["float"])),
               "one tensor": ("(Tensor x) -> Any", (x,))}
    fns = [run]
    for k, (schema, given) in enumerate(schemas.values()):
        lib.define(f"op{k}{schema.replace('-> Any', '-> ' + op.schema().split(' -> ')[1])}")
        lib.impl(f"op{k}", lambda *_: run(), "CompositeExplicitAutograd")
        fns.append(partial(getattr(getattr(torch.ops, lib.ns), f"op{k}").default, *given))
    n = sum(len(g) for g in groups.values())
    labels = ["called", f"schema ({len(args)} arguments)", f"packed (x and {n} elements in 3 lists)", "one tensor"]
    return dict(zip(labels, medians_us(fns, calls, repeats, clock)))


_GENERATED = ("check_source", "outputs_source", "requires_grad_source")
"""The generated sources the registration takes from _codegen.py (the glue of the backend functions is today's)."""


def registered_at(rev: str):
    """torch.ops.<namespace> of the op table's ops registered by fastsamp/ops/_library.py as it was at git revision
    `rev`, with the checks, fakes and requires-grad tests _codegen.py generated there (`_GENERATED`; with today's op
    table, kernels and formulas), under the namespace fastsamp_at_<rev>."""
    def source(path):
        return subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout
    namespace = "fastsamp_at_" + re.sub(r"\W", "_", rev)
    codegen = types.ModuleType(f"fastsamp.ops._codegen_{namespace}")
    exec(compile(source("fastsamp/ops/_codegen.py"), f"{rev}:_codegen.py", "exec"), codegen.__dict__)
    table = types.ModuleType(f"fastsamp.ops._table_{namespace}")  # today's table with `rev`'s generators
    vars(table).update(vars(_table), **{k: getattr(codegen, k) for k in _GENERATED if hasattr(codegen, k)})
    module = types.ModuleType(f"fastsamp.ops._library_{namespace}")
    module.__package__ = "fastsamp.ops"
    code = source("fastsamp/ops/_library.py").replace('NAMESPACE = "fastsamp"', f'NAMESPACE = "{namespace}"')
    code, found = re.subn(r"^(from \. import .+), _table$", r"\1", code, count=1, flags=re.M)  # `table` instead
    if not found:
        raise ValueError(f"{rev}:fastsamp/ops/_library.py has no 'from . import ..., _table'")
    vars(module)["_table"] = table
    exec(compile(code, f"{rev}:_library.py", "exec"), module.__dict__)
    return getattr(torch.ops, namespace)


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def medians_us(fns, calls, repeats, clock=time.perf_counter):
    """Median µs per call of each function; the functions are timed in turn within each repeat, so that a
    load change on the machine shifts them alike. clock: wall time, or the calling thread's CPU time
    (time.thread_time: on a loaded machine it leaves out the time the thread waits for a core)."""
    for fn in fns:
        for _ in range(min(calls, 200)):
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times):
            t0 = clock()
            for _ in range(calls):
                fn()
            t.append((clock() - t0) / calls * 1e6)
    return [statistics.median(t) for t in times]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--B", type=int, default=64)
    parser.add_argument("--D", type=int, default=8)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--against", metavar="REV", help="also time the op as registered at this git revision")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                        help="wall time, or the thread's CPU time (the cost of a call on a loaded machine)")
    parser.add_argument("--ops", nargs="+", metavar="OP", help="only these registered ops")
    parser.add_argument("--list-floor", action="store_true", help="first, a trivial op taking a list of N tensors")
    parser.add_argument("--boxing", metavar="OP", help="first, OP's backend function under fewer boxed arguments")
    a = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if not backends.is_available("cpp"):
        raise SystemExit("needs the cpp backend (fastsamp._C)")
    cpp = backends._load("cpp")[0]
    print(f"B = {a.B}, D = {a.D}, float32, 1 thread, median of {a.repeats} x {a.calls} calls (µs per call, "
          f"{a.clock} clock)")
    if a.list_floor:
        sizes = (0, 1, 2, 4, 8, 16, 32)
        print("trivial op (Tensor x, Tensor[] tensors) -> Tensor, µs per call against N = len(tensors):")
        print("| N | " + " | ".join(map(str, sizes)) + " |\n|" + "---|" * (len(sizes) + 1))
        print("| µs | " + " | ".join(f"{v:.2f}" for v in list_floor(a.calls, a.repeats, CLOCKS[a.clock], sizes))
              + " |\n", flush=True)
        reads = metadata_floor(a.calls, a.repeats, CLOCKS[a.clock])
        print("a list's metadata reads in Python, µs per tensor:\n| " + " | ".join(reads) + " |\n|"
              + "---|" * len(reads) + "\n| " + " | ".join(f"{v:.3f}" for v in reads.values()) + " |\n", flush=True)
    if a.boxing:
        op = _table.OPS[a.boxing]
        costs = boxing_costs(op, getattr(cpp, op.name), args_for(op.name, a.B, a.D, Nets(a.B, a.D)), a.calls,
                             a.repeats, CLOCKS[a.clock])
        print(f"{op.name}'s backend function as the kernel of a trivial op, µs per call:\n| " + " | ".join(costs)
              + " |\n|" + "---|" * len(costs) + "\n| " + " | ".join(f"{v:.1f}" for v in costs.values()) + " |\n",
              flush=True)
    before = registered_at(a.against) if a.against else None
    cols = ("op", "raw", "bare", "library", "library+ag", "floor") + ((f"ag @{a.against}",) if before else ()) + (
        "custom_op", "public auto", "public cpp")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    fastsamp.set_validation(False)
    nets = Nets(a.B, a.D)
    for op in _table.registered():
        if a.ops and op.name not in a.ops:
            continue
        args = args_for(op.name, a.B, a.D, nets)
        raw_args = [v & _table.U64_MASK if s.kind == "u64" else v for v, s in zip(args, op.schema_args)]
        entry, opobj = _library.ENTRIES[op.name], getattr(torch.ops.fastsamp, op.name).default
        raw_fn = getattr(cpp, op.name, None)
        custom = custom_op_of(op)
        floor = floor_op(op, opobj(*args))
        fns = [raw_fn and partial(raw_fn, *raw_args), raw_fn and partial(bare_op(op, raw_fn), *args),
               partial(entry.eager, *args), partial(opobj, *args), partial(floor, *args)]
        present = [raw_fn is not None, raw_fn is not None, True, True, True]
        if before:
            fns.append(partial(getattr(before, op.name).default, *args))
            present.append(True)
        public = [public_call(op.name, backend, a.B, a.D, nets) for backend in ("auto", "cpp")]
        fns += [custom and partial(custom, *args), *public]
        present += [custom is not None, public[0] is not None, public[1] is not None and raw_fn is not None]
        timed = iter(medians_us([f for f, p in zip(fns, present) if p], a.calls, a.repeats, CLOCKS[a.clock]))
        row = [next(timed) if p else float("nan") for p in present]
        print(f"| {op.name} | " + " | ".join(f"{v:.1f}" for v in row) + " |", flush=True)


if __name__ == "__main__":
    main()
