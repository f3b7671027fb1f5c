"""The C++ kernels' execution environment (csrc/cpu/runtime.h): FTZ/DAZ inside every kernel and the
caller's floating-point state untouched; results independent of the batch size and of the thread
count; small calls on one thread; the pool after fork; infinite chains and oversize dimensions."""
import multiprocessing
import struct

import pytest
import torch

from fastsamp import backends
from fastsamp.ops import reference as ref

if not backends.is_available("cpp"):
    pytest.skip("cpp backend unavailable", allow_module_level=True)

from fastsamp import _C  # noqa: E402
from fastsamp.backends import cpp  # noqa: E402

TINY32 = struct.unpack("f", struct.pack("I", 1))[0]  # smallest float32 denormal (1.4e-45)


@pytest.fixture
def threads():
    """Set torch's (hence the kernels') thread count for one test, restore it afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def separated_mixture(K, D, dtype, seed=0):
    """Well separated: means 3·N(0, I), variances U(0.2, 1.2) (far components underflow)."""
    g = torch.Generator().manual_seed(seed)
    means = 3 * torch.randn(K, D, generator=g, dtype=torch.float64)
    lw = torch.randn(K, generator=g, dtype=torch.float64)
    var = 0.2 + torch.rand(K, generator=g, dtype=torch.float64)
    return [t.to(dtype) for t in (means, lw, var)]


def kernel_calls(B, D, dtype):
    """name -> a call of one C++ kernel of each kind (mixture, streaming, in-kernel Philox)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, D, generator=g, dtype=torch.float64).to(dtype)
    s = torch.randn(B, D, generator=g, dtype=torch.float64).to(dtype)
    eps = torch.full((B,), 0.05, dtype=dtype)
    means, lw, var = separated_mixture(16, D, dtype)
    return {
        "gmm_score": lambda: cpp.gmm_score(x, means, lw, var, 0.9, 0.1),
        "gmm_mala": lambda: cpp.gmm_mala(x, means, lw, var, eps, 3, 3, 1.0, 0.0, 7, 0, 0, 0),
        "gmm_hmc": lambda: cpp.gmm_hmc(x, means, lw, var, eps, 2, 2, 1.0, 0.0, 7, 0, 0, 0, 0.5),
        "sde_step": lambda: cpp.sde_step(x, s, None, None, 3, 0, 0, 1.01, 0.02, 0.1),
        "momentum_refresh": lambda: cpp.momentum_refresh(x, 0.5, None, 3, 0, 0),
        "em_step_logprob": lambda: cpp.em_step_logprob(x, s, None, None, None, 3, 0, 0, 0.1, 0.1, 0.0, 0.5, 0.05),
        "score_mh_accept": lambda: cpp.score_mh_accept(x, x + 0.1 * s, s, s, eps, torch.rand(B, dtype=dtype), None,
                                                       0, 0, 0),
    }


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("caller_ftz", [False, True], ids=["caller_default", "caller_ftz"])
def test_caller_fp_state_unchanged(threads, n_threads, caller_ftz):
    """MXCSR of the caller is the same after every kernel, whether the caller had FTZ or not,
    and a denormal computed by torch afterwards is still denormal (unless the caller flushes)."""
    threads(n_threads)
    torch.set_flush_denormal(caller_ftz)
    try:
        for name, call in kernel_calls(4096, 8, torch.float32).items():
            before = _C.cpu_fp_control_word()
            call()
            assert _C.cpu_fp_control_word() == before, name
            tiny = torch.tensor([TINY32 * 1000], dtype=torch.float32) * 0.5
            assert (tiny.item() == 0) == caller_ftz, name
    finally:
        torch.set_flush_denormal(False)


@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_every_thread_flushes_denormals(threads, n_threads):
    """x_new = a x with a x denormal: 0 on every thread's share of a large batch (the pool's
    threads flush too). With the kernels' flushing switched off the same call gives denormals, so
    the test can fail."""
    threads(n_threads)
    B, D = 1 << 16, 8
    x = torch.full((B, D), 1e-10, dtype=torch.float32)
    zero = torch.zeros_like(x)
    out = cpp.sde_step(x, zero, None, zero, 0, 0, 0, 1e-30, 0.0, 0.0)
    assert torch.count_nonzero(out) == 0
    previous = _C.cpu_set_flush_denormals(False)
    try:
        out = cpp.sde_step(x, zero, None, zero, 0, 0, 0, 1e-30, 0.0, 0.0)
    finally:
        _C.cpu_set_flush_denormals(previous)
    assert previous is True and bool((out > 0).all()) and float(out.max()) < 1.2e-38


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("D", [8, 5])
def test_gmm_score_separated_mixture_underflow(dtype, D):
    """Points at one component of a well-separated mixture with narrow components: the other
    components' terms lie 87..700 below the maximum (denormal or zero after exp, flushed); score
    and logp still match the float64 reference."""
    K = 16
    means, lw, _ = separated_mixture(K, D, torch.float64, seed=2)
    var = torch.full((K,), 0.02, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    k = torch.randint(0, K, (2000,), generator=g)
    x = means[k] + 0.3 * torch.randn(2000, D, generator=g, dtype=torch.float64)
    score, logp = cpp.gmm_score(*[t.to(dtype) for t in (x, means, lw, var)], 1.0, 0.0)
    r_score, r_logp = ref.gmm_score(x, means, lw, var, 1.0, 0.0)
    gap = (ref.gmm_score(x, means[:1], lw[:1], var[:1], 1.0, 0.0)[1] - r_logp).abs()
    assert float(gap.max()) > 100  # far components do underflow
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    scale = r_score.abs().amax(1, keepdim=True) + 1
    assert float(((score.double() - r_score).abs() / scale).max()) < 100 * rtol
    assert float(((logp.double() - r_logp).abs() / (r_logp.abs() + 1)).max()) < 10 * rtol


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_gmm_mala_separated_mixture_matches_reference(dtype):
    """The fused MALA kernel on the main job's kind of mixture follows the reference moves."""
    B, D, K = 512, 8, 16
    means, lw, var = separated_mixture(K, D, torch.float64, seed=4)
    g = torch.Generator().manual_seed(5)
    x = means[torch.randint(0, K, (B,), generator=g)] + torch.randn(B, D, generator=g, dtype=torch.float64)
    eps = torch.full((B,), 0.05, dtype=torch.float64)
    args = (8, 3, 1.0, 0.0, 11, 0, 0, 0)  # ..., seed, offset, chain_offset, mh
    x_new, rate = cpp.gmm_mala(*[t.to(dtype) for t in (x, means, lw, var, eps)], *args)
    e_x, e_rate = ref.gmm_mala(x, means, lw, var, eps, *args)
    close = torch.isclose(x_new.double(), e_x, rtol=1e-4 if dtype == torch.float32 else 1e-10, atol=1e-4)
    bad = ~close.all(1) | ((rate.double() - e_rate).abs() > 1e-6)
    assert int(bad.sum()) <= (0 if dtype == torch.float64 else 2)
    assert 0.3 < float(rate.mean()) <= 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("D", [8, 3, 5])
def test_gmm_score_infinite_chain_logp_is_minus_inf(dtype, D):
    """A chain at ±inf has log-density −inf, as on the reference (its score is NaN); the other
    chains are untouched."""
    means, lw, var = separated_mixture(4, D, dtype)
    x = torch.randn(5, D, dtype=dtype)
    x[1] = float("inf")
    x[3, 0] = -float("inf")
    score, logp = cpp.gmm_score(x, means, lw, var, 1.0, 0.0)
    r_score, r_logp = ref.gmm_score(*[t.double() for t in (x, means, lw, var)], 1.0, 0.0)
    assert logp[1] == -float("inf") and logp[3] == -float("inf")
    assert r_logp[1] == -float("inf") and r_logp[3] == -float("inf")
    ok = [0, 2, 4]
    assert torch.isfinite(logp[ok]).all() and torch.isfinite(score[ok]).all()
    torch.testing.assert_close(logp[ok].double(), r_logp[ok], rtol=1e-4, atol=1e-4)


def _streaming_calls(x, s, v, eps, u):
    """Every streaming op with in-kernel Philox noise (backend signatures), returning tensors."""
    return {
        "sde_step": lambda: cpp.sde_step(x, s, v, None, 9, 5, 0, 1.01, 0.02, 0.3),
        "guided_sde_step": lambda: cpp.guided_sde_step(x, s, s + 0.1 * v, v, None, 9, 5, 0, 1.01, 0.02, 0.5, 3.0, 0.3),
        "mala_propose": lambda: cpp.mala_propose(x, s, eps, None, 9, 5, 0),
        "momentum_refresh": lambda: cpp.momentum_refresh(x, 0.7, None, 9, 5, 0),
        "line_points": lambda: cpp.line_points(x, x + s, 3),
        "score_mh_accept": lambda: cpp.score_mh_accept(x, x + 0.1 * v, s, v, eps, u, None, 0, 0, 0),
        "leapfrog": lambda: cpp.leapfrog(x, v, s, eps),
        "hmc_accept": lambda: cpp.hmc_accept(x, x + 0.1 * v, s, v, s, v, eps, u, 0, 0, 0),
        "em_step_logprob": lambda: cpp.em_step_logprob(x, s, None, None, None, 9, 5, 0, 0.1, 0.09, 0.01, 0.5, 0.045),
        "em_step_logprob(log_var)": lambda: cpp.em_step_logprob(x, s, 0.1 * v, None, None, 9, 5, 0, 0.1, 0.09, 0.01,
                                                                0.5, 0.045),
    }


def _rows(out, n):
    outs = out if isinstance(out, tuple) else (out,)
    return [t[:, :n] if t.dim() == 3 else t[:n] for t in outs if t is not None]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("D", [4, 8, 3])
def test_streaming_ops_bitwise_independent_of_batch_size(threads, dtype, D):
    """Chain b's result is the same bits whether it runs in a batch of 1, 7 or 1000 (vector body
    and scalar tails agree), and with 1 or 2 threads."""
    big = 1000
    g = torch.Generator().manual_seed(6)
    x, s, v = (torch.randn(big, D, generator=g, dtype=torch.float64).to(dtype) for _ in range(3))
    eps = (0.01 + 0.1 * torch.rand(big, generator=g, dtype=torch.float64)).to(dtype)
    u = torch.rand(big, generator=g, dtype=torch.float64).to(dtype)
    threads(2)
    full = {k: f() for k, f in _streaming_calls(x, s, v, eps, u).items()}
    for n_threads in (1, 2):
        threads(n_threads)
        for n in (1, 7, big):
            part = _streaming_calls(*(t[:n].contiguous() for t in (x, s, v, eps, u)))
            for name, call in part.items():
                for got, want in zip(_rows(call(), n), _rows(full[name], n)):
                    assert torch.equal(got, want), (name, n, n_threads)


@pytest.mark.parametrize("op", ["gmm_mala", "gmm_hmc", "gmm_score"])
def test_mixture_kernels_independent_of_thread_count(threads, op):
    results = []
    for n in (1, 2, 3):
        threads(n)
        out = kernel_calls(3000, 8, torch.float32)[op]()
        results.append(out)
    for r in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(r, results[0]))


def test_small_calls_stay_on_the_calling_thread(threads):
    """A small batch dispatches no job to the pool; a large one does (2 threads allowed)."""
    threads(2)
    small = kernel_calls(32, 4, torch.float32)
    large = kernel_calls(1 << 16, 8, torch.float32)
    for name in ("gmm_mala", "sde_step", "momentum_refresh", "score_mh_accept"):
        before = _C.cpu_pool_stats()["jobs"]
        small[name]()
        assert _C.cpu_pool_stats()["jobs"] == before, name
        large[name]()
        assert _C.cpu_pool_stats()["jobs"] == before + 1, name
    threads(1)
    before = _C.cpu_pool_stats()["jobs"]
    large["gmm_mala"]()
    assert _C.cpu_pool_stats()["jobs"] == before


def _child_runs_kernels(queue, x, means, lw, var, eps):
    # torch's own OpenMP pool may hang in a forked child (as documented by PyTorch): torch stays on
    # one thread here, and the kernel is called directly with 2 threads
    torch.set_num_threads(1)
    x_new, rate = torch.empty_like(x), torch.empty_like(eps)
    _C.cpu_gmm_mala(0, x.data_ptr(), means.data_ptr(), lw.data_ptr(), var.data_ptr(), eps.data_ptr(), x.shape[0],
                    x.shape[1], means.shape[0], 3, 3, 1.0, 0.0, 7, 0, 0, 0, x_new.data_ptr(), rate.data_ptr(), 2)
    queue.put((_C.cpu_pool_stats()["jobs"], bool(torch.isfinite(x_new).all())))


def test_kernels_run_in_a_forked_child(threads):
    """After the pool has run in the parent, a fork-started child runs threaded kernels (a child
    has none of the parent's worker threads: it starts its own pool)."""
    threads(2)
    kernel_calls(1 << 14, 8, torch.float32)["gmm_mala"]()
    assert _C.cpu_pool_stats()["jobs"] > 0
    means, lw, var = separated_mixture(16, 8, torch.float32)
    x, eps = torch.randn(1 << 14, 8), torch.full((1 << 14,), 0.05)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_runs_kernels, args=(queue, x, means, lw, var, eps))
    child.start()
    child.join(120)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive and child.exitcode == 0
    assert queue.get(timeout=5) == (1, True)  # the child's own pool ran one job


def test_oversize_dimensions_raise_value_error():
    """D or K beyond 2**24 (where an int index would wrap): ValueError naming it, before any read."""
    x = torch.zeros(1, 1)
    p = x.data_ptr()
    with pytest.raises(ValueError, match="D = 4294967297"):
        _C.cpu_gmm_score(0, p, p, p, p, 1, 2**32 + 1, 1, 1.0, 0.0, p, p, 1)
    with pytest.raises(ValueError, match="K = "):
        _C.cpu_gmm_mala(0, p, p, p, p, p, 1, 1, 2**31, 1, 1, 1.0, 0.0, 0, 0, 0, 0, p, p, 1)
    with pytest.raises(ValueError, match="D = "):
        _C.cpu_sde_step(0, p, p, 0, 0, 1, 2**31 + 3, 0, 0, 0, 1.0, 0.0, 0.0, p, 1)


def test_bench_case_names_match_the_cases():
    """`fastsamp bench --ops` validates against case_names() without building the cases."""
    from fastsamp.experiments.bench import _cases, case_names, unknown_ops
    assert case_names() == list(_cases(torch.device("cpu"), torch.float32))
    assert unknown_ops(["gmm_mala", "gmm_hmc[separated]", "sde_step(out=)"]) == []
    assert unknown_ops(["bogus", "gmm_mala"]) == ["bogus"]


def test_a_missing_extension_is_announced_not_silent(monkeypatch):
    """Without the C++ extension, backend='auto' on the CPU runs the reference: the import says so once."""
    import sys

    import fastsamp

    monkeypatch.delattr(fastsamp, "_C")
    monkeypatch.setitem(sys.modules, "fastsamp._C", None)
    with pytest.warns(RuntimeWarning, match="C\\+\\+ extension is unavailable.*PyTorch reference"):
        module, reason = backends._import("cpp")
    assert module is None and "fastsamp._C" in reason


LAUNCHER = '#!/bin/sh\nexec "$@"\n'  # runs the compiler named after it, as ccache does
# logs the -DFASTSAMP_CXX=... it is given and writes the -o file: a compile or a link in no time
COMPILER = """#!/bin/sh
out=; prev=
for a in "$@"; do
  case "$a" in -DFASTSAMP_CXX=*) echo "$a" >> "$0.log";; esac
  [ "$prev" = -o ] && out="$a"
  prev="$a"
done
mkdir -p "$(dirname "$out")" && : > "$out"
"""


def test_build_info_records_the_compiler_not_its_launcher(tmp_path):
    """_C.build_info()["cxx"] (tests/test_mh.py's C++ harness compiles with it) is the compiler of CXX="ccache g++",
    not the launcher: setup.py's build with stand-ins for both (shell scripts) defines FASTSAMP_CXX as the compiler."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    launcher, compiler = tmp_path / "ccache", tmp_path / "g++"
    launcher.write_text(LAUNCHER)
    compiler.write_text(COMPILER)
    for script in (launcher, compiler):
        script.chmod(0o755)
    env = dict(os.environ, CXX=f"{launcher} {compiler}", FASTSAMP_NO_CUDA="1")
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--force", "--build-temp", tmp_path / "temp",
                    "--build-lib", tmp_path / "lib"], cwd=root, env=env, check=True, capture_output=True, timeout=300)
    defines = set(Path(f"{compiler}.log").read_text().split())
    assert defines == {f'-DFASTSAMP_CXX="{compiler}"'}
