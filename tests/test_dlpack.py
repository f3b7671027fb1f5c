"""Inputs that speak DLPack (NumPy arrays, any object with __dlpack__) are taken zero-copy at the public
boundary of fastsamp.ops (fastsamp/ops/_checks.py): the same results as torch inputs, torch tensors out.
(JAX and CuPy are not installed here: the generic path is tested with a minimal __dlpack__ object.)"""
import numpy as np
import pytest
import torch

from fastsamp import VP, ops
from fastsamp.ops import _checks
from fastsamp.samplers.diffusion import DriftNet


class Capsule:
    """A foreign array: the DLPack protocol and the byte strides (as CuPy arrays offer them)."""

    def __init__(self, array):
        self.array, self.strides = array, array.strides

    def __dlpack__(self, **kwargs):
        return self.array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()


def arrays(dtype, B=33, D=5, K=4, H=6, F=2, T=3, seed=0):
    rng = np.random.default_rng(seed)

    def normal(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype(dtype)

    layers = [(H, D + 2 * F), (H, H), (D, H)]  # a score / energy network's weights; an mlp_net's maps D to D
    return {"x": normal(B, D), "x_prop": normal(B, D), "score": normal(B, D), "score_prop": normal(B, D),
            "interior": normal(2, B, D), "p": normal(B, D), "v": normal(B, D), "drift": normal(B, D),
            "u": rng.uniform(0.01, 1.0, B).astype(dtype), "eps": rng.uniform(0.01, 0.1, B).astype(dtype),
            "var": rng.uniform(0.5, 2.0, B).astype(dtype),
            "delta": normal(B), "logp": normal(B), "logp_prop": normal(B),
            "means": normal(K, D, scale=3.0), "log_weights": normal(K),
            "variances": rng.uniform(0.2, 0.6, K).astype(dtype),
            **{f"w{k}": normal(*w, scale=0.3) for k, w in enumerate(layers)},
            **{f"b{k}": normal(w[0], scale=0.1) for k, w in enumerate(layers)},
            "mlp_w0": normal(H, D, scale=0.3), "freq": np.linspace(0.5, 2.0, F).astype(dtype), "data_mean": normal(D),
            "c": normal(B, D), "k": normal(B), "z": normal(B, D), "temb": normal(T, H), "x0": normal(4, D),
            "states": normal(T + 1, B, D)}


def nets(a, kind):
    """A ScoreNet or EnergyNet whose tensors are the arrays (or tensors) of `a`."""
    return kind(weights=(a["w0"], a["w1"], a["w2"]), biases=(a["b0"], a["b1"], a["b2"]), freq=a["freq"],
                data_mean=a["data_mean"], data_var=1.0, t=0.5, alpha=0.8, sigma2=0.3)


def policy(dtype, D=5, H=6):
    """A DriftNet (a torch module: its parameters are torch tensors) in the arrays' (NumPy) dtype."""
    torch.manual_seed(0)
    return DriftNet(D, hidden=H, n_harmonics=3, n_layers=1).to(torch.from_numpy(np.zeros(1, dtype)).dtype)


NO_ARRAY_INPUTS = {"normal", "uniform"}  # the factory ops: no tensor argument to give as an array


def calls(a, dtype=np.float64):
    """One call of each public op that takes tensors, on the inputs `a` (arrays or tensors) of NumPy dtype `dtype`."""
    mixture = ops.MixtureScore(a["means"], a["log_weights"], a["variances"], 0.9, 0.2)
    score_net, energy_net = nets(a, ops.ScoreNet), nets(a, ops.EnergyNet)
    mlp = ([a["mlp_w0"], a["w1"], a["w2"]], [a["b0"], a["b1"], a["b2"]])
    drift_net = policy(dtype)
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
        "gmm_hmc": lambda: ops.gmm_hmc(a["x"], a["means"], a["log_weights"], a["variances"], step_size=a["eps"],
                                       n_steps=2, n_leapfrog=2, seed=5),
        "guided_sde_step": lambda: ops.guided_sde_step(a["x"], a["score"], a["score_prop"], a["v"], t=0.5, h=0.01,
                                                       schedule=VP(), fd_eps=1e-3, seed=6),
        "energy_mh_accept": lambda: ops.energy_mh_accept(a["x"], a["x_prop"], a["score"], a["score_prop"], a["logp"],
                                                         a["logp_prop"], a["eps"], a["u"]),
        "em_step_logprob": lambda: ops.em_step_logprob(a["x"], a["drift"], sigma=1.0, t=0.5, h=0.01, seed=7),
        "leapfrog_finish": lambda: ops.leapfrog_finish(a["x"], a["x_prop"], a["p"], a["score"], a["score_prop"],
                                                       a["eps"], a["delta"]),
        "momentum_refresh": lambda: ops.momentum_refresh(a["p"], 0.5, seed=8),
        "mlp_score": lambda: ops.mlp_score(a["x"], score_net, mixture=mixture),
        "mlp_mala": lambda: ops.mlp_mala(a["x"], score_net, mixture=mixture, step_size=a["eps"], n_steps=2, seed=9),
        "mlp_hmc": lambda: ops.mlp_hmc(a["x"], score_net, step_size=a["eps"], n_steps=2, seed=10),
        "mlp_energy": lambda: ops.mlp_energy(a["x"], energy_net, mixture=mixture),
        "mlp_energy_mala": lambda: ops.mlp_energy_mala(a["x"], energy_net, step_size=a["eps"], n_steps=2, seed=11),
        "mlp_energy_hmc": lambda: ops.mlp_energy_hmc(a["x"], energy_net, mixture=mixture, step_size=a["eps"],
                                                     n_steps=2, seed=12),
        "mlp_net": lambda: ops.mlp_net(a["x"], *mlp),
        "mlp_net_lsq": lambda: ops.mlp_net_lsq(a["x"], *mlp, a["c"], a["k"]),
        "mlp_net_energy_lsq": lambda: ops.mlp_net_energy_lsq(a["x"], *mlp, a["c"], a["var"], a["k"], a["z"]),
        "policy_rollout": lambda: ops.policy_rollout(drift_net, a["temb"], 4, sigma=1.0, seed=13, x0=a["x0"]),
        "policy_log_pf": lambda: ops.policy_log_pf(drift_net, a["states"], a["temb"], sigma=1.0),
    }


def test_every_public_op_taking_tensors_is_called():
    assert set(calls(arrays(np.float64))) == set(ops.__all__) - NO_ARRAY_INPUTS


def flat(result):
    return list(result) if isinstance(result, (tuple, list)) else [result]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("op", list(calls(arrays(np.float64))))
@pytest.mark.parametrize("wrap", ["numpy", "dlpack"])
def test_array_inputs_give_the_torch_results(op, dtype, wrap):
    a = arrays(dtype)
    tensors = {k: torch.from_numpy(v.copy()) for k, v in a.items()}
    foreign = a if wrap == "numpy" else {k: Capsule(v) for k, v in a.items()}
    got, want = flat(calls(foreign, dtype)[op]()), flat(calls(tensors, dtype)[op]())
    for g, w in zip(got, want, strict=True):
        assert isinstance(g, torch.Tensor)  # outputs are torch tensors
        assert torch.equal(g, w)
        assert torch.isfinite(g).all()  # (no NaN that torch.equal would count as unequal anyway)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_conversion_is_zero_copy(dtype):
    a = arrays(dtype)
    x = _checks.state("x", a["x"])
    assert x.data_ptr() == a["x"].ctypes.data and np.shares_memory(x.numpy(), a["x"])
    means = _checks.like("means", Capsule(a["means"]), x, a["means"].shape)
    assert means.data_ptr() == a["means"].ctypes.data
    eps = _checks.step_size(a["eps"], x)
    assert eps.data_ptr() == a["eps"].ctypes.data


def test_tensors_pass_unchanged():
    x = torch.randn(3, 2)
    assert _checks.from_dlpack("x", x) is x


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
