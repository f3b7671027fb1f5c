"""Inputs that speak DLPack (NumPy arrays, any object with __dlpack__) are taken zero-copy at the public
boundary of fastsamp.ops (fastsamp/ops/_checks.py): the same results as torch inputs, torch tensors out.
(JAX and CuPy are not installed here: the generic path is tested with a minimal __dlpack__ object.)"""
import numpy as np
import pytest
import torch

from fastsamp import VP, ops
from fastsamp.ops import _checks


class Capsule:
    """A foreign array: the DLPack protocol and the byte strides (as CuPy arrays offer them)."""

    def __init__(self, array):
        self.array, self.strides = array, array.strides

    def __dlpack__(self, **kwargs):
        return self.array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()


def arrays(dtype, B=33, D=5, K=4, seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((B, D)).astype(dtype), "x_prop": rng.standard_normal((B, D)).astype(dtype),
            "score": rng.standard_normal((B, D)).astype(dtype), "score_prop": rng.standard_normal((B, D)).astype(dtype),
            "interior": rng.standard_normal((2, B, D)).astype(dtype), "p": rng.standard_normal((B, D)).astype(dtype),
            "u": rng.uniform(0.01, 1.0, B).astype(dtype), "eps": rng.uniform(0.01, 0.1, B).astype(dtype),
            "delta": rng.standard_normal(B).astype(dtype),
            "means": 3 * rng.standard_normal((K, D)).astype(dtype), "log_weights": rng.standard_normal(K).astype(dtype),
            "variances": rng.uniform(0.2, 0.6, K).astype(dtype)}


def calls(a):
    """One call of each op family on the inputs `a` (arrays or tensors)."""
    return {
        "gmm_score": lambda: ops.gmm_score(a["x"], a["means"], a["log_weights"], a["variances"], alpha=0.9, sigma2=0.2),
        "gmm_mala": lambda: ops.gmm_mala(a["x"], a["means"], a["log_weights"], a["variances"], step_size=a["eps"],
                                         n_steps=3, n_trapezoid=2, seed=1),
        "mala_propose": lambda: ops.mala_propose(a["x"], a["score"], a["eps"], seed=2, offset=3),
        "line_points": lambda: ops.line_points(a["x"], a["x_prop"], 3),
        "score_mh_accept": lambda: ops.score_mh_accept(a["x"], a["x_prop"], a["score"], a["score_prop"], a["eps"],
                                                       a["u"], interior_scores=a["interior"]),
        "reverse_sde_step": lambda: ops.reverse_sde_step(a["x"], a["score"], t=0.5, h=0.01, schedule=VP(), seed=4),
        "leapfrog": lambda: ops.leapfrog(a["x"], a["p"], a["score"], 0.05),
        "hmc_accept": lambda: ops.hmc_accept(a["x"], a["x_prop"], a["score"], a["score_prop"], a["p"], a["p"],
                                             a["delta"], a["u"]),
    }


def flat(result):
    return list(result) if isinstance(result, (tuple, list)) else [result]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("op", list(calls(arrays(np.float64))))
@pytest.mark.parametrize("wrap", ["numpy", "dlpack"])
def test_array_inputs_give_the_torch_results(op, dtype, wrap):
    a = arrays(dtype)
    tensors = {k: torch.from_numpy(v.copy()) for k, v in a.items()}
    foreign = a if wrap == "numpy" else {k: Capsule(v) for k, v in a.items()}
    foreign["interior"] = tensors["interior"]  # score_mh_accept's interior_scores: torch tensors only, so far
    got, want = flat(calls(foreign)[op]()), flat(calls(tensors)[op]())
    for g, w in zip(got, want, strict=True):
        assert isinstance(g, torch.Tensor)  # outputs are torch tensors
        assert torch.equal(g, w)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_conversion_is_zero_copy(dtype):
    a = arrays(dtype)
    x = _checks.state("x", a["x"])
    assert x.data_ptr() == a["x"].ctypes.data and np.shares_memory(x.numpy(), a["x"])
    means = _checks.like("means", Capsule(a["means"]), x, a["means"].shape)
    assert means.data_ptr() == a["means"].ctypes.data
    eps = _checks.step_size(a["eps"], x)
    assert eps.data_ptr() == a["eps"].ctypes.data


def test_out_array_is_written_in_place():
    a = arrays(np.float64)
    x = a["x"].copy()
    want = ops.reverse_sde_step(torch.from_numpy(a["x"]), torch.from_numpy(a["score"]), t=0.5, h=0.01,
                                schedule=VP(), seed=4)
    got = ops.reverse_sde_step(x, a["score"], t=0.5, h=0.01, schedule=VP(), seed=4, out=x)
    assert got.data_ptr() == x.ctypes.data and torch.equal(torch.from_numpy(x), want)


def test_arrays_torch_cannot_share_are_refused_naming_the_argument():
    a = arrays(np.float64)
    with pytest.raises(TypeError, match="x:"):
        ops.line_points(a["x"][::-1], a["x_prop"], 2)  # a reversed view (negative stride)
    with pytest.raises(ValueError, match="x_prop has negative strides"):
        ops.line_points(a["x"], Capsule(a["x_prop"][::-1]), 2)
    with pytest.raises(TypeError, match="score:"):
        ops.mala_propose(a["x"], a["score"].astype(">f8"), 0.1, seed=0)  # foreign byte order
    with pytest.raises(TypeError, match="score must have dtype torch.float64"):
        ops.mala_propose(a["x"], a["score"].astype(np.float32), 0.1, seed=0)
    frozen = a["x"].copy()
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="out is a read-only NumPy array"):
        ops.reverse_sde_step(a["x"], a["score"], t=0.5, h=0.01, schedule=VP(), seed=4, out=frozen)
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
        ops.line_points([[0.0]], [[1.0]], 2)
