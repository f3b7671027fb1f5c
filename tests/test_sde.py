"""The sde family (reverse_sde_step, guided_sde_step): every compiled backend against the float64
PyTorch reference on fresh random inputs."""
import math

import pytest
import torch
from conftest import assert_close, f64, rand, skip_unless_op

from fastsamp import VE, VP, ops


@pytest.mark.parametrize("schedule", [VP(), VE()], ids=["vp", "ve"])
@pytest.mark.parametrize("with_extra", [False, True], ids=["", "extra"])
def test_reverse_sde_step_noise_tensor(backend, dtype, shape, schedule, with_extra):
    name, device = backend
    B, D = shape
    x, s, xi = (rand(B, D, dtype=dtype, device=device) for _ in range(3))
    extra = rand(B, D, dtype=dtype, device=device) if with_extra else None
    out = ops.reverse_sde_step(x, s, t=0.6, h=0.01, schedule=schedule, noise=xi, extra_drift=extra, backend=name)
    expect = ops.reverse_sde_step(*f64(x, s), t=0.6, h=0.01, schedule=schedule, noise=f64(xi)[0],
                                  extra_drift=f64(extra)[0], backend="torch")
    assert_close(out, expect, dtype, scale=10, name="x_new")


def test_reverse_sde_step_philox(backend, dtype, shape):
    """In-kernel Philox noise is the stream of fastsamp.ops.random, on every backend."""
    name, device = backend
    B, D = shape
    x, s = (rand(B, D, dtype=dtype, device=device) for _ in range(2))
    seed, offset = 2**40 + 12345, 2**33 + 7
    out = ops.reverse_sde_step(x, s, t=0.3, h=0.02, schedule=VP(), seed=seed, offset=offset, backend=name)
    expect = ops.reverse_sde_step(*f64(x, s), t=0.3, h=0.02, schedule=VP(), seed=seed, offset=offset,
                                  backend="torch")
    assert_close(out, expect, dtype, scale=10, name="x_new")
    again = ops.reverse_sde_step(x, s, t=0.3, h=0.02, schedule=VP(), seed=seed, offset=offset, backend=name)
    assert torch.equal(out, again), "same seed and offset must reproduce exactly"
    other = ops.reverse_sde_step(x, s, t=0.3, h=0.02, schedule=VP(), seed=seed, offset=offset + 1, backend=name)
    assert not torch.equal(out, other)


@pytest.mark.parametrize("B,D", [(3, 2), (1000, 7)])
def test_reverse_sde_step_out_and_in_place(backend, dtype, B, D):
    name, device = backend
    x, s = (rand(B, D, dtype=dtype, device=device) for _ in range(2))
    kw = dict(t=0.4, h=0.01, schedule=VP(), seed=8, offset=1, backend=name)
    expect = ops.reverse_sde_step(x, s, **kw)
    out = torch.full_like(x, math.nan)
    assert ops.reverse_sde_step(x, s, out=out, **kw) is out
    assert torch.equal(out, expect)
    x_in = x.clone()
    ops.reverse_sde_step(x_in, s, out=x_in, **kw)
    assert torch.equal(x_in, expect)


@pytest.mark.parametrize("noise_src", ["tensor", "philox"])
def test_guided_sde_step(backend, dtype, shape, noise_src):
    name, device = backend
    B, D = shape
    skip_unless_op(name, "guided_sde_step")
    x, s, s_shift, v, xi = (rand(B, D, dtype=dtype, device=device) for _ in range(5))
    s_shift = s + 1e-3 * s_shift  # a finite difference: s(x + εv) close to s(x)
    kw = dict(t=0.7, h=0.01, schedule=VP(), fd_eps=1e-3, guidance=0.8)
    src = {"noise": xi} if noise_src == "tensor" else {"seed": 4, "offset": 9}
    out = ops.guided_sde_step(x, s, s_shift, v, backend=name, **kw, **src)
    src64 = {"noise": f64(xi)[0]} if noise_src == "tensor" else src
    expect = ops.guided_sde_step(*f64(x, s, s_shift, v), backend="torch", **kw, **src64)
    assert_close(out, expect, dtype, scale=10, name="x_new")
