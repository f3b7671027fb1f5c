"""Property-based tests (hypothesis): random shapes, dtypes, memory layouts (strided, transposed,
offset, neg-bit and conj views) and aliasing of `out=` against the float64 PyTorch reference, and
a bad-input matrix over every op × argument × backend (same exception type, the argument named).

The default run draws a few examples per test; `-m slow` runs the same properties with many.
"""
import math
import re

import pytest
import torch
from conftest import TRITON_INTERPRETED, backend_device, skip_unless_available, skip_unless_op, tol
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastsamp import VE, VP, ops

BACKENDS = ("torch", "cpp", "triton", "cuda")
LAYOUTS = ("contiguous", "transposed", "strided", "offset", "neg", "conj_imag")
FAST = settings(max_examples=6, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
MANY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def laid_out(values: torch.Tensor, layout: str) -> torch.Tensor:
    """A tensor equal to `values` (any shape, 1-D or 2-D) stored in the given memory layout."""
    if layout == "contiguous":
        return values.clone()
    if layout == "transposed" and values.dim() == 2:
        return values.t().contiguous().t()
    if layout == "strided":
        buf = torch.zeros(values.shape[:-1] + (2 * values.shape[-1],), dtype=values.dtype)
        buf[..., ::2] = values
        return buf[..., ::2]
    if layout == "offset":
        buf = torch.zeros(values.numel() + 3, dtype=values.dtype)
        buf[3:] = values.flatten()
        return buf[3:].view(values.shape)
    if layout == "neg":
        return torch._neg_view(-values)
    if layout == "conj_imag":
        return torch.complex(torch.zeros_like(values), -values).conj().imag
    return values.clone()


def _vec(B):
    return torch.randn(B, dtype=torch.float64)


# op -> (make the float64 inputs (B, D) -> dict, call(inputs, backend) -> outputs); every tensor in the
# dict is laid out independently before the call
def _accept_inputs(B, D, n_int=0):
    x, d = torch.randn(B, D, dtype=torch.float64), torch.randn(B, D, dtype=torch.float64)
    out = dict(x=x, x_prop=x + 0.3 * d, score=torch.randn(B, D, dtype=torch.float64),
               score_prop=torch.randn(B, D, dtype=torch.float64), u=torch.rand(B, dtype=torch.float64) + 1e-6)
    if n_int:
        out["interior"] = torch.randn(n_int, B, D, dtype=torch.float64)
    return out


def _bd(B, D, *names):
    return {n: torch.randn(B, D, dtype=torch.float64) for n in names}


OPS = {
    "reverse_sde_step": (lambda B, D: _bd(B, D, "x", "score", "noise"),
                         lambda a, b: ops.reverse_sde_step(a["x"], a["score"], t=0.6, h=0.01, schedule=VP(),
                                                           noise=a["noise"], backend=b)),
    "reverse_sde_step_philox": (lambda B, D: _bd(B, D, "x", "score", "extra"),
                                lambda a, b: ops.reverse_sde_step(a["x"], a["score"], t=0.3, h=0.02, schedule=VE(),
                                                                  extra_drift=a["extra"], seed=7, offset=2**33 + 1,
                                                                  backend=b)),
    "guided_sde_step": (lambda B, D: _bd(B, D, "x", "score", "shift", "v"),
                        lambda a, b: ops.guided_sde_step(a["x"], a["score"], a["score"] + 1e-3 * a["shift"], a["v"],
                                                         t=0.7, h=0.01, schedule=VP(), fd_eps=1e-3, guidance=0.8,
                                                         seed=4, offset=9, backend=b)),
    "mala_propose": (lambda B, D: dict(_bd(B, D, "x", "score"), eps=0.01 + 0.2 * torch.rand(B, dtype=torch.float64)),
                     lambda a, b: ops.mala_propose(a["x"], a["score"], a["eps"], seed=99, offset=3, backend=b)),
    "line_points": (lambda B, D: _bd(B, D, "x", "x_prop"),
                    lambda a, b: ops.line_points(a["x"], a["x_prop"], 4, backend=b)),
    "score_mh_accept": (lambda B, D: _accept_inputs(B, D, 2),
                        lambda a, b: ops.score_mh_accept(a["x"], a["x_prop"], a["score"], a["score_prop"], 0.05,
                                                         a["u"], interior_scores=a["interior"], backend=b)),
    "leapfrog": (lambda B, D: _bd(B, D, "x", "p", "score"),
                 lambda a, b: ops.leapfrog(a["x"], a["p"], a["score"], 0.1, backend=b)),
    "leapfrog_finish": (lambda B, D: dict(_bd(B, D, "x", "x_next", "p_half", "s", "s_next"), delta=_vec(B)),
                        lambda a, b: ops.leapfrog_finish(a["x"], a["x_next"], a["p_half"], a["s"], a["s_next"], 0.1,
                                                         a["delta"], backend=b)),
    "hmc_accept": (lambda B, D: dict(_accept_inputs(B, D), p=0.3 * torch.randn(B, D, dtype=torch.float64),
                                     p_prop=0.3 * torch.randn(B, D, dtype=torch.float64), delta=0.1 * _vec(B)),
                   lambda a, b: ops.hmc_accept(a["x"], a["x_prop"], a["score"], a["score_prop"], a["p"], a["p_prop"],
                                               a["delta"], a["u"], backend=b)),
    "momentum_refresh": (lambda B, D: _bd(B, D, "p"),
                         lambda a, b: ops.momentum_refresh(a["p"], 0.7, seed=5, offset=11, backend=b)),
    "gmm_score": (lambda B, D: dict(x=3 * torch.randn(B, D, dtype=torch.float64),
                                    means=2 * torch.randn(3, D, dtype=torch.float64),
                                    lw=torch.randn(3, dtype=torch.float64),
                                    var=0.3 + torch.rand(3, dtype=torch.float64)),
                  lambda a, b: ops.gmm_score(a["x"], a["means"], a["lw"], a["var"], alpha=0.8, sigma2=0.35,
                                             backend=b)),
}


def _check_against_reference(op, outs, expect, expect_same_dtype, dtype, D, u=None):
    """Outputs of op in `dtype` against the float64 reference outputs: within the tolerance of
    `dtype`, or (float32) within 4 times the float32 reference's own error."""
    outs, expect, expect_dt = ((t if isinstance(t, tuple) else (t,)) for t in (outs, expect, expect_same_dtype))
    rtol, atol = tol(dtype)
    keep = None
    if u is not None:  # MH accepts: compare the decisions away from rounding-level ties of log u and log α
        la = expect[3]
        keep = (torch.log(u) - la).abs() > 1e-3 * (1 + la.abs())
    for i, (o, e, e_dt) in enumerate(zip(outs, expect, expect_dt)):
        assert o.shape == e.shape and o.device.type in ("cpu", "cuda")
        o = o.cpu()
        if o.dtype == torch.bool:
            assert torch.equal(o[keep], e[keep]), f"{op} output {i}"
            continue
        assert o.dtype == dtype, f"{op} output {i} has dtype {o.dtype}"
        o, e, e_dt = o.double(), e.double(), e_dt.double()
        if keep is not None and o.dim() == 2:
            o, e, e_dt = o[keep], e[keep], e_dt[keep]
        assert torch.equal(torch.isnan(o), torch.isnan(e)), f"{op} output {i}: NaN pattern"
        scale = 100 * D if o.dim() == 1 else 10
        bound = atol * scale + rtol * scale * e.abs()
        if dtype == torch.float32:  # e.g. the softmax of log-densities in gmm_score amplifies rounding
            bound = torch.maximum(bound, 4 * (e_dt - e).abs() + 1e-5 * (1 + e.abs().max()))
        err = (o - e).abs()
        assert bool(torch.all((err <= bound) | torch.isnan(e))), \
            f"{op} output {i}: max error {err.max().item():.3g} (bound {bound.min().item():.3g}..)"


def _run_op(op, backend, B, D, dtype, layouts):
    if backend != "torch":
        skip_unless_op(backend, "sde_step" if op.startswith("reverse_sde_step") else op)
    make, call = OPS[op]
    torch.manual_seed(B * 1000 + D)
    values = make(B, D)
    device = backend_device(backend) if backend != "torch" else torch.device("cpu")
    inputs = {}
    for (name, v), layout in zip(values.items(), layouts):
        t = laid_out(v.to(dtype), layout)
        inputs[name] = t.to(device) if device.type != "cpu" else t
    expect = call({k: v.to(dtype).double() for k, v in values.items()}, "torch")
    expect_dt = call({k: v.to(dtype) for k, v in values.items()}, "torch")
    outs = call(inputs, backend)
    u = values["u"].to(dtype).double() if op in ("score_mh_accept", "hmc_accept") else None
    _check_against_reference(op, outs, expect, expect_dt, dtype, D, u)


def _cases(max_b=70, max_d=19):
    return dict(B=st.integers(1, max_b), D=st.integers(1, max_d), dtype=st.sampled_from([torch.float64, torch.float32]),
                layouts=st.lists(st.sampled_from(LAYOUTS), min_size=8, max_size=8))


def _available(backend):
    skip_unless_available(backend)
    return backend


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", list(OPS))
@FAST
@given(**_cases())
def test_op_matches_reference_on_any_layout(op, backend, B, D, dtype, layouts):
    """Every streaming op and gmm_score, any shape / dtype / layout, equals the float64 reference."""
    _run_op(op, _available(backend), B, D, dtype, layouts)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", list(OPS))
@MANY
@given(**_cases(max_b=300, max_d=70))
def test_op_matches_reference_on_any_layout_many(op, backend, B, D, dtype, layouts):
    if backend == "triton" and TRITON_INTERPRETED:
        B = min(B, 64)
    _run_op(op, _available(backend), B, D, dtype, layouts)


# ---------------------------------------------------------------- aliasing of out=
OUT_KINDS = ("fresh", "x", "score", "noise", "neg_fresh")


def _sde_out(backend, B, D, dtype, out_kind, shift):
    device = backend_device(backend) if backend != "torch" else torch.device("cpu")
    torch.manual_seed(B + 31 * D)
    buf = torch.randn(3, B * D + shift, dtype=torch.float64).to(dtype=dtype, device=device)
    x, score, noise = (buf[i, :B * D].view(B, D) for i in range(3))
    kw = dict(t=0.5, h=0.02, schedule=VP(), noise=noise, backend=backend)
    expect = ops.reverse_sde_step(*(t.double().cpu() for t in (x, score)), t=0.5, h=0.02, schedule=VP(),
                                  noise=noise.double().cpu(), backend="torch")
    if shift:  # out is `out_kind` shifted by `shift` elements: partial overlap, always refused
        base = {"x": 0, "score": 1, "noise": 2}.get(out_kind, 0)
        out = buf[base, shift:].view(B, D)
        with pytest.raises(ValueError, match="out partially overlaps"):
            ops.reverse_sde_step(x, score, out=out, **kw)
        return
    out = {"x": x, "score": score, "noise": noise}.get(out_kind)
    if out_kind == "fresh":
        out = torch.full_like(x, math.nan)
    if out_kind == "neg_fresh":
        out = torch._neg_view(torch.full_like(x, math.nan))
    got = ops.reverse_sde_step(x, score, out=out, **kw)
    assert got is out
    torch.testing.assert_close(out.cpu().double(), expect, rtol=tol(dtype)[0] * 10, atol=tol(dtype)[1] * 10)


@pytest.mark.parametrize("backend", BACKENDS)
@FAST
@given(B=st.integers(1, 40), D=st.integers(1, 9), dtype=st.sampled_from([torch.float64, torch.float32]),
       out_kind=st.sampled_from(OUT_KINDS), shift=st.sampled_from([0, 0, 1, 3]))
def test_sde_step_out_aliasing(backend, B, D, dtype, out_kind, shift):
    """out= may be a fresh tensor, a neg-bit view, or exactly one of the inputs (in place); a
    partial overlap with an input (shifted by some elements) is refused on every backend."""
    _sde_out(_available(backend), B, D, dtype, out_kind, shift if B * D > shift else 0)


# ---------------------------------------------------------------- the bad-input matrix
def _valid(op, dtype=torch.float64):
    B, D, K = 4, 3, 2
    g = torch.Generator().manual_seed(0)

    def t(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    mix = dict(x=t(B, D), means=t(K, D), log_weights=torch.zeros(K, dtype=dtype),
               variances=torch.ones(K, dtype=dtype), alpha=0.9, sigma2=0.1)
    whole = dict(step_size=0.1, n_steps=2, seed=1, offset=0, mh="score")
    u = torch.rand(B, generator=g, dtype=dtype)
    return {
        "gmm_score": mix,
        "gmm_mala": dict(mix, **whole, n_trapezoid=2),
        "gmm_hmc": dict(mix, **whole, n_leapfrog=2, damping=0.5),
        "reverse_sde_step": dict(x=t(B, D), score=t(B, D), t=0.5, h=0.01, schedule=VP(), seed=1, offset=0),
        "guided_sde_step": dict(x=t(B, D), score=t(B, D), score_shift=t(B, D), v=t(B, D), t=0.5, h=0.01,
                                schedule=VP(), fd_eps=1e-3, guidance=1.0, seed=1, offset=0),
        "mala_propose": dict(x=t(B, D), score=t(B, D), step_size=0.1, seed=1, offset=0),
        "line_points": dict(x=t(B, D), x_prop=t(B, D), n=3),
        "score_mh_accept": dict(x=t(B, D), x_prop=t(B, D), score=t(B, D), score_prop=t(B, D), step_size=0.1, u=u),
        "leapfrog": dict(x=t(B, D), p=t(B, D), score=t(B, D), step_size=0.1),
        "leapfrog_finish": dict(x=t(B, D), x_next=t(B, D), p_half=t(B, D), score=t(B, D), score_next=t(B, D),
                                step_size=0.1, delta_logp=t(B)),
        "hmc_accept": dict(x=t(B, D), x_prop=t(B, D), score=t(B, D), score_prop=t(B, D), p=t(B, D),
                           p_prop=t(B, D), delta_logp=t(B), u=u),
        "momentum_refresh": dict(p=t(B, D), damping=0.5, seed=1, offset=0),
        "em_step_logprob": dict(x=t(B, D), drift=t(B, D), sigma=1.0, t=0.5, h=0.01, seed=1, offset=0),
    }[op]


_F64 = torch.float64
_BAD_STATE = [([[1.0]], TypeError), (torch.zeros(4, 3, dtype=torch.float16), TypeError),
              (torch.zeros(4, 3, dtype=torch.int64), TypeError), (torch.zeros(12, dtype=_F64), ValueError),
              (torch.zeros(0, 3, dtype=_F64), ValueError)]
_BAD_LIKE = [(torch.zeros(5, 3, dtype=_F64), ValueError), (torch.zeros(4, 3, dtype=torch.float32), TypeError),
             ("x", TypeError)]
_BAD_VEC = [(torch.zeros(5, dtype=_F64), ValueError), (torch.zeros(4, dtype=torch.float32), TypeError)]
_BAD_COUNT = [(0, ValueError), (2**31, ValueError), (2**32 + 1, ValueError), (1.5, TypeError)]
_BAD_U64 = [(-1, ValueError), (2**64, ValueError), ("1", TypeError)]
_BAD_STEP = [(0.0, ValueError), (-0.1, ValueError), (math.nan, ValueError), (math.inf, ValueError),
             ("0.1", TypeError), (torch.tensor([0.1, 0.0, 0.1, 0.1], dtype=_F64), ValueError),
             (torch.ones(4, dtype=torch.int64), TypeError), (torch.full((5,), 0.1, dtype=_F64), ValueError)]
_BAD_REAL = [(math.nan, ValueError), ("1", TypeError)]
_BAD_ARGS = {  # argument -> [(bad value, exception)]
    "x": _BAD_STATE, "p": _BAD_STATE,
    **{n: _BAD_LIKE for n in ("score", "score_shift", "v", "x_prop", "score_prop", "x_next", "p_half",
                              "score_next", "p_prop", "drift")},
    "u": _BAD_VEC, "delta_logp": _BAD_VEC,
    "means": [(torch.full((2, 3), math.nan, dtype=_F64), ValueError), (torch.zeros(2, 4, dtype=_F64), ValueError),
              (torch.zeros(2, 3).numpy(), TypeError), (torch.zeros(2, 3, dtype=torch.float32), TypeError)],
    "log_weights": [(torch.full((2,), -math.inf, dtype=_F64), ValueError), (torch.zeros(3, dtype=_F64), ValueError)],
    "variances": [(torch.tensor([1.0, 0.0], dtype=_F64), ValueError), (torch.tensor([1.0, math.inf], dtype=_F64),
                                                                     ValueError)],
    "alpha": _BAD_REAL + [(1e200, ValueError)], "sigma2": _BAD_REAL + [(-1.0, ValueError)],
    "step_size": _BAD_STEP,
    "n_steps": _BAD_COUNT, "n_trapezoid": _BAD_COUNT, "n_leapfrog": _BAD_COUNT, "n": _BAD_COUNT,
    "seed": _BAD_U64, "offset": _BAD_U64 + [(2**64 - 1, ValueError)],
    "mh": [("exact", ValueError), (["score"], ValueError)],
    "damping": _BAD_REAL + [(1.0, ValueError), (-0.1, ValueError)],
    "t": _BAD_REAL + [(1.5, ValueError)], "h": _BAD_REAL + [(0.0, ValueError), (1e-400, ValueError)],
    "fd_eps": _BAD_REAL + [(0.0, ValueError)], "guidance": _BAD_REAL + [(-1.0, ValueError)],
    "sigma": _BAD_REAL + [(0.0, ValueError)], "schedule": [("vp", TypeError)],
}
# arguments whose bad value is only bad together with the others (offset 2**64 - 1 is fine for one draw)
_ONLY_FOR = {("offset", 2**64 - 1): ("gmm_mala", "gmm_hmc"), ("t", 1.5): ("reverse_sde_step", "guided_sde_step")}


def _matrix():
    cases = []
    for op in ("gmm_score", "gmm_mala", "gmm_hmc", "reverse_sde_step", "guided_sde_step", "mala_propose",
               "line_points", "score_mh_accept", "leapfrog", "leapfrog_finish", "hmc_accept", "momentum_refresh",
               "em_step_logprob"):
        for arg in _valid(op):
            for i, (bad, exc) in enumerate(_BAD_ARGS.get(arg, [])):
                only = _ONLY_FOR.get((arg, bad) if isinstance(bad, (int, float)) else None)
                if only is None or op in only:
                    cases.append(pytest.param(op, arg, i, exc, id=f"{op}-{arg}-{i}"))
    return cases


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op,arg,i,exc", _matrix())
def test_bad_input_matrix(op, arg, i, exc, backend):
    """Every op × argument × backend: a bad value raises the same exception type naming the argument."""
    backend = _available(backend)
    kwargs = _valid(op)
    kwargs[arg] = _BAD_ARGS[arg][i][0]
    if backend_device(backend).type == "cuda":
        kwargs = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    with pytest.raises(exc) as info:
        getattr(ops, op)(**kwargs, backend=backend)
    assert re.search(rf"\b{re.escape(arg)}\b", str(info.value)), f"{arg!r} not named in: {info.value}"
