"""The mh family (mala_propose, line_points, score_mh_accept): every compiled backend against the
float64 PyTorch reference on fresh random inputs."""
import platform
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import (
    COMPILED,
    accept_inputs,
    assert_accept,
    assert_close,
    backend_device,
    compile_all,
    cpu_flags,
    defined_macros,
    eps64,
    extension_compiler,
    f64,
    rand,
    skip_unless_available,
    skip_unless_op,
    step_sizes,
)

from fastsamp import ops
from fastsamp.ops import reference as ref


@pytest.mark.parametrize("per_chain", [False, True], ids=["scalar_eps", "chain_eps"])
@pytest.mark.parametrize("noise_src", ["tensor", "philox"])
def test_mala_propose(backend, dtype, shape, per_chain, noise_src):
    name, device = backend
    B, D = shape
    skip_unless_op(name, "mala_propose")
    x, s, xi = (rand(B, D, dtype=dtype, device=device) for _ in range(3))
    eps = step_sizes(per_chain, B, dtype, device)
    kw = {"noise": xi} if noise_src == "tensor" else {"seed": 99, "offset": 3}
    out = ops.mala_propose(x, s, eps, backend=name, **kw)
    kw64 = {"noise": f64(xi)[0]} if noise_src == "tensor" else {"seed": 99, "offset": 3}
    expect = ops.mala_propose(*f64(x, s), eps64(eps, B), backend="torch", **kw64)
    assert_close(out, expect, dtype, scale=10, name="x_prop")


@pytest.mark.parametrize("D", [1, 3, 4, 8, 12, 16, 20, 33])
def test_mala_propose_paths_agree_bit_for_bit(backend, dtype, D):
    """One backend's mala_propose gives the same bits whichever path a call takes: the in-kernel draw (on the CPU
    fused into the pass where D % 4 == 0, by chunks of rows otherwise), the same normals given as `noise` (into a
    fresh or a misaligned output), one chain alone (a scalar tail) and within a batch of vectors; per-chain step
    sizes whose lanes span rows."""
    name, device = backend
    skip_unless_op(name, "mala_propose")
    B = 1001
    x, s = (rand(B, D, dtype=dtype, device=device) for _ in range(2))
    eps = step_sizes(True, B, dtype, device)
    drawn = ops.mala_propose(x, s, eps, seed=7, offset=3, chain_offset=5, backend=name)
    xi = ops.normal(7, 3, B, D, dtype=dtype, device=device, chain_offset=5, backend=name)
    assert torch.equal(drawn, ops.mala_propose(x, s, eps, noise=xi, backend=name))
    misaligned = torch.empty(B * D + 1, dtype=dtype, device=device)[1:].view(B, D)
    assert torch.equal(drawn, ops.mala_propose(x, s, eps, noise=xi, out=misaligned, backend=name))
    r = B // 2
    alone = ops.mala_propose(x[r:r + 1], s[r:r + 1], eps[r:r + 1], seed=7, offset=3, chain_offset=5 + r,
                             backend=name)
    assert torch.equal(alone[0], drawn[r])


@pytest.mark.parametrize("n", [1, 2, 5])
def test_line_points(backend, dtype, shape, n):
    name, device = backend
    B, D = shape
    skip_unless_op(name, "line_points")
    x, xp = (rand(B, D, dtype=dtype, device=device) for _ in range(2))
    pts = ops.line_points(x, xp, n, backend=name)
    assert pts.shape == (n - 1, B, D)
    assert_close(pts, ref.line_points(*f64(x, xp), n), dtype, name="points")


@pytest.mark.parametrize("n_interior", [0, 1, 3])
@pytest.mark.parametrize("per_chain", [False, True], ids=["scalar_eps", "chain_eps"])
def test_score_mh_accept(backend, dtype, shape, n_interior, per_chain):
    name, device = backend
    B, D = shape
    x, xp, s, sp, interior, u = accept_inputs(B, D, dtype, device, n_interior)
    eps = step_sizes(per_chain, B, dtype, device)
    out = ops.score_mh_accept(x, xp, s, sp, eps, u, interior_scores=interior, backend=name)
    expect = ref.score_mh_accept(*f64(x, xp, s, sp), eps64(eps, B), *f64(u, interior), 0, 0, 0)
    assert_accept(out, expect, u, dtype, D)


@pytest.mark.parametrize("per_chain", [False, True], ids=["scalar_eps", "per_chain_eps"])
def test_energy_mh_accept(backend, dtype, shape, per_chain):
    """The exact-energy MALA test on every compiled backend against the float64 reference: x, score and logp of the
    kept side, the decision and log α (NaN in a row rejects it and stays in that row's log α)."""
    name, device = backend
    B, D = shape
    skip_unless_op(name, "energy_mh_accept")
    x, xp, s, sp, _, u = accept_inputs(B, D, dtype, device, 0)
    logp, logp_p = (rand(B, dtype=dtype, device=device) for _ in range(2))
    if B > 2:
        logp_p[1] = float("nan")
    eps = step_sizes(per_chain, B, dtype, device)
    x_new, s_new, logp_new, acc, log_alpha = ops.energy_mh_accept(x, xp, s, sp, logp, logp_p, eps, u, backend=name)
    e_x, e_s, e_logp, e_acc, e_la = ref.energy_mh_accept(*f64(x, xp, s, sp, logp, logp_p), eps64(eps, B), *f64(u),
                                                         0, 0, 0)
    assert_accept((x_new, s_new, acc, log_alpha), (e_x, e_s, e_acc, e_la), u, dtype, D)
    kept = torch.where(acc.cpu(), logp_p.cpu(), logp.cpu())
    assert torch.equal(logp_new.cpu(), kept) and logp_new.dtype == dtype
    if B > 2:
        assert not acc[1] and torch.isnan(log_alpha[1])


@pytest.mark.parametrize("n_interior", [1, 3])
@pytest.mark.parametrize("draw", [False, True], ids=["u", "seed"])
def test_score_mh_accept_reads_the_interior_sets_after_score_prop_rows(backend, dtype, shape, n_interior, draw):
    """score_prop as the (n, B, D) stack, s(x') then the interior score sets (a model's output on the batch
    [x'; line_points] viewed as (n, B, D), interior_scores None): the bits of the sets given apart, close to the
    float64 reference (which takes the backend's (n·B, D) rows)."""
    name, device = backend
    B, D = shape
    x, xp, s, sp, interior, u = accept_inputs(B, D, dtype, device, n_interior)
    eps = step_sizes(True, B, dtype, device)
    stack = torch.cat([sp[None], interior])
    rows = stack.view(-1, D)
    kw = {"seed": 5, "offset": 2**40 + 3, "chain_offset": 7} if draw else {"u": u}
    out = ops.score_mh_accept(x, xp, s, stack, eps, backend=name, **kw)
    apart = ops.score_mh_accept(x, xp, s, sp, eps, interior_scores=interior, backend=name, **kw)
    for a, b in zip(out, apart):
        assert torch.equal(a, b)
    if draw:  # the kernels' draw: ops.uniform's bits
        u = ops.uniform(5, 2**40 + 3, B, chain_offset=7, dtype=dtype, device=device)
    expect = ref.score_mh_accept(*f64(x, xp, s, rows), eps64(eps, B), f64(u)[0], None, 0, 0, 0)
    assert_accept(out, expect, u, dtype, D)


def test_score_mh_accept_rows_form_checks():
    """The public op's score_prop is (B, D) exactly or an explicit (n, B, D) stack: a 2-D (n·B, D) (e.g. [s(x); s(x')]
    by mistake), a stack of the wrong B or D, an empty stack, or the interior sets given twice raise."""
    x, xp, s, sp, interior, u = accept_inputs(4, 3, torch.float64, "cpu", 2)
    with pytest.raises(ValueError, match=r"score_prop must have shape \(4, 3\), got \(6, 3\)"):
        ops.score_mh_accept(x, xp, s, torch.zeros(6, 3, dtype=torch.float64), 0.1, u)
    with pytest.raises(ValueError, match=r"score_prop must have shape \(4, 3\), got \(8, 3\)"):
        ops.score_mh_accept(x, xp, s, torch.cat([s, sp]), 0.1, u)
    stack = torch.cat([sp[None], interior])
    with pytest.raises(ValueError, match=r"score_prop must have shape \(4, 3\), got \(12, 3\)"):
        ops.score_mh_accept(x, xp, s, stack.view(-1, 3), 0.1, u)
    with pytest.raises(ValueError, match="interior_scores is given"):
        ops.score_mh_accept(x, xp, s, stack, 0.1, u, interior_scores=interior)
    with pytest.raises(ValueError, match=r"score_prop must have shape \(3, 4, 3\), got \(3, 2, 6\)"):
        ops.score_mh_accept(x, xp, s, stack.view(3, 2, 6), 0.1, u)
    with pytest.raises(ValueError, match=r"score_prop.shape\[0\] must be >= 1"):
        ops.score_mh_accept(x, xp, s, stack[:0], 0.1, u)
    one = accept_inputs(1, 3, torch.float64, "cpu", 2)  # B = 1: any (k, D) was once read as k score sets
    with pytest.raises(ValueError, match=r"score_prop must have shape \(1, 3\), got \(3, 3\)"):
        ops.score_mh_accept(*one[:3], torch.cat([one[3], one[4][:, 0]]), 0.1, one[5])
    apart = ops.score_mh_accept(x, xp, s, sp, 0.1, u)  # n = 1: the (1, B, D) stack is s(x') alone
    for a, b in zip(ops.score_mh_accept(x, xp, s, sp[None], 0.1, u), apart):
        assert torch.equal(a, b)


def test_hand_built_score_mh_checks_the_models_rows():
    """A hand-built kernel (the public ops) whose unwrapped model returns one (B, D) score set for the (n·B, D) batch
    of x' and the interior points raises naming the batch (it once ran as n = 1); a right model runs."""
    from fastsamp.samplers.kernels import Langevin, PhiloxKey, ScoreMH

    class OneSet:
        dim = 3

        def score(self, x, t):
            return -x[:4]

    class Right(OneSet):
        def score(self, x, t):
            return -x

    x = torch.randn(4, 3, dtype=torch.float64)
    state = Langevin(Right(), 0.5, torch.full((4,), 0.1, dtype=torch.float64), ScoreMH(3)).init(x)
    kernel = Langevin(OneSet(), 0.5, torch.full((4,), 0.1, dtype=torch.float64), ScoreMH(3))
    with pytest.raises(ValueError, match=r"batch of x' and the n - 1 = 2 interior points must have that shape, got "
                                         r"\(4, 3\)"):
        kernel.step(state, PhiloxKey(1, 0, 0))
    right = Langevin(Right(), 0.5, torch.full((4,), 0.1, dtype=torch.float64), ScoreMH(3))
    assert right.step(state, PhiloxKey(1, 0, 0))[0].x.shape == (4, 3)


def test_score_mh_accept_rows_form_registered():
    """The registered op takes the rows form too: opcheck (schema, fake, autograd registration) and the
    backend function's bits."""
    x, xp, s, sp, interior, u = accept_inputs(5, 3, torch.float64, "cpu", 2)
    rows = torch.cat([sp[None], interior]).view(-1, 3)
    eps = torch.full((5,), 0.1, dtype=torch.float64)
    args = (x, xp, s, rows, eps, u, None, 0, 0, 0)
    torch.library.opcheck(torch.ops.fastsamp.score_mh_accept, args)
    got = torch.ops.fastsamp.score_mh_accept(*args)
    want = ops.score_mh_accept(x, xp, s, sp, eps, u, interior_scores=interior)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.parametrize("D", [1, 2, 3, 4, 8, 16])
def test_score_mh_accept_cpp_rows_are_independent_bits(dtype, D):
    """The C++ kernel takes rows as SIMD lanes in blocks (16 float32 / 8 float64; whole blocks by
    transposes or gathers, the tail by masked gathers): each row's outputs are the bits of that row
    alone, wherever it falls in a block. Non-finite rows stay in their own rows."""
    skip_unless_available("cpp")
    B = 37
    x, xp, s, sp, interior, u = accept_inputs(B, D, dtype, "cpu", 2)
    x[1, 0], sp[2, -1], xp[3, -1] = float("nan"), float("inf"), float("nan")
    eps = torch.rand(B, dtype=dtype) * 0.5 + 0.01
    out = ops.score_mh_accept(x, xp, s, sp, eps, u, interior_scores=interior, backend="cpp")
    for b in (0, 1, 2, 3, 7, 15, 16, 17, 31, 32, 36):
        row = ops.score_mh_accept(x[b:b + 1], xp[b:b + 1], s[b:b + 1], sp[b:b + 1], eps[b:b + 1], u[b:b + 1],
                                  interior_scores=interior[:, b:b + 1].contiguous(), backend="cpp")
        for a, r in zip(out, row):
            assert torch.equal(a[b:b + 1].nan_to_num(7.0), r.nan_to_num(7.0)), b

# csrc/cpu/row_lanes.h's FASTSAMP_MH_ROW_LANES conditions: (name, the -m flags beyond baseline x86-64 that define
# one form of the row lanes; exactly the CPU flags checked in /proc/cpuinfo)
ROW_LANE_ISAS = [("AVX2", ("avx2", "fma")), ("AVX-512", ("avx512f", "avx512bw", "avx512vl", "avx512dq"))]


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the row lanes are x86-64's")
@pytest.mark.parametrize("isa,needs", ROW_LANE_ISAS, ids=[name for name, _ in ROW_LANE_ISAS])
def test_score_mh_accept_row_lanes_are_the_row_form_bits(tmp_path, isa, needs):
    """At D = 1, 2, 4, 8 (and float32's 16 where the lanes load whole blocks by transposes) the C++ kernel takes rows
    as SIMD lanes (AVX-512 or AVX2 with FMA), whose sums must run in the row form's order: same bits (compared at
    D = 16 too). The row form is not reachable from Python at those D, so tests/cpp/mh_rows_vs_lanes.cpp includes
    csrc/cpu/mh.cpp and compares the two on random cases (their count is printed), built with the extension's
    compiler and flags for its own form and, for the other form where this CPU runs it, with -march=x86-64 and that
    form's flags (on an AVX-512 CPU both, so that CI exercises the AVX2 lanes too)."""
    cxx, ext_flags = extension_compiler()
    macros = defined_macros(cxx, ext_flags)
    own = [name for name, flags in ROW_LANE_ISAS if all(f"__{f.upper()}__" in macros for f in flags)]
    if own and own[-1] == isa:  # the extension's own form (the last that its macros define): its own flags
        flags = ext_flags
    else:
        missing = [f for f in needs if f not in cpu_flags()]
        if missing:
            pytest.skip(f"this CPU has no {isa} ({', '.join(missing)})")
        flags = [f for f in ext_flags if not f.startswith("-march=")] + ["-march=x86-64"] + [f"-m{f}" for f in needs]
    root = Path(__file__).resolve().parents[1]
    sources = [root / "tests" / "cpp" / "mh_rows_vs_lanes.cpp", root / "csrc" / "cpu" / "runtime.cpp"]
    objects = [tmp_path / (src.stem + ".o") for src in sources]
    compile_all([cxx, *flags, "-I", root / "csrc", "-c", src, "-o", obj] for src, obj in zip(sources, objects))
    exe = tmp_path / "mh_rows_vs_lanes"
    subprocess.run([cxx, *flags, *objects, "-o", exe], check=True, timeout=600)
    run = subprocess.run([exe], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout
    assert f"{isa} row lanes" in run.stdout, run.stdout


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the row lanes are x86-64's")
def test_avx512_row_lanes_move_the_right_values_under_emulation(tmp_path):
    """The AVX-512 row lanes' transposes, masked gathers and blend copies (every compile-time D of the kernels, and
    D = 3), on any x86-64 CPU: tests/cpp/row_lanes_avx512_emulated.cpp runs them on SIMDe's emulated _mm512
    intrinsics (Debian's libsimde-dev, which .ci/run installs), built at -march=x86-64 with the extension's compiler,
    and checks every element moved. So an AVX2-only machine still tests the AVX-512 data movement."""
    cxx, ext_flags = extension_compiler()
    include = next((d for d in (Path("/usr/include"), Path("/usr/local/include")) if (d / "simde").is_dir()), None)
    if include is None:
        pytest.skip("needs SIMDe's headers (apt-get install libsimde-dev)")
    root = Path(__file__).resolve().parents[1]
    # (-Wno-psabi: GCC's note on passing SIMDe's 64-byte-aligned structs by value)
    flags = [f for f in ext_flags if not f.startswith(("-march=", "-mprefer-vector-width"))] + ["-march=x86-64",
                                                                                                 "-Wno-psabi"]
    exe = tmp_path / "row_lanes_avx512_emulated"
    subprocess.run([cxx, *flags, "-I", root / "csrc", "-I", include, root / "tests" / "cpp" /
                    "row_lanes_avx512_emulated.cpp", "-o", exe], check=True, timeout=600)
    run = subprocess.run([exe], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout
    assert run.stdout.count(" 0 mismatches") == 12, run.stdout


def test_step_size_values_are_read_on_every_call():
    """With validation on, a step-size tensor's values are checked on every call: writes the version counter
    does not see (through .data or a NumPy view) are caught too."""
    x, s = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    eps = torch.full((5,), 0.1, dtype=torch.float64)
    ops.mala_propose(x, s, eps, seed=1)
    eps.data[2] = float("nan")
    with pytest.raises(ValueError, match="step_size must be finite and > 0"):
        ops.mala_propose(x, s, eps, seed=1)
    eps.data[2] = 0.1
    ops.score_mh_accept(x, x, s, s, eps, seed=1)
    eps.numpy()[1] = -1.0
    with pytest.raises(ValueError, match="step_size must be finite and > 0"):
        ops.score_mh_accept(x, x, s, s, eps, seed=1)


OUT_SHAPES = [(1, 1), (3, 2), (257, 1)]  # odd B, D = 1


@pytest.mark.parametrize("B,D", OUT_SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("name", ("torch",) + COMPILED)
def test_out_views_of_one_batch(name, dtype, B, D):
    """mala_propose and line_points write into `out`, here the proposal's and the points' views of one
    (n·B, D) batch (the generic MALA move's): returned as `out`, the bits of the fresh results, the rows
    around untouched."""
    if name != "torch":
        skip_unless_available(name)
        skip_unless_op(name, "mala_propose", "line_points")
    device = backend_device(name)
    x, s = (rand(B, D, dtype=dtype, device=device) for _ in range(2))
    n, sentinel = 3, 7.0
    batch = torch.full(((n + 1) * B, D), sentinel, dtype=dtype, device=device)  # a row block past the points
    prop, points = batch[:B], batch[B:n * B].view(n - 1, B, D)
    assert ops.mala_propose(x, s, 0.1, seed=5, offset=2, out=prop, backend=name) is prop
    assert torch.equal(prop, ops.mala_propose(x, s, 0.1, seed=5, offset=2, backend=name))
    assert ops.line_points(x, prop, n, out=points, backend=name) is points
    assert torch.equal(points, ops.line_points(x, prop, n, backend=name))
    assert (batch[n * B:] == sentinel).all()
    assert ops.mala_propose(x, s, 0.1, seed=5, offset=2, out=x, backend=name) is x  # in place
    assert torch.equal(x, prop)


@pytest.mark.parametrize("name", ["torch", "cpp", "triton"])
def test_out_is_checked_like_reverse_sde_steps(name):
    """A wrong shape, dtype or device, a non-contiguous out or one overlapping an input: a clear error."""
    if name != "torch":
        skip_unless_available(name)
    x, s = torch.randn(5, 2), torch.randn(5, 2)
    buf = torch.zeros(20, 2)
    for bad, err, match in ((buf[:4], ValueError, r"out must have shape \(5, 2\)"),
                            (buf[:5].double(), TypeError, "out must have dtype"),
                            (buf[:10:2], ValueError, "out must be a contiguous"),
                            (buf, ValueError, "out must have shape")):
        with pytest.raises(err, match=match):
            ops.mala_propose(x, s, 0.1, seed=1, out=bad, backend=name)
    with pytest.raises(ValueError, match="out partially overlaps x"):
        ops.mala_propose(buf[1:6], s, 0.1, seed=1, out=buf[:5], backend=name)
    xp = buf[:5]
    with pytest.raises(ValueError, match=r"out must have shape \(2, 5, 2\)"):
        ops.line_points(x, xp, 3, out=buf[5:10], backend=name)
    with pytest.raises(ValueError, match="out overlaps x_prop"):  # even exactly: plane 1 lies past x_prop
        ops.line_points(x, xp, 3, out=buf[:10].view(2, 5, 2), backend=name)
    with pytest.raises(ValueError, match="out overlaps x_prop"):  # partially
        ops.line_points(x, xp, 3, out=buf[2:12].view(2, 5, 2), backend=name)
    with pytest.raises(TypeError, match="out must have dtype"):
        ops.line_points(x, xp, 3, out=torch.empty(2, 5, 2, dtype=torch.float64), backend=name)


@pytest.mark.parametrize("checked", [True, False], ids=["checked_run", "hand_built"])
@pytest.mark.parametrize("n_trapezoid", [2, 3])
def test_generic_mala_states_outlive_the_moves_batch(n_trapezoid, checked):
    """The generic MALA move writes x' and the points into one batch per run: a state kept from an earlier
    move is not a view of it (the next move leaves it unchanged), and a NaN chain stays in its chain."""
    from fastsamp.protocol import CountingModel
    from fastsamp.samplers.kernels import Langevin, PhiloxKey, ScoreMH, checked_kernel

    class Gaussian:
        dim = 2

        def score(self, x, t):
            return -x * (1.0 + 0.1 * t)

    model = CountingModel(Gaussian())
    x = torch.randn(7, 2, dtype=torch.float64)
    x[3] = float("nan")
    kernel = Langevin(model, 0.5, torch.full((7,), 0.2, dtype=torch.float64), ScoreMH(n_trapezoid))
    key = PhiloxKey(1, 0, 0)
    if checked:  # the ops' kernels called directly; hand-built: the public ops
        kernel, x, _, key = checked_kernel(kernel, x, None, key, 4)
    states = [kernel.init(x)]
    for m in range(3):
        states.append(kernel.step(states[-1], key.move(m))[0])
    kept = [(st.x.clone(), st.score.clone()) for st in states]
    kernel.step(states[-1], key.move(3))
    for st, (xk, sk) in zip(states, kept):
        assert torch.equal(st.x.nan_to_num(), xk.nan_to_num()) and torch.equal(st.score.nan_to_num(), sk.nan_to_num())
    assert states[-1].x[3].isnan().all() and states[-1].x[[0, 1, 2, 4, 5, 6]].isfinite().all()


def test_score_mh_accept_writes_into_given_outputs(backend, dtype, shape):
    """x_out / score_out receive x_new and score_new: the fresh call's bits, the given tensors returned."""
    name, device = backend
    B, D = shape
    x, xp, s, sp, interior, u = accept_inputs(B, D, dtype, device, 2)
    eps = step_sizes(True, B, dtype, device)
    fresh = ops.score_mh_accept(x, xp, s, sp, eps, u, interior_scores=interior, backend=name)
    x_out, score_out = torch.full_like(x, 7.0), torch.full_like(x, 7.0)
    got = ops.score_mh_accept(x, xp, s, sp, eps, u, interior_scores=interior, x_out=x_out, score_out=score_out,
                              backend=name)
    assert got[0] is x_out and got[1] is score_out
    for a, b in zip(got, fresh):
        assert torch.equal(a, b)


def test_score_mh_accept_outputs_are_checked():
    x, xp, s, sp, interior, u = accept_inputs(4, 3, torch.float64, "cpu", 2)
    buf = torch.empty(2, 4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="x_out overlaps x_prop"):
        ops.score_mh_accept(x, xp, s, sp, 0.1, u, x_out=xp)
    with pytest.raises(ValueError, match="score_out overlaps x_out"):
        ops.score_mh_accept(x, xp, s, sp, 0.1, u, x_out=buf[0], score_out=buf.view(-1)[6:18].view(4, 3))
    with pytest.raises(ValueError, match="score_out overlaps interior_scores"):
        ops.score_mh_accept(x, xp, s, sp, 0.1, u, interior_scores=interior, score_out=interior[1])
    with pytest.raises(ValueError, match=r"x_out must have shape \(4, 3\)"):
        ops.score_mh_accept(x, xp, s, sp, 0.1, u, x_out=buf)
    with pytest.raises(TypeError, match="score_out must have dtype"):
        ops.score_mh_accept(x, xp, s, sp, 0.1, u, score_out=torch.empty(4, 3))
    with pytest.raises(ValueError, match="x_out must be a contiguous"):
        ops.score_mh_accept(x, xp, s, sp, 0.1, u, x_out=torch.empty(3, 4, dtype=torch.float64).t())
    with pytest.raises(ValueError, match="x_out requires grad"):
        ops.score_mh_accept(x, xp, s, sp, 0.1, u, x_out=torch.zeros(4, 3, dtype=torch.float64, requires_grad=True))


@pytest.mark.parametrize("n_trapezoid", [1, 3])
def test_reused_accept_outputs_are_the_fresh_moves_bits(n_trapezoid):
    """A checked kernel whose ScoreMH reuses the accept's outputs (annealed_mcmc's, mcmc's) writes each move's
    state into the buffer pair that does not hold the current one: the moves of fresh outputs, bit for bit, a
    NaN chain staying in its chain; a hand-built kernel keeps fresh outputs."""
    from fastsamp.protocol import CountingModel
    from fastsamp.samplers.kernels import Langevin, PhiloxKey, ScoreMH, checked_kernel

    class Gaussian:
        dim = 2

        def score(self, x, t):
            return -x * (1.0 + 0.1 * t)

    x = torch.randn(7, 2, dtype=torch.float64)
    x[3] = float("nan")
    runs = []
    for reuse in (False, True):
        kernel = Langevin(CountingModel(Gaussian()), 0.5, torch.full((7,), 0.2, dtype=torch.float64),
                          ScoreMH(n_trapezoid, reuse_outputs=reuse))
        kernel, x0, _, key = checked_kernel(kernel, x, None, PhiloxKey(1, 0, 0), 5)
        state, moves = kernel.init(x0), []
        for m in range(5):
            new = kernel.step(state, key.move(m))[0]
            assert new.x.data_ptr() not in (state.x.data_ptr(), state.score.data_ptr())
            state = new
            moves.append((state.x.clone(), state.score.clone()))
        runs.append(moves)
    for (xa, sa), (xb, sb) in zip(*runs):
        assert torch.equal(xa.nan_to_num(), xb.nan_to_num()) and torch.equal(sa.nan_to_num(), sb.nan_to_num())
    assert runs[1][-1][0][3].isnan().all() and runs[1][-1][0][[0, 1, 2, 4, 5, 6]].isfinite().all()
    hand = Langevin(CountingModel(Gaussian()), 0.5, torch.full((7,), 0.2, dtype=torch.float64),
                    ScoreMH(n_trapezoid, reuse_outputs=True))
    assert hand.mh.accept_outputs(hand, hand.init(x), (x,)) == {}
