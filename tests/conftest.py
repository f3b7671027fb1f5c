"""Backends, devices and comparison helpers shared by the tests.

Triton kernels run under the interpreter (TRITON_INTERPRET=1) on machines
without a GPU; CUDA tests are skipped, visibly, where no GPU is present.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from fastsamp import backends  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
COMPILED = ("cpp", "triton", "cuda")
# Triton runs under its (numpy) interpreter on CPU-only machines: correct but slow, so the
# largest shapes of the heavy kernels are kept for the GPU.
TRITON_INTERPRETED = not HAS_CUDA



def backend_device(name: str) -> torch.device:
    if name == "cpp":
        return torch.device("cpu")
    if name == "cuda":
        return torch.device("cuda")
    return torch.device("cuda" if HAS_CUDA else "cpu")  # triton: interpreter on the CPU


def skip_unless_available(name: str):
    if name == "cuda" and not HAS_CUDA:
        pytest.skip("CUDA backend: no GPU on this machine")
    if not backends.is_available(name):
        pytest.skip(f"backend {name!r} unavailable: {backends.availability()[name]}")


def skip_unless_op(name: str, *op_names: str):
    """Skip (visibly) when backend `name` has no kernel for one of `op_names` (CUDA C++ covers
    the starred ops of the contract; the others run on Triton there)."""
    module = backends._load(name)[0]
    missing = [op for op in op_names if not hasattr(module, op)]
    if missing:
        pytest.skip(f"backend {name!r} has no kernel for {', '.join(missing)}")


@pytest.fixture(params=COMPILED)
def backend(request):
    """(backend name, device) for every compiled backend; skips the unavailable ones."""
    skip_unless_available(request.param)
    return request.param, backend_device(request.param)


@pytest.fixture(params=[torch.float64, torch.float32], ids=["f64", "f32"])
def dtype(request):
    return request.param


def tol(dtype):
    """(rtol, atol) of a backend in `dtype` against the float64 reference."""
    return (1e-10, 1e-10) if dtype == torch.float64 else (2e-5, 2e-5)


def assert_close(out, ref, dtype, scale=1.0, name="output"):
    rtol, atol = tol(dtype)
    out = out.double().cpu()
    ref = ref.double().cpu()
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol * scale, equal_nan=True, msg=lambda m: f"{name}: {m}")
