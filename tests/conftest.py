"""Backends, devices, random inputs and comparison helpers shared by the tests.

Triton kernels run under the interpreter (TRITON_INTERPRET=1) on machines
without a GPU; CUDA tests are skipped, visibly, where no GPU is present.
The per-family kernel tests (test_gmm, test_mh, test_sde, test_hmc, test_random,
test_trajectory) compare every compiled backend with the float64 PyTorch reference
on fresh random inputs.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

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

# (B, D) of the elementwise and row kernels: one chain and D = 1, a few chains, odd D, D a
# multiple of the tiles with B not a multiple of the blocks, and more chains than a CUDA grid
# dimension (65535) allows.
SHAPES = [(1, 1), (3, 2), (1000, 7), (257, 64), (65537, 2)]
GMM_SHAPES = [(1, 1), (3, 2), (1000, 7), (129, 64)]
# (B, D, K) of the whole-move mixture kernels.
MOVE_SHAPES = [(1, 1, 1), (3, 2, 5), (1000, 7, 16), (130, 17, 3)]

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


def extension_compiler():
    """(the C++ compiler that built fastsamp._C, its flags) from `_C.build_info()`, for the tests that build
    programs of tests/cpp/ the same way; skipped without the cpp backend or that compiler."""
    skip_unless_available("cpp")
    from fastsamp import _C
    info = _C.build_info()
    cxx = shutil.which(info["cxx"])
    if cxx is None:
        pytest.skip(f"needs the extension's C++ compiler {info['cxx']}")
    return cxx, info["cxx_flags"].split()


def defined_macros(cxx, flags):
    """The preprocessor macros `cxx` defines under `flags` (e.g. __AVX512F__)."""
    return subprocess.run([cxx, *flags, "-dM", "-E", "-x", "c++", os.devnull], capture_output=True, text=True,
                          check=True, timeout=60).stdout.split()


def cpu_flags():
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {f for line in text.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}


def compile_all(commands, timeout=600):
    """Runs the compiler command lines in parallel and asserts that every one succeeded."""
    jobs = [subprocess.Popen(c) for c in commands]
    try:
        assert [j.wait(timeout=timeout) for j in jobs] == [0] * len(jobs)
    finally:
        for j in jobs:
            j.kill()  # none left running after a timeout (a no-op on a finished one)


def skip_unless_op(name: str, *op_names: str):
    """Skip (visibly) when backend `name` has no kernel for one of `op_names` (CUDA C++ covers
    the starred ops of the contract; the others run on Triton there)."""
    module = backends._load(name)[0]
    missing = [op for op in op_names if not hasattr(module, op)]
    if missing:
        pytest.skip(f"backend {name!r} has no kernel for {', '.join(missing)}")


def bound_triton_programs(monkeypatch, device):
    """On a GPU, bounds the Triton engine's persistent grids (kernels.mlp.persistent_programs: the evaluators with a
    scratch and the training op) to 2 programs, as under the interpreter (one multiprocessor taking
    _INTERPRET_PROGRAMS), so that at small batches a program loops over several row blocks. No-op on the CPU."""
    if device.type == "cuda":
        mlp = backends._load("triton")[0].mlp
        monkeypatch.setattr(mlp, "_multiprocessors", lambda device: 1)
        monkeypatch.setattr(mlp, "_PROGRAMS_PER_SM", mlp._INTERPRET_PROGRAMS)


def triton_gpu_with_two_programs(monkeypatch) -> torch.device:
    """The Triton backend's GPU, its persistent grids bounded to 2 programs (`bound_triton_programs`); skips without
    one (the interpreter runs one program at a time, each operation on a whole block: no run-to-run race shows)."""
    skip_unless_available("triton")
    device = backend_device("triton")
    if device.type != "cuda":
        pytest.skip("needs a GPU: the interpreter runs one program at a time, each operation on a whole block")
    bound_triton_programs(monkeypatch, device)
    return device


@pytest.fixture
def op_device(backend, monkeypatch):
    """The device of `backend`'s tensors (Triton: a GPU, else the interpreter on the CPU), skipping when it is
    unavailable. On a GPU the Triton network ops' persistent grids are bounded to 2 programs, as under the
    interpreter, so that a program loops over several row blocks at small batches (`bound_triton_programs`)."""
    skip_unless_available(backend)
    device = backend_device(backend)
    if backend == "triton":
        bound_triton_programs(monkeypatch, device)
    return device


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: small GEMMs run as fast, immune to a busy machine, and bitwise
    comparisons get one fixed reduction order."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def dynamo_reset():
    """A fresh torch.compile cache before and after the test (compile counts start at zero)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


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


# Chains of SHAPES under the Triton interpreter: more than its largest block (8192 groups of 4), so
# that every kernel still runs several programs, the last one partial.
INTERPRETED_CHAINS = 9000


@pytest.fixture(params=SHAPES, ids=lambda shape: "-".join(map(str, shape)))
def shape(request, backend):
    """(B, D) of SHAPES for the backend under test, B at most INTERPRETED_CHAINS under the Triton
    interpreter (65537 chains matter for the CUDA grids, not for the interpreted code path)."""
    B, D = request.param
    return interpreted_batch(backend[0], B, INTERPRETED_CHAINS), D


def interpreted(name: str) -> bool:
    """Whether backend `name` runs under the Triton interpreter: one thread of numpy, program after program, so a
    second call with the same inputs cannot differ (the repeat checks, against thread or block scheduling, are
    only run where they can fail)."""
    return name == "triton" and backends.triton_interpreted()


def interpreted_batch(name: str, B: int, cap: int) -> int:
    """B, or at most `cap` chains for the Triton interpreter (a python loop per program): the
    smaller batch runs the same code path (several programs, the last one partial)."""
    return min(B, cap) if interpreted(name) else B


def rand(*shape, dtype, device, scale=1.0):
    return (scale * torch.randn(*shape, dtype=torch.float64)).to(dtype=dtype, device=device)


def mixture(K, D, dtype, device):
    """means (K, D), log_weights (K,), variances (K,) in [0.3, 1.3)."""
    means = rand(K, D, dtype=dtype, device=device, scale=2.0)
    log_weights = rand(K, dtype=dtype, device=device)
    variances = (0.3 + torch.rand(K, dtype=torch.float64)).to(dtype=dtype, device=device)
    return means, log_weights, variances


def assert_moved(x, x0):
    """The chains x moved from their exact start x0 (test_annealed's and test_sampling's invariance tests): a kernel
    that reports acceptances but never moves keeps exact samples exact. At their rates (0.85-0.98 over 15-20 moves)
    every chain moves, mean squared displacement 1.4-2.2 (measured)."""
    d = x.double().cpu() - x0.double().cpu()
    assert (d != 0).any(1).double().mean().item() > 0.99
    assert (d * d).sum(1).mean().item() > 0.7


def f64(*ts):
    """The tensors as float64 on the CPU (None stays None): inputs of the reference."""
    return [None if t is None else t.double().cpu() for t in ts]


def step_sizes(per_chain, B, dtype, device):
    if per_chain:
        return (0.01 + 0.2 * torch.rand(B, dtype=torch.float64)).to(dtype=dtype, device=device)
    return 0.07


def eps64(eps, B):
    return eps.double().cpu() if isinstance(eps, torch.Tensor) else torch.full((B,), eps, dtype=torch.float64)


def accept_inputs(B, D, dtype, device, n_interior):
    """x, x_prop, score, score_prop (B, D), interior (n_interior, B, D) or None, u (B,) of an MH accept."""
    x, xp, s, sp = (rand(B, D, dtype=dtype, device=device) for _ in range(4))
    xp = x + 0.3 * xp
    interior = rand(n_interior, B, D, dtype=dtype, device=device) if n_interior else None
    u = torch.rand(B, dtype=torch.float64).clamp_min(1e-12).to(dtype=dtype, device=device)
    return x, xp, s, sp, interior, u


def assert_accept(out, expect, u, dtype, D):
    """Outputs of an MH accept agree with the reference wherever the decision is not a
    rounding-level tie between log u and log α."""
    x_new, s_new, acc, log_alpha = out
    e_x, e_s, e_acc, e_la = expect
    assert acc.dtype == torch.bool and log_alpha.shape == e_la.shape
    assert_close(log_alpha, e_la, dtype, scale=100 * D, name="log_alpha")
    margin = (torch.log(u.double().cpu()) - e_la).abs() > 1e-3 * (1 + e_la.abs())
    assert int(margin.sum()) >= margin.numel() - max(1, margin.numel() // 10)  # near-ties are rare
    assert torch.equal(acc.cpu()[margin], e_acc[margin])
    assert_close(x_new.cpu()[margin], e_x[margin], dtype, name="x_new")
    assert_close(s_new.cpu()[margin], e_s[margin], dtype, name="score_new")


def assert_moves_match(x_new, rate, e_x, e_rate, dtype, mh):
    """A whole-move kernel (gmm_mala, gmm_hmc) reproduces the reference moves. In float32 a chain
    may leave the reference path where log u and log α tie to rounding level; such chains must
    stay a tiny fraction."""
    B, D = e_x.shape
    assert x_new.shape == (B, D) and rate.shape == (B,) and rate.dtype == dtype
    rtol, atol = tol(dtype)
    err = ((x_new.double().cpu() - e_x).abs() / (atol * 100 + rtol * 100 * e_x.abs())).amax(1)
    bad = (err > 1) | ((rate.double().cpu() - e_rate).abs() > 1e-6)
    allowed = 0 if dtype == torch.float64 else max(1, int(0.002 * B))
    assert int(bad.sum()) <= allowed, f"{int(bad.sum())} of {B} chains differ from the reference"
    if mh == "none":
        assert torch.all(rate == 1)


def load_benchmark(file_name: str, module_name: str):
    """benchmarks/<file_name> imported as the module `module_name` (the benchmark scripts are not a package), with
    benchmarks/ on sys.path as `python benchmarks/<file_name>` has it (where the scripts' shared helpers are)."""
    import importlib.util
    bench_dir = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    if bench_dir not in sys.path:
        sys.path.append(bench_dir)
    path = os.path.join(bench_dir, file_name)
    spec = importlib.util.spec_from_file_location(module_name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = mod  # as an import does: dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod
