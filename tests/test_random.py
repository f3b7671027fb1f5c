"""The random family (normal, uniform): the Philox normals every compiled backend draws inside its
kernels are the stream of fastsamp.ops.random (docs/backend-contract.md), for any chain offset.
(The Philox known answers and the distribution of the stream: tests/test_oracles.py.)"""
import pytest
from conftest import assert_close, rand

from fastsamp import backends, ops


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
    expect = ops.normal(seed, offset, B, D, chain_offset=chain_offset)
    assert_close(xi, expect, dtype, scale=10, name="xi")
    other = kernel(x, x, None, None, seed, offset + 1, chain_offset, 0.0, 0.0, 1.0)
    assert not (other == xi).all()
