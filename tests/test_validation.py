"""Bad input raises a clear exception naming the argument, on every entry point."""
import math

import pytest
import torch

from fastsamp import VP, ops

F64 = torch.float64


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
