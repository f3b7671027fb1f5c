"""Bad input raises a clear exception naming the argument, on every entry point."""
import contextlib
import math

import pytest
import torch
from conftest import skip_unless_available

from fastsamp import VP, ops

F64 = torch.float64


@pytest.fixture(autouse=True)
def leaves_nothing_watching():
    """No test here leaves a dispatch / torch-function mode or the profiler on: later tests would see
    `_library.observed()` and take the dispatcher path instead of the plain eager one."""
    from fastsamp.ops import _library
    assert not _library.observed()
    yield
    assert not _library.observed(), "the test left a mode active"


def mix(D=3, K=2, dtype=F64):
    return torch.randn(K, D, dtype=dtype), torch.zeros(K, dtype=dtype), torch.ones(K, dtype=dtype)


def x_(B=4, D=3, dtype=F64):
    return torch.randn(B, D, dtype=dtype)


@pytest.mark.parametrize("bad,exc,match", [
    (torch.randn(4), ValueError, "x must have shape"),
    (torch.randn(4, 3, dtype=torch.float16), TypeError, "x must be float32 or float64"),
    (torch.zeros(4, 3, dtype=torch.int64), TypeError, "x must be float32 or float64"),
    (torch.randn(0, 3, dtype=F64), ValueError, "B >= 1"),
    (torch.randn(4, 0, dtype=F64), ValueError, "D >= 1"),
    ([[1.0, 2.0, 3.0]], TypeError, "x must be a torch.Tensor"),
])
def test_bad_state(bad, exc, match):
    with pytest.raises(exc, match=match):
        ops.gmm_score(bad, *mix())
    with pytest.raises(exc, match=match):
        ops.mala_propose(bad, bad, 0.1, seed=0)


def test_mismatched_shapes_dtypes():
    x = x_()
    with pytest.raises(ValueError, match="score must have shape"):
        ops.mala_propose(x, x_(5), 0.1, seed=0)
    with pytest.raises(TypeError, match="score must have dtype"):
        ops.mala_propose(x, x_(dtype=torch.float32), 0.1, seed=0)
    with pytest.raises(ValueError, match="means must have shape"):
        ops.gmm_score(x, *mix(D=4))
    with pytest.raises(TypeError, match="log_weights must have dtype"):
        ops.gmm_score(x, mix()[0], torch.zeros(2, dtype=torch.float32), mix()[2])
    with pytest.raises(ValueError, match="u must have shape"):
        ops.score_mh_accept(x, x, x, x, 0.1, torch.rand(5, dtype=F64))
    with pytest.raises(ValueError, match="interior_scores must have shape"):
        ops.score_mh_accept(x, x, x, x, 0.1, torch.rand(4, dtype=F64), interior_scores=torch.zeros(2, 5, 3, dtype=F64))


@pytest.mark.parametrize("eps,exc,match", [
    (math.nan, ValueError, "step_size must be finite"),
    (math.inf, ValueError, "step_size must be finite"),
    (-0.1, ValueError, "step_size must be > 0"),
    (0.0, ValueError, "step_size must be > 0"),
    ("0.1", TypeError, "step_size must be a real number"),
    (torch.tensor([0.1, math.nan, 0.1, 0.1], dtype=F64), ValueError, "step_size must be finite and > 0"),
    (torch.full((5,), 0.1, dtype=F64), ValueError, r"step_size must be a float or have shape \(4,\)"),
    (torch.ones(4, dtype=torch.int64), TypeError, "step_size must be a floating tensor"),
])
def test_bad_step_size(eps, exc, match):
    x = x_()
    with pytest.raises(exc, match=match):
        ops.mala_propose(x, x, eps, seed=0)
    with pytest.raises(exc, match=match):
        ops.gmm_mala(x, *mix(), step_size=eps, n_steps=1)


def test_bad_scalars():
    x = x_()
    with pytest.raises(ValueError, match="h must be finite"):
        ops.reverse_sde_step(x, x, t=0.5, h=math.nan, schedule=VP(), seed=0)
    with pytest.raises(ValueError, match="h must be > 0"):
        ops.reverse_sde_step(x, x, t=0.5, h=-0.1, schedule=VP(), seed=0)
    with pytest.raises(ValueError, match=r"t must be in \[0, 1\]"):
        ops.reverse_sde_step(x, x, t=1.5, h=0.1, schedule=VP(), seed=0)
    with pytest.raises(TypeError, match="schedule must be"):
        ops.reverse_sde_step(x, x, t=0.5, h=0.1, schedule="vp", seed=0)
    with pytest.raises(ValueError, match="either noise or seed"):
        ops.mala_propose(x, x, 0.1, noise=x, seed=1)
    with pytest.raises(ValueError, match="seed must be"):
        ops.mala_propose(x, x, 0.1, seed=2**64)
    with pytest.raises(ValueError, match="offset must be >= 0"):
        ops.mala_propose(x, x, 0.1, seed=1, offset=-1)
    with pytest.raises(ValueError, match="n_steps must be >= 1"):
        ops.gmm_mala(x, *mix(), step_size=0.1, n_steps=0)
    with pytest.raises(ValueError, match="n_trapezoid must be >= 1"):
        ops.gmm_mala(x, *mix(), step_size=0.1, n_steps=1, n_trapezoid=0)
    with pytest.raises(ValueError, match="mh must be one of"):
        ops.gmm_mala(x, *mix(), step_size=0.1, n_steps=1, mh="exact")
    with pytest.raises(ValueError, match="variances must be finite and > 0"):
        ops.gmm_score(x, mix()[0], mix()[1], torch.tensor([1.0, 0.0], dtype=F64))
    with pytest.raises(ValueError, match="sigma2 must be >= 0"):
        ops.gmm_score(x, *mix(), sigma2=-1.0)
    with pytest.raises(ValueError, match="damping must be in"):
        ops.momentum_refresh(x, 1.0, seed=0)
    with pytest.raises(ValueError, match="n must be >= 1"):
        ops.line_points(x, x, 0)


def test_bad_backend_and_device():
    x = x_()
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.gmm_score(x, *mix(), backend="numba")
    with pytest.raises(ValueError, match="backend='cuda' needs CUDA tensors"):
        ops.gmm_score(x, *mix(), backend="cuda")
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="means must be on"):
            ops.gmm_score(x.cuda(), *mix())
        with pytest.raises(ValueError, match="backend='cpp' needs CPU tensors"):
            ops.gmm_score(x.cuda(), *[t.cuda() for t in mix()], backend="cpp")


def test_noncontiguous_inputs_are_accepted():
    x = torch.randn(3, 8, dtype=F64)[:, ::2]
    params = mix(D=4)
    s, lp = ops.gmm_score(x, *params)
    s2, lp2 = ops.gmm_score(x.contiguous(), *params, backend="torch")
    torch.testing.assert_close(s, s2)
    torch.testing.assert_close(lp, lp2)


# ---------------------------------------------------------------- regressions of issue 16
ALL_BACKENDS = ("torch", "cpp", "triton", "cuda")


@pytest.fixture(params=ALL_BACKENDS)
def any_backend(request):
    """A backend name; tensors are created on its device for the test (`with torch.device`, off the CPU only).

    Not torch.set_default_device: that enters a global torch-function mode (DeviceContext), and setting it
    back to "cpu" enters another one instead of leaving it (only None does), so every later test ran with a
    function mode active (`_library.observed()`, the dispatcher path)."""
    from conftest import backend_device, skip_unless_available
    if request.param != "torch":
        skip_unless_available(request.param)
    device = backend_device(request.param) if request.param != "torch" else torch.device("cpu")
    with contextlib.nullcontext() if device.type == "cpu" else torch.device(device):
        yield request.param


def has_kernel(backend, op):
    from fastsamp import backends
    return backend == "torch" or hasattr(backends._load(backend)[0], op)


@pytest.mark.parametrize("call,name", [
    (lambda x, b: ops.gmm_mala(x, *mix(), step_size=0.1, n_steps=2**32 + 1, backend=b), "n_steps"),
    (lambda x, b: ops.gmm_mala(x, *mix(), step_size=0.1, n_steps=1, n_trapezoid=2**32, backend=b), "n_trapezoid"),
    (lambda x, b: ops.gmm_hmc(x, *mix(), step_size=0.1, n_steps=2**31, backend=b), "n_steps"),
    (lambda x, b: ops.gmm_hmc(x, *mix(), step_size=0.1, n_steps=1, n_leapfrog=2**31, backend=b), "n_leapfrog"),
    (lambda x, b: ops.line_points(x, x, 2**31, backend=b), "n"),
    (lambda x, b: ops.score_mh_accept(x, x, x, x, 0.1, x[:, 0].contiguous(), backend=b,
                                      interior_scores=x[None].expand(2**31, *x.shape)), r"interior_scores.shape\[0\]"),
])
def test_counts_past_c_int_are_refused(any_backend, call, name):
    """Counts reach the kernels as C ints: 2**31 and more (2**32 + 1 once ran a single move) are refused."""
    with pytest.raises(ValueError, match=rf"{name} must be <= 2147483647"):
        call(x_(), any_backend)


def test_shape_past_c_int_is_refused():
    wide = torch.zeros(1, 1, dtype=F64).expand(1, 2**31)  # no memory behind the stride-0 view
    with pytest.raises(ValueError, match="x is too large"):
        ops.gmm_score(wide, wide, torch.zeros(1, dtype=F64), torch.ones(1, dtype=F64))


def test_kernel_size_limits(monkeypatch):
    """An explicit backend above its documented D limit raises ValueError; "auto" runs the reference."""
    from fastsamp import backends
    from fastsamp.ops import _library, reference
    if backends.is_available("triton"):
        with pytest.raises(ValueError, match="backend 'triton' gmm_mala supports D <= 128, got D = 129"):
            ops.gmm_mala(x_(D=129), *mix(D=129), step_size=0.1, n_steps=1, backend="triton")
        with pytest.raises(ValueError, match="backend 'triton' gmm_hmc supports D <= 128"):
            ops.gmm_hmc(x_(D=129), *mix(D=129), step_size=0.1, n_steps=1, backend="triton")
    if not backends.is_available("cpp"):
        pytest.skip("the auto fallback is shown on the cpp backend with a pretend limit")
    cpp = backends._load("cpp")[0]
    monkeypatch.setattr(cpp, "GMM_SCORE_MAX_D", 2, raising=False)
    reference_calls, reference_score = [], reference.gmm_score

    def counted(x, *args):
        reference_calls.append(x.shape[1])
        return reference_score(x, *args)
    monkeypatch.setattr(reference, "gmm_score", counted)
    _library.device_kernel.cache_clear()  # the kernel "auto" runs on CPU tensors, rebuilt with the pretend limit
    try:
        auto_cpu = _library.device_kernel("gmm_score", "cpu")
        auto_cpu(x_(D=3), *mix(D=3), 1.0, 0.0)
        auto_cpu(x_(D=2), *mix(D=2), 1.0, 0.0)
    finally:
        _library.device_kernel.cache_clear()
    assert reference_calls == [3]  # above the limit the reference, at it the cpp kernel
    with pytest.raises(ValueError, match="backend 'cpp' gmm_score supports D <= 2, got D = 3"):
        ops.gmm_score(x_(D=3), *mix(D=3), backend="cpp")


def test_out_partial_overlap_is_refused(any_backend):
    buf = torch.randn(5, 3, dtype=F64)
    x, s = buf[:4], torch.randn(4, 3, dtype=F64)
    kw = dict(t=0.5, h=0.01, schedule=VP(), seed=1, backend=any_backend)
    expect = ops.reverse_sde_step(x.clone(), s, **kw)
    with pytest.raises(ValueError, match="out partially overlaps x"):
        ops.reverse_sde_step(x, s, out=buf[1:], **kw)
    with pytest.raises(ValueError, match="out partially overlaps score"):
        ops.guided_sde_step(x.clone(), buf[:4], s, s, fd_eps=1e-3, out=buf[1:], **kw)
    assert ops.reverse_sde_step(x, s, out=x, **kw) is x  # exactly x: in place
    torch.testing.assert_close(x, expect)


def test_in_place_out_bumps_the_version_counter(any_backend):
    """A graph that saved x refuses to backpropagate after a kernel wrote x in place (as after torch's
    own in-place ops), instead of giving wrong gradients."""
    w = torch.randn(4, 3, dtype=F64, requires_grad=True)
    x, s = torch.randn(4, 3, dtype=F64), torch.randn(4, 3, dtype=F64)
    y = (w * x).sum()  # saves x for the gradient w.r.t. w
    ops.reverse_sde_step(x, s, t=0.5, h=0.01, schedule=VP(), seed=1, out=x, backend=any_backend)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


def test_out_that_requires_grad_is_refused(any_backend):
    x = torch.randn(4, 3, dtype=F64, requires_grad=True)
    s = torch.randn(4, 3, dtype=F64)
    kw = dict(t=0.5, h=0.01, schedule=VP(), seed=1, backend=any_backend)
    for out in (x, x[:, :]):  # the leaf, and a view of it
        with pytest.raises(ValueError, match="out requires grad"):
            ops.reverse_sde_step(x.detach(), s, out=out, **kw)
    with torch.no_grad():  # as torch: in-place writes into a leaf are fine without grad mode
        ops.reverse_sde_step(x.detach(), s, out=x, **kw)


@pytest.mark.parametrize("v,match", [(1e-50, "step_size must be > 0 in float32"),
                                     (1e39, "step_size = 1e[+]?39 overflows float32")])
def test_step_size_checked_in_the_state_dtype(any_backend, v, match):
    x = x_(dtype=torch.float32)
    with pytest.raises(ValueError, match=match):
        ops.mala_propose(x, x, v, seed=0, backend=any_backend)
    with pytest.raises(ValueError, match=match):
        ops.gmm_mala(x, *mix(dtype=torch.float32), step_size=v, n_steps=1, backend=any_backend)
    ops.gmm_mala(x_(), *mix(), step_size=1e-50, n_steps=1, backend=any_backend)  # fine in float64


def test_other_scalars_checked_in_the_state_dtype(any_backend):
    x = x_(dtype=torch.float32)
    with pytest.raises(ValueError, match="h must be > 0 in float32"):
        ops.reverse_sde_step(x, x, t=0.5, h=1e-50, schedule=VP(), seed=0, backend=any_backend)
    with pytest.raises(ValueError, match=r"sigma\*\*2 \* h must be > 0 in float32"):
        ops.em_step_logprob(x, x, sigma=1e-30, t=0.5, h=1e-20, seed=0, backend=any_backend)
    with pytest.raises(ValueError, match="alpha = 1e[+]?39 overflows float32"):
        ops.gmm_score(x, *mix(dtype=torch.float32), alpha=1e39, backend=any_backend)
    with pytest.raises(ValueError, match="degenerate mixture"):
        ops.gmm_score(x, *mix(dtype=torch.float32), alpha=1e-30, backend=any_backend)
    with pytest.raises(ValueError, match="c_diff .* not finite in torch.float32: h, fd_eps or guidance"):
        ops.guided_sde_step(x, x, x, x, t=0.5, h=0.01, schedule=VP(), fd_eps=1.2e-38, guidance=1e3, seed=0,
                            backend=any_backend)
    with pytest.raises(ValueError, match="fd_eps must be > 0 in float32, got 1e-40 \\(a subnormal value"):
        ops.guided_sde_step(x, x, x, x, t=0.5, h=0.01, schedule=VP(), fd_eps=1e-40, seed=0, backend=any_backend)


@pytest.mark.parametrize("op", ["gmm_score", "gmm_mala", "gmm_hmc"])
def test_nonfinite_means_are_refused(any_backend, op):
    means, lw, var = mix()
    means[1, 2] = math.nan
    kw = {} if op == "gmm_score" else dict(step_size=0.1, n_steps=1)
    with pytest.raises(ValueError, match="means must be finite"):
        getattr(ops, op)(x_(), means, lw, var, backend=any_backend, **kw)
    with pytest.raises(TypeError, match="means must be a torch.Tensor"):  # not "a (K, D) tensor"
        getattr(ops, op)(x_(), means.tolist(), lw, var, backend=any_backend, **kw)
    if means.device.type == "cpu":  # a NumPy array is taken (zero-copy) and checked like a tensor
        with pytest.raises(ValueError, match="means must be finite"):
            getattr(ops, op)(x_(), means.numpy(), lw, var, backend=any_backend, **kw)


def test_neg_and_conj_views_are_read_by_value(any_backend):
    torch.manual_seed(0)
    vals = x_(6, 5)
    neg = torch._neg_view(-vals)
    conj_imag = torch.complex(torch.zeros_like(vals), -vals).conj().imag
    params = mix(D=5)
    expect = ops.gmm_score(vals, *params, backend="torch")
    for view in (neg, conj_imag):
        assert view.is_neg()
        got = ops.gmm_score(view, *params, backend=any_backend)
        torch.testing.assert_close(got, expect)
        if has_kernel(any_backend, "momentum_refresh"):
            p = ops.momentum_refresh(view, 0.5, seed=3, backend=any_backend)
            torch.testing.assert_close(p, ops.momentum_refresh(vals, 0.5, seed=3, backend="torch"))
    # a neg-bit view as out= receives the values (not their negatives)
    out = torch._neg_view(torch.zeros(6, 5, dtype=F64))
    kw = dict(t=0.5, h=0.01, schedule=VP(), seed=1)
    ops.reverse_sde_step(vals, vals, out=out, backend=any_backend, **kw)
    torch.testing.assert_close(out.resolve_neg(), ops.reverse_sde_step(vals, vals, backend="torch", **kw))


@pytest.mark.parametrize("op,extra", [("gmm_mala", {}), ("gmm_hmc", {"n_leapfrog": 2})])
def test_offset_plus_move_must_not_wrap(any_backend, op, extra):
    """Move m draws offset + m: past 2**64 it would wrap to earlier draws; refused the same everywhere."""
    fn = getattr(ops, op)
    with pytest.raises(ValueError, match=r"offset \+ n_steps - 1 must be < 2\*\*64"):
        fn(x_(), *mix(), step_size=0.1, n_steps=3, offset=2**64 - 2, backend=any_backend, **extra)
    if has_kernel(any_backend, op):
        fn(x_(), *mix(), step_size=0.1, n_steps=3, offset=2**64 - 3, backend=any_backend, **extra)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: ops.normal(0, 0, 4, 3, torch.float16), TypeError, "dtype must be torch.float32 or torch.float64"),
    (lambda: ops.normal(0, 0, 4, 3, torch.int64), TypeError, "dtype must be"),
    (lambda: ops.uniform(0, 0, 4, torch.float16), TypeError, "dtype must be"),
    (lambda: ops.uniform(0, 0, 4, torch.int32), TypeError, "dtype must be"),
    (lambda: ops.normal(0, 0, 4, -1), ValueError, "D must be >= 0"),
    (lambda: ops.normal(0, 0, -4, 3), ValueError, "B must be >= 0"),
    (lambda: ops.uniform(0, 0, -1), ValueError, "B must be >= 0"),
    (lambda: ops.normal(-1, 0, 4, 3), ValueError, "seed must be >= 0"),
    (lambda: ops.uniform(0, 2**64, 4), ValueError, "offset must be <="),
])
def test_random_streams_refuse_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_gradients_do_not_depend_on_the_build(any_backend):
    """With grad mode on and an input that requires grad, "auto" runs the differentiable reference
    whatever is built; an explicit compiled backend refuses rather than silently detaching."""
    x = x_().requires_grad_(True)
    params = mix()
    score, logp = ops.gmm_score(x, *params)  # auto
    (g,) = torch.autograd.grad(logp.sum(), x)
    torch.testing.assert_close(g, score.detach())  # ∇ logp = score
    if any_backend == "torch":
        return
    with pytest.raises(ValueError, match=f"gmm_score on backend '{any_backend}' is not differentiable"):
        ops.gmm_score(x, *params, backend=any_backend)
    with pytest.raises(ValueError, match=f"mala_propose on backend '{any_backend}' is not differentiable"):
        ops.mala_propose(x_(), x_(), torch.full((4,), 0.1, dtype=F64, requires_grad=True), seed=0,
                         backend=any_backend)
    with torch.no_grad():
        ops.gmm_score(x, *params, backend=any_backend)
    ops.gmm_score(x.detach(), *params, backend=any_backend)


def test_infinite_chain_has_logp_minus_inf(any_backend):
    x = x_(5, 3)
    x[1, 0], x[3, 2] = math.inf, -math.inf
    means, _, var = mix()
    lw = torch.tensor([-math.inf, 0.0], dtype=F64)  # a zero-weight component first
    score, logp = ops.gmm_score(x, means, lw, var, backend=any_backend)
    e_score, e_logp = ops.gmm_score(x, means, lw, var, backend="torch")
    assert logp[1] == -math.inf and logp[3] == -math.inf
    torch.testing.assert_close(logp, e_logp)
    torch.testing.assert_close(score, e_score, equal_nan=True)


@pytest.mark.parametrize("kw,exc,match", [
    ({"batch_size": 2**31}, ValueError, "batch_size must be <= 2147483647"),
    ({"batch_size": -1}, ValueError, "batch_size must be >= 0"),
    ({"batch_size": 2.0}, TypeError, "batch_size must be an int"),
    ({"n_threads": 0}, ValueError, "n_threads must be >= 1"),
    ({"n_threads": 2**32 + 1}, ValueError, "n_threads must be <= 2147483647"),
    ({"seed": 2**64}, ValueError, "seed must be <="),
])
def test_policy_rollout_counts(kw, exc, match):
    """The whole-trajectory policy kernel takes C ints too (2**32 + 1 threads was 1 thread)."""
    from fastsamp.samplers.diffusion import DiffusionSampler
    s = DiffusionSampler(type("Gauss", (), {"dim": 2, "log_prob": lambda self, x: -0.5 * (x * x).sum(-1)})(),
                         sigma=1.0, n_steps=4, fused=False, hidden=8, n_layers=1, n_harmonics=2)
    temb = s.net.time_features(torch.arange(4, dtype=torch.float32) * s.h)[0]
    args = dict(batch_size=3, sigma=1.0, seed=0)
    args.update(kw)
    with pytest.raises(exc, match=match):
        ops.policy_rollout(s.net, temb, args.pop("batch_size"), **args)


@pytest.mark.parametrize("backend", ["torch", "cpp"])
@pytest.mark.parametrize("device", ["meta", "mps", "xla", "nonsense"]
                         + ([] if torch.cuda.is_available() else ["cuda", 0]))  # 0: the accelerator (cuda:0)
def test_random_streams_refuse_a_device_they_do_not_run_on(backend, device):
    """The reference refused these as the compiled backends do (it raised torch's AssertionError,
    NotImplementedError or RuntimeError, or made a meta tensor)."""
    skip_unless_available(backend)
    for call in (lambda: ops.normal(1, 0, 4, 3, device=device, backend=backend),
                 lambda: ops.uniform(1, 0, 4, device=device, backend=backend)):
        with pytest.raises(ValueError, match=r"^device(=| must be 'cpu' or 'cuda)"):
            call()


def _drift_net():
    from fastsamp.samplers.diffusion import DriftNet
    torch.manual_seed(0)
    net = DriftNet(3, hidden=8, n_harmonics=4, n_layers=1).double()
    return net, net.time_features(torch.arange(3, dtype=F64) / 3)[0].detach()


_STATES = torch.zeros(4, 4, 3, dtype=F64)
_META_INT = torch.tensor(3, device="meta")


@pytest.mark.parametrize("backend", ["torch", "cpp"])
@pytest.mark.parametrize("call,exc,match", [
    (lambda n, t, b: ops.policy_rollout(torch.nn.Linear(3, 3), t, 4, sigma=1.0, backend=b), TypeError,
     "net must be a DriftNet"),
    (lambda n, t, b: ops.policy_log_pf(None, _STATES, t, sigma=1.0, backend=b), TypeError, "net must be a DriftNet"),
    (lambda n, t, b: ops.policy_rollout(n, t.half(), 4, sigma=1.0, backend=b), TypeError, "temb must be float32"),
    (lambda n, t, b: ops.policy_rollout(n, t, 4, sigma=1.0, seed=_META_INT, backend=b), ValueError, "seed must be on"),
    (lambda n, t, b: ops.policy_rollout(n, t, 4, sigma=1.0, chain_offset=_META_INT, backend=b), ValueError,
     "chain_offset must be on"),
    (lambda n, t, b: ops.policy_rollout(n, t, 4, sigma=1.0, x0=[0.0], backend=b), TypeError, "x0 must be a"),
    (lambda n, t, b: ops.policy_log_pf(n, _STATES, t, sigma=1e-300, backend=b), ValueError,
     r"sigma\*\*2 \* h must be > 0"),
    (lambda n, t, b: ops.policy_rollout(n, t, 4, sigma=1e-300, backend=b), ValueError, r"sigma\*\*2 \* h must be > 0"),
    (lambda n, t, b: ops.policy_rollout(n, t.float(), 4, sigma=1e-30, backend=b), ValueError,
     r"sigma\*\*2 \* h must be > 0"),
    (lambda n, t, b: ops.policy_rollout(n, t.float(), 4, sigma=1.0, explore=1e30, backend=b), ValueError, "explore"),
])
def test_policy_ops_refuse_bad_arguments_by_name(backend, call, exc, match):
    """Each was an AttributeError, a weakref TypeError, a message naming `dtype`, Tensor.item()'s RuntimeError
    or (σ²h underflowing to 0) the reference's 'math domain error' beside a C++ result; policy_rollout returned
    NaN log p_F for σ²h = 0 in its dtype (em_step_logprob, which it equals step by step, refused it)."""
    skip_unless_available(backend)
    net, temb = _drift_net()
    with pytest.raises(exc, match=match):
        call(net, temb, backend)


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_policy_log_pf_of_no_chains(backend):
    """states (T+1, 0, D) give log_pf (0, T) on every backend (the reference's reshape raised)."""
    skip_unless_available(backend)
    net, temb = _drift_net()
    assert ops.policy_log_pf(net, _STATES[:, :0], temb, sigma=1.0, backend=backend).shape == (0, 3)


@pytest.mark.parametrize("op", ["gmm_score", "gmm_mala", "gmm_hmc"])
def test_meta_tensors_skip_the_value_checks(op):
    """The reference computes shapes on 'meta' tensors; the value checks, which read contents, let them through
    (they raised NotImplementedError: no data)."""
    meta = [t.to("meta") for t in (x_(), *mix())]
    kw = {} if op == "gmm_score" else dict(step_size=torch.full((4,), 0.1, dtype=F64, device="meta"), n_steps=2)
    out = getattr(ops, op)(*meta, **kw, backend="torch")
    assert out[0].device.type == "meta" and out[0].shape == (4, 3)


# ---------------------------------------------------------------- adversarial inputs (an audit's findings)
ALL_BACKENDS = ("torch", "cpp", "triton", "cuda", "auto")


def _on(name):
    """(backend, device) for backend `name`, skipping an unavailable one."""
    if name in ("torch", "auto"):
        return name, torch.device("cpu")
    skip_unless_available(name)
    from conftest import backend_device
    return name, backend_device(name)


@pytest.mark.parametrize("name", ALL_BACKENDS)
def test_out_overlap_is_found_by_address_across_storages(name):
    """Two tensors taken zero-copy from one NumPy array hold different torch storages on the same memory: an out
    shifted by a row against x is still a partial overlap (the kernels would read rows they have written)."""
    np = pytest.importorskip("numpy")
    backend, device = _on(name)
    if device.type != "cpu":
        pytest.skip("NumPy memory is on the CPU")
    a = np.arange(15, dtype=np.float64).reshape(5, 3) * 0.1
    x, out, z = torch.from_numpy(a[:4]), torch.from_numpy(a[1:]), torch.zeros(4, 3, dtype=F64)
    assert x.untyped_storage().data_ptr() != out.untyped_storage().data_ptr()
    with pytest.raises(ValueError, match="out partially overlaps x"):
        ops.reverse_sde_step(x, z, t=0.5, h=0.1, schedule=VP(), noise=z, out=out, backend=backend)
    with pytest.raises(ValueError, match="out partially overlaps x"):
        ops.mala_propose(x, z, 0.1, noise=z, out=a[1:], backend=backend)  # the array itself as out
    with pytest.raises(ValueError, match="out overlaps x"):
        ops.line_points(x, z, 2, out=torch.from_numpy(a[1:]).view(1, 4, 3), backend=backend)


@pytest.mark.parametrize("name", ALL_BACKENDS)
def test_an_input_that_starts_where_out_starts_is_not_in_place(name):
    """A (B,) step-size view of x's first B elements and out = x share a start address but not their bytes."""
    backend, device = _on(name)
    x = torch.rand(4, 3, dtype=F64, device=device) + 0.5
    with pytest.raises(ValueError, match="out partially overlaps step_size"):
        ops.mala_propose(x, torch.ones_like(x), x.view(-1)[:4], noise=torch.zeros_like(x), out=x, backend=backend)
    d1 = torch.rand(4, 1, dtype=F64, device=device) + 0.5  # at D = 1 the same bytes: in place, as x itself
    want = ops.mala_propose(d1, d1, d1.view(-1).clone(), noise=torch.zeros_like(d1), backend=backend)
    got = ops.mala_propose(d1, d1, d1.view(-1), noise=torch.zeros_like(d1), out=d1, backend=backend)
    assert got.data_ptr() == d1.data_ptr() and torch.equal(got, want)


def _nonfinite_pattern(outs):
    return [(~torch.isfinite(t.double())).tolist() for t in outs]


@pytest.mark.parametrize("name", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
def test_validation_off_bad_scalars_give_nonfinite_chains_on_every_backend(name, dtype):
    """With the value checks off, a bad scalar gives NaN / inf where it reaches, on every backend as in the
    reference (IEEE host math: no ZeroDivisionError or 'math domain error', no overflow error filling float32)."""
    import fastsamp
    backend, device = _on(name)
    x = torch.randn(3, 2, dtype=dtype, device=device)
    cases = [dict(sigma=0.0, t=0.3, h=0.1), dict(sigma=1.0, t=0.3, h=-0.1), dict(sigma=1.0, t=0.3, h=0.0),
             dict(sigma=1.0, t=-0.1, h=0.1), dict(sigma=1e-200, t=0.3, h=0.1)]
    if dtype == torch.float32:
        cases.append(dict(sigma=1.0, t=0.3, h=1e300))  # σ²h past float32's range
    with fastsamp.validation(False):
        for kw in cases:
            got = ops.em_step_logprob(x, x, seed=1, backend=backend, **kw)
            want = ops.em_step_logprob(x.cpu(), x.cpu(), seed=1, backend="torch", **kw)
            assert not all(torch.isfinite(t).all() for t in want), kw  # the case is bad
            for g, w in zip(got[1:], want[1:]):  # log p_F, log p_B: finite exactly where the reference's are
                assert torch.equal(torch.isfinite(g.cpu()), torch.isfinite(w)), (kw, g, w)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        ops.em_step_logprob(x, x, sigma=0.0, t=0.3, h=0.1, seed=1, backend=backend)


@pytest.mark.parametrize("name", ALL_BACKENDS)
def test_validation_off_negative_network_variance_gives_nan(name):
    """alpha² data_var + sigma2 < 0 (a bad data_var, validation off): the score network's √v is NaN on every backend."""
    import fastsamp
    backend, device = _on(name)
    x = torch.randn(3, 2, dtype=F64, device=device)
    H, F = 4, 1
    r = lambda *s: 0.3 * torch.randn(*s, dtype=F64, device=device)  # noqa: E731
    net = ops.ScoreNet((r(H, 2 + 2 * F), r(2, H)), (r(H), r(2)), r(F), r(2), data_var=-1.0, t=0.5, alpha=1.0,
                       sigma2=0.0)
    with fastsamp.validation(False):
        assert torch.isnan(ops.mlp_score(x, net, backend=backend)).all()
    with pytest.raises(ValueError, match="data_var must be > 0"):
        ops.mlp_score(x, net, backend=backend)


@pytest.mark.parametrize("name", ALL_BACKENDS)
def test_subnormal_step_sizes_and_variances_are_refused(name):
    """The compiled CPU kernels flush subnormal values to 0 (FTZ / DAZ): a subnormal step size or variance would
    give other chains there than in the reference, so the value checks refuse them, naming the argument."""
    backend, device = _on(name)
    f32 = torch.float32
    x = torch.randn(4, 3, dtype=f32, device=device)
    u = torch.rand(4, dtype=f32, device=device)
    for eps in (1e-39, torch.full((4,), 1e-39, dtype=f32, device=device)):
        with pytest.raises(ValueError, match="step_size must be .*> 0"):
            ops.score_mh_accept(x, x + 0.1, x, x, eps, u, backend=backend)
    means, lw = torch.randn(2, 3, dtype=f32, device=device), torch.zeros(2, dtype=f32, device=device)
    with pytest.raises(ValueError, match="not subnormal"):
        ops.gmm_score(x, means, lw, torch.full((2,), 1e-39, dtype=f32, device=device), backend=backend)
    x64 = x.double()
    with pytest.raises(ValueError, match="not subnormal"):
        ops.gmm_score(x64, means.double(), lw.double(), torch.full((2,), 1e-310, dtype=F64, device=device),
                      backend=backend)
    with pytest.raises(ValueError, match="sigma\\*\\*2 \\* h must be > 0 in float32.*subnormal"):
        ops.em_step_logprob(x, x, sigma=1e-20, t=0.5, h=1e-1, seed=0, backend=backend)
    ops.score_mh_accept(x, x + 0.1, x, x, 1.2e-38, u, backend=backend)  # the smallest normal float32 passes


@pytest.mark.parametrize("name", ALL_BACKENDS)
def test_guided_step_with_alpha_zero(name):
    """A VP schedule whose alpha(1) underflows to 0: a clear error naming alpha(t) (validation on), NaN / inf
    chains rather than a ZeroDivisionError (off)."""
    import fastsamp
    backend, device = _on(name)
    x = torch.randn(3, 2, dtype=F64, device=device)
    schedule = VP(beta_max=3000.0)
    assert schedule.alpha(1.0) == 0.0
    with pytest.raises(ValueError, match=r"alpha\(t\) > 0"):
        ops.guided_sde_step(x, x, x, x, t=1.0, h=0.01, schedule=schedule, fd_eps=1e-3, seed=0, backend=backend)
    with fastsamp.validation(False):
        out = ops.guided_sde_step(x, x, x, x, t=1.0, h=0.01, schedule=schedule, fd_eps=1e-3, seed=0, backend=backend)
    assert not torch.isfinite(out).any()


@pytest.mark.parametrize("name", ["cpp", "triton", "cuda"])
def test_vmap_on_an_explicit_compiled_backend_is_refused(name):
    backend, device = _on(name)
    xs = torch.randn(3, 5, 2, dtype=F64, device=device)
    means, lw, var = (t.to(device) for t in mix(D=2))
    with pytest.raises(ValueError, match=f"gmm_score on backend '{backend}' cannot run under torch.func.vmap"):
        torch.func.vmap(lambda x: ops.gmm_score(x, means, lw, var, backend=backend))(xs)
    with pytest.raises(ValueError, match="cannot run under torch.func.vmap"):
        torch.func.vmap(lambda x: ops.mala_propose(x, x, 0.1, seed=1, backend=backend))(xs)


def test_python_int_past_float_range_is_named():
    x = x_()
    with pytest.raises(ValueError, match="alpha must be finite, got 1000"):
        ops.gmm_score(x, *mix(), alpha=10**400)
    with pytest.raises(ValueError, match="h must be finite"):
        ops.reverse_sde_step(x, x, t=0.5, h=10**400, schedule=VP(), seed=0)


@pytest.mark.parametrize("op", ["score_mh_accept", "hmc_accept", "energy_mh_accept"])
def test_accept_checks_offset_and_chain_offset_with_u_given(op):
    x, u = x_(), torch.rand(4, dtype=F64)
    args = {"score_mh_accept": (x, x, x, x, 0.1, u), "energy_mh_accept": (x, x, x, x, x[:, 0], x[:, 0], 0.1, u),
            "hmc_accept": (x, x, x, x, x, x, x[:, 0], u)}[op]
    with pytest.raises(TypeError, match="offset must be an int"):
        getattr(ops, op)(*args, offset="junk")
    with pytest.raises(ValueError, match="chain_offset must be >= 0"):
        getattr(ops, op)(*args, chain_offset=-5)


def test_accept_outputs_take_arrays_and_refuse_inference_tensors():
    np = pytest.importorskip("numpy")
    x, xp, u = x_(), x_(), torch.rand(4, dtype=F64)
    want = ops.score_mh_accept(x, xp, x, xp, 0.1, u)
    x_out, score_out = np.empty((4, 3)), np.empty((4, 3))
    got = ops.score_mh_accept(x, xp, x, xp, 0.1, u, x_out=x_out, score_out=score_out)
    assert got[0].data_ptr() == x_out.ctypes.data and torch.equal(torch.from_numpy(x_out), want[0])
    assert torch.equal(torch.from_numpy(score_out), want[1])
    with torch.inference_mode():
        frozen = torch.empty(4, 3, dtype=F64)
    with pytest.raises(ValueError, match="x_out is an inference tensor"):
        ops.score_mh_accept(x, xp, x, xp, 0.1, u, x_out=frozen)
    with pytest.raises(ValueError, match="out is an inference tensor"):
        ops.reverse_sde_step(x, x, t=0.5, h=0.01, schedule=VP(), seed=0, out=frozen)
    with torch.inference_mode():  # inside inference mode it is written as torch's in-place ops write it
        out = ops.reverse_sde_step(x, x, t=0.5, h=0.01, schedule=VP(), seed=0, out=frozen)
    assert out.data_ptr() == frozen.data_ptr()


def test_sparse_and_nested_tensors_are_refused_naming_the_argument():
    x = x_()
    with pytest.raises(TypeError, match="x must be a dense \\(strided\\) tensor, got layout torch.sparse_coo"):
        ops.mala_propose(x.to_sparse(), x, 0.1, seed=0)
    with pytest.raises(TypeError, match="score must be a dense \\(strided\\) tensor, got layout torch.sparse_csr"):
        ops.mala_propose(x, x.to_sparse_csr(), 0.1, seed=0)
    nested = torch.nested.nested_tensor([torch.randn(3, dtype=F64), torch.randn(3, dtype=F64)])
    with pytest.raises(TypeError, match="x must be a dense \\(strided\\) tensor"):
        ops.mala_propose(nested, x, 0.1, seed=0)


def test_network_lists_and_activation_are_named():
    x = x_(D=2)
    r = lambda *s: torch.randn(*s, dtype=F64)  # noqa: E731
    fields = dict(weights=(r(4, 4), r(2, 4)), biases=(r(4), r(2)), freq=r(1), data_mean=r(2), data_var=1.0, t=0.5,
                  alpha=1.0, sigma2=0.1)
    with pytest.raises(ValueError, match="nets\\[0\\].activation must be one of"):
        ops.mlp_score(x, ops.ScoreNet(**fields, activation=["silu"]))
    with pytest.raises(TypeError, match="nets\\[0\\].weights must be a list or tuple of tensors, got NoneType"):
        ops.mlp_score(x, ops.ScoreNet(**{**fields, "weights": None}))
    with pytest.raises(TypeError, match="biases must be a list or tuple of tensors, got NoneType"):
        ops.mlp_net(x, [r(4, 2), r(2, 4)], None)
    with pytest.raises(ValueError, match="activation must be one of"):
        ops.mlp_net(x, [r(4, 2), r(2, 4)], [r(4), r(2)], activation=["gelu"])


def _score_net(device, dtype, **fields):
    H, F = 4, 1
    r = lambda *s: 0.3 * torch.randn(*s, dtype=dtype, device=device)  # noqa: E731
    base = dict(data_var=1.0, t=0.5, alpha=1.0, sigma2=0.0)
    return ops.ScoreNet((r(H, 2 + 2 * F), r(2, H)), (r(H), r(2)), r(F), r(2), **{**base, **fields})


@pytest.mark.parametrize("name", ALL_BACKENDS)
@pytest.mark.parametrize("field,value,match", [("t", 1e39, "t = 1e\\+39 overflows float32"),
                                               ("sigma2", 1e39, "sigma2 = 1e\\+39 overflows float32"),
                                               ("data_var", 1e-45, "data_var must be > 0 in float32")])
def test_network_scalars_checked_in_the_state_dtype(name, field, value, match):
    """A network's t, sigma2 and data_var are rounded to x's dtype by the kernels: one that overflows float32 (or is
    subnormal there) is refused naming it, as alpha is (t = 1e39 gave all-NaN scores and chains that never moved on
    the compiled backends, a RuntimeError naming nothing on the reference)."""
    backend, device = _on(name)
    x = torch.randn(3, 2, dtype=torch.float32, device=device)
    net = _score_net(device, torch.float32, **{field: value})
    with pytest.raises(ValueError, match=match):
        ops.mlp_score(x, net, backend=backend)
    with pytest.raises(ValueError, match=match):
        ops.mlp_mala(x, net, step_size=0.1, n_steps=2, backend=backend)
    ops.mlp_score(x.double(), _score_net(device, F64, **{field: value}), backend=backend)  # finite in float64


@pytest.mark.parametrize("name", ALL_BACKENDS)
def test_subnormal_bridge_variance_is_refused(name):
    """em_step_logprob's log p_B takes the log of the bridge variance σ²h·t/(t + h): where a tiny t > 0 makes it
    subnormal the compiled kernels flushed it to 0 (float32 log_pb NaN there, 148.2 in the reference), so it is
    refused naming it; t = 0 (no bridge term) and the smallest normal t pass."""
    backend, device = _on(name)
    for dtype, t in ((torch.float32, 2e-38), (F64, 5e-308)):
        x = torch.zeros(2, 3, dtype=dtype, device=device)
        with pytest.raises(ValueError, match="the bridge variance .* must be > 0 in float(32|64).*subnormal"):
            ops.em_step_logprob(x, x, sigma=1e-3, t=t, h=1.0, x_next=x, backend=backend)
        for ok in (0.0, torch.finfo(dtype).tiny / 1e-6):
            log_pb = ops.em_step_logprob(x, x, sigma=1e-3, t=ok, h=1.0, x_next=x, backend=backend)[2]
            assert torch.isfinite(log_pb).all()


@pytest.mark.parametrize("name", ALL_BACKENDS)
def test_leapfrog_half_step_must_be_normal(name):
    """The leapfrog ops and the HMC move kernels take ε/2: a step size in [tiny, 2·tiny) has a subnormal half step,
    which the compiled kernels flushed to 0 (p½ = 0 there, 5.9e-9 in the reference for a score of 1e30); refused
    naming it, as a float and as a tensor. 2·tiny passes."""
    backend, device = _on(name)
    f32 = torch.float32
    tiny = torch.finfo(f32).tiny
    z, s = torch.zeros(1, 3, dtype=f32, device=device), torch.full((1, 3), 1e30, dtype=f32, device=device)
    for eps in (tiny, torch.full((1,), tiny, dtype=f32, device=device)):
        with pytest.raises(ValueError, match="step_size.*half step"):
            ops.leapfrog(z, z, s, eps, backend=backend)
        with pytest.raises(ValueError, match="step_size.*half step"):
            ops.leapfrog_finish(z, z, z, s, s, eps, torch.zeros(1, dtype=f32, device=device), backend=backend)
    x, means = torch.randn(5, 2, dtype=f32, device=device), torch.randn(3, 2, dtype=f32, device=device)
    lw, var = torch.zeros(3, dtype=f32, device=device), torch.ones(3, dtype=f32, device=device)
    with pytest.raises(ValueError, match="step_size.*half step"):
        ops.gmm_hmc(x, means, lw, var, step_size=tiny, n_steps=1, backend=backend)
    ops.gmm_mala(x, means, lw, var, step_size=tiny, n_steps=1, backend=backend)  # no half step
    p_half = ops.leapfrog(z, z, s, 2 * tiny, backend=backend)[1]
    assert torch.equal(p_half, torch.full_like(p_half, tiny * 1e30))


def test_meta_outputs_are_not_overlaps():
    """A 'meta' tensor has no memory (data_ptr() 0): an `out=` on the meta device was refused as overlapping every
    other meta argument; shapes now come out as without `out`."""
    meta = lambda *s: torch.randn(*s, dtype=F64).to("meta")  # noqa: E731
    x, s = meta(4, 3), meta(4, 3)
    out = ops.mala_propose(x, s, 0.1, seed=0, out=torch.empty(4, 3, dtype=F64, device="meta"))
    assert out.device.type == "meta" and out.shape == (4, 3)
    assert ops.line_points(x, s, 3, out=torch.empty(2, 4, 3, dtype=F64, device="meta")).shape == (2, 4, 3)
    x_new = torch.empty(4, 3, dtype=F64, device="meta")
    got = ops.score_mh_accept(x, s, s, s, 0.1, meta(4), x_out=x_new, backend="torch")
    assert got[0].device.type == "meta" and got[0].shape == (4, 3)


def test_energy_lsq_value_check_on_meta_and_under_vmap():
    """mlp_net_energy_lsq's v check reads values as the other value checks do: not on 'meta' tensors (it raised
    "Cannot copy out of meta tensor"), every slice under vmap (it raised on the batched tensor's data pointer)."""
    torch.manual_seed(0)
    ws, bs = [torch.randn(8, 3), torch.randn(3, 8)], [torch.randn(8), torch.randn(3)]
    x, c, z, v, sigma = torch.randn(9, 3), torch.randn(9, 3), torch.randn(9, 3), torch.rand(9) + 0.5, torch.rand(9)
    meta = lambda t: t.to("meta")  # noqa: E731
    loss = ops.mlp_net_energy_lsq(meta(x), [meta(w) for w in ws], [meta(b) for b in bs], meta(c), meta(v),
                                  meta(sigma), meta(z))
    assert loss.device.type == "meta" and loss.shape == ()
    xs, vs = torch.stack([x, x + 1]), torch.stack([v, v + 1])
    batched = torch.func.vmap(lambda xx, vv: ops.mlp_net_energy_lsq(xx, ws, bs, c, vv, sigma, z))(xs, vs)
    slices = torch.stack([ops.mlp_net_energy_lsq(xs[i], ws, bs, c, vs[i], sigma, z) for i in range(2)])
    torch.testing.assert_close(batched, slices)
    with pytest.raises(ValueError, match="v must be finite and > 0"):
        torch.func.vmap(lambda xx, vv: ops.mlp_net_energy_lsq(xx, ws, bs, c, vv, sigma, z))(xs, torch.stack([v, -v]))
