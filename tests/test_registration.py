"""The registered ops torch.ops.fastsamp.<op> (fastsamp/ops/_library.py): opcheck, torch.compile with no
graph break, torch.export, gradcheck through the registered autograd formulas, u64 seeds past int64."""
import pytest
import torch
from torch import nn

import fastsamp
from fastsamp import VP, ops
from fastsamp.ops import _library, _table, reference

F64 = torch.float64
B, D, K = 5, 3, 2
T, H = 2, 4  # policy steps, hidden width
EM = (0.01, 0.5, 0.1, 0.9, 0.45)  # h, s2, e2, c, b2


def rand(*shape, dtype=F64, positive=False, grad=False):
    t = torch.randn(*shape, dtype=dtype)
    t = t.abs() + 0.5 if positive else t
    return t.requires_grad_(grad)


def mlp_args(x, energy=False):
    """The backend arguments of a small ScoreMLP's score (EnergyMLP's with `energy`) at t = 0.5 plus a mixture
    (fastsamp/ops/mlp.py)."""
    from fastsamp.models import EnergyMLP, ScoreMLP
    from fastsamp.ops.mlp import MixtureScore, _energy_sum_args, _score_sum_args
    torch.manual_seed(0)
    net = (EnergyMLP if energy else ScoreMLP)(D, hidden=8, n_freq=2, data_mean=torch.randn(D), data_var=1.7).to(
        x.dtype).requires_grad_(False)
    mixture = MixtureScore(torch.randn(K, D, dtype=x.dtype), torch.zeros(K, dtype=x.dtype),
                           torch.ones(K, dtype=x.dtype), 0.9, 0.1)
    if energy:
        return _energy_sum_args(x.detach(), net.fused_net(0.5, x), mixture, need_energy=True)
    return _score_sum_args(x.detach(), net.score_net(0.5, x), mixture)


def op_args(name, dtype, grad=False, noise=True):
    """Backend-signature arguments of registered op `name` (u64 seeds past int64, encoded as the schema's int64)."""
    seed, offset = _library.encode_u64(2**64 - 3), _library.encode_u64(2**63 + 11)
    x, s = rand(B, D, dtype=dtype, grad=grad), rand(B, D, dtype=dtype, grad=grad)
    eps = rand(B, dtype=dtype, positive=True, grad=grad)
    xi = rand(B, D, dtype=dtype, grad=grad) if noise else None
    mix = (rand(K, D, dtype=dtype, grad=grad), rand(K, dtype=dtype, grad=grad),
           rand(K, dtype=dtype, positive=True, grad=grad))
    u = torch.rand(B, dtype=dtype)
    temb, states = rand(T, H, dtype=dtype), rand(T + 1, B, D, dtype=dtype)
    net = [0.3 * rand(*shape, dtype=dtype) for shape in ((H, D), (H,), (2 * D, H), (2 * D,), (H, H), (H,))]
    ts = torch.arange(T, dtype=F64) * 0.5
    return {
        "gmm_score": (x, *mix, 0.8, 0.3),
        "sde_step": (x, s, rand(B, D, dtype=dtype, grad=grad), xi, seed, offset, 4, 1.01, 0.02, 0.1),
        "guided_sde_step": (x, s, rand(B, D, dtype=dtype, grad=grad), rand(B, D, dtype=dtype, grad=grad), xi, seed,
                            offset, 4, 1.01, 0.02, 0.5, 3.0, 0.1),
        "mala_propose": (x, s, eps, xi, seed, offset, 4),
        "line_points": (x, s, 3),
        "score_mh_accept": (x, x + 0.1, s, s, eps, u, rand(2, B, D, dtype=dtype), 0, 0, 0),
        "energy_mh_accept": (x, x + 0.1, s, s, rand(B, dtype=dtype), rand(B, dtype=dtype), eps, None, seed, offset,
                             4),  # u drawn in-kernel
        "leapfrog": (x, rand(B, D, dtype=dtype, grad=grad), s, eps),
        "leapfrog_finish": (x, rand(B, D, dtype=dtype, grad=grad), rand(B, D, dtype=dtype, grad=grad), s,
                            rand(B, D, dtype=dtype, grad=grad), eps, rand(B, dtype=dtype, grad=grad)),
        "hmc_accept": (x, x + 0.1, s, s, s, s * 0.5, rand(B, dtype=dtype), None, seed, offset, 4),
        "momentum_refresh": (x, 0.3, xi, seed, offset, 4),
        "gmm_mala": (x, *mix, eps * 0.1, 2, 2, 0.9, 0.1, seed, offset, 4, 0),
        "gmm_hmc": (x, *mix, eps * 0.1, 2, 2, 0.9, 0.1, seed, offset, 4, 0, 0.5),
        "em_step_logprob": (x, s, rand(B, D, dtype=dtype), None if noise else rand(B, D, dtype=dtype), xi, seed,
                            offset, 4, *EM),
        "em_step_logprob_backward": (x, s, rand(B, D, dtype=dtype) if noise else None, rand(B, D, dtype=dtype),
                                     rand(B, D, dtype=dtype) if noise else None, rand(B, dtype=dtype),
                                     rand(B, dtype=dtype), *EM, noise, noise),
        "policy_rollout": (rand(B, D, dtype=dtype) if noise else None, temb, net, ts, B, 1.0, 0.5, 0.1, 5.0, seed, 4,
                           1, noise),  # noise: with the kept activations
        "policy_log_pf": (states, temb, net, 1.0, 0.5, 5.0, 1),
        # the Langevin rollout: an isotropic mixture target (kind 1) with x0 and lgv (T, D); Neal's funnel (kind 2)
        # from 0 with lgv (T, 1)
        "policy_langevin_rollout": (*((rand(B, D, dtype=dtype), temb, net, rand(T, D, dtype=dtype), 0.3, ts, B, 1.0,
                                       0.5, 0.1, 5.0, seed, 4, 1, rand(K, D, dtype=dtype), 1.5) if noise
                                      else (None, temb, net, rand(T, 1, dtype=dtype), 0.3, ts, B, 1.0, 0.5, 0.1, 5.0,
                                            seed, 4, 2, None, 3.0)), 1, noise),
        "policy_reparam_backward": (states, temb, net, ts, *((rand(T + 1, B, D, dtype=dtype), rand(B, T, dtype=dtype),
                                                              1.0, 0.5, 5.0, 1, rand(T, D, dtype=dtype), 0.3,
                                                              rand(T, B, D, dtype=dtype)) if noise
                                                             else (None, rand(B, T, dtype=dtype), 1.0, 0.5, 5.0, 1,
                                                                   None, 0.0, None))),
        "mlp_score": mlp_args(x),
        "mlp_mala": mlp_args(x) + (eps * 0.1, 2, 2, seed, offset, 4, 0),
        "mlp_hmc": mlp_args(x) + (eps * 0.1, 2, 2, seed, offset, 4, 0, 0.5),
        "mlp_energy": mlp_args(x, energy=True),
        "mlp_energy_mala": mlp_args(x, energy=True) + (eps * 0.1, 2, 2, seed, offset, 4, 1),
        "mlp_energy_hmc": mlp_args(x, energy=True) + (eps * 0.1, 2, 2, seed, offset, 4, 1, 0.5),
        "mlp_net": (x, net, 1),  # the DriftNet layers as one MLP (D inputs, 2D outputs), SiLU
        "mlp_net_train": (x, net, 1),
        "mlp_net_backward": (x, net, 1, rand(B, 2 * D, dtype=dtype), noise,
                             reference.mlp_net_train(x.detach(), [p.detach() for p in net], 1)[1] if noise else None),
        # with / without the training forward's kept activations
        "mlp_net_lsq": (x, net, 1, rand(B, 2 * D, dtype=dtype), rand(B, dtype=dtype)),
        "mlp_net_energy_lsq": (x, [net[0], net[1], 0.3 * rand(D, H, dtype=dtype), rand(D, dtype=dtype), *net[4:]], 1,
                               rand(B, D, dtype=dtype), rand(B, dtype=dtype, positive=True), rand(B, dtype=dtype),
                               rand(B, D, dtype=dtype)),  # O = D outputs: the state is x
        "normal": (seed, offset, B, D, dtype, torch.device("cpu"), 4),
        "uniform": (seed, offset, B, dtype, torch.device("cpu"), 4),
        "policy_log_pf_backward": (states, temb, net, rand(B, T, dtype=dtype), 1.0, 0.5, 5.0, 1,
                                   *((rand(T, D, dtype=dtype), 0.3, rand(T, B, D, dtype=dtype),
                                      rand(T, len(net) - 2, B, H, dtype=dtype))
                                     if noise else (None, 0.0, None, None))),  # with / without the Langevin term
        # and kept activations
    }[name]


REGISTERED = [op.name for op in _table.registered()]
DIFFERENTIABLE = [op.name for op in _table.registered() if op.grad]


@pytest.mark.parametrize("name", REGISTERED)
def test_opcheck(name):
    """Schema, fake implementation, autograd registration and AOT dispatch (float64 with grad where the op has
    a backward; float32 without)."""
    op = getattr(torch.ops.fastsamp, name).default
    torch.library.opcheck(op, op_args(name, F64, grad=name in DIFFERENTIABLE))
    torch.library.opcheck(op, op_args(name, torch.float32, noise=False),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_gradcheck(name):
    """The registered backward formulas (closed forms; gmm_score through the reference's vjp) in float64."""
    op = getattr(torch.ops.fastsamp, name).default
    args = op_args(name, F64, grad=True)
    assert torch.autograd.gradcheck(lambda *a: op(*a), args)
    if "noise" in [a.name for a in _table.OPS[name].args]:
        assert torch.autograd.gradcheck(lambda *a: op(*a), op_args(name, F64, grad=True, noise=False))


def test_gradcheck_through_the_public_ops():
    """backend="auto" with inputs that require grad: the compiled forward and the registered backward."""
    x, s, xi = rand(B, D, grad=True), rand(B, D, grad=True), rand(B, D, grad=True)
    eps = rand(B, positive=True, grad=True)
    mix = rand(K, D, grad=True), rand(K, grad=True), rand(K, positive=True, grad=True)
    score = ops.gmm_score(x, *mix, alpha=0.8, sigma2=0.3)[0]
    assert "fastsamp_gmm_score" in type(score.grad_fn).__name__
    assert torch.autograd.gradcheck(lambda *a: ops.gmm_score(*a, alpha=0.8, sigma2=0.3), (x, *mix))
    vp = dict(t=0.5, h=0.01, schedule=VP())
    assert torch.autograd.gradcheck(lambda *a: ops.reverse_sde_step(a[0], a[1], noise=a[2], **vp), (x, s, xi))
    assert torch.autograd.gradcheck(lambda *a: ops.mala_propose(*a[:3], noise=a[3]), (x, s, eps, xi))
    assert torch.autograd.gradcheck(lambda *a: ops.line_points(*a, 4), (x, s))
    assert torch.autograd.gradcheck(lambda *a: ops.leapfrog(*a), (x, xi, s, eps))


def test_op_without_backward_refuses_grad():
    x = rand(B, D, grad=True)
    args = op_args("score_mh_accept", F64)
    with pytest.raises(RuntimeError, match="score_mh_accept has no backward"):
        torch.ops.fastsamp.score_mh_accept(x, *args[1:])
    with torch.no_grad():
        torch.ops.fastsamp.score_mh_accept(x, *args[1:])
    # the public op with backend="auto" runs the differentiable reference, as before registration
    x_new = ops.score_mh_accept(x, *args[1:6])[0]
    assert x_new.requires_grad
    # tracing raises where eager raises (the Autograd kernel runs before the fake)
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in (x, *args[1:])]
        with pytest.raises(RuntimeError, match="score_mh_accept has no backward"):
            torch.ops.fastsamp.score_mh_accept(*fake)


def test_op_without_backward_refuses_functorch_grad():
    """torch.func.grad and vjp through an op without backward raise naming the op (torch's autograd fallback would
    give zero gradients with only a warning: the kernel sees unwrapped inputs that require no grad)."""
    x = rand(B, D)
    layers = [rand(8, D), rand(8), rand(D, 8), rand(D)]
    net = torch.ops.fastsamp.mlp_net
    with pytest.raises(RuntimeError, match="mlp_net has no backward"):
        torch.func.grad(lambda x: net(x, layers, 0).sum())(x)
    with pytest.raises(RuntimeError, match="mlp_net has no backward"):
        torch.func.vjp(lambda x: net(x, layers, 0), x)
    with pytest.raises(RuntimeError, match="mlp_net has no backward"):  # a weight inside the Tensor[] argument
        torch.func.grad(lambda w: net(x, [w] + layers[1:], 0).sum())(layers[0])
    args = op_args("score_mh_accept", F64)
    with pytest.raises(RuntimeError, match="score_mh_accept has no backward"):
        torch.func.grad(lambda x: torch.ops.fastsamp.score_mh_accept(x, *args[1:])[0].sum())(args[0])
    # nothing that reaches the op requires grad at the transform's level: it runs
    g = torch.func.grad(lambda w: w.sum() + net(x, layers, 0).sum())(layers[0])
    assert torch.equal(g, torch.ones_like(g))


@pytest.mark.parametrize("name", ["mala_propose", "sde_step", "momentum_refresh", "gmm_mala", "normal", "uniform"])
def test_u64_seeds_past_int64_draw_the_same_noise(name):
    """Seeds and offsets >= 2**63 travel as int64 (two's complement): the registered op, the cpp glue and the
    reference draw the same stream."""
    from fastsamp import backends
    from fastsamp.ops import reference
    args = list(op_args(name, F64, noise=False))
    got = getattr(torch.ops.fastsamp, name)(*args)
    at = [i for i, a in enumerate(_table.OPS[name].schema_args) if a.kind == "u64"]
    for i in at:
        args[i] &= _table.U64_MASK
    assert max(args[i] for i in at) >= 2**63
    expect = getattr(reference, name)(*args)
    torch.testing.assert_close(got, expect)
    if backends.is_available("cpp"):
        torch.testing.assert_close(getattr(backends._load("cpp")[0], name)(*args), got, rtol=0, atol=0)


class ScoreNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, D))

    def forward(self, x):
        return self.net(x)


def user_step(net, x, u):
    """A user's MALA step with a network score (trapezoid MH, 2 interior points), then a reverse SDE step."""
    with torch.no_grad():
        s = net(x)
        x_prop = ops.mala_propose(x, s, 0.05, seed=3, offset=7)
        s_prop = net(x_prop)
        pts = ops.line_points(x, x_prop, 3)
        interior = net(pts.reshape(-1, D)).reshape(pts.shape)
        x_new, s_new, accepted, _ = ops.score_mh_accept(x, x_prop, s, s_prop, 0.05, u, interior_scores=interior)
        return ops.reverse_sde_step(x_new, s_new, t=0.5, h=0.01, schedule=VP(), seed=3, offset=8), accepted


@pytest.mark.parametrize("validate", [True, False], ids=["validation_on", "validation_off"])
def test_compile_fullgraph_user_step(dynamo_reset, validate):
    net, x, u = ScoreNet(), torch.randn(64, D), torch.rand(64)
    with fastsamp.validation(validate):
        explain = torch._dynamo.explain(user_step)(net, x, u)
        assert explain.graph_break_count == 0 and explain.graph_count == 1, explain.break_reasons
        nodes = [str(n.target) for g in explain.graphs for n in g.graph.nodes]
        assert any("fastsamp.mala_propose" in t for t in nodes), nodes  # one opaque op
        compiled = torch.compile(user_step, fullgraph=True, backend="aot_eager")
        for got, expect in zip(compiled(net, x, u), user_step(net, x, u)):
            torch.testing.assert_close(got, expect, rtol=0, atol=0)


def test_export_user_step():
    class Step(nn.Module):
        def __init__(self):
            super().__init__()
            self.score = ScoreNet()

        def forward(self, x, u):
            return user_step(self.score, x, u)

    x, u = torch.randn(64, D), torch.rand(64)
    exported = torch.export.export(Step(), (x, u))
    targets = {str(n.target) for m in exported.graph_module.modules() if isinstance(m, torch.fx.GraphModule)
               for n in m.graph.nodes}  # the no_grad block is a submodule
    assert {"fastsamp.mala_propose.default", "fastsamp.line_points.default", "fastsamp.score_mh_accept.default",
            "fastsamp.sde_step.default"} <= targets, targets
    for got, expect in zip(exported.module()(x, u), Step()(x, u)):
        torch.testing.assert_close(got, expect, rtol=0, atol=0)


def test_registered_ops_appear_by_name_in_the_profiler():
    x = torch.randn(8, D)
    with torch.profiler.profile() as prof:
        ops.gmm_score(x, torch.randn(K, D), torch.zeros(K), torch.ones(K))
    assert "fastsamp::gmm_score" in {e.key for e in prof.key_averages()}


def test_out_through_the_registered_op():
    """out= where "auto" takes the registered op: under the profiler (named, written in place) and with an input
    that requires grad (the op's backward, its result copied into out): the fresh call's values and gradients."""
    x, s = torch.randn(5, D, dtype=F64), torch.randn(5, D, dtype=F64)
    batch = torch.empty(15, D, dtype=F64)
    with torch.profiler.profile() as prof:
        x_prop = ops.mala_propose(x, s, 0.1, seed=3, offset=1, out=batch[:5])
        points = ops.line_points(x, x_prop, 3, out=batch[5:].view(2, 5, D))
    assert {"fastsamp::mala_propose", "fastsamp::line_points"} <= {e.key for e in prof.key_averages()}
    assert x_prop.data_ptr() == batch.data_ptr() and points.data_ptr() == batch[5:].data_ptr()
    assert torch.equal(batch[:5], ops.mala_propose(x, s, 0.1, seed=3, offset=1))
    assert torch.equal(batch[5:].view(2, 5, D), ops.line_points(x, x_prop, 3))
    grads = []  # (out= refuses a tensor that requires grad: x' and the points in separate outs here)
    for outs in ((torch.empty(5, D, dtype=F64), torch.empty(2, 5, D, dtype=F64)), (None, None)):
        xg = x.clone().requires_grad_()
        xp = ops.mala_propose(xg, s, 0.1, seed=3, offset=1, out=outs[0])
        pts = ops.line_points(xg, xp, 3, out=outs[1])
        assert outs[0] is None or (xp is outs[0] and pts is outs[1])
        (xp.sum() + (pts * pts).sum()).backward()
        grads.append(xg.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


def test_compiled_step_takes_new_offsets_without_recompiling_each_time(dynamo_reset):
    """Seeds and offsets are SymInts of the schema: after one recompile (the offset turns dynamic) new
    offsets, past 2**63 too, reuse the graph and draw the eager stream."""
    from torch._dynamo.testing import CompileCounter

    def step(x, s, offset):
        x_prop = ops.mala_propose(x, s, 0.1, seed=2**64 - 1, offset=offset)
        return ops.reverse_sde_step(x_prop, s, t=0.5, h=0.01, schedule=VP(), seed=3, offset=offset)

    counter = CompileCounter()
    compiled = torch.compile(step, backend=counter, fullgraph=True)
    x, s = torch.randn(8, D), torch.randn(8, D)
    for m in range(5):
        torch.testing.assert_close(compiled(x, s, 2**63 + m), step(x, s, 2**63 + m), rtol=0, atol=0)
    assert counter.frame_count <= 2


def test_public_ops_under_fake_tensor_mode():
    """A dispatch mode watches: "auto" goes through the registered op (its fake implementation here)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    with fastsamp.validation(False), FakeTensorMode():
        x = torch.empty(6, D)
        points = ops.line_points(x, x, 4)
        score, logp = ops.gmm_score(x, torch.empty(K, D), torch.empty(K), torch.empty(K))
    assert points.shape == (3, 6, D) and score.shape == (6, D) and logp.shape == (6,)


def test_em_step_logprob_compiles_with_its_fused_backward(dynamo_reset):
    """em_step_logprob's autograd.Function calls the registered forward and backward ops: a training step
    compiles with no graph break and gives eager's values and gradients."""
    torch.manual_seed(0)
    net = nn.Linear(D, D)

    def loss(x, offset):
        x_next, log_pf, log_pb = ops.em_step_logprob(x, net(x), sigma=1.0, t=0.5, h=0.1, seed=2**64 - 1,
                                                     offset=offset, reparam=False)
        return x_next, (log_pf - log_pb).mean()

    x = torch.randn(8, D)
    explain = torch._dynamo.explain(loss)(x, 3)
    assert explain.graph_break_count == 0, explain.break_reasons
    x_e, l_e = loss(x, 3)
    x_c, l_c = torch.compile(loss, fullgraph=True, backend="aot_eager")(x, 3)
    torch.testing.assert_close((x_c, l_c), (x_e, l_e), rtol=0, atol=0)
    torch.testing.assert_close(torch.autograd.grad(l_c, net.weight), torch.autograd.grad(l_e, net.weight))


def test_random_streams_compile(dynamo_reset):
    """ops.normal / ops.uniform are registered factory ops: no graph break, eager's bits."""
    def draw(x, offset):
        B, D = x.shape
        return x + ops.normal(5, offset, B, D, x.dtype, chain_offset=3), ops.uniform(5, offset, B, x.dtype)

    x = torch.randn(8, D)
    explain = torch._dynamo.explain(draw)(x, 2**63 + 1)
    assert explain.graph_break_count == 0, explain.break_reasons
    for got, expect in zip(torch.compile(draw, fullgraph=True, backend="aot_eager")(x, 2**63 + 1),
                           draw(x, 2**63 + 1)):
        torch.testing.assert_close(got, expect, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["gmm_mala", "sde_step", "em_step_logprob", "score_mh_accept"])
def test_autograd_kernel_calls_the_backend_kernel_as_the_dispatcher_would(name):
    """With no input requiring grad, the Autograd kernel calls the op's CPU kernel itself; under a dispatch mode it
    redispatches (the mode sees the op). Both give the same outputs, and the mode-free call again after the mode
    (the per-key-set choice is memoised)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Seen(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(func)
            return func(*args, **(kwargs or {}))

    op = getattr(torch.ops.fastsamp, name).default
    args = op_args(name, F64)
    plain = op(*args)
    with Seen() as mode:
        watched = op(*args)
    assert op in mode.ops
    torch.testing.assert_close(watched, plain, rtol=0, atol=0)
    torch.testing.assert_close(op(*args), plain, rtol=0, atol=0)


def _drift_net(langevin):
    """A small float64 DriftNet (D = 2, H hidden, one hidden layer) with a non-zero head (it is zero-initialised);
    with the Langevin parametrisation, Neal's funnel as the target (its score computed inside the kernels) and
    lgv_clip small enough that every score past x0 = 0 is clamped: the kernels treat the score as a constant (as
    the sampler does), which is then exact, so finite differences agree with the fused gradients."""
    from fastsamp.samplers.diffusion import DriftNet
    from fastsamp.targets import Funnel
    torch.manual_seed(0)
    net = DriftNet(2, hidden=H, n_harmonics=2, n_layers=1, langevin=langevin).double()
    with torch.no_grad():
        net.joint[-1].weight.normal_(0.0, 0.6)
        net.joint[-1].bias.normal_(0.0, 0.6)
    if langevin:
        net.lgv_clip = 0.05
    return net, (Funnel(dim=2) if langevin else None)


class _PISLoss(nn.Module):
    """Σ ½|x_T|² + Σ log p_B of the reparameterised rollout (PIS) of `net` (a module, so that functional_call can
    substitute its weights)."""

    def __init__(self, net, target):
        super().__init__()
        self.net, self.target = net, target

    def forward(self, temb, lgv=None):
        states, _, log_pb, *scores = ops.policy_rollout(self.net, temb, B, sigma=1.0, seed=1, reparam=True, lgv=lgv,
                                                        target=self.target)
        if scores:
            assert (scores[0][1:].abs() > 2 * self.net.lgv_clip).all()  # clamped (see _drift_net)
        return 0.5 * (states[-1] ** 2).sum() + log_pb.sum()


@pytest.mark.parametrize("langevin", [False, True], ids=["plain", "langevin"])
def test_policy_reparam_rollout_gradcheck(langevin):
    """policy_rollout(reparam=True) runs the registered forward op (policy_rollout / policy_langevin_rollout) and
    the registered adjoint sweep policy_reparam_backward: gradcheck in float64 w.r.t. temb, lgv and every weight
    and bias the kernels read, and the backward is the registered op (the profiler sees it by name)."""
    from fastsamp.ops.trajectory import PolicyParams
    pytest.importorskip("fastsamp._C")
    net, target = _drift_net(langevin)
    loss = _PISLoss(net, target)
    read = {id(t) for t in PolicyParams(net).tensors()}
    names = [n for n, p in loss.named_parameters() if id(p) in read]
    weights = [p.detach().clone().requires_grad_() for n, p in loss.named_parameters() if id(p) in read]
    temb, lgv = rand(T, H, grad=True), (0.5 * rand(T, 1)).requires_grad_() if langevin else None
    extra = (lgv,) if langevin else ()

    def f(temb, *rest):
        return torch.func.functional_call(loss, dict(zip(names, rest[len(extra):])), (temb, *rest[:len(extra)]))
    assert torch.autograd.gradcheck(f, (temb, *extra, *weights))
    with torch.profiler.profile() as prof:
        f(temb, *extra, *weights).backward()
    seen = {e.key for e in prof.key_averages()}
    assert {"fastsamp::policy_langevin_rollout" if langevin else "fastsamp::policy_rollout",
            "fastsamp::policy_reparam_backward"} <= seen, seen


def test_policy_reparam_rollout_compiles_with_its_fused_backward(dynamo_reset):
    """A PIS loss through policy_rollout(reparam=True) compiles with no graph break (the rollout one opaque op)
    and gives eager's value and gradients (the backward graph calls policy_reparam_backward)."""
    pytest.importorskip("fastsamp._C")
    net, _ = _drift_net(False)
    loss = _PISLoss(net, None)
    temb = rand(T, H, grad=True)
    explain = torch._dynamo.explain(loss)(temb)
    assert explain.graph_break_count == 0, explain.break_reasons
    nodes = {str(n.target) for g in explain.graphs for m in g.modules() if isinstance(m, torch.fx.GraphModule)
             for n in m.graph.nodes}  # the autograd.Function's forward and backward are submodules
    assert {"fastsamp.policy_rollout.default", "fastsamp.policy_reparam_backward.default"} <= nodes, nodes
    inputs = [temb, *net.parameters()]
    l_e = loss(temb)
    g_e = torch.autograd.grad(l_e, inputs, allow_unused=True)
    l_c = torch.compile(loss, fullgraph=True, backend="aot_eager")(temb)
    g_c = torch.autograd.grad(l_c, inputs, allow_unused=True)
    torch.testing.assert_close(l_c, l_e, rtol=0, atol=0)
    for a, b in zip(g_c, g_e):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", REGISTERED)
def test_registered_op_returns_what_its_kernel_returns(name):
    """The op as called (through its Autograd kernel) and below the autograd key (`Entry.eager`, what the public
    ops call under the profiler) give exactly the outputs of "auto"'s kernel called directly
    (`_library.device_kernel`, what plain eager runs)."""
    op = getattr(torch.ops.fastsamp, name).default
    args = op_args(name, F64)
    direct = _library.device_kernel(name, "cpu")(*args)
    torch.testing.assert_close(op(*args), direct, rtol=0, atol=0)
    torch.testing.assert_close(_library.ENTRIES[name].eager(*args), direct, rtol=0, atol=0)


def test_op_latency_benchmark_covers_every_registered_op():
    """benchmarks/op_latency.py builds inputs for every registered op (its latency table covers them all), which
    its raw column (the cpp backend function, u64 arguments decoded) and the registered op both take; its --boxing
    table registers a backend function under three schemas."""
    from conftest import load_benchmark

    from fastsamp import backends
    if not backends.is_available("cpp"):
        pytest.skip("the benchmark times the cpp backend")
    bench = load_benchmark("op_latency.py", "op_latency_under_test")
    nets = bench.Nets(4, 3)
    cpp = backends._load("cpp")[0]
    for op in _table.registered():
        args = bench.args_for(op.name, 4, 3, nets)
        getattr(torch.ops.fastsamp, op.name).default(*args)
        if hasattr(cpp, op.name):
            getattr(cpp, op.name)(*(v & _table.U64_MASK if s.kind == "u64" else v
                                    for v, s in zip(args, op.schema_args)))
        for backend in ("auto", "cpp"):  # the "public" columns' calls (validation on: their arguments checked)
            if (call := bench.public_call(op.name, backend, 4, 3, nets)) is not None:
                call()
    op = _table.OPS["mlp_hmc"]  # --boxing: the backend function under the op's schema and under fewer arguments
    costs = bench.boxing_costs(op, cpp.mlp_hmc, bench.args_for(op.name, 4, 3, nets), 1, 1, bench.CLOCKS["wall"])
    assert list(costs)[2] == "packed (x and 26 elements in 3 lists)" and all(v > 0 for v in costs.values())
