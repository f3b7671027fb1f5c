"""The Triton network engine (kernels/mlp.py: mlp_score, mlp_energy; kernels/moves.py: mlp_mala, mlp_hmc,
mlp_energy_mala, mlp_energy_hmc) against the float64 PyTorch reference: on a CPU-only machine under
TRITON_INTERPRET=1 (conftest), on a GPU compiled. Small sizes: the interpreter runs a python loop per program.
Chain counts are odd and not multiples of the block (64 chains under the interpreter, at most 32 compiled), so
every run has a partial last block."""
import os

import pytest
import torch
from conftest import assert_moves_match, backend_device, bound_triton_programs, interpreted, skip_unless_available
from test_mlp import _replace, mixture_score, net_fields, random_net, score_mlp, to

from fastsamp import backends, ops
from fastsamp.models import Product
from fastsamp.ops import _library, _table
from fastsamp.samplers import annealed_mcmc

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def device():
    skip_unless_available("triton")
    return backend_device("triton")


@pytest.fixture
def few_programs(device, monkeypatch):
    """On a GPU, a persistent grid of at most 2 programs, as under the interpreter (`bound_triton_programs`): at
    these batches (compiled: blocks of 16 chains) the device's bound (4 programs per multiprocessor) would give
    each block its own program, and no test would run a program's loop over more than one row block."""
    bound_triton_programs(monkeypatch, device)


def problem(D, arch, dtype, device, with_mixture):
    """The networks (one per (H, L, activation) of arch) and the optional mixture in dtype on device, and their
    float64 CPU copies for the reference."""
    nets64 = [random_net(D, H, L, 4, torch.float64, seed=10 * i + H + L, activation=act)
              for i, (H, L, act) in enumerate(arch)]
    mix64 = mixture_score(D, torch.float64) if with_mixture else None
    nets = [to(n, dtype, device) for n in nets64]
    mix = to(mix64, dtype, device) if with_mixture else None
    return nets, mix, nets64, mix64


def check_move(op, networks, x64, eps64, device, dtype, **kw):
    """The Triton move ops.<op> from the states x64 and step sizes eps64 (in dtype on device) against the float64
    reference move from the same ones (backend "torch", the same Philox draws): asserts they match
    (`assert_moves_match`) and returns both (x_new, rate). networks: `problem`'s (nets, mix, nets64, mix64)."""
    nets, mix, nets64, mix64 = networks
    move = getattr(ops, op)
    got = move(x64.to(dtype=dtype, device=device), nets, mixture=mix, step_size=eps64.to(dtype=dtype, device=device),
               backend="triton", **kw)
    want = move(x64, nets64, mixture=mix64, step_size=eps64, backend="torch", **kw)
    assert_moves_match(*got, *want, dtype, kw["mh"])
    return got, want


DTYPES = pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
# (B, D, [(hidden, hidden layers, activation)], mixture): D = 1, 2, 5; hidden 16/32/64 (and 7: padded); 1-3 layers
SCORE_CASES = [(37, 1, [(16, 1, "silu")], False), (101, 2, [(32, 2, "silu"), (64, 3, "gelu")], True),
               (65, 5, [(7, 3, "gelu")], True), (3, 2, [], True)]


@DTYPES
@pytest.mark.parametrize("B,D,arch,with_mixture", SCORE_CASES)
def test_mlp_score_matches_reference(device, dtype, B, D, arch, with_mixture):
    nets, mix, nets64, mix64 = problem(D, arch, dtype, device, with_mixture)
    x64 = torch.randn(B, D, dtype=torch.float64) * 2
    got = ops.mlp_score(x64.to(dtype=dtype, device=device), nets, mixture=mix, backend="triton")
    want = ops.mlp_score(x64, nets64, mixture=mix64, backend="torch")
    assert got.dtype == dtype and got.device.type == device.type
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.double().cpu(), want, **tol)


MOVE_CASES = [(37, 1, [(16, 1, "silu")], False), (101, 2, [(32, 2, "silu"), (16, 1, "gelu")], True),
              (65, 5, [(64, 3, "silu")], False)]


@DTYPES
@pytest.mark.parametrize("mh,n_trapezoid", [("score", 1), ("score", 3), ("none", 1)])
@pytest.mark.parametrize("B,D,arch,with_mixture", MOVE_CASES)
def test_mlp_mala_matches_reference(device, dtype, mh, n_trapezoid, B, D, arch, with_mixture):
    """The whole-move kernel reproduces the reference moves with the same Philox draws."""
    networks = problem(D, arch, dtype, device, with_mixture)
    nets, mix, _, _ = networks
    x64 = torch.randn(B, D, dtype=torch.float64)
    eps64 = torch.rand(B, dtype=torch.float64) * 0.2 + 0.05
    kw = dict(n_steps=5, n_trapezoid=n_trapezoid, seed=11, offset=2**32 + 3, chain_offset=5, mh=mh)
    (x_new, rate), _ = check_move("mlp_mala", networks, x64, eps64, device, dtype, **kw)
    if not interpreted("triton"):
        again = ops.mlp_mala(x64.to(dtype=dtype, device=device), nets, mixture=mix,
                             step_size=eps64.to(dtype=dtype, device=device), backend="triton", **kw)
        assert torch.equal(again[0], x_new) and torch.equal(again[1], rate)


@DTYPES
@pytest.mark.parametrize("mh,n_leapfrog,damping", [("score", 1, 0.0), ("score", 3, 0.8), ("none", 2, 0.8)])
@pytest.mark.parametrize("B,D,arch,with_mixture", MOVE_CASES)
def test_mlp_hmc_matches_reference(device, dtype, mh, n_leapfrog, damping, B, D, arch, with_mixture):
    networks = problem(D, arch, dtype, device, with_mixture)
    x64 = torch.randn(B, D, dtype=torch.float64)
    eps64 = torch.rand(B, dtype=torch.float64) * 0.2 + 0.05
    kw = dict(n_steps=4, n_leapfrog=n_leapfrog, seed=12, offset=7, chain_offset=3, mh=mh, damping=damping)
    check_move("mlp_hmc", networks, x64, eps64, device, dtype, **kw)


# ------------------------------------------------------------------ wide networks (the tiled path, HP > 128)

# (B, D, [(hidden, hidden layers, activation)], mixture): hidden 129 / 200 / 256 (with a narrow network in the same
# sum: it runs the tiled path too), D = 1 and odd; B > 2 blocks of the interpreter's 64 in one case (131: of the
# persistent grid's 2 programs, program 0 takes blocks 0 and 2, the last partial; on a GPU `few_programs` bounds the
# grid likewise); 0 to 2 hidden layers
WIDE_CASES = [(37, 1, [(129, 1, "silu")], False), (131, 3, [(200, 2, "gelu"), (16, 1, "silu")], True),
              (19, 1, [(256, 0, "silu")], True)]


def wide_problem(D, arch, dtype, device, with_mixture, energy):
    """`problem`'s networks as energy networks (energy) or score networks, with their float64 CPU copies."""
    nets, mix, nets64, mix64 = problem(D, arch, dtype, device, with_mixture)
    if energy:
        nets, nets64 = ([ops.EnergyNet(**net_fields(n)) for n in ns] for ns in (nets, nets64))
    return nets, mix, nets64, mix64


@pytest.mark.usefixtures("few_programs")
@DTYPES
@pytest.mark.parametrize("energy", [False, True], ids=["score", "energy"])
@pytest.mark.parametrize("B,D,arch,with_mixture", WIDE_CASES)
def test_wide_networks_match_reference(device, dtype, energy, B, D, arch, with_mixture):
    """mlp_score and mlp_energy (score and log p: forward and backward by 64-column chunks) at hidden 129-256."""
    nets, mix, nets64, mix64 = wide_problem(D, arch, dtype, device, with_mixture, energy)
    x64 = torch.randn(B, D, dtype=torch.float64) * 2
    op = ops.mlp_energy if energy else ops.mlp_score
    got = op(x64.to(dtype=dtype, device=device), nets, mixture=mix, backend="triton")
    want = op(x64, nets64, mixture=mix64, backend="torch")
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    for g, w in zip(got if energy else (got,), want if energy else (want,)):
        assert g.dtype == dtype and g.device.type == device.type
        torch.testing.assert_close(g.double().cpu(), w, **tol)


@pytest.mark.usefixtures("few_programs")
@DTYPES
@pytest.mark.parametrize("op,mh", [("mlp_mala", "score"), ("mlp_hmc", "score"), ("mlp_energy_mala", "energy"),
                                   ("mlp_energy_hmc", "energy"), ("mlp_energy_mala", "score")])
@pytest.mark.parametrize("B,D,arch,with_mixture", [WIDE_CASES[0], pytest.param(*WIDE_CASES[1], marks=pytest.mark.slow)],
                         ids=["H129", "H200"])
def test_wide_moves_match_reference(device, dtype, op, mh, B, D, arch, with_mixture):
    """The whole-move kernels on the tiled path reproduce the reference moves with the same Philox draws (the H200
    cases: 4-6 min under the interpreter on a loaded 2-core machine, -m slow; run on a GPU by gpu_run.sh)."""
    networks = wide_problem(D, arch, dtype, device, with_mixture, "energy" in op)
    gen = torch.Generator().manual_seed(B)
    x64 = torch.randn(B, D, dtype=torch.float64, generator=gen)
    eps64 = torch.rand(B, dtype=torch.float64, generator=gen) * 0.6 + 0.2
    kw = dict(n_steps=2, seed=11, offset=2**32 + 3, chain_offset=5, mh=mh,
              **(dict(n_leapfrog=2, damping=0.8) if "hmc" in op else dict(n_trapezoid=2)))
    _, (_, e_rate) = check_move(op, networks, x64, eps64, device, dtype, **kw)
    if "mala" in op:
        assert 0 < e_rate.mean() < 1  # a real test ran


def test_scratch_is_bounded_by_the_grid_not_the_batch(device):
    """With a scratch (energy networks, the tiled path) the grid is persistent: at a million chains the programs
    and their scratch are as many as the device's bound (2 programs under the interpreter, 4 per multiprocessor on
    a GPU), each [NZ, BLOCK_B, HP]; without one, one program per block."""
    kernels = backends._load("triton")[0]
    mlp = kernels.mlp
    for arch, energy, tiles in (([(200, 2, "silu")], True, 5), ([(200, 2, "silu")], False, 2),
                                ([(64, 2, "silu")], True, 3), ([(64, 2, "silu")], False, 0)):
        nets = wide_problem(1, arch, torch.float32, device, False, energy)[0]
        grids = []
        for B in (10**3, 10**6):
            args = ops.mlp._sum_args(torch.zeros(B, 1, device=device), nets, None, (ops.ScoreNet, ops.EnergyNet))
            eng = mlp._engine("mlp_energy", args[0], *args[1:4], *args[5:], energy=args[4])
            block_b, _, grid = mlp._blocks(B, 1, torch.float32)
            n_programs = eng.grid(grid[0], device)[0]
            zs = eng.arguments(args[0], n_programs, block_b)[5]
            assert eng.NZ == tiles and (zs is None) == (tiles == 0)
            if tiles:
                assert zs.numel() == n_programs * tiles * block_b * eng.HP
            grids.append(n_programs)
        bound = (mlp._INTERPRET_PROGRAMS if device.type == "cpu" else
                 mlp._PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count)
        if tiles:
            assert grids[1] == bound
        else:
            assert grids[1] == -(-10**6 // block_b)


def test_rows_are_independent_of_the_batch_and_seed_tensors_read_in_kernel(device):
    """Chain b of a run equals chain b of a run on a suffix with the matching chain offset; seed / offset /
    chain offset as one-element int64 tensors give the same moves as the ints; a NaN chain stays in its row."""
    nets, _, _, _ = problem(2, [(16, 2, "silu")], torch.float64, device, False)
    x = torch.randn(70, 2, dtype=torch.float64, device=device)
    x[7] = float("nan")
    kw = dict(step_size=0.1, n_steps=3, n_trapezoid=2, backend="triton")
    full, rate = ops.mlp_mala(x, nets, seed=3, offset=1, **kw)
    part, _ = ops.mlp_mala(x[40:], nets, seed=3, offset=1, chain_offset=40, **kw)
    assert torch.equal(full[40:], part)
    as_t = lambda v: torch.tensor([v], dtype=torch.int64, device=device)  # noqa: E731
    tens, _ = ops.mlp_mala(x[40:], nets, seed=as_t(3), offset=as_t(1), chain_offset=as_t(40), **kw)
    assert torch.equal(tens, part)
    assert torch.isnan(full[7]).all() and torch.isfinite(full[torch.arange(70, device=device) != 7]).all()
    assert rate[7] == 0


def test_limits_are_named(device):
    """Above the engine's limits the Triton functions raise (backend="auto" runs the reference there)."""
    kernels = backends._load("triton")[0]
    MLP_MAX_D, MLP_MAX_HIDDEN = kernels.MLP_MAX_D, kernels.MLP_MAX_HIDDEN
    wide = problem(2, [(MLP_MAX_HIDDEN + 1, 1, "silu")], torch.float64, device, False)[0]
    x = torch.randn(3, 2, dtype=torch.float64, device=device)
    with pytest.raises(ValueError, match="hidden widths H <= "):
        ops.mlp_score(x, wide, backend="triton")
    tall = problem(MLP_MAX_D + 1, [(16, 1, "silu")], torch.float64, device, False)[0]
    with pytest.raises(ValueError, match=f"D <= {MLP_MAX_D}"):
        ops.mlp_mala(torch.randn(3, MLP_MAX_D + 1, dtype=torch.float64, device=device), tall, step_size=0.1,
                     n_steps=1, backend="triton")
    assert ops.mlp.has_fused_kernel("cpu", MLP_MAX_D + 1, MLP_MAX_HIDDEN + 1)  # the C++ engine: any size
    assert not ops.mlp.has_fused_kernel("meta")


def test_size_limits_are_declared_once_for_every_network_op(device):
    """The Triton engine's D and hidden-width limits, declared beside _auto_kernel._MAX_D_ATTR for all six network ops:
    the registered ops' kernels run the reference above them (`_above_limits`), and has_fused_kernel reads them for
    both network kinds (the CUDA choice resolves without a GPU)."""
    kernels = backends._load("triton")[0]
    most_d, most_h = kernels.MLP_MAX_D, kernels.MLP_MAX_HIDDEN
    kinds = (ops.ScoreNet, ops.EnergyNet)
    for name in ("mlp_score", "mlp_mala", "mlp_hmc", "mlp_energy", "mlp_energy_mala", "mlp_energy_hmc"):
        fn = getattr(kernels, name)
        assert (_library.max_d(fn, name), _library.max_hidden(fn, name)) == (most_d, most_h)
        above = _library._above_limits(fn, _table.OPS[name])
        for D, H, want in ((most_d, most_h, False), (2, most_h + 1, True), (most_d + 1, 16, True)):
            nets = [random_net(D, 16, 1, 2, torch.float64, seed=0), random_net(D, H, 0, 2, torch.float64, seed=1)]
            args = ops.mlp._sum_args(torch.zeros(1, D, dtype=torch.float64), nets, None, kinds)
            assert above(args) == want, (name, D, H)
    for net_type in kinds:
        assert ops.mlp.has_fused_kernel("cuda", most_d, most_h, net_type)
        assert not ops.mlp.has_fused_kernel("cuda", most_d, most_h + 1, net_type)
        assert not ops.mlp.has_fused_kernel("cuda", most_d + 1, most_h, net_type)


@pytest.mark.parametrize("change", [
    lambda n: _replace(n, weights=(n.weights[0][:, :-1],) + n.weights[1:]),
    lambda n: _replace(n, weights=n.weights[:1] + (n.weights[1][:-1],) + n.weights[2:]),
    lambda n: _replace(n, biases=n.biases[:-1]),
    lambda n: _replace(n, weights=(n.weights[0].float(),) + n.weights[1:]),
    lambda n: _replace(n, data_mean=n.data_mean[:1]),
    lambda n: _replace(n, activation="relu"),
    lambda n: _replace(n, data_var=-1.0),
    lambda n: "not a net",
], ids=["w0", "hidden", "biases", "dtype", "mean", "activation", "data_var", "type"])
def test_bad_inputs_raise_what_the_cpu_backend_raises(device, change):
    net = to(random_net(2, 8, 2, 3, torch.float64, seed=0), torch.float64, device)
    x = torch.randn(4, 2, dtype=torch.float64, device=device)
    cpu = "cpp" if ops.mlp.has_fused_kernel("cpu") else "torch"
    calls = [lambda b, xx, nn: ops.mlp_score(xx, [nn], backend=b),
             lambda b, xx, nn: ops.mlp_mala(xx, [nn], step_size=0.1, n_steps=1, backend=b),
             lambda b, xx, nn: ops.mlp_hmc(xx, [nn], step_size=0.1, n_steps=1, backend=b)]
    for call in calls:
        with pytest.raises((TypeError, ValueError)) as on_cpu:
            call(cpu, x.cpu(), change(to(net, torch.float64, "cpu")))
        with pytest.raises(type(on_cpu.value)) as on_triton:
            call("triton", x, change(net))
        assert str(on_triton.value) == str(on_cpu.value).replace("cpu", device.type)
    for bad, words in ((dict(mh="energy"), "mh"), (dict(n_trapezoid=0), "n_trapezoid"), (dict(step_size=-1.0), "step")):
        with pytest.raises(ValueError, match=words):
            ops.mlp_mala(x, net, **{"step_size": 0.1, "n_steps": 1, **bad}, backend="triton")


def test_annealed_mcmc_fused_path_on_the_triton_engine(device):
    """annealed_mcmc(backend="triton") runs the fused path on the Triton engine, equal to its generic path and
    to the C++ engine's fused run (same Philox draws)."""
    model = Product(*(score_mlp(2, h, seed=s, dtype=torch.float32).to(device) for s, h in ((1, 32), (2, 16))))
    kw = dict(n_levels=4, n_corrector_steps=2, n_trapezoid=2, step_size=0.05, seed=1, backend="triton", device=device)
    xf, sf = annealed_mcmc(model, 40, **kw)
    xg, sg = annealed_mcmc(model, 40, fused=False, **kw)
    assert sf.fused and not sg.fused
    torch.testing.assert_close(xf, xg, rtol=1e-3, atol=1e-3)
    if device.type == "cpu":
        xc, sc = annealed_mcmc(model, 40, **{**kw, "backend": "auto"})
        assert sc.fused
        torch.testing.assert_close(xf, xc, rtol=1e-3, atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (CUDA-resident ScoreMLPs)")
def test_annealed_mcmc_fuses_cuda_score_mlps():
    """On CUDA, backend="auto" runs the Triton engine (the reference above its limits) and annealed_mcmc takes the
    fused path for a Product of CUDA-resident ScoreMLPs, equal to the generic path with the same draws."""
    skip_unless_available("triton")
    model = Product(score_mlp(2, 32, seed=1, dtype=torch.float32).cuda(), score_mlp(2, 16, seed=2,
                                                                                   dtype=torch.float32).cuda())
    assert all(m.fusable() for m in model.models) and ops.mlp.has_fused_kernel("cuda")
    kw = dict(n_levels=6, n_corrector_steps=3, n_trapezoid=2, step_size=0.05, seed=1, device="cuda")
    xf, sf = annealed_mcmc(model, 200, **kw)
    xg, sg = annealed_mcmc(model, 200, fused=False, **kw)
    assert sf.fused and not sg.fused and xf.is_cuda
    close = ((xf - xg).abs() <= 1e-3 * (1 + xg.abs())).all(1)
    assert close.float().mean() >= 0.99
    _, sh = annealed_mcmc(model, 64, corrector="hmc", n_levels=3, n_corrector_steps=1, device="cuda")
    assert sh.fused
    wide_h = backends._load("triton")[0].MLP_MAX_HIDDEN + 1
    wide = problem(2, [(wide_h, 1, "silu")], torch.float32, torch.device("cuda"), False)[0]
    x = torch.randn(5, 2, device="cuda")
    torch.testing.assert_close(ops.mlp_score(x, wide), ops.mlp_score(x, wide, backend="torch"))
    assert not score_mlp(2, wide_h, seed=3, dtype=torch.float32).cuda().fusable()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (CUDA-resident EnergyMLPs)")
def test_annealed_mcmc_fuses_cuda_energy_mlps():
    """On CUDA, backend="auto" runs the Triton energy kernels and annealed_mcmc takes the fused path with exact
    energy MH for Products of CUDA-resident EnergyMLPs (with a ScoreMLP under score MH), equal to the generic path."""
    skip_unless_available("triton")
    from test_energy_mlp import energy_mlp
    a, b = energy_mlp(1, dtype=torch.float32).cuda(), energy_mlp(2, dtype=torch.float32, hidden=8).cuda()
    assert a.fusable() and ops.mlp.has_fused_kernel("cuda", 2, 16, ops.EnergyNet)
    kw = dict(n_levels=6, n_corrector_steps=3, step_size=0.05, seed=1, device="cuda")
    for model, mh in ((Product(a, b), "energy"), (Product(a, score_mlp(2, 8, seed=3, dtype=torch.float32).cuda()),
                                                  "score")):
        xf, sf = annealed_mcmc(model, 200, mh=mh, **kw)
        xg, sg = annealed_mcmc(model, 200, mh=mh, fused=False, **kw)
        assert sf.fused and not sg.fused and xf.is_cuda
        close = ((xf - xg).abs() <= 1e-3 * (1 + xg.abs())).all(1)
        assert close.float().mean() >= 0.99
    _, sh = annealed_mcmc(Product(a, b), 64, corrector="hmc", mh="energy", n_levels=3, n_corrector_steps=1,
                          device="cuda")
    assert sh.fused


# opt-in, 9-11 min on the loaded 2-core dev machine (~2.5 min of CPU time), measured: FASTSAMP_TRITON_AOT=1
# TRITON_INTERPRET=0 pytest tests/test_mlp_triton.py -k sm90
@pytest.mark.skipif(os.environ.get("FASTSAMP_TRITON_AOT") != "1" or backends.triton_interpreted(),
                    reason="opt-in (FASTSAMP_TRITON_AOT=1 TRITON_INTERPRET=0): compiles for sm_90 without a GPU")
@pytest.mark.parametrize("dtype", ["fp32", "fp64"])
@pytest.mark.parametrize("tiled", [False, True], ids=["registers", "tiled"])
def test_kernels_compile_for_sm90_within_shared_memory(dtype, tiled):
    """The compiled path on a machine without a GPU: every mlp kernel and the move kernels on each evaluator compile
    for sm_90 (triton.compile with the wheel's ptxas) at the largest hidden tile of each path (the register path's
    MLP_REG_HIDDEN, the tiled path's MLP_MAX_HIDDEN; the ops of one MLP, kernels/mlp_train.py, at both, their widest
    rows),
    using at most the 227 KB of shared memory an H100/H200 block may."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernels = backends._load("triton")[0]
    mlp, moves = kernels.mlp, kernels.moves
    hp = mlp.MLP_MAX_HIDDEN if tiled else mlp.MLP_REG_HIDDEN.value
    nets = dict(EVAL=mlp.EVAL_SCORE_NETS.value, HAS_MIX=True, BLOCK_J=4)
    energy = dict(nets, EVAL=mlp.EVAL_ENERGY_NETS.value)
    cases = [(moves._mala_kernel, dict(MH_MODE=0, RNG_T=0, **nets)),
             (moves._hmc_kernel, dict(MH_MODE=0, RNG_T=7, **nets)),
             (moves._mala_kernel, dict(MH_MODE=1, RNG_T=0, **energy)),
             (moves._hmc_kernel, dict(MH_MODE=1, RNG_T=7, **energy)),
             (mlp._net_sum_kernel, dict(EVAL=mlp.EVAL_SCORE_NETS.value, HAS_MIX=True, BLOCK_D=16)),
             (mlp._net_sum_kernel, dict(EVAL=mlp.EVAL_ENERGY_NETS.value, HAS_MIX=True, BLOCK_D=16)),
             (mlp._net_prep_kernel, dict(BLOCK_F=16, BLOCK_D=2)),
             (kernels.mlp_train._energy_lsq_kernel, dict(BLOCK_D=kernels.MLP_NET_MAX_IN)),
             (kernels.mlp_train._net_kernel, dict(BLOCK_D=kernels.MLP_NET_MAX_IN)),
             (kernels.mlp_train._net_grad_kernel, dict(BLOCK_D=kernels.MLP_NET_MAX_IN, LSQ=False, WANT_GX=True)),
             (kernels.mlp_train._net_grad_kernel, dict(BLOCK_D=kernels.MLP_NET_MAX_IN, LSQ=True, WANT_GX=False))]
    if not tiled:  # the mixture evaluator does not depend on HP
        cases += [(moves._mala_kernel, dict(MH_MODE=1, RNG_T=0, EVAL=mlp.EVAL_MIXTURE.value, HAS_MIX=True, BLOCK_J=1)),
                  (moves._hmc_kernel, dict(MH_MODE=0, RNG_T=0, EVAL=mlp.EVAL_MIXTURE.value, HAS_MIX=True, BLOCK_J=1))]
    shared = {}
    for fn, consts in cases:
        consts = {"HP": hp, "BLOCK_B": 16, "IDX64": False, **consts}
        consts = {p.name: consts[p.name] for p in fn.params if p.is_constexpr}

        def typ(p):
            if p.name.endswith("_ptr"):
                return "*i64" if p.name == "meta_ptr" else f"*{dtype}"
            return "*i64" if p.name.endswith("_p") else p.annotation or "i32"
        signature = {p.name: "constexpr" if p.is_constexpr else typ(p) for p in fn.params}
        k = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                           options=dict(num_warps=4, num_stages=mlp._STAGES))
        shared[fn.__name__, consts.get("EVAL"), consts.get("MH_MODE"), consts.get("LSQ")] = k.metadata.shared
    print(f"shared memory per kernel, {dtype}, HP {hp}:", shared)
    assert max(shared.values()) <= 227 * 1024, shared


# ------------------------------------------------------------------ energy networks (mlp_energy, _mala, _hmc)

def energy_problem(D, kinds, dtype, device, with_mixture):
    """Networks of the given kinds ("e" energy, "s" score: widths 24 / 16 / 8, 2 / 1 / 0 hidden layers, the first
    GELU) and the optional mixture in dtype on device, and their float64 CPU copies."""
    nets64 = [(ops.EnergyNet if k == "e" else ops.ScoreNet)(**net_fields(random_net(
        D, (24, 16, 8)[i], (2, 1, 0)[i], 4, torch.float64, seed=3 + i, activation=("gelu", "silu", "silu")[i])))
        for i, k in enumerate(kinds)]
    mix64 = mixture_score(D, torch.float64) if with_mixture else None
    return ([to(n, dtype, device) for n in nets64], to(mix64, dtype, device) if with_mixture else None, nets64,
            mix64)


# (B, D, kinds, mixture): D = 1, 2, 5; B not a multiple of the block; one case with no network (the mixture alone)
ENERGY_CASES = [(37, 1, "e", False), (101, 2, "ee", True), (65, 5, "e", True), (3, 2, "", True)]


@pytest.mark.usefixtures("few_programs")
@DTYPES
@pytest.mark.parametrize("B,D,kinds,with_mixture", ENERGY_CASES)
def test_mlp_energy_matches_reference(device, dtype, B, D, kinds, with_mixture):
    """Score and log-density of the Triton energy kernel (forward and backward through the layers in the kernel)
    equal the autograd reference."""
    nets, mix, nets64, mix64 = energy_problem(D, kinds, dtype, device, with_mixture)
    x64 = torch.randn(B, D, dtype=torch.float64) * 2
    score, logp = ops.mlp_energy(x64.to(dtype=dtype, device=device), nets, mixture=mix, backend="triton")
    want_s, want_lp = ops.mlp_energy(x64, nets64, mixture=mix64, backend="torch")
    assert score.dtype == logp.dtype == dtype and score.device.type == device.type
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(score.double().cpu(), want_s, **tol)
    torch.testing.assert_close(logp.double().cpu(), want_lp, **tol)


ENERGY_MOVE_SHAPES = pytest.mark.parametrize("B,D,with_mixture", [(37, 1, False), (101, 2, True)])


@DTYPES
@pytest.mark.parametrize("kinds,mh,n_trapezoid", [("ee", "energy", 1), ("es", "score", 2), ("e", "none", 1)])
@ENERGY_MOVE_SHAPES
def test_mlp_energy_mala_matches_reference(device, dtype, kinds, mh, n_trapezoid, B, D, with_mixture):
    networks = energy_problem(D, kinds, dtype, device, with_mixture)
    x64 = torch.randn(B, D, dtype=torch.float64)
    eps64 = torch.rand(B, dtype=torch.float64) * 0.2 + 0.05
    kw = dict(n_steps=4, n_trapezoid=n_trapezoid, seed=11, offset=2**32 + 3, chain_offset=5, mh=mh)
    _, (_, e_rate) = check_move("mlp_energy_mala", networks, x64, eps64, device, dtype, **kw)
    if mh != "none":
        assert 0 < e_rate.mean() < 1  # a real test ran


@DTYPES
@pytest.mark.parametrize("kinds,mh,damping", [("ee", "energy", 0.0), ("e", "energy", 0.8), ("es", "score", 0.0),
                                              ("e", "none", 0.8)])
@ENERGY_MOVE_SHAPES
def test_mlp_energy_hmc_matches_reference(device, dtype, kinds, mh, damping, B, D, with_mixture):
    networks = energy_problem(D, kinds, dtype, device, with_mixture)
    x64 = torch.randn(B, D, dtype=torch.float64)
    eps64 = torch.rand(B, dtype=torch.float64) * 0.2 + 0.05
    kw = dict(n_steps=3, n_leapfrog=2, seed=12, offset=7, chain_offset=3, mh=mh, damping=damping)
    check_move("mlp_energy_hmc", networks, x64, eps64, device, dtype, **kw)


def test_energy_kernels_refuse_what_the_cpu_kernels_refuse(device):
    """Called directly (the registered op's signature), the Triton energy kernels refuse a log-density of a score
    network and an energy test on the score ops, as the C++ ones do."""
    kernels = backends._load("triton")[0]
    nets, _, _, _ = energy_problem(2, "se", torch.float64, device, False)
    x = torch.randn(5, 2, dtype=torch.float64, device=device)
    args = ops.mlp._sum_args(x, nets, None, (ops.ScoreNet, ops.EnergyNet))
    eps = torch.full((5,), 0.1, dtype=torch.float64, device=device)
    with pytest.raises(ValueError, match="network 0 is a score network"):
        kernels.mlp_energy(*args)
    with pytest.raises(ValueError, match="network 0 is a score network"):
        kernels.mlp_energy_mala(*args, eps, 1, 1, 0, 0, 0, 1)
    score_args = args[:4] + args[5:]
    with pytest.raises(ValueError, match="a score network has no energy"):
        kernels.mlp_mala(*score_args, eps, 1, 1, 0, 0, 0, 1)
