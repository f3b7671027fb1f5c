"""Where a sampler's wall time goes, from torch.profiler: the score model, fastsamp's ops, the rest.

The samplers mark their phases with `record_function` ranges of stable names (`PHASES`):

    fastsamp.predictor    the reverse-SDE step between noise levels (with its score call)
    fastsamp.corrector    the MCMC moves at one noise level
    fastsamp.mh           the MH test of a generic corrector move (its accept op; inside the corrector)
    fastsamp.score_model  one call of the user's model (score, log_prob); fastsamp.log_weight: the
                          importance weight's gradient; fastsamp.policy: the trained diffusion
                          sampler's network (all three: the user's model)

and fastsamp's ops registered with the dispatcher appear as `fastsamp::<op>` events. `breakdown()`
profiles a block and splits its wall time into three shares that sum to 1:

    score_model   time inside the model ranges
    ops           time inside `fastsamp::` op events, outside the model ranges
    overhead      everything else: Python, and torch ops run outside both (e.g. by the samplers' glue)

Host (CPU) time: on a GPU the shares are those of the launching thread, so asynchronous kernels count
where the host waits for them. Profiling has a cost (about a microsecond per torch op event): compare
`Breakdown.wall_s` with an unprofiled run's wall time.

    with fastsamp.profiling.breakdown(trace="trace.json") as b:     # or fastsamp.profile(fn, *args)
        x, stats = annealed_mcmc(model, 2048, corrector="mala")
    print(b)                                                        # b.shares: the three shares

`cpu_model()` and `machine(device)` name the hardware a time was measured on, for the records that keep times.
"""
from __future__ import annotations

import contextlib
import platform
from collections import defaultdict
from dataclasses import dataclass, field

import torch

PREFIX = "fastsamp."
OP_NAMESPACE = "fastsamp::"
ROOT = PREFIX + "profile"
MODEL_RANGES = (PREFIX + "score_model", PREFIX + "log_weight", PREFIX + "policy")
PHASES = (PREFIX + "predictor", PREFIX + "corrector", PREFIX + "mh") + MODEL_RANGES

_profiler_enabled = torch._C._autograd._profiler_enabled  # what RecordFunction itself consults (~0.1 µs)
_NO_RANGE = contextlib.nullcontext()


def phase(name: str):
    """The `record_function` range `fastsamp.<name>` while a profiler records, else a shared no-op
    context (an idle record_function still costs about 8 µs per use: it calls into the dispatcher)."""
    if _profiler_enabled():
        return torch.profiler.record_function(PREFIX + name)
    return _NO_RANGE


@dataclass
class Breakdown:
    """The wall time of a profiled block (seconds) and its parts. `phases`: seconds in each
    fastsamp.<phase> range (nested ranges of one name counted once); `ops`: seconds in each
    registered fastsamp op outside the model; `other`: the overhead's largest items, (name, self
    seconds, count), where "X: outside torch ops" is time inside range X that no torch op event
    covers (Python, or a kernel not registered with the dispatcher)."""

    wall_s: float = 0.0
    score_model_s: float = 0.0
    ops_s: float = 0.0
    phases: dict = field(default_factory=dict)
    ops: dict = field(default_factory=dict)
    other: list = field(default_factory=list)
    n_events: int = 0

    @property
    def overhead_s(self) -> float:
        return max(self.wall_s - self.score_model_s - self.ops_s, 0.0)

    @property
    def shares(self) -> dict:
        """{"score_model", "ops", "overhead"}: fractions of the wall time, summing to 1."""
        if self.wall_s <= 0:
            return {"score_model": 0.0, "ops": 0.0, "overhead": 1.0}
        score, ops = self.score_model_s / self.wall_s, self.ops_s / self.wall_s
        return {"score_model": score, "ops": ops, "overhead": 1.0 - score - ops}

    def as_dict(self) -> dict:
        return {"wall_s": self.wall_s, "score_model_s": self.score_model_s, "ops_s": self.ops_s,
                "overhead_s": self.overhead_s, "shares": self.shares, "phases": self.phases, "ops": self.ops,
                "other": [list(row) for row in self.other], "n_events": self.n_events}

    def __str__(self) -> str:
        s = self.shares
        lines = [f"profile: {self.wall_s:.4f} s wall, {self.n_events} profiler events",
                 f"  score model {s['score_model']:7.1%}  {self.score_model_s:.4f} s",
                 f"  fastsamp ops{s['ops']:7.1%}  {self.ops_s:.4f} s",
                 f"  overhead    {s['overhead']:7.1%}  {self.overhead_s:.4f} s  (Python, other torch ops)"]
        if not self.ops:
            lines.append("  (no fastsamp:: op events: fastsamp's ops are not registered with the dispatcher in "
                         "this build, so their time counts as overhead)")
        for title, rows in (("phases", sorted(self.phases.items(), key=lambda kv: -kv[1])),
                            ("ops", sorted(self.ops.items(), key=lambda kv: -kv[1])[:10])):
            if rows:
                lines.append(f"  {title}: " + ", ".join(f"{k} {v / self.wall_s:.1%}" for k, v in rows))
        if self.other:
            lines.append("  largest overhead items (self time): " + ", ".join(
                f"{name} {sec / self.wall_s:.1%} ({n}x)" for name, sec, n in self.other))
        return "\n".join(lines)


def _fill(result: Breakdown, events, n_other: int) -> None:
    """Split the ROOT range of `events` (torch's kineto events) into the Breakdown's parts."""
    root = next((e for e in events if e.name() == ROOT), None)
    if root is None:
        raise RuntimeError(f"the profiler recorded no {ROOT!r} range (was another profiler already running?)")
    thread = root.start_thread_id()
    rows = sorted(((e.start_ns(), -e.duration_ns(), e.name()) for e in events
                   if e.start_thread_id() == thread and e.device_type() == torch.autograd.DeviceType.CPU),
                  key=lambda r: r[:2])
    result.n_events = len(rows)
    phases, ops = defaultdict(int), defaultdict(int)
    other_ns, other_n = defaultdict(int), defaultdict(int)
    score_ns = ops_ns = 0
    # one pass with the stack of open events: [end, name, self ns, class]; class "model", "op" or None
    stack = []

    def close(until):
        while stack and stack[-1][0] <= until:
            end, name, self_ns, cls = stack.pop()
            if cls is None:
                key = f"{name}: outside torch ops" if name.startswith(PREFIX) else name
                other_ns[key] += self_ns
                other_n[key] += 1

    for start, neg_dur, name in rows:
        dur = -neg_dur
        close(start)
        if stack:
            stack[-1][2] -= dur
        parent = stack[-1][3] if stack else None
        open_names = {s[1] for s in stack}
        if name in PHASES and name not in open_names:
            phases[name.removeprefix(PREFIX)] += dur
        cls = parent
        if parent is None and name in MODEL_RANGES:
            cls, score_ns = "model", score_ns + dur
        elif parent is None and name.startswith(OP_NAMESPACE):
            op = name.removeprefix(OP_NAMESPACE)
            cls, ops_ns = "op", ops_ns + dur
            ops[op] += dur
        stack.append([start + dur, name, dur, cls])
    close(float("inf"))
    ns = 1e-9
    result.wall_s = root.duration_ns() * ns
    result.score_model_s, result.ops_s = score_ns * ns, ops_ns * ns
    result.phases = {k: v * ns for k, v in phases.items()}
    result.ops = {k: v * ns for k, v in ops.items()}
    top = sorted(other_ns, key=lambda k: -other_ns[k])[:n_other]
    result.other = [(k, other_ns[k] * ns, other_n[k]) for k in top]


@contextlib.contextmanager
def breakdown(trace=None, *, n_other: int = 8):
    """Profile the block with torch.profiler (CPU; also CUDA when a GPU is visible) and yield a
    `Breakdown` filled in when the block ends; `trace`: a path to write the Chrome trace to
    (chrome://tracing, Perfetto). `n_other`: how many overhead items to list."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    result = Breakdown()
    with torch.profiler.profile(activities=activities) as prof:
        with torch.profiler.record_function(ROOT):
            yield result
    _fill(result, prof.profiler.kineto_results.events(), n_other)
    if trace is not None:
        prof.export_chrome_trace(str(trace))


def profile(fn, *args, trace=None, show=True, **kwargs):
    """Run fn(*args, **kwargs) under `breakdown(trace)`, print the breakdown (unless `show` is False)
    and return (fn's result, the Breakdown)."""
    with breakdown(trace) as b:
        result = fn(*args, **kwargs)
    if show:
        print(b)
    return result, b


def cpu_model() -> str:
    """The CPU's model name and its vector ISA level (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return platform.processor() or platform.machine()
    fields = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor only
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    name = fields.get("model name", platform.machine())
    flags = fields.get("flags", "").split()
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{name} (family {fields.get('cpu family', '?')} model {fields.get('model', '?')}, {isa})"


def machine(device) -> str:
    """The processor that runs work on `device`: the GPU's name, or `cpu_model()`."""
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
