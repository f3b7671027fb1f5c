"""The hmc family (leapfrog, leapfrog_finish, hmc_accept, momentum_refresh): every compiled backend
against the float64 PyTorch reference on fresh random inputs."""
import pytest
from conftest import accept_inputs, assert_accept, assert_close, eps64, f64, rand, skip_unless_op, step_sizes

from fastsamp import ops
from fastsamp.ops import reference as ref


def test_leapfrog_and_finish(backend, dtype, shape):
    name, device = backend
    B, D = shape
    skip_unless_op(name, "leapfrog", "leapfrog_finish")
    x, p, s, s_next = (rand(B, D, dtype=dtype, device=device) for _ in range(4))
    eps = step_sizes(True, B, dtype, device)
    delta = rand(B, dtype=dtype, device=device)
    x_next, p_half = ops.leapfrog(x, p, s, eps, backend=name)
    e_x, e_p = ref.leapfrog(*f64(x, p, s), eps64(eps, B))
    assert_close(x_next, e_x, dtype, scale=10, name="x_next")
    assert_close(p_half, e_p, dtype, scale=10, name="p_half")
    p_next, d_next = ops.leapfrog_finish(x, x_next, p_half, s, s_next, eps, delta, backend=name)
    e_p2, e_d = ref.leapfrog_finish(*f64(x, x_next, p_half, s, s_next), eps64(eps, B), *f64(delta))
    assert_close(p_next, e_p2, dtype, scale=10, name="p_next")
    assert_close(d_next, e_d, dtype, scale=10 * D, name="delta_logp")


def test_hmc_accept(backend, dtype, shape):
    name, device = backend
    B, D = shape
    skip_unless_op(name, "hmc_accept")
    x, xp, s, sp, _, u = accept_inputs(B, D, dtype, device, 0)
    p, pp = (0.3 * rand(B, D, dtype=dtype, device=device) for _ in range(2))
    delta = 0.1 * rand(B, dtype=dtype, device=device)
    out = ops.hmc_accept(x, xp, s, sp, p, pp, delta, u, backend=name)
    expect = ref.hmc_accept(*f64(x, xp, s, sp, p, pp, delta, u), 0, 0, 0)
    assert_accept(out, expect, u, dtype, D)


@pytest.mark.parametrize("damping", [0.0, 0.9])
def test_momentum_refresh(backend, dtype, shape, damping):
    name, device = backend
    B, D = shape
    skip_unless_op(name, "momentum_refresh")
    p = rand(B, D, dtype=dtype, device=device)
    out = ops.momentum_refresh(p, damping, seed=5, offset=11, backend=name)
    expect = ops.momentum_refresh(f64(p)[0], damping, seed=5, offset=11, backend="torch")
    assert_close(out, expect, dtype, scale=10, name="p_new")
