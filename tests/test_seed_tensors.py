"""Seeds, offsets and chain offsets given as one-element int64 tensors (read inside the kernels, so that
a replayed CUDA graph or a compiled graph draws from their current value): the same bits as the ints on
every backend, u64 values >= 2**63 as their two's complement, clear errors for bad tensors, and
torch.compile(fullgraph=True) with no graph break and no recompile for a new offset value."""
import functools

import pytest
import torch
from conftest import backend_device, skip_unless_available
from torch import nn

import fastsamp
from fastsamp import VP, ops

BACKENDS = ["torch", "cpp", "triton", "cuda"]
BIG_SEED = 2**63 + 12345          # held by a tensor as BIG_SEED - 2**64 (two's complement)
BIG_OFFSET = 2**64 - 3            # whole-move kernels draw offset + m: wraps past 2**64 from a tensor too


def as_tensor(v, device):
    """A u64 as the one-element int64 tensor holding it."""
    return torch.tensor(v - 2**64 if v >= 2**63 else v, dtype=torch.int64, device=device)


def _mixture(D, K, device):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(K, D, generator=g, dtype=torch.float64).to(device), torch.randn(K, generator=g,
            dtype=torch.float64).to(device), (torch.rand(K, generator=g, dtype=torch.float64) + 0.5).to(device))


def _ops(device):
    """name -> fn(seed, offset, chain_offset, backend) for every op that draws noise."""
    g = torch.Generator().manual_seed(0)
    B, D = 6, 5
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(device)  # noqa: E731
    x, s, x2, s2, p, p2, v = (r(B, D) for _ in range(7))
    logp, logp2, dl = r(B), r(B), r(B)
    eps = torch.full((B,), 0.05, dtype=torch.float64, device=device)
    mix = _mixture(D, 3, device)
    return {
        "normal": lambda sd, o, c, be: ops.normal(sd, o, B, D, device=device, chain_offset=c, backend=be),
        "uniform": lambda sd, o, c, be: ops.uniform(sd, o, B, device=device, chain_offset=c, backend=be),
        "reverse_sde_step": lambda sd, o, c, be: ops.reverse_sde_step(
            x, s, t=0.4, h=0.01, schedule=VP(), seed=sd, offset=o, chain_offset=c, backend=be),
        "guided_sde_step": lambda sd, o, c, be: ops.guided_sde_step(
            x, s, s2, v, t=0.4, h=0.01, schedule=VP(), fd_eps=0.01, guidance=1.5, seed=sd, offset=o, chain_offset=c,
            backend=be),
        "mala_propose": lambda sd, o, c, be: ops.mala_propose(x, s, eps, seed=sd, offset=o, chain_offset=c,
                                                              backend=be),
        "momentum_refresh": lambda sd, o, c, be: ops.momentum_refresh(p, 0.3, seed=sd, offset=o, chain_offset=c,
                                                                      backend=be),
        "score_mh_accept": lambda sd, o, c, be: ops.score_mh_accept(
            x, x2, s, s2, eps, seed=sd, offset=o, chain_offset=c, backend=be),
        "energy_mh_accept": lambda sd, o, c, be: ops.energy_mh_accept(
            x, x2, s, s2, logp, logp2, eps, seed=sd, offset=o, chain_offset=c, backend=be),
        "hmc_accept": lambda sd, o, c, be: ops.hmc_accept(x, x2, s, s2, p, p2, dl, seed=sd, offset=o, chain_offset=c,
                                                          backend=be),
        "em_step_logprob": lambda sd, o, c, be: ops.em_step_logprob(
            x, s, sigma=0.7, t=0.5, h=0.05, seed=sd, offset=o, chain_offset=c, backend=be),
        "gmm_mala": lambda sd, o, c, be: ops.gmm_mala(x, *mix, step_size=eps, n_steps=3, seed=sd, offset=o,
                                                      chain_offset=c, backend=be),
        "gmm_hmc": lambda sd, o, c, be: ops.gmm_hmc(x, *mix, step_size=eps, n_steps=3, damping=0.2, seed=sd,
                                                    offset=o, chain_offset=c, backend=be),
    }


OPS = list(_ops("cpu"))


_equal = functools.partial(torch.testing.assert_close, rtol=0, atol=0, equal_nan=True)  # tuples: every output


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_tensor_seed_offset_draw_the_int_bits(backend, op):
    if backend != "torch":
        skip_unless_available(backend)
    device = backend_device(backend) if backend != "torch" else torch.device("cpu")
    fn = _ops(device)[op]
    offset = BIG_OFFSET if op.startswith("gmm_") else 7
    try:
        expect = fn(BIG_SEED, offset, 4, backend)
    except ValueError as e:
        if "kernel" not in str(e):
            raise
        pytest.skip(str(e))  # the op has no kernel on this backend
    got = fn(as_tensor(BIG_SEED, device), as_tensor(offset, device), as_tensor(4, device), backend)
    _equal(got, expect)
    mixed = fn(BIG_SEED, as_tensor(offset, device), 4, backend)
    _equal(mixed, expect)
    other = fn(as_tensor(BIG_SEED, device), as_tensor(offset + 1, device), as_tensor(4, device), backend)
    assert not torch.equal(other[0] if isinstance(other, tuple) else other,
                           expect[0] if isinstance(expect, tuple) else expect) or op.endswith("accept")


def test_auto_backend_tensor_seeds_match_ints():
    """backend="auto": eager (the kernel called directly) and through the registered op (profiler on)."""
    for fn in _ops("cpu").values():
        expect = fn(BIG_SEED, 5, 2, "auto")
        _equal(fn(as_tensor(BIG_SEED, "cpu"), as_tensor(5, "cpu"), 2, "auto"), expect)
        with torch.profiler.profile():
            _equal(fn(as_tensor(BIG_SEED, "cpu"), as_tensor(5, "cpu"), as_tensor(2, "cpu"), "auto"), expect)


def test_mlp_moves_take_tensor_seeds():
    skip_unless_available("cpp")
    from test_mlp import random_net
    net = random_net(3, 8, 1, 2, torch.float64, 0)
    x = torch.randn(5, 3, dtype=torch.float64)
    for move, kw in ((ops.mlp_mala, {}), (ops.mlp_hmc, {"damping": 0.1})):
        expect = move(x, net, step_size=0.05, n_steps=2, seed=BIG_SEED, offset=9, chain_offset=3, backend="cpp", **kw)
        for backend in ("cpp", "torch", "auto"):
            got = move(x, net, step_size=0.05, n_steps=2, seed=as_tensor(BIG_SEED, "cpu"), offset=as_tensor(9, "cpu"),
                       chain_offset=as_tensor(3, "cpu"), backend=backend, **kw)
            if backend == "torch":
                torch.testing.assert_close(got, expect)
            else:
                _equal(got, expect)
        with torch.profiler.profile():  # through the registered op
            _equal(move(x, net, step_size=0.05, n_steps=2, seed=BIG_SEED, offset=as_tensor(9, "cpu"), chain_offset=3,
                        **kw), expect)
        for arg in ("seed", "offset", "chain_offset"):  # a tensor on another device names its argument
            with pytest.raises(ValueError, match=f"{arg}.*must be on cpu"):
                move(x, net, step_size=0.05, n_steps=2, **{"seed": 1, "offset": 0, "chain_offset": 0,
                                                             arg: torch.tensor(3, device="meta")}, **kw)


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_policy_rollout_takes_tensor_seeds(backend):
    if backend == "cpp":
        skip_unless_available("cpp")
    from test_trajectory_policy import POLICY_SIGMA, make_sampler, temb_of
    s = make_sampler(3, 8, 1, 4, torch.float64)
    temb = temb_of(s, torch.float64)
    kw = dict(sigma=POLICY_SIGMA, explore=0.3, backend=backend)
    expect = ops.policy_rollout(s.net, temb, 5, seed=BIG_SEED, chain_offset=2, **kw)
    got = ops.policy_rollout(s.net, temb, 5, seed=as_tensor(BIG_SEED, "cpu"), chain_offset=as_tensor(2, "cpu"), **kw)
    _equal(got, expect)


@pytest.mark.parametrize("bad, error, match", [
    (torch.tensor(3, dtype=torch.int32), TypeError, "int64"),
    (torch.tensor(3.0), TypeError, "int64"),
    (torch.tensor([1, 2]), ValueError, "one element"),
    (torch.tensor(3, device="meta"), ValueError, "must be on cpu"),
])
@pytest.mark.parametrize("arg", ["seed", "offset", "chain_offset"])
def test_bad_tensors_name_the_argument(bad, error, match, arg):
    x = torch.randn(4, 3)
    kw = {"seed": 1, "offset": 0, "chain_offset": 0, arg: bad}
    with pytest.raises(error, match=f"{arg}.*{match}|{match}.*{arg}"):
        ops.mala_propose(x, x, 0.1, **kw)
    with pytest.raises(error, match=arg):
        ops.normal(kw["seed"], kw["offset"], 4, 3, chain_offset=kw["chain_offset"])
    with pytest.raises(error, match=arg):
        ops.score_mh_accept(x, x, x, x, 0.1, **kw)


def test_negative_chain_offset_tensor_is_refused():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="chain_offset"):
        ops.mala_propose(x, x, 0.1, seed=1, chain_offset=torch.tensor(-1))
    with pytest.raises(ValueError, match="chain_offset"):
        ops.uniform(1, 0, 4, chain_offset=torch.tensor(2**32 - 2))


def test_registered_ops_take_the_tensor_forms():
    """The schema: a trailing `Tensor? <name>_t=None` per u64 argument (the SymInt is then ignored)."""
    schema = str(torch.ops.fastsamp.mala_propose.default._schema)
    assert "Tensor? seed_t=None, Tensor? offset_t=None, Tensor? chain_offset_t=None" in schema
    x = torch.randn(4, 3)
    eps = torch.full((4,), 0.1)
    expect = torch.ops.fastsamp.mala_propose(x, x, eps, None, BIG_SEED - 2**64, 5, 1)
    got = torch.ops.fastsamp.mala_propose(x, x, eps, None, 0, 0, 0, as_tensor(BIG_SEED, "cpu"),
                                          as_tensor(5, "cpu"), as_tensor(1, "cpu"))
    _equal(got, expect)
    torch.library.opcheck(torch.ops.fastsamp.mala_propose.default,
                          (x, x, eps, None, 0, 0, 0, as_tensor(BIG_SEED, "cpu"), as_tensor(5, "cpu"), None),
                          test_utils=("test_schema", "test_faketensor"))


def test_autograd_through_the_registered_op_with_tensor_seeds():
    """The registered backward gives no gradient to the tensor forms (and the same gradients as the ints)."""
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    grads = []
    for seed, offset in ((BIG_SEED, 3), (as_tensor(BIG_SEED, "cpu"), as_tensor(3, "cpu"))):
        out = ops.reverse_sde_step(x, x * 2, t=0.5, h=0.01, schedule=VP(), seed=seed, offset=offset)
        grads.append(torch.autograd.grad((out ** 2).sum(), x)[0])
    _equal(grads[1], grads[0])


class _Score(nn.Module):
    def __init__(self, D=3):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, D))

    def forward(self, x):
        return self.net(x)


def _corrector(net, x, seed, offset):
    """One MALA corrector move with a network score, its noise and uniforms from (seed, offset)."""
    s = net(x)
    x_prop = ops.mala_propose(x, s, 0.05, seed=seed, offset=offset)
    s_prop = net(x_prop)
    x_new, *_ = ops.score_mh_accept(x, x_prop, s, s_prop, 0.05, seed=seed, offset=offset)
    return ops.reverse_sde_step(x_new, net(x_new), t=0.5, h=0.01, schedule=VP(), seed=seed, offset=offset + 1)


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_compile_fullgraph_tensor_offset(dynamo_reset, grad):
    """No graph break; equals eager; a new offset value draws fresh noise from the same graph. With grad on (the
    network's parameters require grad) score_mh_accept, which has no backward formula, runs its differentiable
    reference, whose Philox reads the tensor forms inside the graph too (no host read of the offset)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    net, x = _Score(), torch.randn(32, 3)
    seed, offset = as_tensor(BIG_SEED, "cpu"), as_tensor(10, "cpu")
    with torch.set_grad_enabled(grad):
        explain = torch._dynamo.explain(_corrector)(net, x, seed, offset)
        assert explain.graph_break_count == 0 and explain.graph_count == 1, explain.break_reasons
        torch._dynamo.reset()
        counter = CompileCounterWithBackend("aot_eager")
        compiled = torch.compile(_corrector, backend=counter, fullgraph=True)
        first = compiled(net, x, seed, offset)
        _equal(first, _corrector(net, x, BIG_SEED, 10))
        offset += 2
        second = compiled(net, x, seed, offset)
        _equal(second, _corrector(net, x, BIG_SEED, 12))
        assert not torch.equal(first, second)
    assert counter.frame_count == 1


class _Corrector(nn.Module):
    def __init__(self):
        super().__init__()
        self.score = _Score()

    def forward(self, x, seed, offset):
        return _corrector(self.score, x, seed, offset)


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_export_tensor_offset(grad):
    """torch.export of the corrector with the seed and offset as inputs: eager's bits for two offsets from one
    program; with grad on, score_mh_accept's differentiable reference (aten ops, its Philox on the tensor forms)
    in place of the opaque op."""
    module, x = _Corrector(), torch.randn(32, 3)
    seed = as_tensor(BIG_SEED, "cpu")
    with torch.set_grad_enabled(grad):
        exported = torch.export.export(module, (x, seed, as_tensor(10, "cpu")))
        targets = {str(n.target) for n in exported.graph.nodes}
        assert ("fastsamp.score_mh_accept.default" in targets) != grad, targets
        program = exported.module()
        first, second = (program(x, seed, as_tensor(k, "cpu")) for k in (10, 12))
        _equal(first, _corrector(module.score, x, BIG_SEED, 10))
        _equal(second, _corrector(module.score, x, BIG_SEED, 12))
    assert not torch.equal(first, second)


def test_validation_off_reads_no_tensor_value():
    """With validation off a CPU chain_offset tensor is passed through unread (only metadata checks)."""
    x = torch.randn(4, 3)
    with fastsamp.validation(False):
        out = ops.mala_propose(x, x, 0.1, seed=as_tensor(3, "cpu"), chain_offset=as_tensor(2, "cpu"))
    _equal(out, ops.mala_propose(x, x, 0.1, seed=3, chain_offset=2))
