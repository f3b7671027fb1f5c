"""fastsamp/backends/cuda.py without a GPU: the cuda_<op> kernels take the arguments of the
cpu_<op> kernels in the same order (each seed / offset / chain offset as a (value, pointer) pair: the
pointer of a one-element int64 tensor read by the kernel, or 0), the CUDA stream in place of n_threads
(csrc/cuda/register.cpp).
So the CUDA glue, run on CPU tensors against a _C whose cuda_<op> calls cpu_<op>, must give
exactly the C++ backend's results: every pointer, size and scalar in its place."""
import contextlib
import ctypes
import types

import pytest
import torch
from conftest import skip_unless_available

from fastsamp import backends
from fastsamp.ops import _table


@pytest.fixture
def cuda_glue_on_cpu(monkeypatch):
    skip_unless_available("cpp")
    from fastsamp import _C
    from fastsamp.backends import cuda

    calls = []

    def cpu_args(op, args):
        """The cpu_<op> arguments of cuda_<op>'s: each u64 (value, pointer) pair as the value, or (a tensor's
        pointer) the int64 it points to."""
        spec, out, i = _table.OPS[op], [], 0
        for token in spec.c:
            if any(a.name == token and a.kind == "u64" for a in spec.args):
                value, pointer = args[i:i + 2]
                out.append(ctypes.c_int64.from_address(pointer).value & _table.U64_MASK if pointer else value)
                i += 2
            else:
                out.append(args[i])
                i += 1
        return out + list(args[i:])

    def on_cpu(op):
        def kernel(*args):
            assert args[-1] == 12345, "the stream is the last argument"
            calls.append(op)
            return getattr(_C, "cpu_" + op)(*cpu_args(op, args[:-1]), 1)
        return kernel

    fake = types.SimpleNamespace(**{"cuda_" + n[4:]: on_cpu(n[4:]) for n in dir(_C) if n.startswith("cpu_")})
    monkeypatch.setattr(cuda, "_C", fake)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: types.SimpleNamespace(cuda_stream=12345))
    return cuda, calls


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_cuda_glue_passes_the_cpu_arguments(cuda_glue_on_cpu, dtype):
    cuda, calls = cuda_glue_on_cpu
    cpp = backends._load("cpp")[0]
    torch.manual_seed(0)
    B, D, K = 37, 6, 3
    x, s, xp, sp, e = (torch.randn(B, D, dtype=dtype) for _ in range(5))
    means, lw, var = torch.randn(K, D, dtype=dtype), torch.randn(K, dtype=dtype), torch.rand(K, dtype=dtype) + 0.5
    eps, u = 0.01 + 0.1 * torch.rand(B, dtype=dtype), torch.rand(B, dtype=dtype)
    interior = torch.randn(2, B, D, dtype=dtype)
    em = (0.01, 0.5, 0.1, 0.9, 0.3)  # h, s2, e2, c, b2
    cases = [
        ("gmm_score", (x, means, lw, var, 0.8, 0.3)),
        ("sde_step", (x, s, e, None, 3, 4, 5, 0.9, 0.1, 0.2)),
        ("sde_step", (x, s, None, e, 3, 4, 5, 0.9, 0.1, 0.2)),
        ("score_mh_accept", (x, xp, s, sp, eps, u, interior, 0, 0, 0)),
        ("score_mh_accept", (x, xp, s, sp, eps, u, None, 0, 0, 0)),
        ("score_mh_accept", (x, xp, s, sp, eps, None, interior, 2**63 + 3, 2**40, 11)),  # u drawn in-kernel
        ("normal", (2**63 + 3, 2**40, B, D, dtype, x.device, 11)),
        ("uniform", (2**63 + 3, 2**40, B, dtype, x.device, 11)),
        ("gmm_mala", (x, means, lw, var, eps, 4, 2, 0.9, 0.2, 7, 8, 9, 0)),
        ("gmm_mala", (x, means, lw, var, eps, 4, 2, 0.9, 0.2, torch.tensor(-3), 8, torch.tensor(9), 0)),  # tensors
        ("sde_step", (x, s, e, None, torch.tensor(3), torch.tensor(2**62), torch.tensor(5), 0.9, 0.1, 0.2)),
        ("uniform", (2**63 + 3, torch.tensor(2**40), B, dtype, x.device, 11)),
        ("em_step_logprob", (x, s, None, None, None, 3, 4, 5, *em)),
        ("em_step_logprob", (x, s, e, xp, None, 3, 4, 5, *em)),
        ("em_step_logprob_backward", (x, s, e, xp, sp, u, eps, *em, True, True)),
        ("em_step_logprob_backward", (x, s, None, xp, None, u, eps, *em, False, False)),
    ]
    for op, args in cases:
        got, expect = getattr(cuda, op)(*args), getattr(cpp, op)(*args)
        got, expect = (got, expect) if isinstance(got, tuple) else ((got,), (expect,))
        for g, e_ in zip(got, expect):
            assert (g is None) == (e_ is None), op
            assert g is None or torch.equal(g, e_), op
    assert sorted(set(calls)) == sorted(cuda.__all__)
    n = len(calls)
    cuda.gmm_score(x[:0], means, lw, var, 1.0, 0.0)
    assert len(calls) == n, "nothing is launched for an empty batch"
