"""The trajectory family, em_step_logprob (op 9): every compiled backend against the float64
reference, forward and backward, gradcheck through the public op, input validation and NaN
isolation. The fused DriftNet policy kernels of the same family are in test_trajectory_policy.py."""
import math

import pytest
import torch
from conftest import COMPILED, assert_close, backend_device, f64, rand, skip_unless_available, skip_unless_op

from fastsamp import backends, ops
from fastsamp.ops import reference as ref

# (37, 2), (29, 8): whole vectors of several rows plus a remainder in the C++ small-D path;
# D = 300: several column tiles in the Triton row loop
SHAPES = [(1, 1), (3, 2), (37, 2), (29, 8), (1000, 7), (130, 17), (257, 64), (9, 300)]
SIGMA, H = 0.9, 0.05
SEED, OFFSET = 2**40 + 12345, 2**33 + 7
# (t, explore, with log_var): each flag against the others; t = 0 means no log_pb (b2 = 0)
CASES = [(0.0, 0.0, False), (0.5, 0.0, True), (0.5, 0.3, False), (0.0, 0.3, True)]
CASE_IDS = ["t0", "t_lv", "t_explore", "t0_explore_lv"]
# x_next given: nothing is sampled, so explore must be 0
FORWARD = [(src, *case) for src in ("tensor", "philox", "given") for case in CASES if src != "given" or case[1] == 0]
FORWARD_IDS = [f"{src}-{cid}" for src in ("tensor", "philox", "given") for case, cid in zip(CASES, CASE_IDS)
               if src != "given" or case[1] == 0]
ALL_BACKENDS = ("torch",) + COMPILED


def inputs(B, D, dtype, device, with_lv):
    x = rand(B, D, dtype=dtype, device=device)
    drift = rand(B, D, dtype=dtype, device=device)
    log_var = rand(B, D, dtype=dtype, device=device, scale=0.3) if with_lv else None
    return x, drift, log_var


def source_kwargs(source, x, drift, dtype, device):
    """(kwargs for the op, the same in float64 on the CPU) for a noise source."""
    B, D = x.shape
    if source == "philox":
        kw = {"seed": SEED, "offset": OFFSET}
        return kw, kw
    if source == "tensor":
        xi = rand(B, D, dtype=dtype, device=device)
        return {"noise": xi}, {"noise": f64(xi)[0]}
    # given: a plausible next state x + h drift + O(σ√h)
    x_next = x + H * drift + rand(B, D, dtype=dtype, device=device, scale=0.3)
    return {"x_next": x_next}, {"x_next": f64(x_next)[0]}


@pytest.mark.parametrize("B,D", SHAPES)
@pytest.mark.parametrize("source,t,explore,with_lv", FORWARD, ids=FORWARD_IDS)
def test_em_step_logprob_forward(backend, dtype, B, D, source, t, explore, with_lv):
    name, device = backend
    skip_unless_op(name, "em_step_logprob")
    x, drift, log_var = inputs(B, D, dtype, device, with_lv)
    kw, kw64 = source_kwargs(source, x, drift, dtype, device)
    common = dict(sigma=SIGMA, t=t, h=H, explore=explore)
    y, log_pf, log_pb = ops.em_step_logprob(x, drift, log_var=log_var, backend=name, **common, **kw)
    e_y, e_pf, e_pb = ops.em_step_logprob(*f64(x, drift), log_var=f64(log_var)[0], backend="torch", **common, **kw64)
    assert y.dtype == dtype and log_pf.shape == (B,) and log_pb.shape == (B,) and log_pf.dtype == dtype
    if source == "given":
        assert y is kw["x_next"]
    else:
        assert_close(y, e_y, dtype, scale=10, name="x_next")
    # float32: v = x_next − mean loses ~ulp(mean), amplified by 1/s² and summed over D
    assert_close(log_pf, e_pf, dtype, scale=10 * D, name="log_pf")
    assert_close(log_pb, e_pb, dtype, scale=10 * D, name="log_pb")
    if t == 0:
        assert torch.all(log_pb == 0), "b2 = 0: log_pb is exactly 0"
    if source == "philox":
        again = ops.em_step_logprob(x, drift, log_var=log_var, backend=name, **common, **kw)
        assert all(torch.equal(a, b) for a, b in zip(again, (y, log_pf, log_pb))), "same seed/offset must reproduce"
        other = ops.em_step_logprob(x, drift, log_var=log_var, backend=name, **common, seed=SEED, offset=OFFSET + 1)
        assert not torch.equal(other[0], y)


# (reparam, want_g_x_next, g_x_next given)
BACKWARD_MODES = [(True, False, True), (True, False, False), (False, False, False), (False, True, False),
                  (True, True, True)]
BACKWARD_IDS = ["reparam", "reparam_no_gy", "constant", "want_g_x_next", "reparam_want"]


@pytest.mark.parametrize("B,D", SHAPES)
@pytest.mark.parametrize("reparam,want,with_gy", BACKWARD_MODES, ids=BACKWARD_IDS)
@pytest.mark.parametrize("t,explore,with_lv", CASES, ids=CASE_IDS)
def test_em_step_logprob_backward(backend, dtype, B, D, reparam, want, with_gy, t, explore, with_lv):
    """The backend backward against the reference backward (same backend signature)."""
    name, device = backend
    skip_unless_op(name, "em_step_logprob_backward")
    x, drift, log_var = inputs(B, D, dtype, device, with_lv)
    x_next = x + H * drift + rand(B, D, dtype=dtype, device=device, scale=0.3)
    g_pf, g_pb = rand(B, dtype=dtype, device=device), rand(B, dtype=dtype, device=device)
    g_y = rand(B, D, dtype=dtype, device=device) if with_gy else None
    s2 = SIGMA * SIGMA * H
    c = t / (t + H)
    args = (s2, explore * explore, c, s2 * c, reparam, want)
    out = backends.resolve(name, "em_step_logprob_backward", device)(x, drift, log_var, x_next, g_y, g_pf, g_pb, H,
                                                                     *args)
    expect = ref.em_step_logprob_backward(*f64(x, drift, log_var, x_next, g_y, g_pf, g_pb), H, *args)
    for label, o, e in zip(("g_x", "g_drift", "g_log_var", "g_x_next"), out, expect):
        assert (o is None) == (e is None), label
        if o is not None:
            assert o.dtype == dtype and o.device.type == device.type
            assert_close(o, e, dtype, scale=100, name=label)


def _backend_device(name):
    skip_unless_available(name)
    return backend_device(name) if name != "torch" else torch.device("cpu")


@pytest.mark.parametrize("name", ALL_BACKENDS)
@pytest.mark.parametrize("t", [0.0, 0.3])
def test_em_step_logprob_gradcheck(name, t):
    """float64 gradcheck of the public op: the reparameterised sample (noise given, explore > 0)
    and the evaluation of a given x_next (differentiable in x_next too)."""
    device = _backend_device(name)
    B, D = 2, 3
    x, drift, log_var = (t_.requires_grad_() for t_ in inputs(B, D, torch.float64, device, True))
    xi = rand(B, D, dtype=torch.float64, device=device)
    x_next = (x + H * drift + rand(B, D, dtype=torch.float64, device=device, scale=0.3)).detach().requires_grad_()
    common = dict(sigma=SIGMA, t=t, h=H, backend=name)

    def sampled(x, drift, log_var):
        return ops.em_step_logprob(x, drift, log_var=log_var, noise=xi, explore=0.2, **common)

    def given(x, drift, log_var, x_next):
        return ops.em_step_logprob(x, drift, log_var=log_var, x_next=x_next, **common)[1:]

    def given_no_lv(x, drift, x_next):
        return ops.em_step_logprob(x, drift, x_next=x_next, **common)[1:]

    assert torch.autograd.gradcheck(sampled, (x, drift, log_var))
    assert torch.autograd.gradcheck(given, (x, drift, log_var, x_next))
    assert torch.autograd.gradcheck(given_no_lv, (x, drift, x_next))


@pytest.mark.parametrize("with_lv", [False, True], ids=["", "lv"])
def test_em_step_logprob_constant_sample_gradients(backend, dtype, with_lv):
    """reparam=False treats the sample as a constant: finite differences cannot see that (the sample
    moves with x), so its gradients must equal those of evaluating the same x_next."""
    name, device = backend
    B, D = 33, 6
    x, drift, log_var = inputs(B, D, dtype, device, with_lv)
    leaves = [t_.requires_grad_() for t_ in (x, drift, log_var) if t_ is not None]
    w_pf, w_pb = rand(B, dtype=dtype, device=device), rand(B, dtype=dtype, device=device)
    common = dict(sigma=SIGMA, t=0.4, h=H, log_var=log_var, backend=name)
    y, pf, pb = ops.em_step_logprob(x, drift, seed=SEED, offset=3, reparam=False, explore=0.2, **common)
    assert not y.requires_grad
    grads = torch.autograd.grad((w_pf * pf + w_pb * pb).sum(), leaves)
    _, pf2, pb2 = ops.em_step_logprob(x, drift, x_next=y, **common)
    grads2 = torch.autograd.grad((w_pf * pf2 + w_pb * pb2).sum(), leaves)
    for g, g2 in zip(grads, grads2):
        assert torch.equal(g, g2)
    # explore widens the sampling only: the evaluated density is the model's
    assert_close(pf, pf2, dtype, scale=10 * D, name="log_pf")


def test_em_step_logprob_nan_chain_stays_in_its_chain(backend, dtype):
    name, device = backend
    B, D = 37, 6
    x, drift, log_var = inputs(B, D, dtype, device, True)
    x[5, 1] = math.nan
    for t_ in (x, drift, log_var):
        t_.requires_grad_()
    kw = dict(sigma=SIGMA, t=0.5, h=H, seed=SEED, offset=1)
    y, pf, pb = ops.em_step_logprob(x, drift, log_var=log_var, backend=name, **kw)
    (y.sum() + pf.sum() + pb.sum()).backward()
    keep = torch.arange(B, device=device) != 5
    assert torch.isnan(y[5]).any() and torch.isnan(pf[5]) and torch.isnan(pb[5])
    assert torch.isnan(x.grad[5]).any()
    for label, out in (("x_next", y), ("log_pf", pf), ("log_pb", pb), ("g_x", x.grad), ("g_drift", drift.grad),
                       ("g_log_var", log_var.grad)):
        assert torch.isfinite(out[keep]).all(), f"{label}: a NaN chain leaked into another chain"
    ex, ed, el = (t_.detach().double().cpu().requires_grad_() for t_ in (x, drift, log_var))
    e_y, e_pf, e_pb = ops.em_step_logprob(ex, ed, log_var=el, backend="torch", **kw)
    (e_y.sum() + e_pf.sum() + e_pb.sum()).backward()
    assert_close(y.detach(), e_y.detach(), dtype, scale=10, name="x_next")
    assert_close(pf.detach(), e_pf.detach(), dtype, scale=10 * D, name="log_pf")
    assert_close(x.grad, ex.grad, dtype, scale=100, name="g_x")


# --------------------------------------------------------------------------- validation

F64 = torch.float64


def _call(**over):
    B, D = 4, 3
    kw = dict(x=torch.randn(B, D, dtype=F64), drift=torch.randn(B, D, dtype=F64), sigma=1.0, t=0.5, h=0.1, seed=0)
    kw.update(over)
    x, drift = kw.pop("x"), kw.pop("drift")
    return ops.em_step_logprob(x, drift, **kw)


_X = torch.randn(4, 3, dtype=F64)


@pytest.mark.parametrize("over,exc,match", [
    ({"x": torch.randn(4, dtype=F64)}, ValueError, "x must have shape"),
    ({"x": torch.randn(4, 3, dtype=torch.float16)}, TypeError, "x must be float32 or float64"),
    ({"drift": torch.randn(5, 3, dtype=F64)}, ValueError, "drift must have shape"),
    ({"drift": torch.randn(4, 3, dtype=torch.float32)}, TypeError, "drift must have dtype"),
    ({"drift": torch.empty(4, 3, dtype=F64, device="meta")}, ValueError, "drift must be on"),
    ({"drift": [[0.0] * 3] * 4}, TypeError, "drift must be a torch.Tensor"),
    ({"log_var": torch.randn(4, 2, dtype=F64)}, ValueError, "log_var must have shape"),
    ({"log_var": torch.randn(4, 3, dtype=torch.float32)}, TypeError, "log_var must have dtype"),
    ({"log_var": torch.empty(4, 3, dtype=F64, device="meta")}, ValueError, "log_var must be on"),
    ({"x_next": torch.randn(3, 3, dtype=F64), "seed": None}, ValueError, "x_next must have shape"),
    ({"x_next": torch.randn(4, 3, dtype=torch.float32), "seed": None}, TypeError, "x_next must have dtype"),
    ({"x_next": torch.empty(4, 3, dtype=F64, device="meta"), "seed": None}, ValueError, "x_next must be on"),
    ({"sigma": math.nan}, ValueError, "sigma must be finite"),
    ({"sigma": math.inf}, ValueError, "sigma must be finite"),
    ({"sigma": 0.0}, ValueError, "sigma must be > 0"),
    ({"sigma": -1.0}, ValueError, "sigma must be > 0"),
    ({"h": 0.0}, ValueError, "h must be > 0"),
    ({"h": -0.1}, ValueError, "h must be > 0"),
    ({"h": math.nan}, ValueError, "h must be finite"),
    ({"t": -0.1}, ValueError, "t must be >= 0"),
    ({"t": math.inf}, ValueError, "t must be finite"),
    ({"explore": -0.5}, ValueError, "explore must be >= 0"),
    ({"explore": math.nan}, ValueError, "explore must be finite"),
    ({"sigma": "1"}, TypeError, "sigma must be a real number"),
    ({"x_next": _X}, ValueError, "x_next"),  # with a seed
    ({"x_next": _X, "seed": None, "noise": _X}, ValueError, "x_next"),
    ({"x_next": _X, "seed": None, "reparam": True}, ValueError, "reparam=True"),
    ({"x_next": _X, "seed": None, "explore": 0.1}, ValueError, "explore"),
    ({"noise": _X}, ValueError, "noise or seed"),  # noise and seed
    ({"seed": None, "noise": torch.randn(4, 2, dtype=F64)}, ValueError, "noise must have shape"),
    ({"offset": -1}, ValueError, "offset must be >= 0"),
])
def test_em_step_logprob_validation(over, exc, match):
    with pytest.raises(exc, match=match):
        _call(**over)
