"""torch.compile(fullgraph=True) of the steps users write around fastsamp's ops: a t-dependent annealed
level (the time changes between calls), out= calls and the policy ops; no graph break, eager's values, and
the number of compiles over the levels (a float t: one graph per value; a 0-d tensor t: the graph is reused)."""
import math

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounter, CompileCounterWithBackend

import fastsamp
from fastsamp import VE, VP, backends, ops

D = 3
SCHEDULE = VP()
LEVELS = (0.9, 0.7, 0.5, 0.3, 0.1)


class TimeScore(nn.Module):
    """A user's score network s(x, t) (t a float or a 0-d tensor)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(D + 1, 16), nn.Tanh(), nn.Linear(16, D))

    def forward(self, x, t):
        return self.net(torch.cat([x, torch.ones_like(x[:, :1]) * t], 1))


def corrector(net, x, t, offset):
    """One annealed MALA move at level t with the score-MH test (trapezoid, 2 interior points): step size
    0.1 σ_t², the network's score divided by σ_t (the schedule's marginal)."""
    sigma = SCHEDULE.sigma(t)
    eps = 0.1 * SCHEDULE.sigma2(t)
    s = net(x, t) / sigma
    x_prop = ops.mala_propose(x, s, eps, seed=3, offset=offset)
    pts = ops.line_points(x, x_prop, 3)
    s_prop = net(x_prop, t) / sigma
    interior = net(pts.reshape(-1, D), t).reshape(pts.shape) / sigma
    return ops.score_mh_accept(x, x_prop, s, s_prop, eps, interior_scores=interior, seed=3, offset=offset)


def level(net, x, t, offset):
    """A corrector move at t, then the reverse SDE step t → t − 0.05."""
    with torch.no_grad():
        x, s, accepted, _ = corrector(net, x, t, offset)
        return ops.reverse_sde_step(x, s, t=t, h=0.05, schedule=SCHEDULE, seed=4, offset=offset), accepted


def test_annealed_level_with_a_float_time(dynamo_reset):
    """No graph break with validation on (the schedule's and the ops' value checks are skipped while tracing);
    one graph per level: a float t is a constant of the graph (t-dependent kernel coefficients are floats)."""
    net, x = TimeScore(), torch.randn(64, D)
    assert fastsamp.validation_enabled()
    explain = torch._dynamo.explain(level)(net, x, 0.5, 1)
    assert explain.graph_break_count == 0 and explain.graph_count == 1, explain.break_reasons
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(level, backend=counter, fullgraph=True)
    for i, t in enumerate(LEVELS):
        for got, expect in zip(compiled(net, x, t, i), level(net, x, t, i)):
            torch.testing.assert_close(got, expect, rtol=0, atol=0)
    assert counter.frame_count == len(LEVELS)


@pytest.mark.parametrize("arg", ["sigma", "t", "h", "explore"])
def test_em_step_with_a_changing_float_compiles_per_value(dynamo_reset, arg):
    """em_step_logprob's float arguments are constants of the graph: each new value recompiles (a float turns
    symbolic at its first recompile; torch 2.13 then failed a guard on sigma's s² = σ²h 'on the frame that created
    it') and gives eager's values."""
    x, drift = torch.randn(4, D, dtype=torch.float64), torch.randn(4, D, dtype=torch.float64)
    kw = dict(sigma=1.3, t=0.3, h=0.05, explore=0.2, seed=4)

    def step(v):
        return ops.em_step_logprob(x, drift, **{**kw, arg: v})

    counter = CompileCounter()
    compiled = torch.compile(step, backend=counter, fullgraph=True)
    for v in (0.1, 0.2, 0.3, 0.4):
        for got, expect in zip(compiled(v), step(v)):
            torch.testing.assert_close(got, expect, rtol=0, atol=0)
    assert counter.frame_count == 4


def test_corrector_with_a_tensor_time_reuses_its_graph(dynamo_reset):
    """A 0-d tensor t is an input of the graph: five levels compile at most twice (the second time the
    offset turns dynamic) and match eager."""
    net, x = TimeScore(), torch.randn(64, D)

    def step(x, t, offset):
        with torch.no_grad():
            return corrector(net, x, t, offset)[:3]

    counter = CompileCounter()
    compiled = torch.compile(step, backend=counter, fullgraph=True)
    for i, t in enumerate(LEVELS):
        t = torch.tensor(t)
        for got, expect in zip(compiled(x, t, i), step(x, t, i)):
            torch.testing.assert_close(got, expect, rtol=0, atol=0)
    assert counter.frame_count <= 2


@pytest.mark.parametrize("schedule", [VP(), VE()], ids=["VP", "VE"])
def test_schedule_time_check_follows_the_validation_switch(schedule):
    """A float time outside [0, 1] or not finite: ValueError with validation on, the formula's value with it
    off; a tensor of integer times is refused either way (a structure check)."""
    for bad in (1.5, -0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="t must be a finite time in"):
            schedule.sigma2(bad)
    with fastsamp.validation(False):
        assert isinstance(schedule.sigma2(1.5), float)
        with pytest.raises(TypeError, match="t must be a float or a floating tensor"):
            schedule.sigma2(torch.tensor(1))
    with pytest.raises(ValueError, match="t must be a finite time"):
        schedule.g2(2.0)


def test_mala_move_into_one_batch_compiles(dynamo_reset):
    """The generic MALA move's batch under torch.compile: mala_propose and line_points with out= views of one
    (3B, D) batch the network scores in one call; no graph break, eager's values and batch."""
    net = TimeScore()

    def move(x, batch):
        with torch.no_grad():
            B = x.shape[0]
            s = net(x, 0.5)
            x_prop = ops.mala_propose(x, s, 0.05, seed=3, offset=2, out=batch[:B])
            ops.line_points(x, x_prop, 3, out=batch[B:].view(2, B, D))
            scores = net(batch, 0.5)
            return ops.score_mh_accept(x, x_prop, s, scores[:B], 0.05, interior_scores=scores[B:].view(2, B, D),
                                       seed=3, offset=2)

    x = torch.randn(9, D)
    explain = torch._dynamo.explain(move)(x, torch.empty(27, D))
    assert explain.graph_break_count == 0 and explain.graph_count == 1, explain.break_reasons
    batch_c, batch_e = torch.empty(27, D), torch.empty(27, D)
    got = torch.compile(move, fullgraph=True, backend="aot_eager")(x, batch_c)
    expect = move(x, batch_e)
    for g, e in zip(got, expect):
        torch.testing.assert_close(g, e, rtol=0, atol=0)
    torch.testing.assert_close(batch_c, batch_e, rtol=0, atol=0)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_score_mh_accept_stack_form_compiles(dynamo_reset, dynamic):
    """score_prop as the (n, B, D) stack of one batch's scores (interior_scores None; the registered op takes its
    ((M + 1)·B, D) rows) under torch.compile: no graph break, the bits of the eager call and of the sets given
    apart for two B; one graph for both B when B is symbolic (dynamic), one per B when static."""
    def accept(x, x_prop, s, scores):
        return ops.score_mh_accept(x, x_prop, s, scores.view(3, x.shape[0], D), 0.05, seed=3, offset=2)

    g = torch.Generator().manual_seed(0)
    sets = [[torch.randn(B, D, generator=g) for _ in range(3)] + [torch.randn(3 * B, D, generator=g)] for B in (9, 5)]
    explain = torch._dynamo.explain(accept)(*sets[0])  # explain resets dynamo: run it before counting compiles
    assert explain.graph_break_count == 0 and explain.graph_count == 1, explain.break_reasons
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(accept, fullgraph=True, backend=counter, dynamic=dynamic)
    for x, x_prop, s, scores in sets:
        B = x.shape[0]
        apart = ops.score_mh_accept(x, x_prop, s, scores[:B], 0.05, interior_scores=scores[B:].view(2, B, D), seed=3,
                                    offset=2)
        for a, e, p in zip(compiled(x, x_prop, s, scores), accept(x, x_prop, s, scores), apart):
            assert torch.equal(a, e) and torch.equal(a, p)
    assert counter.frame_count == (1 if dynamic else 2)


def test_out_call_compiles(dynamo_reset):
    """out= under torch.compile: no graph break (the overlap check reads addresses only in eager; the traced op
    is functional and copied into out); out is written in place as in eager."""
    def step(x, s):
        with torch.no_grad():
            return ops.reverse_sde_step(x, s, t=0.5, h=0.01, schedule=SCHEDULE, seed=3, offset=1, out=x)

    x, s = torch.randn(8, D), torch.randn(8, D)
    explain = torch._dynamo.explain(step)(x.clone(), s)
    assert explain.graph_break_count == 0 and explain.graph_count == 1, explain.break_reasons
    x_c, x_e = x.clone(), x.clone()
    got = torch.compile(step, fullgraph=True, backend="aot_eager")(x_c, s)
    expect = step(x_e, s)
    assert expect is x_e
    torch.testing.assert_close(got, expect, rtol=0, atol=0)
    torch.testing.assert_close(x_c, x_e, rtol=0, atol=0)
    with pytest.raises(ValueError, match="out partially overlaps x"):  # eager: as before
        buf = torch.randn(9, D)
        ops.reverse_sde_step(buf[1:], s, t=0.5, h=0.01, schedule=SCHEDULE, seed=3, out=buf[:-1])


def test_accept_outputs_compile(dynamo_reset):
    """score_mh_accept's x_out= / score_out= under torch.compile: no graph break (neither the neg bit nor the
    overlap is read while tracing), the outputs written as in eager."""
    def step(x, x_prop, s, s_prop, x_out, s_out):
        with torch.no_grad():
            return ops.score_mh_accept(x, x_prop, s, s_prop, 0.1, seed=3, offset=1, x_out=x_out, score_out=s_out)

    g = torch.Generator().manual_seed(0)
    args = [torch.randn(8, D, generator=g) for _ in range(4)]
    explain = torch._dynamo.explain(step)(*args, torch.empty(8, D), torch.empty(8, D))
    assert explain.graph_break_count == 0 and explain.graph_count == 1, explain.break_reasons
    outs_c, outs_e = (torch.empty(8, D), torch.empty(8, D)), (torch.empty(8, D), torch.empty(8, D))
    got = torch.compile(step, fullgraph=True, backend="aot_eager")(*args, *outs_c)
    expect = step(*args, *outs_e)
    assert expect[0] is outs_e[0] and expect[1] is outs_e[1]
    for a, b in zip(got + outs_c, expect + outs_e):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _policy_calls():
    """A small float64 DriftNet's states (T+1, B, 2) and temb (T, H) (seed 0), and the calls of its policy ops that
    the policy tests compile: log_pf(states, temb) and rollout(temb)."""
    from fastsamp.samplers.diffusion import DriftNet
    torch.manual_seed(0)
    T, B, H = 3, 5, 8
    net = DriftNet(2, hidden=H, n_harmonics=4, n_layers=1).double()
    states, temb = torch.randn(T + 1, B, 2, dtype=torch.float64), torch.randn(T, H, dtype=torch.float64)

    def log_pf(states, temb):
        return ops.policy_log_pf(net, states, temb, sigma=1.0)

    def rollout(temb):
        return ops.policy_rollout(net, temb, B, sigma=1.0, seed=1)
    return states, temb, log_pf, rollout


def test_policy_ops_compile(dynamo_reset, monkeypatch):
    """policy_log_pf (forward and its fused backward) and policy_rollout: no graph break (the thread count is
    read by the kernel's glue, the backend resolved while tracing, its module's first load included: no backend
    is loaded when the test starts, as in a fresh process, whichever tests ran before), eager's values and
    gradients."""
    monkeypatch.setattr(backends, "_loaded", {})
    states, temb, log_pf, rollout = _policy_calls()
    for fn, args in ((log_pf, (states, temb)), (rollout, (temb,))):
        explain = torch._dynamo.explain(fn)(*args)
        assert explain.graph_break_count == 0, explain.break_reasons
        for got, expect in zip(torch.compile(fn, fullgraph=True, backend="aot_eager")(*args), fn(*args)):
            torch.testing.assert_close(got, expect, rtol=0, atol=0)
    temb = temb.requires_grad_()
    compiled = torch.compile(log_pf, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(torch.autograd.grad(compiled(states, temb).sum(), temb),
                               torch.autograd.grad(log_pf(states, temb).sum(), temb), rtol=0, atol=0)


def test_compiled_policy_ops_as_a_first_call_compile_once(dynamo_reset, monkeypatch):
    """A compiled policy_rollout / policy_log_pf (forward and backward) that is its process's first op call and
    its net's first: one compile over its calls. Tracing reads neither the loaded-backend registry nor the nets'
    memo of checked layers, which the first call fills (a guard on them failed on the second call: it recompiled)."""
    monkeypatch.setattr(backends, "_loaded", {})
    states, temb, log_pf, rollout = _policy_calls()
    temb.requires_grad_()
    for fn, args in ((log_pf, (states, temb)), (rollout, (temb.detach(),))):
        counter = CompileCounter()
        compiled = torch.compile(fn, backend=counter, fullgraph=True)
        for _ in range(3):
            out = compiled(*args)
            if fn is log_pf:
                torch.autograd.grad(out.sum(), temb)
        fn(*args)  # an eager call in between: the same graph after it
        compiled(*args)
        assert counter.frame_count == 1


def test_policy_ops_compile_without_the_extension():
    """With fastsamp._C unavailable (not built), a compiled policy op after an eager call traces without a graph
    break and equals eager: tracing reads the failed load (`backends._failed`) instead of retrying the import,
    which dynamo cannot trace. A fresh process, as the extension is loaded in this one."""
    script = (
        "import sys, warnings; sys.modules['fastsamp._C'] = None; warnings.simplefilter('ignore')\n"
        "import torch, test_compile_steps as t\n"
        "states, temb, log_pf, rollout = t._policy_calls()\n"
        "for fn, args in ((log_pf, (states, temb)), (rollout, (temb,))):\n"
        "    expect = fn(*args)\n"
        "    got = torch.compile(fn, fullgraph=True, backend='aot_eager')(*args)\n"
        "    for g, e in zip(got, expect): torch.testing.assert_close(g, e, rtol=0, atol=0)\n"
        "print('ok')\n")
    import os
    import subprocess
    import sys
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


class FilledTimeScore(TimeScore):
    """TimeScore with its time column made by torch.full_like from a float t (which torch.compile specialises on:
    one graph per value), by expanding a tensor t."""

    def forward(self, x, t):
        column = t.expand(x.shape[0], 1) if isinstance(t, torch.Tensor) else torch.full_like(x[:, :1], t)
        return self.net(torch.cat([x, column], 1))


@pytest.mark.parametrize("time_as_tensor", [False, True], ids=["float_t", "tensor_t"])
def test_compiled_network_in_a_sampler(dynamo_reset, time_as_tensor):
    """A user's torch.compile'd network inside annealed_mcmc: with a float t (the protocol's) it compiles once per
    noise level; wrapped with ScoreModel(..., time_as_tensor=True) it gets t as a 0-d tensor and compiles at most
    once per batch shape (the chains and the trapezoid batch) for all the levels. Eager's samples either way."""
    from fastsamp.models import ScoreModel
    from fastsamp.samplers import annealed_mcmc

    net, n_levels = FilledTimeScore(), 6
    counter = CompileCounterWithBackend("aot_eager")
    kw = {"n_levels": n_levels, "n_corrector_steps": 2, "n_trapezoid": 3, "step_size": 0.05, "seed": 1}
    compiled = ScoreModel(torch.compile(net, backend=counter), D, time_as_tensor=time_as_tensor)
    x, stats = annealed_mcmc(compiled, 64, **kw)
    x_eager, stats_eager = annealed_mcmc(ScoreModel(net, D), 64, **kw)
    torch.testing.assert_close(x, x_eager, rtol=0, atol=0)
    assert stats.accept_rate == stats_eager.accept_rate
    if time_as_tensor:
        assert counter.frame_count <= 2, counter.frame_count
    else:
        assert counter.frame_count >= n_levels, counter.frame_count


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_time_as_tensor_gives_the_float_time_values(dtype):
    """ScoreModel / EnergyModel with time_as_tensor: the network sees a 0-d tensor of x's dtype (a new one when the
    dtype or t changes) and the model's score and log-density equal those with the float t."""
    from fastsamp.models import EnergyModel, ScoreModel

    seen = []

    def energy(x, t):
        seen.append(t)
        return (x * x).sum(1) * (1 + t) + torch.sin(x[:, 0] * t)

    x = torch.randn(7, D, dtype=dtype)
    plain, tensor_t = EnergyModel(energy, D), EnergyModel(energy, D, time_as_tensor=True)
    for t in (0.3, 0.3, 0.7):
        torch.testing.assert_close(tensor_t.score(x, t), plain.score(x, t), rtol=0, atol=0)
        torch.testing.assert_close(tensor_t.log_prob(x, t), plain.log_prob(x, t), rtol=0, atol=0)
    tensors = [t for t in seen if isinstance(t, torch.Tensor)]
    assert len(tensors) == 6 and all(t.dim() == 0 and t.dtype == dtype for t in tensors)
    assert tensors[0] is tensors[3] and tensors[3] is not tensors[4]  # kept for t = 0.3, new for 0.7
    net = TimeScore().to(dtype)
    torch.testing.assert_close(ScoreModel(net, D, time_as_tensor=True).score(x, 0.4), ScoreModel(net, D).score(x, 0.4),
                               rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["score", "energy"])
def test_fused_network_step_compiles_fullgraph(dynamo_reset, kind):
    """A step around the fused network moves with the network made inside it (`ScoreMLP.score_net`,
    `EnergyMLP.energy_net`) compiles with fullgraph=True (σ_d² a Python float, `FourierMLP._mirror_data_var`: no
    `.item()`), gives eager's bits, and follows the model's data_var through load_state_dict and .double()."""
    from fastsamp.models import EnergyMLP, ScoreMLP

    cls, move = (ScoreMLP, ops.mlp_mala) if kind == "score" else (EnergyMLP, ops.mlp_energy_mala)
    torch.manual_seed(0)
    net = cls(2, hidden=16, n_freq=4, data_var=1.7)
    make = net.score_net if kind == "score" else net.energy_net

    def step(x):
        return move(x, make(0.5, x), step_size=0.05, n_steps=2, seed=3)

    compiled = torch.compile(step, fullgraph=True, backend="eager")
    x = torch.randn(33, 2)
    for model_change in (None, lambda: net.load_state_dict(cls(2, hidden=16, n_freq=4, data_var=0.6).state_dict()),
                         lambda: net.double()):
        if model_change is not None:
            model_change()
            x = x.to(net.freq.dtype)
        for got, want in zip(compiled(x), step(x), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert net._data_var == float(net.data_var) == pytest.approx(0.6)
