"""The mixture kernels on every other x86 instruction set this CPU runs, not only the extension's: their rows are
one native register (csrc/cpu/gmm.h: 64 bytes with AVX-512, 32 with AVX / AVX2, 16 below), with AVX-512 and AVX2 gathers
and lane Philox and lane loops elsewhere, and the default build tests one of them. tests/cpp/gmm_isa.cpp is built
with csrc/cpu/gmm.cpp and the extension's compiler and flags for each other path (on an AVX-512 CPU the AVX2 one and
the lane loops, on an AVX2 one the lane loops), and its gmm_score, gmm_mala and gmm_hmc compared with the
extension's (which tests/test_gmm.py compares with the float64 reference). Up to rounding: the builds differ in FMA
contractions (none below AVX2) and the exp's scaling (vscalef on AVX-512)."""
import platform
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compile_all, cpu_flags, defined_macros, extension_compiler

from fastsamp import ops

ROOT = Path(__file__).resolve().parents[1]
# (name, -m flags beyond baseline x86-64: exactly the CPU flags checked in /proc/cpuinfo)
ISAS = [("lane loops", ()), ("AVX2", ("avx2", "fma")), ("AVX-512", ("avx512f", "avx512bw", "avx512vl", "avx512dq"))]
# (kernel, B, D, K, n_steps, n_sub, mh): B mostly not a multiple of the block widths; compile-time D (1, 8, 16) and
# runtime D (3, 5); K past the 64-component chunk of the online log-sum-exp; every MH mode of both move kernels
CASES = [("gmm_score", 37, 3, 70, 0, 0, 0), ("gmm_score", 19, 8, 16, 0, 0, 0), ("gmm_score", 5, 1, 3, 0, 0, 0),
         ("gmm_score", 33, 16, 5, 0, 0, 0),
         ("gmm_mala", 37, 8, 16, 3, 3, 0), ("gmm_mala", 21, 3, 70, 2, 1, 1), ("gmm_mala", 9, 1, 4, 4, 1, 2),
         ("gmm_mala", 18, 16, 5, 2, 2, 0),
         ("gmm_hmc", 19, 5, 7, 3, 2, 0), ("gmm_hmc", 23, 8, 16, 2, 3, 1), ("gmm_hmc", 6, 2, 3, 2, 1, 2)]
KERNELS = {"gmm_score": 0, "gmm_mala": 1, "gmm_hmc": 2}
MH = ("score", "energy", "none")
ALPHA, SIGMA2, DAMPING, SEED, OFFSET, CHAIN0 = 0.8, 0.3, 0.4, 2**40 + 7, 2**33 + 3, 2**32 - 50


def kernel_path(macros):
    """Which of gmm.h's paths a build with these macros takes."""
    return "AVX-512" if "__AVX512F__" in macros else "AVX2" if "__AVX2__" in macros else "lane loops"


def inputs(case, dtype):
    kernel, B, D, K, *_ = case
    g = torch.Generator().manual_seed(B * 1000 + D * 10 + K)
    x = 2 * torch.randn(B, D, generator=g, dtype=torch.float64)
    means = 2 * torch.randn(K, D, generator=g, dtype=torch.float64)
    log_w = torch.randn(K, generator=g, dtype=torch.float64)
    var = 0.3 + torch.rand(K, generator=g, dtype=torch.float64)
    step = 0.05 + 0.2 * torch.rand(B, generator=g, dtype=torch.float64)
    return [t.to(dtype) for t in (x, means, log_w, var, step)]


def extension(case, x, means, log_w, var, step):
    kernel, B, D, K, n_steps, n_sub, mh = case
    if kernel == "gmm_score":
        return ops.gmm_score(x, means, log_w, var, alpha=ALPHA, sigma2=SIGMA2, backend="cpp")
    common = dict(step_size=step, n_steps=n_steps, alpha=ALPHA, sigma2=SIGMA2, seed=SEED, offset=OFFSET,
                  chain_offset=CHAIN0, mh=MH[mh], backend="cpp")
    if kernel == "gmm_mala":
        return ops.gmm_mala(x, means, log_w, var, n_trapezoid=n_sub, **common)
    return ops.gmm_hmc(x, means, log_w, var, n_leapfrog=n_sub, damping=DAMPING, **common)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the instruction sets are x86-64's")
def test_mixture_kernels_equal_the_extensions_on_every_other_instruction_set(tmp_path):
    cxx, ext_flags = extension_compiler()
    flags = [f for f in ext_flags if not f.startswith("-march=")]
    have, own = cpu_flags(), kernel_path(defined_macros(cxx, ext_flags))
    builds = [(name.replace(" ", "_"), isa) for name, isa in
              ((name, ["-march=x86-64"] + [f"-m{f}" for f in needs]) for name, needs in ISAS
               if all(f in have for f in needs))
              if kernel_path(defined_macros(cxx, [*flags, *isa])) != own]
    if not builds:
        pytest.skip(f"this CPU runs no instruction set but the extension's ({own})")
    compile_all([[cxx, *flags, *isa, "-I", ROOT / "csrc", ROOT / "tests" / "cpp" / "gmm_isa.cpp",
                  ROOT / "csrc" / "cpu" / "gmm.cpp", ROOT / "csrc" / "cpu" / "runtime.cpp", "-o", tmp_path / name]
                 for name, isa in builds], timeout=900)
    cases = [(case, dtype) for case in CASES for dtype in (torch.float32, torch.float64)]
    with open(tmp_path / "in.bin", "wb") as f:
        for case, dtype in cases:
            kernel, B, D, K, n_steps, n_sub, mh = case
            np.array([dtype == torch.float64, B, D, K, KERNELS[kernel], n_steps, n_sub, mh, SEED, OFFSET, CHAIN0],
                     dtype=np.uint64).tofile(f)
            np.array([ALPHA, SIGMA2, DAMPING]).tofile(f)
            for t in inputs(case, dtype):
                t.numpy().tofile(f)
    for name, _ in builds:
        run = subprocess.run([tmp_path / name, tmp_path / "in.bin", tmp_path / "out.bin"], capture_output=True,
                             timeout=300)
        assert run.returncode == 0, run.stderr
        got, pos = np.fromfile(tmp_path / "out.bin", dtype=np.uint8), 0
        for case, dtype in cases:
            kernel, B, D, *_ = case
            itemsize = torch.finfo(dtype).bits // 8
            a = torch.from_numpy(got[pos:pos + B * D * itemsize].copy()).view(dtype).reshape(B, D)
            b = torch.from_numpy(got[pos + B * D * itemsize:pos + B * (D + 1) * itemsize].copy()).view(dtype)
            pos += B * (D + 1) * itemsize
            want_a, want_b = extension(case, *inputs(case, dtype))
            tol = dict(rtol=2e-4, atol=2e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
            msg = f"{name} build, {dtype}, case {case}"
            if kernel == "gmm_score":
                torch.testing.assert_close(a, want_a, **tol, msg=msg)
                torch.testing.assert_close(b, want_b, **tol, msg=msg)
                continue
            # a move whose log u lies within rounding of its log alpha may go the other way: at most one chain
            same = b == want_b
            assert int((~same).sum()) <= 1, msg
            torch.testing.assert_close(a[same], want_a[same], **tol, msg=msg)
        assert pos == got.size
