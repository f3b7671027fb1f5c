"""The mh family (mala_propose, line_points, score_mh_accept): every compiled backend against the
float64 PyTorch reference on fresh random inputs."""
import pytest
import torch
from conftest import accept_inputs, assert_accept, assert_close, eps64, f64, rand, skip_unless_op, step_sizes

from fastsamp import ops
from fastsamp.ops import reference as ref


@pytest.mark.parametrize("per_chain", [False, True], ids=["scalar_eps", "chain_eps"])
@pytest.mark.parametrize("noise_src", ["tensor", "philox"])
def test_mala_propose(backend, dtype, shape, per_chain, noise_src):
    name, device = backend
    B, D = shape
    skip_unless_op(name, "mala_propose")
    x, s, xi = (rand(B, D, dtype=dtype, device=device) for _ in range(3))
    eps = step_sizes(per_chain, B, dtype, device)
    kw = {"noise": xi} if noise_src == "tensor" else {"seed": 99, "offset": 3}
    out = ops.mala_propose(x, s, eps, backend=name, **kw)
    kw64 = {"noise": f64(xi)[0]} if noise_src == "tensor" else {"seed": 99, "offset": 3}
    expect = ops.mala_propose(*f64(x, s), eps64(eps, B), backend="torch", **kw64)
    assert_close(out, expect, dtype, scale=10, name="x_prop")


@pytest.mark.parametrize("n", [1, 2, 5])
def test_line_points(backend, dtype, shape, n):
    name, device = backend
    B, D = shape
    skip_unless_op(name, "line_points")
    x, xp = (rand(B, D, dtype=dtype, device=device) for _ in range(2))
    pts = ops.line_points(x, xp, n, backend=name)
    assert pts.shape == (n - 1, B, D)
    assert_close(pts, ref.line_points(*f64(x, xp), n), dtype, name="points")


@pytest.mark.parametrize("n_interior", [0, 1, 3])
@pytest.mark.parametrize("per_chain", [False, True], ids=["scalar_eps", "chain_eps"])
def test_score_mh_accept(backend, dtype, shape, n_interior, per_chain):
    name, device = backend
    B, D = shape
    x, xp, s, sp, interior, u = accept_inputs(B, D, dtype, device, n_interior)
    eps = step_sizes(per_chain, B, dtype, device)
    out = ops.score_mh_accept(x, xp, s, sp, eps, u, interior_scores=interior, backend=name)
    expect = ref.score_mh_accept(*f64(x, xp, s, sp), eps64(eps, B), *f64(u, interior), 0, 0, 0)
    assert_accept(out, expect, u, dtype, D)


def test_step_size_values_are_read_on_every_call():
    """With validation on, a step-size tensor's values are checked on every call: writes the version counter
    does not see (through .data or a NumPy view) are caught too."""
    x, s = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    eps = torch.full((5,), 0.1, dtype=torch.float64)
    ops.mala_propose(x, s, eps, seed=1)
    eps.data[2] = float("nan")
    with pytest.raises(ValueError, match="step_size must be finite and > 0"):
        ops.mala_propose(x, s, eps, seed=1)
    eps.data[2] = 0.1
    ops.score_mh_accept(x, x, s, s, eps, seed=1)
    eps.numpy()[1] = -1.0
    with pytest.raises(ValueError, match="step_size must be finite and > 0"):
        ops.score_mh_accept(x, x, s, s, eps, seed=1)
