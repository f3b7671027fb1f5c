"""Noise keyed by the global chain index: every op that draws Philox noise, on every backend, run on
B chains with chain_offset = c gives exactly rows c .. c + B − 1 of the same op on a batch of c + B
chains, and the kernels equal the reference with the same chain_offset."""
import pytest
import torch
from conftest import assert_close, backend_device, skip_unless_available, skip_unless_op

import fastsamp
from fastsamp import VP, ops
from fastsamp.samplers.diffusion import DriftNet

ALL = ("torch", "cpp", "triton", "cuda")
# (B local chains, D, chain_offset): odd sizes, D = 1, offsets that straddle SIMD / Triton blocks
CASES = [(1, 1, 0), (5, 1, 3), (3, 7, 17), (33, 8, 5), (19, 64, 40)]


def _inputs(B, D, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, D, generator=g, dtype=torch.float64).to(dtype=dtype, device=device) for _ in range(4)]


def _mixture(D, dtype, device):
    g = torch.Generator().manual_seed(1)
    means = 2 * torch.randn(4, D, generator=g, dtype=torch.float64)
    lw = torch.randn(4, generator=g, dtype=torch.float64)
    var = 0.3 + torch.rand(4, generator=g, dtype=torch.float64)
    return [t.to(dtype=dtype, device=device) for t in (means, lw, var)]


def _drawing_ops(D, dtype, device):
    """op name -> f(inputs (x, a, b, c) of n chains, chain_offset) -> tuple of per-chain outputs."""
    mix = _mixture(D, dtype, device)
    vp = VP()
    return {
        "sde_step": ("sde_step", lambda i, c, be: (ops.reverse_sde_step(
            i[0], i[1], t=0.6, h=0.01, schedule=vp, seed=7, offset=3, chain_offset=c, backend=be),)),
        "guided_sde_step": ("guided_sde_step", lambda i, c, be: (ops.guided_sde_step(
            i[0], i[1], i[1] + 1e-3 * i[2], i[3], t=0.6, h=0.01, schedule=vp, fd_eps=1e-3, seed=7, offset=3,
            chain_offset=c, backend=be),)),
        "mala_propose": ("mala_propose", lambda i, c, be: (ops.mala_propose(
            i[0], i[1], 0.05, seed=7, offset=2**40 + 1, chain_offset=c, backend=be),)),
        "momentum_refresh": ("momentum_refresh", lambda i, c, be: (ops.momentum_refresh(
            i[0], 0.6, seed=7, offset=9, chain_offset=c, backend=be),)),
        "gmm_mala": ("gmm_mala", lambda i, c, be: ops.gmm_mala(
            3 * i[0], *mix, step_size=0.1, n_steps=3, n_trapezoid=2, alpha=0.9, sigma2=0.2, seed=7, offset=5,
            chain_offset=c, backend=be)),
        "gmm_hmc": ("gmm_hmc", lambda i, c, be: ops.gmm_hmc(
            3 * i[0], *mix, step_size=0.1, n_steps=3, n_leapfrog=2, alpha=0.9, sigma2=0.2, seed=7, offset=5,
            chain_offset=c, damping=0.5, backend=be)),
        "em_step_logprob": ("em_step_logprob", lambda i, c, be: ops.em_step_logprob(
            i[0], i[1], sigma=1.3, t=0.4, h=0.01, seed=7, offset=11, chain_offset=c, log_var=0.1 * i[2],
            explore=0.2, reparam=False, backend=be)),
    }


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("op", ["sde_step", "guided_sde_step", "mala_propose", "momentum_refresh", "gmm_mala",
                                "gmm_hmc", "em_step_logprob"])
@pytest.mark.parametrize("B,D,c", CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_offset_rows_of_the_full_batch(name, op, B, D, c, dtype):
    skip_unless_available(name)
    device = backend_device(name)
    kernel, fn = _drawing_ops(D, dtype, device)[op]
    if name != "torch":
        skip_unless_op(name, kernel)
    full_inputs = _inputs(c + B, D, dtype, device, seed=B + D + c)
    full = fn(full_inputs, 0, name)
    part = fn([t[c:] for t in full_inputs], c, name)
    for f, p in zip(full, part):
        assert torch.equal(f[c:], p), f"{op} on {name}: chain_offset={c} is not rows {c}..{c + B} of the batch"
    if name != "torch" and dtype == torch.float64:  # the kernels draw the reference's stream
        reference = _drawing_ops(D, dtype, torch.device("cpu"))[op][1]  # its mixture on the CPU too
        expect = reference([t.cpu() for t in full_inputs], 0, "torch")
        for p, e in zip(part, expect):
            assert_close(p, e[c:], dtype, scale=100, name=f"{op} vs reference")


@pytest.mark.parametrize("name", ALL)
def test_largest_chain_offset(name):
    """chain_offset + B = 2**32 works (the chain word is the full 32 bits) and matches the reference."""
    skip_unless_available(name)
    if name != "torch":
        skip_unless_op(name, "mala_propose")
    device = backend_device(name)
    B, D = 5, 6
    x = torch.randn(B, D, dtype=torch.float64, device=device)
    c = 2**32 - B
    got = ops.mala_propose(x, x, 0.05, seed=3, offset=1, chain_offset=c, backend=name)
    ref = x.cpu() + 0.05 * x.cpu() + (0.1 ** 0.5) * ops.normal(3, 1, B, D, chain_offset=c)
    assert_close(got, ref, torch.float64, name="mala_propose at the largest chain_offset")


def test_normal_and_uniform_offsets():
    full_n, full_u = ops.normal(5, 2, 40, 9), ops.uniform(5, 2, 40)
    assert torch.equal(ops.normal(5, 2, 13, 9, chain_offset=27), full_n[27:])
    assert torch.equal(ops.uniform(5, 2, 13, chain_offset=27), full_u[27:])


@pytest.mark.parametrize("bad,exc", [(-1, ValueError), (2**32 - 2, ValueError), (1.0, TypeError),
                                     (True, TypeError)])
def test_chain_offset_validated(bad, exc):
    x = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.raises(exc, match="chain_offset"):
        ops.mala_propose(x, x, 0.1, seed=0, chain_offset=bad)
    with pytest.raises(exc, match="chain_offset"):
        ops.normal(0, 0, 3, 2, chain_offset=bad)
    with pytest.raises(exc, match="chain_offset"):
        ops.em_step_logprob(x, x, sigma=1.0, t=0.1, h=0.01, seed=0, chain_offset=bad)


def test_policy_rollout_chain_offset():
    """The whole-trajectory C++ rollout keys its noise by the global chain index too, and equals the
    per-step reference path with the same chain_offset."""
    skip_unless_available("cpp")
    torch.manual_seed(0)
    net = DriftNet(3, hidden=16, n_harmonics=8).double()
    T, c, B = 6, 11, 9
    temb = net.time_features(torch.arange(T, dtype=torch.float64) / T)[0].detach()
    full = ops.policy_rollout(net, temb, c + B, sigma=1.2, explore=0.3, seed=4)
    part = ops.policy_rollout(net, temb, B, sigma=1.2, explore=0.3, seed=4, chain_offset=c)
    assert torch.equal(part[0], full[0][:, c:])
    assert torch.equal(part[1], full[1][c:])
    ref = ops.policy_rollout(net, temb, B, sigma=1.2, explore=0.3, seed=4, chain_offset=c, backend="torch")
    torch.testing.assert_close(part[0], ref[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", [n for n in ALL if n != "torch"])
@pytest.mark.parametrize("op", ["normal", "uniform", "mala_propose"])
@pytest.mark.parametrize("c", [2**32 - 3, 2**32 + 5, 2**40, 2**62, 2**63 - 1, -1])
@pytest.mark.parametrize("D", [3, 12, 40])
def test_unchecked_tensor_chain_offset_wraps_alike(name, op, c, D):
    """A CPU tensor chain offset past its range (not read with validation off, as on a GPU) draws chain words
    (c + b) mod 2**32 on every backend (the reference drew other words, or raised OverflowError / RuntimeError;
    the C++ normals, from group c·⌈D/4⌉, wrapped that product mod 2**64 for D > 8)."""
    skip_unless_available(name)
    skip_unless_op(name, op)
    device = backend_device(name)
    x, s = _inputs(4, D, torch.float64, device, 0)[:2]
    t = torch.tensor(c, device=device)
    call = {"normal": lambda b: ops.normal(1, 0, 4, D, device=device, chain_offset=t, backend=b),
            "uniform": lambda b: ops.uniform(1, 0, 4, device=device, chain_offset=t, backend=b),
            "mala_propose": lambda b: ops.mala_propose(x, s, 0.1, seed=1, chain_offset=t, backend=b)}[op]
    with fastsamp.validation(False):
        assert_close(call(name), call("torch"), torch.float64)
