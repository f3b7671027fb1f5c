"""The random family (normal, uniform): every backend's kernels draw the stream of the reference
(fastsamp.ops.random, docs/backend-contract.md) — the uniforms bit for bit, the normals up to the
rounding of log/cos/sin in Box–Muller — for any seed, offset and chain offset, inside the other
kernels too (the proposals' noise, the accept ops' uniforms).
(The Philox known answers and the distribution of the stream: tests/test_oracles.py.)"""
import pytest
import torch
from conftest import COMPILED, accept_inputs, assert_close, backend_device, rand, skip_unless_available, skip_unless_op

from fastsamp import backends, ops

# B not a multiple of any block (16 lanes, 64-normal blocks, chunks, Triton tiles), D = 1, odd D
DRAW_SHAPES = [(1, 1), (3, 2), (17, 1), (1000, 7), (257, 64), (4099, 5)]
# (seed, offset): small, both above 2**32, and the top of the 64-bit range
KEYS = [(0, 0), (2**40 + 3, 2**33 + 1), (2**64 - 1, 2**63 + 5)]


def fresh_key():
    seed, offset = torch.randint(0, 2**62, (2,)).tolist()
    return 2**63 + seed, offset


@pytest.mark.parametrize("B,D", DRAW_SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("chain_offset", [0, 2**32 - 5000])
def test_normal_kernels_are_the_reference_stream(backend, dtype, B, D, chain_offset):
    name, device = backend
    for seed, offset in KEYS + [fresh_key()]:
        xi = ops.normal(seed, offset, B, D, dtype, device, chain_offset=chain_offset, backend=name)
        assert xi.shape == (B, D) and xi.dtype == dtype and xi.device.type == device.type
        expect = ops.normal(seed, offset, B, D, torch.float64, chain_offset=chain_offset, backend="torch")
        assert_close(xi, expect, dtype, scale=10, name=f"xi (seed {seed}, offset {offset})")


@pytest.mark.parametrize("B", [1, 17, 1000, 4099])
@pytest.mark.parametrize("chain_offset", [0, 2**32 - 5000])
def test_uniform_kernels_are_the_reference_stream_bit_for_bit(backend, dtype, B, chain_offset):
    name, device = backend
    for seed, offset in KEYS + [fresh_key()]:
        u = ops.uniform(seed, offset, B, dtype, device, chain_offset=chain_offset, backend=name)
        expect = ops.uniform(seed, offset, B, dtype, chain_offset=chain_offset, backend="torch")
        assert u.shape == (B,) and u.dtype == dtype
        assert torch.equal(u.cpu(), expect), f"seed {seed}, offset {offset}"


def test_draws_of_a_shard_are_rows_of_the_whole(backend):
    name, device = backend
    full_n, full_u = ops.normal(5, 2, 40, 9, device=device, backend=name), ops.uniform(5, 2, 40, device=device,
                                                                                        backend=name)
    assert torch.equal(ops.normal(5, 2, 13, 9, device=device, chain_offset=27, backend=name), full_n[27:])
    assert torch.equal(ops.uniform(5, 2, 13, device=device, chain_offset=27, backend=name), full_u[27:])


def test_empty_draws(backend):
    name, device = backend
    assert ops.normal(1, 2, 0, 3, device=device, backend=name).shape == (0, 3)
    assert ops.normal(1, 2, 3, 0, device=device, backend=name).shape == (3, 0)
    assert ops.uniform(1, 2, 0, device=device, backend=name).shape == (0,)


@pytest.mark.parametrize("B,D", [(1, 1), (3, 2), (1000, 7), (257, 64)])
@pytest.mark.parametrize("chain_offset", [0, 12345])
def test_kernel_normals_are_the_reference_stream(backend, dtype, B, D, chain_offset):
    """sde_step with a = c_s = 0, c_n = 1 writes its in-kernel normals xi[b, d] (chain word
    chain_offset + b) unchanged."""
    name, device = backend
    seed, offset = 2**40 + 3, 2**33 + 1
    x = rand(B, D, dtype=dtype, device=device)
    kernel = backends._load(name)[0].sde_step
    xi = kernel(x, x, None, None, seed, offset, chain_offset, 0.0, 0.0, 1.0)
    expect = ops.normal(seed, offset, B, D, chain_offset=chain_offset, backend="torch")
    assert_close(xi, expect, dtype, scale=10, name="xi")
    other = kernel(x, x, None, None, seed, offset + 1, chain_offset, 0.0, 0.0, 1.0)
    assert not (other == xi).all()


# --- the accept ops draw their uniform in-kernel --------------------------------------------------------

def _accept_call(op, B, D, dtype, device):
    """f(backend, **u_or_key) -> the outputs of accept op `op` on fixed random inputs."""
    x, xp, s, sp, interior, _ = accept_inputs(B, D, dtype, device, 2)
    eps = (0.01 + 0.2 * torch.rand(B, dtype=torch.float64)).to(dtype=dtype, device=device)
    if op == "score_mh_accept":
        return lambda b, **kw: ops.score_mh_accept(x, xp, s, sp, eps, interior_scores=interior, backend=b, **kw)
    if op == "hmc_accept":
        p, pp = (0.3 * rand(B, D, dtype=dtype, device=device) for _ in range(2))
        delta = 0.1 * rand(B, dtype=dtype, device=device)
        return lambda b, **kw: ops.hmc_accept(x, xp, s, sp, p, pp, delta, backend=b, **kw)
    logp, logp_p = (rand(B, dtype=dtype, device=device) for _ in range(2))
    return lambda b, **kw: ops.energy_mh_accept(x, xp, s, sp, logp, logp_p, eps, backend=b, **kw)


@pytest.mark.parametrize("name", ("torch",) + COMPILED)
@pytest.mark.parametrize("op", ["score_mh_accept", "hmc_accept", "energy_mh_accept"])
@pytest.mark.parametrize("B,D", [(1, 1), (37, 3), (1000, 8)], ids=lambda v: str(v))
def test_accept_draws_the_uniform_of_ops_uniform(name, op, dtype, B, D):
    """With seed given (no u), an accept op equals the same op given u = ops.uniform(seed, offset, B,
    chain_offset=...) explicitly, bit for bit, on every backend."""
    skip_unless_available(name)
    skip_unless_op(name, op)
    device = backend_device(name)
    call = _accept_call(op, B, D, dtype, device)
    for seed, offset, chain_offset in [(3, 0, 0), (2**64 - 1, 2**40 + 7, 2**32 - B), (2**63 + 11, 5, 12345)]:
        key = dict(seed=seed, offset=offset, chain_offset=chain_offset)
        drawn = call(name, **key)
        u = ops.uniform(seed, offset, B, dtype, device, chain_offset=chain_offset, backend=name)
        given = call(name, u=u)
        for a, b in zip(drawn, given):
            assert torch.equal(a, b), f"{op} on {name}: the in-kernel draw is not u = ops.uniform(...) ({key})"
        if B >= 1000:  # the decisions are informative: some accepted, some rejected
            assert 0 < float(drawn[-2].double().mean()) < 1


@pytest.mark.parametrize("op", ["score_mh_accept", "hmc_accept", "energy_mh_accept"])
def test_accept_takes_exactly_one_of_u_and_seed(op):
    call = _accept_call(op, 4, 2, torch.float64, torch.device("cpu"))
    u = torch.rand(4, dtype=torch.float64)
    with pytest.raises(ValueError, match="exactly one of u .* and seed.*got both"):
        call("auto", u=u, seed=1)
    with pytest.raises(ValueError, match="exactly one of u .* and seed.*got neither"):
        call("auto")
    with pytest.raises(ValueError, match="chain_offset must be >= 0"):
        call("auto", seed=1, chain_offset=2**32 - 3)
    with pytest.raises(ValueError, match="offset must be <="):
        call("auto", seed=1, offset=2**64)


@pytest.mark.parametrize("corrector,mh", [("mala", "score"), ("hmc", "score"), ("mala", "energy")])
def test_generic_samplers_draw_no_separate_uniforms(monkeypatch, corrector, mh):
    """The generic MALA / HMC moves draw their MH uniform inside the accept kernel: no ops.uniform call and
    no reference Philox uniform per move."""
    from fastsamp import models
    from fastsamp.ops import random as rng
    from fastsamp.samplers import annealed_mcmc

    def refuse(*args, **kwargs):
        raise AssertionError("a separate uniform draw")

    for module in (ops, rng):
        monkeypatch.setattr(module, "uniform", refuse)
    monkeypatch.setattr(rng, "philox_uniform", refuse)
    mix = models.GaussianMixture(torch.randn(3, 2, dtype=torch.float64), torch.zeros(3, dtype=torch.float64),
                                 torch.ones(3, dtype=torch.float64))
    x, stats = annealed_mcmc(mix, 64, n_levels=3, corrector=corrector, mh=mh, n_corrector_steps=2, fused=False,
                             dtype=torch.float64)
    assert x.shape == (64, 2) and 0 < sum(stats.accept_rate)
