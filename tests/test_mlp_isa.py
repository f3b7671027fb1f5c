"""The fused MLP engine on every x86 vector width this CPU runs, not only the extension's: its vectors are one
native register (64 bytes with AVX-512, 32 with AVX2, 16 with SSE2 or NEON), so the register tiles, the padded
layouts and the horizontal sums differ between builds, and the default `-march=native` build tests one of them
(every other test of the engine). tests/cpp/mlp_isa.cpp (mlp_net, its backward and the energy parameterisation's
loss gradient mlp_net_energy_lsq: forward, tangent and double-backward tiles; csrc/cpu/mlp_net.cpp) is built
with the extension's compiler and flags for each other width's instruction set this CPU runs and compared with the
PyTorch reference in float64 and float32; the width each build reports is checked against the instruction set it
targets, and the extension's own (`_C.build_info()["simd_bytes"]`) against its compiler flags."""
import platform
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compile_all, cpu_flags, defined_macros, extension_compiler

from fastsamp.ops import reference as ref
from fastsamp.ops.mlp import ACTIVATIONS

ROOT = Path(__file__).resolve().parents[1]
# the instruction sets (baseline x86-64 plus these -m flags: exactly the CPU flags checked in /proc/cpuinfo, so
# that a VM hiding another feature of an -march level cannot fault), the engine's vector bytes under them
ISAS = [((), 16), (("avx2", "fma"), 32), (("avx512f", "avx512bw", "avx512vl", "avx512dq"), 64)]
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-4, atol=1e-5)}
# (B, Din, H, O, L): row counts around the row tiles (3 .. 12) and blocks (48); hidden widths giving 1, 2, 3, 4
# vectors per tile at 4, 8 and 16 lanes and odd ones; inputs and outputs narrower and wider than one vector
SHAPES = [(1, 1, 1, 1, 0), (7, 3, 24, 2, 1), (13, 9, 12, 1, 2), (50, 20, 40, 9, 1), (97, 5, 64, 3, 2),
          (61, 34, 33, 20, 1)]


def compiler():
    """The extension's compiler and its flags without -march (each build here sets its own)."""
    cxx, flags = extension_compiler()
    return cxx, [f for f in flags if not f.startswith("-march=")]


def test_build_info_reports_the_vector_width_of_the_compiler_flags():
    """simd_bytes is the widest vector instruction set the extension's flags enable (what the engine computes on)."""
    cxx, flags = extension_compiler()
    from fastsamp import _C
    info = _C.build_info()
    macros = defined_macros(cxx, flags)
    want = 64 if "__AVX512F__" in macros else 32 if "__AVX__" in macros else 16
    assert info["simd_bytes"] == want


def cases(rng):
    """Random float64 networks and inputs (O(1) activations), one per shape, dtype and activation."""
    for B, Din, H, O, L in SHAPES:
        for dtype in (torch.float64, torch.float32):
            for act in ACTIVATIONS.values():
                widths = [(H, Din), (O, H)] + [(H, H)] * L  # packed: W_in, b_in, W_out, b_out, W_1, b_1, ...
                params = []
                for rows, cols in widths:
                    params += [2 * rng.standard_normal((rows, cols)) / cols ** 0.5, 0.5 * rng.standard_normal(rows)]
                x, g_out = rng.standard_normal((B, Din)), rng.standard_normal((B, O))
                # mlp_net_energy_lsq's c, v > 0, sigma, z (O <= Din in every shape)
                energy = [rng.standard_normal((B, O)), rng.uniform(0.1, 2.0, B), rng.uniform(0.1, 1.0, B),
                          rng.standard_normal((B, O))]
                yield ((B, Din, H, O, L, act), dtype,
                       [torch.from_numpy(a).to(dtype) for a in (x, *params, g_out, *energy)])


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the instruction sets are x86-64's")
def test_mlp_net_equals_the_reference_at_every_vector_width(tmp_path):
    cxx, flags = compiler()
    from fastsamp import _C
    have, native = cpu_flags(), _C.build_info()["simd_bytes"]  # the extension's own width: the other tests' one
    builds = [(["-march=x86-64"] + [f"-m{f}" for f in needs], width) for needs, width in ISAS
              if all(f in have for f in needs) and width != native]
    if not builds:
        pytest.skip(f"this CPU runs no instruction set with other vectors than the extension's {native} bytes")
    runtime = tmp_path / "runtime.o"
    compile_all([[cxx, *flags, "-march=x86-64", "-I", ROOT / "csrc", "-c", ROOT / "csrc" / "cpu" / "runtime.cpp",
                  "-o", runtime]]
                + [[cxx, *flags, *isa, "-I", ROOT / "csrc", "-c", ROOT / "tests" / "cpp" / "mlp_isa.cpp", "-o",
                    tmp_path / f"w{width}.o"] for isa, width in builds], timeout=900)

    rng = np.random.default_rng(7)
    all_cases = list(cases(rng))
    with open(tmp_path / "cases.bin", "wb") as f:
        for (B, Din, H, O, L, act), dtype, arrays in all_cases:
            np.array([0 if dtype == torch.float32 else 1, B, Din, H, O, L, act], dtype=np.int64).tofile(f)
            for a in arrays:
                a.numpy().tofile(f)
    for isa, width in builds:
        exe, march = tmp_path / f"w{width}", " ".join(isa)
        subprocess.run([cxx, *flags, *isa, tmp_path / f"w{width}.o", runtime, "-o", exe], check=True, timeout=300)
        run = subprocess.run([exe, tmp_path / "cases.bin", tmp_path / "out.bin"], capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, run.stdout
        assert int(run.stdout.split()[0]) == width, march
        got = np.fromfile(tmp_path / "out.bin", dtype=np.uint8)
        pos = 0
        for (B, Din, H, O, L, act), dtype, arrays in all_cases:
            x, *params, g_out, c, v, sigma, z = [a.double() for a in arrays]
            want_out = ref.mlp_net(x, params, act)
            want_gx, want_gp = ref.mlp_net_backward(x, params, act, g_out, True, None)
            want_loss, want_ep = ref.mlp_net_energy_lsq(x, params, act, c, v, sigma, z)
            np_dtype = np.float32 if dtype == torch.float32 else np.float64
            for name, want in ([("out", want_out), ("g_x", want_gx)] + [(f"g_params[{k}]", g) for k, g in
                                                                        enumerate(want_gp)]
                               + [("energy loss", want_loss)] + [(f"energy g_params[{k}]", g) for k, g in
                                                                 enumerate(want_ep)]):
                n = want.numel() * np.dtype(np_dtype).itemsize
                value = torch.from_numpy(got[pos:pos + n].copy().view(np_dtype)).reshape(want.shape)
                pos += n
                scale = want.abs().max().clamp(min=1.0)  # float32 sums over B rows: relative to the size
                torch.testing.assert_close(value.double() / scale, want / scale, **TOL[dtype],
                                           msg=f"{march} {dtype} act {act} (B, Din, H, O, L) "
                                               f"{(B, Din, H, O, L)} {name}")
        assert pos == got.size
