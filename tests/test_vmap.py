"""torch.func.vmap of the registered ops (fastsamp/ops/_vmap.py): every op has its own batching rule (torch's
per-slice fallback switched off here), vmap equals the map of the op over the slices, calls on chain arguments that
draw nothing run as one call on V·B chains, and the public functions' value checks read vmapped tensors."""
import contextlib

import pytest
import torch
from test_registration import op_args

from fastsamp import VP, ops
from fastsamp.ops import _table, _vmap

F64 = torch.float64
V = 3  # slices


@contextlib.contextmanager
def no_fallback():
    """torch's generic per-slice fallback refused: an op without a batching rule raises under vmap."""
    before = torch._C._functorch._is_vmap_fallback_enabled()
    torch._C._functorch._set_vmap_fallback_enabled(False)
    try:
        yield
    finally:
        torch._C._functorch._set_vmap_fallback_enabled(before)


def _chain_positions(op, args):
    """The given tensor arguments with a chain dim (the chain count B: x, scores, step sizes, trajectories)."""
    return [i for i, a in enumerate(op.schema_args)
            if a.kind in ("state", "tensor") and _vmap.chain_dim(a.shape) is not None and args[i] is not None]


def _tensor_positions(op, args):
    return [i for i, a in enumerate(op.schema_args) if a.kind in ("state", "tensor") and args[i] is not None]


def _slices(t, seed):
    """V versions of t (the first t itself), each entry scaled by 1 + U(0, 0.01): signs and positivity kept."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([t] + [t * (1 + 0.01 * torch.rand(t.shape, generator=g, dtype=t.dtype).to(t.device))
                              for _ in range(V - 1)])


def _vmap_and_map(name, args, at, in_dims):
    """(vmap of the registered op over the arguments at positions `at`, stacked with their in_dims, and the map
    of the op over the slices, stacked)."""
    op = getattr(torch.ops.fastsamp, name).default
    stacked = [_slices(args[i], 10 + i).movedim(0, d) for i, d in zip(at, in_dims)]

    def call(*vs):  # the outputs that are not None (vmap's function may return no None)
        full = list(args)
        for i, v in zip(at, vs):
            full[i] = v
        out = op(*full)
        return out if isinstance(out, torch.Tensor) else tuple(o for o in out if o is not None)

    with no_fallback():
        got = torch.func.vmap(call, in_dims=tuple(in_dims))(*stacked)
    expect = [call(*(s.select(d, v) for s, d in zip(stacked, in_dims))) for v in range(V)]
    return got, expect


def _assert_stacked(got, expect):
    if isinstance(got, torch.Tensor):
        got, expect = (got,), [(e,) for e in expect]
    for k, g in enumerate(got):
        if isinstance(g, list):
            for j, gj in enumerate(g):
                torch.testing.assert_close(gj, torch.stack([e[k][j] for e in expect]), rtol=0, atol=0)
        else:
            torch.testing.assert_close(g, torch.stack([e[k] for e in expect]), rtol=0, atol=0, equal_nan=True)


REGISTERED = [op.name for op in _table.registered() if op.backends and op.state is not None]


def _check_chains(name, args):
    """Every chain argument of `args` vmapped (at dims 0, 1, 0, ...: merged into the chain dim where the rule folds),
    bit for bit against the map."""
    op = _table.OPS[name]
    at = _chain_positions(op, args)
    if not at:
        pytest.skip(f"{name} has no chain argument given here")
    got, expect = _vmap_and_map(name, args, at, [k % 2 for k in range(len(at))])
    _assert_stacked(got, expect)


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("noise", [True, False], ids=["noise_given", "noise_drawn"])
@pytest.mark.parametrize("name", REGISTERED)
def test_vmap_of_the_chain_arguments_equals_the_map(name, noise, dtype):
    _check_chains(name, op_args(name, dtype, noise=noise))


def _on(device, args):
    """args with every tensor (a list's too) moved to `device`."""
    def one(a):
        return a.to(device) if isinstance(a, torch.Tensor) else a
    return [[one(t) for t in a] if isinstance(a, list) else one(a) for a in args]


@pytest.mark.parametrize("noise", [True, False], ids=["noise_given", "noise_drawn"])
@pytest.mark.parametrize("name", [n for n in REGISTERED if {"cuda", "triton"} & set(_table.OPS[n].backends)])
def test_vmap_of_the_chain_arguments_on_cuda(name, noise):
    """The same on CUDA tensors (the CUDA or Triton kernels), float32."""
    if not torch.cuda.is_available():
        pytest.skip("CUDA backend: no GPU on this machine")
    _check_chains(name, _on("cuda", op_args(name, torch.float32, noise=noise)))


def _parameters(name):
    """The given tensor arguments of op `name` without a chain dim (op_args' float64 set)."""
    op, args = _table.OPS[name], op_args(name, F64)
    return [i for i in _tensor_positions(op, args) if i not in _chain_positions(op, args)]


@pytest.mark.parametrize("name", [n for n in REGISTERED if _parameters(n)])
def test_vmap_of_a_parameter_equals_the_map(name):
    """The last tensor argument without a chain dim vmapped (mixture variances, time embeddings, times): one
    call per slice."""
    got, expect = _vmap_and_map(name, op_args(name, F64), _parameters(name)[-1:], [0])
    _assert_stacked(got, expect)


@pytest.mark.parametrize("name", [op.name for op in _table.registered() if any(a.kind == "tensors" for a in op.args)])
def test_vmap_of_a_list_element_equals_the_map(name):
    """The first layer of an op's list of networks vmapped (in_dims is a list there): one call per slice."""
    args = list(op_args(name, F64))
    at = next(i for i, a in enumerate(_table.OPS[name].schema_args) if a.kind == "tensors")
    op, layers = getattr(torch.ops.fastsamp, name).default, args[at]

    def call(first):
        out = op(*args[:at], [first, *layers[1:]], *args[at + 1:])
        return out if isinstance(out, torch.Tensor) else tuple(o for o in out if o is not None)

    stacked = _slices(layers[0], 3)
    with no_fallback():
        got = torch.func.vmap(call)(stacked)
    _assert_stacked(got, [call(w) for w in stacked])


FOLDED = {"gmm_score", "line_points", "policy_log_pf", "score_mh_accept", "sde_step", "guided_sde_step", "mala_propose",
          "energy_mh_accept", "leapfrog", "leapfrog_finish", "hmc_accept", "momentum_refresh", "gmm_mala", "gmm_hmc",
          "em_step_logprob", "em_step_logprob_backward", "mlp_score", "mlp_mala", "mlp_hmc", "mlp_energy",
          "mlp_energy_mala", "mlp_energy_hmc", "mlp_net", "mlp_net_train"}


def test_which_ops_fold():
    """The ops whose calls can fold (every output with a chain dim, B read from the shapes alone or from
    score_mh_accept's stacked sets); whether a call folds depends on its draws too (`test_folded_calls`: the
    whole-move ops always draw)."""
    assert {op.name for op in _table.registered() if _vmap.foldable(op)} == FOLDED


def _op_events(fn, name):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.name == f"fastsamp::{name}" for e in prof.events())


@pytest.mark.parametrize("name, noise, calls", [
    ("gmm_score", True, 1), ("mala_propose", True, 1), ("mala_propose", False, V), ("hmc_accept", False, V),
    ("em_step_logprob_backward", True, 1), ("mlp_score", True, 1), ("gmm_mala", True, V), ("line_points", True, 1),
    ("policy_log_pf", True, 1), ("policy_rollout", True, V), ("score_mh_accept", True, 1), ("mlp_net_train", True, 1),
    ("score_mh_accept", False, 1)])
def test_folded_calls(name, noise, calls):
    """How many times the op's kernel runs under vmap of its chain arguments (one event for the vmapped call itself):
    once when folded, once per slice where the op draws (its noise or u not given, the whole-move ops, the rollouts)
    or B is an int argument (the rollouts)."""
    op, args = _table.OPS[name], op_args(name, F64, noise=noise)
    at = _chain_positions(op, args)
    assert _op_events(lambda: _vmap_and_map(name, args, at, [0] * len(at)), name) == 1 + calls + V


def test_public_ops_under_vmap_read_the_values_of_vmapped_parameters():
    """ops.gmm_score with vmapped mixture means and variances: the value checks read every slice (a bad variance
    in one slice is refused), the result equals the map."""
    torch.manual_seed(0)
    x, lw = torch.randn(5, 2, dtype=F64), torch.zeros(4, dtype=F64)
    means, variances = torch.randn(V, 4, 2, dtype=F64), torch.rand(V, 4, dtype=F64) + 0.5

    def f(m, v):
        return ops.gmm_score(x, m, lw, v)

    with no_fallback():
        got = torch.func.vmap(f)(means, variances)
    _assert_stacked(got, [f(m, v) for m, v in zip(means, variances)])
    variances[1, 2] = -1.0
    with pytest.raises(ValueError, match="variances must be finite and > 0"):
        torch.func.vmap(f)(means, variances)
    eps = torch.full((V, 5), 0.1, dtype=F64)
    eps[2, 0] = 0.0
    with pytest.raises(ValueError, match="step_size must be finite and > 0"):
        torch.func.vmap(lambda e: ops.mala_propose(x, x, e, noise=x))(eps)


def test_vmap_under_grad_and_grad_under_vmap():
    """Per-sample gradients (vmap of grad) and the gradient of a vmapped sum (grad of vmap) of gmm_score's logp
    through the folding rule equal those of the op's reference."""
    from fastsamp.ops import reference
    torch.manual_seed(1)
    xs, m = torch.randn(V, 5, 2, dtype=F64), torch.randn(4, 2, dtype=F64)
    lw, var = torch.zeros(4, dtype=F64), torch.rand(4, dtype=F64) + 0.5

    def logp(fn):
        return lambda x, mm: fn(x, mm, lw, var, 0.9, 0.1)[1].square().sum()

    op = torch.ops.fastsamp.gmm_score.default
    with no_fallback():
        per_sample = torch.func.vmap(torch.func.grad(logp(op), argnums=(0, 1)), in_dims=(0, None))(xs, m)
        summed = torch.func.grad(lambda x, mm: torch.func.vmap(logp(op), in_dims=(0, None))(x, mm).sum(),
                                 argnums=(0, 1))(xs, m)
    ref = logp(reference.gmm_score)
    expect_per = [torch.stack(g) for g in zip(*(torch.func.grad(ref, argnums=(0, 1))(x, m) for x in xs))]
    expect_sum = torch.func.grad(lambda x, mm: sum(ref(xi, mm) for xi in x), argnums=(0, 1))(xs, m)
    for g, e in zip((*per_sample, *summed), (*expect_per, *expect_sum)):
        torch.testing.assert_close(g, e)


def test_nested_vmap_equals_the_nested_map():
    """vmap of vmap: each level folds (gmm_score) or runs per slice (a drawn mala_propose), as the nested map."""
    torch.manual_seed(2)
    m, lw, var = torch.randn(4, 3, dtype=F64), torch.zeros(4, dtype=F64), torch.full((4,), 0.5, dtype=F64)
    x = torch.randn(2, 3, 5, 3, dtype=F64)
    for f in (lambda a: ops.gmm_score(a, m, lw, var)[0], lambda a: ops.mala_propose(a, a, 0.1, seed=3)):
        with no_fallback():
            got = torch.func.vmap(torch.func.vmap(f))(x)
        torch.testing.assert_close(got, torch.stack([torch.stack([f(xij) for xij in xi]) for xi in x]), rtol=0, atol=0)


def test_vmapped_chain_offsets_draw_as_one_batch():
    """chain_offset as a vmapped int64 tensor v·B: each slice draws as chains v·B ... v·B + B − 1, so the vmapped
    proposal equals one call on the V·B chains stacked; a slice's offset past 2**32 − B is refused."""
    torch.manual_seed(4)
    x, s = torch.randn(5, 3, dtype=F64), torch.randn(5, 3, dtype=F64)
    offsets = torch.arange(V).mul(5).reshape(V, 1)

    def propose(c):
        return ops.mala_propose(x, s, 0.1, seed=3, offset=2, chain_offset=c)

    with no_fallback():
        got = torch.func.vmap(propose)(offsets)
    whole = ops.mala_propose(x.repeat(V, 1), s.repeat(V, 1), 0.1, seed=3, offset=2)
    torch.testing.assert_close(got, whole.reshape(V, 5, 3), rtol=0, atol=0)
    with pytest.raises(ValueError, match="chain_offset must be >= 0"):
        torch.func.vmap(propose)(torch.tensor([[0], [2**32 - 4]]))


def test_vmap_compiles_without_graph_break(dynamo_reset):
    """torch.compile(fullgraph=True) of a vmapped public op (the rule runs while AOTAutograd traces): no graph break,
    eager's bits."""
    torch.manual_seed(5)
    m, lw, var = torch.randn(4, 3), torch.zeros(4), torch.full((4,), 0.5)
    xs = torch.randn(V, 7, 3)
    f = torch.func.vmap(lambda a: ops.gmm_score(a, m, lw, var, alpha=0.9, sigma2=0.1))
    explain = torch._dynamo.explain(f)(xs)
    assert explain.graph_break_count == 0, explain.break_reasons
    with no_fallback():
        got = torch.compile(f, fullgraph=True, backend="aot_eager")(xs)
    for g, e in zip(got, f(xs)):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["gmm_score", "mala_propose", "gmm_mala"])
def test_vmap_over_zero_slices(name):
    """A vmapped dim of size 0: empty outputs of each output's slice shape (folded, or from a zero-filled slice)."""
    m, lw, var = torch.randn(4, 3), torch.zeros(4), torch.full((4,), 0.5)
    f = {"gmm_score": lambda a: ops.gmm_score(a, m, lw, var),
         "mala_propose": lambda a: (ops.mala_propose(a, a, 0.1, seed=1),),
         "gmm_mala": lambda a: ops.gmm_mala(a, m, lw, var, step_size=0.1, n_steps=2, seed=0)}[name]
    with no_fallback():
        got = torch.func.vmap(f)(torch.randn(0, 5, 3))
    assert [tuple(g.shape) for g in got] == [(0, *o.shape) for o in f(torch.randn(5, 3))]


def test_vmap_of_mismatched_chains_names_the_argument():
    """A chain argument whose slices do not have B chains: the op's own check names it (not a reshape error)."""
    op = torch.ops.fastsamp.mala_propose.default
    x, s, eps, xi = torch.randn(V, 5, 2), torch.randn(4, 2), torch.full((5,), 0.1), torch.randn(5, 2)
    with no_fallback(), pytest.raises(ValueError, match="mala_propose: score must have shape"):
        torch.func.vmap(lambda a: op(a, s, eps, xi, 0, 0, 0))(x)
    with no_fallback(), pytest.raises(ValueError, match="mala_propose: step_size must have shape"):
        torch.func.vmap(lambda e: op(x[0], xi, e, xi, 0, 0, 0))(torch.full((V, 4), 0.1))


@pytest.mark.parametrize("interior", [True, False], ids=["interior_given", "stacked_sets"])
@pytest.mark.parametrize("vmapped", ["all", "score_prop", "x"])
def test_score_mh_accept_folds_its_stacked_sets(interior, vmapped):
    """score_mh_accept's score_prop, B rows beside `interior` or the (M + 1)·B rows of the stacked sets: vmapped with
    the chain arguments, alone, or shared while x is vmapped; u given (one call on V·B chains) and drawn (per slice):
    the map's bits, and a score_prop whose rows are no multiple of B refused naming it."""
    g = torch.Generator().manual_seed(7)
    B, D, M = 5, 3, 2

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=F64)
    x, s = randn(V, B, D), randn(V, B, D)
    x_prop, eps, u = x + 0.1 * randn(V, B, D), torch.full((V, B), 0.2, dtype=F64), torch.rand(V, B, generator=g,
                                                                                              dtype=F64)
    sets = randn(V, M + 1, B, D)
    score_prop = sets[:, 0] if interior else sets.reshape(V, (M + 1) * B, D)
    interior_scores = sets[:, 1:] if interior else None
    op = torch.ops.fastsamp.score_mh_accept.default
    for uu in (u, None):
        def call(x, x_prop, s, sp, e, u_, inner):
            return op(x, x_prop, s, sp, e, u_, inner, 3, 4, 0)
        args = [x, x_prop, s, score_prop, eps, uu, interior_scores]
        at = {"all": [0, 1, 2, 3, 4, 6] + ([5] if uu is not None else []), "score_prop": [3], "x": [0]}[vmapped]
        at = [i for i in at if args[i] is not None]
        in_dims = tuple(0 if i in at else None for i in range(len(args)))
        fixed = [a if i in at or a is None else a[0] for i, a in enumerate(args)]
        with no_fallback():
            got = torch.func.vmap(call, in_dims=in_dims)(*fixed)
        expect = [call(*[a[v] if i in at else a for i, a in enumerate(fixed)]) for v in range(V)]
        _assert_stacked(got, expect)
    odd = randn(2 * B + 1, D)
    with no_fallback(), pytest.raises(ValueError, match="score_mh_accept: score_prop"):
        torch.func.vmap(lambda a: op(a, x[0], s[0], odd, eps[0], u[0], None, 3, 4, 0))(x)


@pytest.mark.parametrize("in_dim", [0, 1, 2, 3])
def test_vmapped_dim_before_at_and_after_the_chain_dim(in_dim):
    """policy_log_pf's (T + 1, B, D) states vmapped at every position relative to their chain dim (1): folded into
    it, the map's bits."""
    args = list(op_args("policy_log_pf", F64))
    states = _slices(args[0], 9).movedim(0, in_dim)
    op = torch.ops.fastsamp.policy_log_pf.default

    def call(st):
        return op(st, *args[1:])

    with no_fallback():
        got = torch.func.vmap(call, in_dims=in_dim)(states)
    torch.testing.assert_close(got, torch.stack([call(states.select(in_dim, v)) for v in range(V)]), rtol=0, atol=0)


def test_out_arguments_under_vmap_and_grad():
    """out= (reverse_sde_step, line_points) and score_mh_accept's x_out / score_out under vmap, out= under
    torch.func.grad: no address read of a wrapped tensor (the overlap checks skipped; the op runs functional and its
    result is copied into out, which a vmapped out receives slice by slice), the map's bits, the gradient of the
    call without out."""
    torch.manual_seed(8)
    xs = torch.randn(V, 5, 2, dtype=F64)
    step = dict(t=0.5, h=0.01, schedule=VP(), seed=1)
    outs = torch.empty_like(xs)
    with no_fallback():
        got = torch.func.vmap(lambda x, o: ops.reverse_sde_step(x, x, **step, out=o))(xs, outs)
        points = torch.empty(V, 2, 5, 2, dtype=F64)
        got_points = torch.func.vmap(lambda x, o: ops.line_points(x, x + 1, 3, out=o))(xs, points)
        got_accept = torch.func.vmap(lambda x: ops.score_mh_accept(
            x, x + 0.1, x, x, 0.1, seed=1, x_out=torch.empty_like(x), score_out=torch.empty_like(x))[0])(xs)
    expect = torch.stack([ops.reverse_sde_step(x, x, **step) for x in xs])
    assert torch.equal(got, expect) and torch.equal(outs, expect)
    assert torch.equal(points, got_points)
    assert torch.equal(points, torch.stack([ops.line_points(x, x + 1, 3) for x in xs]))
    assert torch.equal(got_accept, torch.stack([ops.score_mh_accept(x, x + 0.1, x, x, 0.1, seed=1)[0] for x in xs]))

    def loss(x, into):
        return ops.mala_propose(x, x, 0.1, noise=x, out=torch.empty_like(x) if into else None).square().sum()

    torch.testing.assert_close(torch.func.grad(loss)(xs[0], True), torch.func.grad(loss)(xs[0], False), rtol=0, atol=0)


def test_vmapped_seeds_of_the_random_ops():
    """ops.normal over vmapped seed tensors and ops.uniform over vmapped offset tensors (the factory ops: one call per
    slice, no tensor argument but the seeds'): each slice the draw of its own seed / offset."""
    seeds, offsets = torch.tensor([[1], [2], [3]]), torch.tensor([[0], [5], [9]])
    with no_fallback():
        normals = torch.func.vmap(lambda s: ops.normal(s, 0, 4, 3))(seeds)
        uniforms = torch.func.vmap(lambda o: ops.uniform(7, o, 5))(offsets)
    assert torch.equal(normals, torch.stack([ops.normal(int(s), 0, 4, 3) for s in seeds]))
    assert torch.equal(uniforms, torch.stack([ops.uniform(7, int(o), 5) for o in offsets]))


def test_vmap_exports():
    """torch.export.export of a module that vmaps a public op: the exported program gives eager's bits."""
    class Scores(torch.nn.Module):
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(6)
            self.register_buffer("means", torch.randn(4, 3, generator=g))
            self.register_buffer("log_w", torch.zeros(4))
            self.register_buffer("var", torch.full((4,), 0.5))

        def forward(self, xs):
            return torch.func.vmap(lambda x: ops.gmm_score(x, self.means, self.log_w, self.var)[0])(xs)

    module, xs = Scores(), torch.randn(V, 5, 3)
    exported = torch.export.export(module, (xs,))
    assert torch.equal(exported.module()(xs), module(xs))
