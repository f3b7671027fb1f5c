"""Forward-mode AD (torch.func.jvp, torch.autograd.forward_ad; jacfwd and hessian are built on them) through every
registered op (the op table's list: a new op is covered), called as the registered op torch.ops.fastsamp.<op> and
as the public functions call it (`_dispatch.route`: backend "auto", "torch", "cpp", "triton" under the
interpreter): the tangents equal the reference's central finite difference in float64, or the call raises naming
the op (not an op with a jvp formula called as the registered op or with "auto": `MUST_GIVE_A_TANGENT`). Never a
zero (or otherwise wrong) tangent."""
import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from test_registration import op_args

from fastsamp import backends, ops
from fastsamp.ops import _autograd, _dispatch, _table, reference

F64 = torch.float64
WITH_TENSORS = [op.name for op in _table.registered()
                if any(a.kind in ("state", "tensor", "tensors") for a in op.schema_args)]  # not normal / uniform
WAYS = ["registered", "auto", "torch", "cpp", "triton"]
MUST_GIVE_A_TANGENT = {(op.name, way) for op in _table.registered() if op.grad for way in ("registered", "auto")}
"""The ops with jvp formulas (`_autograd.JVPS`) called as the registered op and with backend "auto": a refusal there
fails the test."""


def _float_positions(name, args):
    """(i, j) of every floating tensor argument, j the index inside a list of tensors (None: not a list); not the
    float64 time grids (`ts`), whose perturbation leaves the ops' domain."""
    out, fixed = [], [a.dtype == "f64" for a in _table.OPS[name].schema_args]
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor) and a.is_floating_point() and not fixed[i]:
            out.append((i, None))
        elif isinstance(a, list):
            out += [(i, j) for j, t in enumerate(a) if isinstance(t, torch.Tensor) and t.is_floating_point()]
    return out


def _with(args, at, values):
    args = [list(a) if isinstance(a, list) else a for a in args]
    for (i, j), v in zip(at, values):
        if j is None:
            args[i] = v
        else:
            args[i][j] = v
    return args


def _primals(args, at):
    """The tensors of args at the positions `at` (`_float_positions`)."""
    return [args[i] if j is None else args[i][j] for i, j in at]


def _flat(out):
    out = out if isinstance(out, (tuple, list)) else (out,)
    return [u for t in out for u in (t if isinstance(t, (tuple, list)) else (t,))]


def _function(way, name):
    if way == "registered":
        return getattr(torch.ops.fastsamp, name)
    if way != "auto" and not backends.is_available(way):
        pytest.skip(f"backend {way} unavailable")
    if way != "auto":
        try:
            backends.resolve(way, name, torch.device("cpu"))
        except Exception:
            pytest.skip(f"{name} has no {way} function")

    def fn(*args):
        tensors = [t for a in args for t in (a if isinstance(a, list) else (a,)) if isinstance(t, torch.Tensor)]
        return _dispatch.route(way, name, *tensors)(*args)
    return fn


def _tangents(api, fn, args, at, tangents):
    """The outputs' tangents (None for an output without one) of fn at args along `tangents` of positions `at`."""
    primals = _primals(args, at)
    if api == "jvp":
        def f(*p):
            return tuple(t for t in _flat(fn(*_with(args, at, p))) if t is not None)
        out = list(torch.func.jvp(f, tuple(primals), tuple(tangents))[1])
        return [None if t is None else out.pop(0) for t in _flat(fn(*args))]
    with fwAD.dual_level():
        duals = [fwAD.make_dual(p, t) for p, t in zip(primals, tangents)]
        return [None if t is None else fwAD.unpack_dual(t).tangent for t in _flat(fn(*_with(args, at, duals)))]


def _finite_difference(fn, args, at, tangents, eps=1e-6):
    primals = _primals(args, at)
    plus = _flat(fn(*_with(args, at, [p + eps * t for p, t in zip(primals, tangents)])))
    minus = _flat(fn(*_with(args, at, [p - eps * t for p, t in zip(primals, tangents)])))
    return [None if a is None or not a.is_floating_point() else (a - b) / (2 * eps) for a, b in zip(plus, minus)]


@pytest.mark.parametrize("api", ["jvp", "forward_ad"])
@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("name", WITH_TENSORS)
def test_tangent_is_right_or_the_call_raises_naming_the_op(name, way, api):
    fn = _function(way, name)
    torch.manual_seed(0)
    args = list(op_args(name, F64))
    at = _float_positions(name, args)
    tangents = [torch.randn_like(p) for p in _primals(args, at)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = _tangents(api, fn, args, at, tangents)
    except (RuntimeError, ValueError, NotImplementedError) as e:
        assert name in str(e), f"{name} via {way} raised without naming the op: {e}"
        assert (name, way) not in MUST_GIVE_A_TANGENT, f"{name} via {way} has a jvp formula but raised: {e}"
        return
    ref = getattr(reference, name, None)
    assert ref is not None, f"{name} via {way} ran in forward mode though it has no reference to check against"
    expect = _finite_difference(ref, args, at, tangents)
    assert len(got) == len(expect)
    for k, (g, e) in enumerate(zip(got, expect)):
        if e is None:
            continue
        g = torch.zeros_like(e) if g is None else g
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{name} via {way}, output {k}: {m}")


def test_every_op_with_a_backward_has_a_jvp():
    """The registered ops the table marks differentiable have both formulas (`_autograd.FORMULAS`, `JVPS`)."""
    assert set(_autograd.JVPS) == set(_autograd.FORMULAS) == {op.name for op in _table.registered() if op.grad}


def test_op_without_jvp_raises_naming_the_op():
    args = op_args("score_mh_accept", F64)
    with pytest.raises(RuntimeError, match="score_mh_accept has no forward-mode derivative"):
        torch.func.jvp(lambda x: torch.ops.fastsamp.score_mh_accept(x, *args[1:])[0], (args[0],),
                       (torch.ones_like(args[0]),))
    with fwAD.dual_level(), pytest.raises(RuntimeError, match="score_mh_accept has no forward-mode derivative"):
        torch.ops.fastsamp.score_mh_accept(fwAD.make_dual(args[0], torch.ones_like(args[0])), *args[1:])


def test_jacfwd_and_hessian_of_gmm_log_density():
    """jacfwd of the registered score (the compiled op and its jvp formula) and the hessian of log p (jacfwd over
    jacrev: nested, so the op's reference) equal the reference's; the score's Jacobian is the Hessian of log p."""
    torch.manual_seed(1)
    x, means = torch.randn(1, 3, dtype=F64), torch.randn(4, 3, dtype=F64)
    mix = (means, torch.randn(4, dtype=F64), torch.rand(4, dtype=F64) + 0.5)

    def logp(op):
        return lambda y: op(y[None], *mix, 0.8, 0.3)[1][0]

    def score(op):
        return lambda y: op(y[None], *mix, 0.8, 0.3)[0][0]

    registered, ref = torch.ops.fastsamp.gmm_score, reference.gmm_score
    expect = torch.func.hessian(logp(ref))(x[0])
    torch.testing.assert_close(torch.func.jacfwd(score(registered))(x[0]), expect)
    torch.testing.assert_close(torch.func.hessian(logp(registered))(x[0]), expect)
    torch.testing.assert_close(torch.func.jacrev(torch.func.jacfwd(logp(registered)))(x[0]), expect)


def test_public_ops_in_forward_mode():
    """The public functions with backend "auto": the compiled op's jvp (reverse_sde_step, mala_propose) or the
    reference (score_mh_accept); an explicit compiled backend raises naming the op."""
    from fastsamp import VP
    torch.manual_seed(2)
    x, s, xi, dx = (torch.randn(4, 3, dtype=F64) for _ in range(4))
    eps = torch.rand(4, dtype=F64) + 0.1
    vp = dict(t=0.5, h=0.01, schedule=VP())
    _, tangent = torch.func.jvp(lambda y: ops.reverse_sde_step(y, s, noise=xi, **vp), (x,), (dx,))
    _, expect = torch.func.jvp(lambda y: ops.reverse_sde_step(y, s, noise=xi, backend="torch", **vp), (x,), (dx,))
    torch.testing.assert_close(tangent, expect)
    with fwAD.dual_level():
        out = ops.mala_propose(fwAD.make_dual(x, dx), s, eps, noise=xi)
        torch.testing.assert_close(fwAD.unpack_dual(out).tangent, dx)
        accepted = ops.score_mh_accept(fwAD.make_dual(x, dx), x + 0.1, s, s, eps, seed=0)
        assert fwAD.unpack_dual(accepted[0]).tangent is not None
    if backends.is_available("cpp"):
        with pytest.raises(ValueError, match="mala_propose on backend 'cpp' has no forward-mode derivative"):
            torch.func.jvp(lambda y: ops.mala_propose(y, s, eps, noise=xi, backend="cpp"), (x,), (dx,))


def _fused_cases():
    """name -> (function of one tensor, that tensor): the public ops whose autograd runs a fused backward kernel."""
    from fastsamp.samplers.diffusion import DriftNet
    torch.manual_seed(3)
    x, d, c = torch.randn(5, 3, dtype=F64), torch.randn(5, 3, dtype=F64), torch.randn(5, 3, dtype=F64)
    ws, bs = [torch.randn(8, 3, dtype=F64), torch.randn(3, 8, dtype=F64)], [torch.randn(8, dtype=F64),
                                                                             torch.randn(3, dtype=F64)]
    one, net = torch.ones(5, dtype=F64), DriftNet(3, hidden=8, n_harmonics=4, n_layers=1).double()
    temb = net.time_features(torch.arange(4, dtype=F64) / 4)[0].detach()
    states = ops.policy_rollout(net, temb, 2, sigma=1.0)[0]
    return {
        "em_step_logprob": (lambda y: ops.em_step_logprob(y, d, sigma=1.0, t=0.3, h=0.1, seed=1)[1], x),
        "mlp_net": (lambda w: ops.mlp_net(x, [w, ws[1]], bs), ws[0]),
        "mlp_net_lsq": (lambda w: ops.mlp_net_lsq(x, [w, ws[1]], bs, c, one), ws[0]),
        "mlp_net_energy_lsq": (lambda w: ops.mlp_net_energy_lsq(x, [w, ws[1]], bs, c, one, one, d), ws[0]),
        "policy_log_pf": (lambda t: ops.policy_log_pf(net, states, t, sigma=1.0), temb),
        "policy_rollout": (lambda t: ops.policy_rollout(net, t, 2, sigma=1.0, reparam=True)[0], temb),
    }


@pytest.mark.parametrize("api", ["jvp", "forward_ad"])
@pytest.mark.parametrize("name", ["em_step_logprob", "mlp_net", "mlp_net_lsq", "mlp_net_energy_lsq", "policy_log_pf",
                                  "policy_rollout"])
def test_fused_autograd_ops_refuse_forward_mode_naming_the_op(name, api):
    """The public ops whose autograd is a fused backward kernel (their own autograd.Function) have no jvp: forward
    mode raises naming the op (torch's error for a Function without jvp does not)."""
    if not backends.is_available("cpp"):
        pytest.skip("the fused C++ kernels")
    fn, arg = _fused_cases()[name]
    with pytest.raises(RuntimeError, match=f"{name} has no forward-mode derivative"):
        if api == "jvp":
            torch.func.jvp(fn, (arg,), (torch.ones_like(arg),))
        else:
            with fwAD.dual_level():
                fn(fwAD.make_dual(arg, torch.ones_like(arg)))


def _frozen_and_langevin_log_pf_cases():
    """name -> (function of (temb, lgv), temb, lgv) for policy_log_pf where its parameters do not require grad: a
    frozen net (`requires_grad_(False)`) with and without the Langevin term, and a trained Langevin net (the tangent
    then rides on temb and lgv only)."""
    from fastsamp.samplers.diffusion import DriftNet
    from fastsamp.targets import GMM25
    torch.manual_seed(4)
    out = {}
    for name, langevin, frozen in (("frozen", False, True), ("frozen_langevin", True, True),
                                   ("langevin", True, False)):
        net = DriftNet(2, hidden=8, n_harmonics=4, n_layers=1, langevin=langevin).double().requires_grad_(not frozen)
        temb, lgv = net.time_features(torch.arange(4, dtype=F64) / 4)
        temb, lgv = temb.detach(), (lgv.detach() if langevin else None)
        if langevin:
            states, _, _, scores = ops.policy_rollout(net, temb, 3, lgv=lgv, target=GMM25(), sigma=1.0)
        else:
            states, scores = ops.policy_rollout(net, temb, 3, sigma=1.0)[0], None
        out[name] = (_log_pf_of(net, states, scores), temb, lgv)
    return out


def _log_pf_of(net, states, scores):
    """(temb, lgv) -> policy_log_pf of these states under net (lgv None: without the Langevin term)."""
    return lambda temb, lgv: ops.policy_log_pf(net, states, temb, lgv=lgv, scores=scores, sigma=1.0)


@pytest.mark.parametrize("api", ["jvp", "forward_ad"])
@pytest.mark.parametrize("case", ["frozen", "frozen_langevin", "langevin"])
def test_policy_log_pf_refuses_forward_mode_when_no_parameter_requires_grad(case, api):
    """policy_log_pf's shortcut past its autograd.Function (nothing requires grad) is not taken in forward mode:
    a tangent on temb (and lgv) raises naming the op, never a missing tangent (forward_ad) or torch's data-pointer
    error (torch.func.jvp), whether or not the net's parameters require grad."""
    if not backends.is_available("cpp"):
        pytest.skip("the fused C++ kernels")
    fn, temb, lgv = _frozen_and_langevin_log_pf_cases()[case]
    with pytest.raises(RuntimeError, match="policy_log_pf has no forward-mode derivative"):
        if api == "jvp":
            if lgv is None:
                torch.func.jvp(lambda t: fn(t, None), (temb,), (torch.ones_like(temb),))
            else:
                torch.func.jvp(fn, (temb, lgv), (torch.ones_like(temb), torch.ones_like(lgv)))
        else:
            with fwAD.dual_level():
                g = None if lgv is None else fwAD.make_dual(lgv, torch.ones_like(lgv))
                fn(fwAD.make_dual(temb, torch.ones_like(temb)), g)


def _weighted_scalar(fn, args, at, weights):
    """p -> Σ over fn's outputs o (at args with the positions `at` replaced by p) of Σ (o·w + o²·w/2)."""
    def f(*p):
        return sum((o * w + o * o * w / 2).sum() for o, w in zip(_flat(fn(*_with(args, at, p))), weights)
                   if w is not None)
    return f


def _weighted_problem(name, noise, seed):
    """From torch.manual_seed(seed): op `name`'s float64 arguments (`noise` given or drawn), the positions of its float
    inputs, random weights of the reference's outputs (`_weighted_scalar`) and the primals at those positions."""
    torch.manual_seed(seed)
    args = list(op_args(name, F64, noise=noise))
    at = _float_positions(name, args)
    weights = [None if t is None else torch.randn_like(t) for t in _flat(getattr(reference, name)(*args))]
    return args, at, weights, _primals(args, at)


BATCHED_FIRST = {"vmap_jacrev": lambda f, argnums, tangents: torch.func.vmap(torch.func.jacrev(f, argnums)),
                 "vmap_jvp": lambda f, argnums, tangents: torch.func.vmap(
                     lambda *p: torch.func.jvp(f, p, tangents)[1])}


@pytest.mark.parametrize("noise", [True, False], ids=["noise_given", "noise_drawn"])
@pytest.mark.parametrize("name", [op.name for op in _table.registered() if op.grad])
def test_first_derivatives_under_vmap_through_the_registered_formulas(name, noise):
    """vmap of jacrev and of jvp (one differentiating transform: the op's formulas run, on vmap's batched tensors)
    of a weighted sum of the registered op's outputs and their squares, over a batch of two input sets, equal the
    reference's (a drawn noise is read back from the output as a constant, still batched)."""
    args, at, weights, primals = _weighted_problem(name, noise, 6)
    batched = [torch.stack([p, p + 0.1 * torch.rand_like(p)]) for p in primals]
    tangents = tuple(torch.randn_like(p) for p in primals)
    argnums = tuple(range(len(primals)))
    op, ref = getattr(torch.ops.fastsamp, name), getattr(reference, name)
    for label, first in BATCHED_FIRST.items():
        expect = first(_weighted_scalar(ref, args, at, weights), argnums, tangents)(*batched)
        got = first(_weighted_scalar(op, args, at, weights), argnums, tangents)(*batched)
        torch.testing.assert_close(got, expect, msg=lambda m, k=label: f"{k}: {m}")


def _dotted(result, seed):
    """Σ of the tensors of `result` times fixed random weights (drawn from `seed`)."""
    torch.manual_seed(seed)
    return sum((r * torch.randn_like(r)).sum() for r in result)


def _func_grad(f, primals):
    return torch.func.grad(f, tuple(range(len(primals))))(*primals)


def _forward_ad_tangent(f, primals):
    with fwAD.dual_level():
        return (fwAD.unpack_dual(f(*(fwAD.make_dual(p, torch.ones_like(p)) for p in primals))).tangent,)


def _jvp_tangent(f, primals):
    return (torch.func.jvp(f, tuple(primals), tuple(torch.ones_like(p) for p in primals))[1],)


OVER_ONE = {"func_grad": (_func_grad, _func_grad), "func_jvp": (_jvp_tangent, _jvp_tangent),
            "forward_ad": (_forward_ad_tangent, _jvp_tangent)}
"""transform -> (itself, the same maths in torch.func for the reference's answer: torch.func.grad over it)."""


@pytest.mark.parametrize("transform", OVER_ONE)
@pytest.mark.parametrize("noise", [True, False], ids=["noise_given", "noise_drawn"])
@pytest.mark.parametrize("name", [op.name for op in _table.registered() if op.grad])
def test_regular_autograd_over_one_transform_equals_the_reference(name, noise, transform):
    """torch.autograd.grad, inputs requiring grad, of torch.func.grad's gradient and torch.func.jvp's tangent (the op
    then runs its reference: `_library._reference_test`; the Function's outputs would be constants to regular
    autograd) and of forward_ad's tangent (the Function, whose jvp regular autograd differentiates), of a weighted
    sum of the registered op's outputs and their squares, dotted with random weights, equal torch.func.grad of the
    same through the reference (regular autograd over forward_ad through reference.gmm_score raises in torch: an
    in-place softmax tangent). Before `_reference_test` all func_grad and func_jvp cases failed."""
    args, at, weights, primals = _weighted_problem(name, noise, 7)
    over, same_in_func = OVER_ONE[transform]
    primals = [p.detach().requires_grad_() for p in primals]
    total = _dotted(over(_weighted_scalar(getattr(torch.ops.fastsamp, name), args, at, weights), primals), 8)
    got = torch.autograd.grad(total, primals, allow_unused=True)
    ref = _weighted_scalar(getattr(reference, name), args, at, weights)
    expect = torch.func.grad(lambda *p: _dotted(same_in_func(ref, p), 8), tuple(range(len(primals))))(
        *(p.detach() for p in primals))
    for k, (g, e) in enumerate(zip(got, expect)):
        torch.testing.assert_close(torch.zeros_like(e) if g is None else g, e, msg=lambda m, k=k: f"input {k}: {m}")


SECOND = {"hessian": torch.func.hessian,  # jacfwd of jacrev
          "jacrev_jacfwd": lambda f, a: torch.func.jacrev(torch.func.jacfwd(f, a), a),
          "jacrev_jacrev": lambda f, a: torch.func.jacrev(torch.func.jacrev(f, a), a),
          "jacfwd_jacfwd": lambda f, a: torch.func.jacfwd(torch.func.jacfwd(f, a), a)}


@pytest.mark.parametrize("noise", [True, False], ids=["noise_given", "noise_drawn"])
@pytest.mark.parametrize("name", [op.name for op in _table.registered() if op.grad])
def test_second_derivatives_under_nested_transforms_run_the_reference(name, noise):
    """Second derivatives under torch.func, mixing the modes or not, forward over forward too, of a weighted sum of
    the registered op's outputs and their squares in all its float inputs equal the reference's: under nested
    transforms the op runs its reference (`_library._reference_test`), since the formulas' single-level Function
    would leave the outer levels' derivatives wrong (the squares need them to see the outputs depend on the
    inputs)."""
    args, at, weights, primals = _weighted_problem(name, noise, 4)
    argnums = tuple(range(len(primals)))
    expect = torch.func.hessian(_weighted_scalar(getattr(reference, name), args, at, weights), argnums)(*primals)
    scalar = _weighted_scalar(getattr(torch.ops.fastsamp, name), args, at, weights)
    for label, second in SECOND.items():
        torch.testing.assert_close(second(scalar, argnums)(*primals), expect, msg=lambda m, k=label: f"{k}: {m}")


def test_jvp_of_jvp_of_gmm_log_density():
    """jvp of jvp (a Hessian's v1ᵀ H v2) of log p through the registered op gives the reference's (not the zero of
    torch.func's single differentiation of a jvp formula)."""
    torch.manual_seed(5)
    x, v1, v2, means = torch.randn(3, dtype=F64), torch.randn(3, dtype=F64), torch.randn(3, dtype=F64), \
        torch.randn(4, 3, dtype=F64)
    mix = (means, torch.randn(4, dtype=F64), torch.rand(4, dtype=F64) + 0.5)

    def second(op):
        def first(y):
            return torch.func.jvp(lambda z: op(z[None], *mix, 0.8, 0.3)[1][0], (y,), (v1,))[1]
        return torch.func.jvp(first, (x,), (v2,))[1]
    torch.testing.assert_close(second(torch.ops.fastsamp.gmm_score), second(reference.gmm_score))
