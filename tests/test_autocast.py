"""torch.autocast around a user's step or a sampler: the network's half-precision outputs (float16 / bfloat16) are
cast up to the chains' dtype by the public ops and by the samplers' model check, as type promotion does in a
hand-written loop (`_checks.autocast_promoted`), and by the registered ops called directly (their autocast
kernels): the same values as casting by hand. Outside autocast a dtype mismatch stays a TypeError naming the
argument."""
import pytest
import torch
from test_registration import op_args
from torch import nn

from fastsamp import VP, ops
from fastsamp.models import ScoreModel
from fastsamp.ops import _table
from fastsamp.samplers import annealed_mcmc

D = 3
HALF = [torch.bfloat16, torch.float16]


def _device(name):
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA: no GPU on this machine")
    return torch.device(name)


class Net(nn.Module):
    """s(x, t) = MLP([x, t])."""

    dim = D

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.mlp = nn.Sequential(nn.Linear(D + 1, 32), nn.SiLU(), nn.Linear(32, D))

    def forward(self, x, t):
        return self.mlp(torch.cat([x, torch.full_like(x[:, :1], t)], 1))


def step(net, x, cast=False):
    """A MALA move with the score-MH test and a reverse SDE step; `cast`: the network's outputs cast to x's dtype by
    hand (what a user writes without the promotion)."""
    def score(z, t):
        s = net(z, t)
        return s.to(z.dtype) if cast else s

    s = score(x, 0.5)
    x_prop = ops.mala_propose(x, s, 0.05, seed=3, offset=1)
    pts = ops.line_points(x, x_prop, 3)
    batch = score(torch.cat([x_prop[None], pts]).reshape(-1, D), 0.5).reshape(3, -1, D)
    x_new, s_new, accepted, _ = ops.score_mh_accept(x, x_prop, s, batch[0], 0.05, interior_scores=batch[1:], seed=3,
                                                    offset=1)
    return ops.reverse_sde_step(x_new, s_new, t=0.5, h=0.01, schedule=VP(), seed=3, offset=2), accepted


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("half", HALF, ids=str)
def test_ops_promote_autocast_outputs(device, half):
    device = _device(device)
    net, x = Net().to(device), torch.randn(37, D, device=device)
    with torch.no_grad(), torch.autocast(device.type, dtype=half):
        assert net(x, 0.5).dtype == half  # the network does run in half precision here
        got = step(net, x)
        expect = step(net, x, cast=True)
    for g, e in zip(got, expect, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=0)
    assert got[0].dtype == torch.float32


def test_outside_autocast_a_half_score_is_refused():
    x = torch.randn(5, D)
    with pytest.raises(TypeError, match="score must have dtype torch.float32 like x, got torch.bfloat16"):
        ops.mala_propose(x, x.bfloat16(), 0.1, seed=0)
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(TypeError, match="x must be float32 or float64"):
        ops.mala_propose(x.bfloat16(), x, 0.1, seed=0)  # the chains themselves are not cast


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_sampler_under_autocast(device):
    """annealed_mcmc (generic moves) with a network run under autocast: the samples of the same network with its
    output cast by hand."""
    device = _device(device)
    net = Net().to(device)
    kw = {"n_levels": 5, "n_corrector_steps": 2, "n_trapezoid": 3, "step_size": 0.05, "seed": 2, "device": device}
    with torch.autocast(device.type, dtype=torch.bfloat16):
        x, stats = annealed_mcmc(net, 64, **kw)
        x_hand, stats_hand = annealed_mcmc(ScoreModel(lambda z, t: net(z, t).float(), D), 64, **kw)
    torch.testing.assert_close(x, x_hand, rtol=0, atol=0)
    assert stats.accept_rate == stats_hand.accept_rate and x.dtype == torch.float32


def test_compiled_step_under_autocast(dynamo_reset):
    net, x = Net(), torch.randn(37, D)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        explain = torch._dynamo.explain(step)(net, x)
        assert explain.graph_break_count == 0, explain.break_reasons
        compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
        for g, e in zip(compiled(net, x), step(net, x), strict=True):
            torch.testing.assert_close(g, e, rtol=0, atol=0)


def _half_positions(name, args):
    """The positions of op `name`'s arguments of the chains' dtype (a tensor, or a list of them) that autocast casts
    up (`_library._autocast_kernel`): all but the state, or without a state all but the first given one."""
    like_x = [i for i, a in enumerate(_table.OPS[name].schema_args)
              if a.kind in ("state", "tensor", "tensors") and a.dtype == "x" and args[i] is not None]
    state = next((i for i, a in enumerate(_table.OPS[name].schema_args) if a.kind == "state"), like_x[0])
    return [i for i in like_x if i != state]


def _cast(args, positions, dtype):
    args = list(args)
    for i in positions:
        args[i] = [t.to(dtype) for t in args[i]] if isinstance(args[i], (list, tuple)) else args[i].to(dtype)
    return args


@pytest.mark.parametrize("half", HALF, ids=str)
@pytest.mark.parametrize("name", [op.name for op in _table.registered() if op.name not in ("normal", "uniform")])
def test_registered_ops_promote_half_arguments_under_autocast(name, half):
    """torch.ops.fastsamp.<op> called directly under torch.autocast: the half-precision arguments (of the chains'
    dtype) cast up, the same outputs as the op on those values cast by hand; outside autocast they are refused."""
    op, checked = getattr(torch.ops.fastsamp, name).default, 0
    for noise in (False, True):  # the optional tensors given or not
        args = op_args(name, torch.float32, noise=noise)
        positions = _half_positions(name, args)
        if not positions:
            continue
        rounded = _cast(_cast(args, positions, half), positions, torch.float32)
        want = op(*rounded)
        with torch.autocast("cpu", dtype=half):
            got = op(*_cast(args, positions, half))
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        with pytest.raises((TypeError, ValueError), match="dtype|must be float32 or float64"):
            op(*_cast(args, positions, half))
        checked += 1
    assert checked
