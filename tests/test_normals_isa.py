"""The in-kernel normals on every x86 instruction set this CPU runs, not only the extension's: GroupNormals
(csrc/cpu/normals.h) has an AVX-512 path, an AVX2 one (Philox in 256-bit lanes, Box–Muller on 32-byte vectors) and
the lane loops below, and the default build tests one of them. tests/cpp/normals_isa.cpp is built with the
extension's compiler and flags for each of them and its draws compared with the extension's `ops.normal`: bit for
bit where both use the vector Box–Muller with FMA (AVX2 + FMA, AVX-512: the same formulas), within a few ulp of
log/sin/cos otherwise (the lane loops' scalar functions)."""
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
# (seed, offset, chain0, rows, D): D = 1, odd, a multiple of 4, wide; rows not a multiple of 16; 64-bit keys
CASES = [(0, 0, 0, 1, 1), (2**40 + 3, 2**33 + 1, 5, 37, 3), (2**64 - 1, 2**63 + 5, 2**32 - 40, 19, 8),
         (12345, 6, 0, 33, 161)]


def vector_path(macros):
    return "AVX-512" if "__AVX512F__" in macros else "AVX2" if "__AVX2__" in macros and "__FMA__" in macros else None


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the instruction sets are x86-64's")
def test_normals_equal_the_extensions_on_every_instruction_set(tmp_path):
    cxx, ext_flags = extension_compiler()
    flags = [f for f in ext_flags if not f.startswith("-march=")]
    have = cpu_flags()
    builds = [(name, ["-march=x86-64"] + [f"-m{f}" for f in needs]) for name, needs in ISAS
              if all(f in have for f in needs)]
    ext_path = vector_path(defined_macros(cxx, ext_flags))
    compile_all([[cxx, *flags, *isa, "-I", ROOT / "csrc", ROOT / "tests" / "cpp" / "normals_isa.cpp",
                  ROOT / "csrc" / "cpu" / "runtime.cpp", "-o", tmp_path / name.replace(" ", "_")]
                 for name, isa in builds], timeout=900)
    args = [str(v) for case in CASES for v in case]
    for name, isa in builds:
        run = subprocess.run([tmp_path / name.replace(" ", "_"), tmp_path / "out.bin", *args], capture_output=True,
                             timeout=300)
        assert run.returncode == 0, run.stderr
        got, pos = np.fromfile(tmp_path / "out.bin", dtype=np.uint8), 0
        exact = vector_path(defined_macros(cxx, [*flags, *isa])) is not None and ext_path is not None
        for seed, offset, chain0, rows, D in CASES:
            for dtype, np_dtype in ((torch.float32, np.float32), (torch.float64, np.float64)):
                n = rows * D * np.dtype(np_dtype).itemsize
                value = torch.from_numpy(got[pos:pos + n].copy().view(np_dtype)).reshape(rows, D)
                pos += n
                want = ops.normal(seed, offset, rows, D, dtype, chain_offset=chain0, backend="cpp")
                msg = f"{name} build, {dtype}, case {(seed, offset, chain0, rows, D)}"
                if exact:
                    assert torch.equal(value, want), msg
                else:
                    eps = torch.finfo(dtype).eps  # (values near 0: sin and cos err by an ulp of 1, not of the value)
                    torch.testing.assert_close(value, want, rtol=4 * eps, atol=4 * eps, msg=msg)
        assert pos == got.size
