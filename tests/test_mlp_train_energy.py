"""The fused training pass of an energy network (ops.mlp_net_energy_lsq: the C++ op csrc/cpu/mlp_net.cpp and the
Triton one kernels/mlp_train.py): the denoising loss of the score s = −r/v + J_fᵀ r/√v, r = c − √v f, and its
gradient to every weight (a double backward) equal to autograd's on many shapes in float64 (and float32 to
rounding), gradcheck and the argument checks. train_score_mlp(parameterisation="energy") on it (the same parameters
as eager training after n steps) is tested with the score parameterisation's in tests/test_mlp_train.py."""
import pytest
import torch
from conftest import backend_device, bound_triton_programs, skip_unless_available, triton_gpu_with_two_programs
from test_mlp_train import layers

from fastsamp import backends, ops
from fastsamp.mlp_models import dsm_loss
from fastsamp.models import EnergyMLP

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=2e-4, atol=2e-5)}
# (B, D_in, H, O, L): D = O = 1, odd batches, odd hidden widths (not a multiple of the 16 / 8 lanes), more rows than
# a block (48; Triton: 32 under the interpreter, 16 compiled), L = 0..3, D_in = O (no time columns) and D_in > O, a
# wide output (the GEMM output layer), hidden 129 (Triton: three 64-column chunks)
SHAPES = [(1, 1, 1, 1, 0), (3, 1, 7, 1, 1), (5, 3, 16, 2, 2), (97, 34, 33, 2, 3), (50, 40, 129, 8, 1),
          (131, 45, 19, 40, 2), (7, 5, 9, 5, 3)]
BACKENDS = pytest.mark.parametrize("backend", ["cpp", "triton"])


@pytest.fixture
def cpp():
    skip_unless_available("cpp")


def on(device, ws, bs):
    """Copies of the layers on `device`, requiring grad."""
    return ([t.detach().to(device).requires_grad_(True) for t in ws],
            [t.detach().to(device).requires_grad_(True) for t in bs])


def constants(B, O, dtype, seed=1):
    """c, z (B, O) and v > 0, sigma (B,) as a denoising batch has them."""
    g = torch.Generator().manual_seed(seed)
    c, z = (torch.randn(B, O, generator=g, dtype=torch.float64).to(dtype) for _ in range(2))
    v, sigma = (torch.rand(B, generator=g, dtype=torch.float64).to(dtype) + 0.3 for _ in range(2))
    return c, v, sigma, z


def eager_net(x, ws, bs, activation):
    """The MLP in plain PyTorch (twice differentiable; ops.mlp_net's backward is first order)."""
    act = torch.nn.functional.silu if activation == "silu" else torch.nn.functional.gelu
    for w, b in zip(ws[:-1], bs[:-1]):
        x = act(torch.nn.functional.linear(x, w, b))
    return torch.nn.functional.linear(x, ws[-1], bs[-1])


def autograd_loss(x, ws, bs, c, v, sigma, z, activation):
    """The loss by autograd, s by create_graph=True (the eager EnergyMLP's way)."""
    x = x.detach().requires_grad_(True)
    f = eager_net(x, ws, bs, activation)
    r = c - v.sqrt()[:, None] * f
    (jr,) = torch.autograd.grad(f, x, r, create_graph=True)
    s = -r / v[:, None] + jr[:, : c.shape[1]] / v.sqrt()[:, None]
    return ((sigma[:, None] * s + z) ** 2).sum(1).mean()


@BACKENDS
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("activation", ["silu", "gelu"])
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_loss_and_gradient_equal_autograds_double_backward(op_device, backend, shape, activation, dtype):
    device = op_device
    B, D, H, O, L = shape
    ws, bs = layers(D, H, O, L, dtype)
    x = torch.randn(B, D, dtype=dtype)
    consts = constants(B, O, dtype)
    dws, dbs = on(device, ws, bs)
    loss = ops.mlp_net_energy_lsq(x.to(device), dws, dbs, *(t.to(device) for t in consts), activation=activation,
                                  backend=backend)
    assert type(loss.grad_fn).__name__ == "_MLPNetLsqBackward"
    ref = autograd_loss(x, ws, bs, *consts, activation)
    torch.testing.assert_close(loss.cpu(), ref, **TOL[dtype])
    got = torch.autograd.grad(1.5 * loss, dws + dbs)
    want = torch.autograd.grad(1.5 * ref, ws + bs)
    for k, (a, b) in enumerate(zip(got, want)):
        scale = b.abs().max().clamp(min=1.0)  # float32 sums over B rows: relative to the gradient's size
        torch.testing.assert_close(a.cpu() / scale, b / scale, **TOL[dtype], msg=f"parameter {k}")
    torch.testing.assert_close(ops.mlp_net_energy_lsq(x, ws, bs, *consts, activation=activation, backend="torch"),
                               ref, **TOL[dtype])


@pytest.mark.parametrize("activation", ["silu", "gelu"])
def test_triton_equals_the_float64_reference_and_the_cpp_op(activation, monkeypatch):
    """The Triton op in float32 against the float64 reference of the same (rounded) inputs, within a few times the
    C++ op's float32 error; in float64 equal to the C++ op to rounding. Hidden 150 (three chunks, the last
    partial), B = 70 (a partial last block, a program taking several blocks: on a GPU too, `bound_triton_programs`)."""
    skip_unless_available("triton")
    skip_unless_available("cpp")
    device = backend_device("triton")
    bound_triton_programs(monkeypatch, device)
    B, D, H, O, L = 70, 6, 150, 4, 2
    for dtype in (torch.float32, torch.float64):
        ws, bs = layers(D, H, O, L, dtype, seed=7)
        x, consts = torch.randn(B, D, dtype=torch.float64).to(dtype), constants(B, O, dtype, seed=8)
        ps, n = ws + bs, len(ws)
        dps = [t for part in on(device, ws, bs) for t in part]
        dconsts = [t.to(device) for t in consts]
        tri = torch.autograd.grad(ops.mlp_net_energy_lsq(x.to(device), dps[:n], dps[n:], *dconsts,
                                                         activation=activation, backend="triton"), dps)
        cpp = torch.autograd.grad(ops.mlp_net_energy_lsq(x, ws, bs, *consts, activation=activation, backend="cpp"), ps)
        p64 = [p.detach().double().requires_grad_(True) for p in ps]
        ref = torch.autograd.grad(ops.mlp_net_energy_lsq(x.double(), p64[:n], p64[n:], *(c.double() for c in consts),
                                                         activation=activation, backend="torch"), p64)
        for i, (a, c, r) in enumerate(zip(tri, cpp, ref)):
            a, c = a.cpu().double(), c.double()
            if dtype == torch.float64:
                torch.testing.assert_close(a, c, rtol=1e-11, atol=1e-11 * r.abs().max().item(), msg=f"parameter {i}")
            else:
                e_t, e_c = (a - r).abs().max().item(), (c - r).abs().max().item()
                assert e_t <= 4 * e_c + 1.2e-7 * r.abs().max().item(), f"parameter {i}: {e_t:.3e} vs C++ {e_c:.3e}"


def test_triton_op_twice_on_cuda_with_two_programs_gives_equal_bits(monkeypatch):
    """CUDA only: the op called twice on the same inputs, the grid bounded to 2 programs (13 row blocks of 16: each
    program loops over several, reusing its scratch and gradient row), gives torch.equal losses and gradients (a
    missing barrier between a program's blocks or layers would show as a run-to-run difference). Same kernel
    variant as test_triton_equals_the_float64_reference_and_the_cpp_op (float32, hidden 150, D_in 6)."""
    device = triton_gpu_with_two_programs(monkeypatch)
    B, D, H, O, L = 200, 6, 150, 4, 2
    ws, bs = on(device, *layers(D, H, O, L, torch.float32, seed=9))
    x, consts = torch.randn(B, D, device=device), [t.to(device) for t in constants(B, O, torch.float32, seed=10)]
    runs = []
    for _ in range(2):
        loss = ops.mlp_net_energy_lsq(x, ws, bs, *consts, backend="triton")
        runs.append([loss.detach(), *torch.autograd.grad(loss, ws + bs)])
    for i, (a, b) in enumerate(zip(*runs)):
        assert torch.equal(a, b), f"output {i} differs between two calls"


@pytest.mark.usefixtures("cpp")
def test_gradcheck_float64():
    for B, D, H, O, L in [(3, 2, 5, 2, 1), (1, 1, 3, 1, 0), (7, 4, 9, 3, 2)]:
        ws, bs = layers(D, H, O, L, torch.float64, seed=B)
        x, n = torch.randn(B, D, dtype=torch.float64), len(ws)
        consts = constants(B, O, torch.float64, seed=B)
        for activation in ("silu", "gelu"):
            def loss(*p, n=n, x=x, consts=consts, activation=activation):
                return ops.mlp_net_energy_lsq(x, p[:n], p[n:], *consts, activation=activation)
            assert torch.autograd.gradcheck(loss, (*ws, *bs))


@pytest.mark.usefixtures("cpp")
def test_several_threads_equal_one():
    ws, bs = layers(6, 64, 3, 2, torch.float64)
    x = torch.randn(1000, 6, dtype=torch.float64)
    consts = constants(1000, 3, torch.float64)
    one = torch.autograd.grad(ops.mlp_net_energy_lsq(x, ws, bs, *consts), ws + bs)
    torch.set_num_threads(2)  # the one_thread fixture restores it
    two = torch.autograd.grad(ops.mlp_net_energy_lsq(x, ws, bs, *consts), ws + bs)
    for a, b in zip(one, two):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@BACKENDS
def test_bad_inputs_name_the_argument(op_device, backend):
    device = op_device
    ws, bs = on(device, *layers(3, 8, 2, 1, torch.float32))
    x = torch.randn(4, 3, device=device)
    c, v, sigma, z = (t.to(device) for t in constants(4, 2, torch.float32))

    def call(*args, **kw):
        return ops.mlp_net_energy_lsq(*args, **kw, backend=backend)
    with pytest.raises(ValueError, match=r"c must have shape \(4, 2\)"):
        call(x, ws, bs, torch.zeros(4, 3, device=device), v, sigma, z)
    with pytest.raises(ValueError, match=r"v must have shape \(4,\)"):
        call(x, ws, bs, c, v[:, None], sigma, z)
    with pytest.raises(ValueError, match=r"sigma must have shape \(4,\)"):
        call(x, ws, bs, c, v, sigma[:3], z)
    with pytest.raises(ValueError, match=r"z must have shape \(4, 2\)"):
        call(x, ws, bs, c, v, sigma, z.T)
    with pytest.raises(TypeError, match="z must have dtype"):
        call(x, ws, bs, c, v, sigma, z.double())
    with pytest.raises(ValueError, match="v must be finite and > 0"):
        call(x, ws, bs, c, v - 1, sigma, z)
    with pytest.raises(ValueError, match="must not require grad"):
        call(x, ws, bs, c.clone().requires_grad_(True), v, sigma, z)
    with pytest.raises(ValueError, match=r"weights\[-1\].shape\[0\] <= x.shape\[1\]"):
        wide, wide_b = on(device, *layers(1, 8, 2, 1, torch.float32))  # O = 2 outputs of a 1-column input
        call(torch.randn(4, 1, device=device), wide, wide_b, c, v, sigma, z)
    with pytest.raises(ValueError, match="activation"):
        call(x, ws, bs, c, v, sigma, z, activation="relu")
    if backend == "triton":  # the input row in registers: "auto" runs the reference above the limit
        most = backends._load("triton")[0].MLP_NET_MAX_IN
        tall, tall_b = on(device, *layers(most + 1, 8, 2, 1, torch.float32))
        with pytest.raises(ValueError, match=f"mlp_net_energy_lsq supports D <= {most}, got D = {most + 1}"):
            call(torch.randn(4, most + 1, device=device), tall, tall_b, c, v, sigma, z)


@pytest.mark.usefixtures("cpp")
def test_fused_dsm_loss_equals_eager_for_an_energy_mlp():
    """dsm_loss(fused=True) of an EnergyMLP (ops.mlp_net_energy_lsq on its input rows [x_t, Fourier(t)], c = x_t − α m)
    equals the eager loss through the autograd score, gradients to every parameter too."""
    torch.manual_seed(0)
    net = EnergyMLP(3, hidden=20, n_freq=4, data_mean=torch.randn(3), data_var=1.4, dtype=torch.float64)
    x0, t, z = torch.randn(40, 3, dtype=torch.float64), torch.rand(40, 1, dtype=torch.float64), torch.randn(40, 3,
                                                                                                          dtype=torch.float64)
    params = list(net.parameters())
    fused, eager = dsm_loss(net, x0, t, z, fused=True), dsm_loss(net, x0, t, z)
    torch.testing.assert_close(fused, eager, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad(fused, params), torch.autograd.grad(eager, params)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.usefixtures("cpp")
def test_float32_gradient_sums_over_a_large_batch_are_as_accurate_as_pytorch():
    """B = 65536 rows (~1400 blocks of 48, two streams summed per block): the kernel's staged float32 gradient sums
    stay within a few times PyTorch's float32 error against the float64 gradients of the same inputs (plus one
    float32 epsilon of the gradient's scale), as mlp_net_lsq's do (tests/test_mlp_train.py)."""
    B, D, H, O, L = 65536, 6, 32, 4, 1
    ws, bs = layers(D, H, O, L, torch.float32, seed=3)
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(4))
    consts = constants(B, O, torch.float32, seed=5)
    ps, n = ws + bs, len(ws)
    fused = torch.autograd.grad(ops.mlp_net_energy_lsq(x, ws, bs, *consts), ps)
    torch32 = torch.autograd.grad(ops.mlp_net_energy_lsq(x, ws, bs, *consts, backend="torch"), ps)
    p64 = [p.detach().double().requires_grad_(True) for p in ps]
    ref = torch.autograd.grad(ops.mlp_net_energy_lsq(x.double(), p64[:n], p64[n:], *(c.double() for c in consts),
                                                     backend="torch"), p64)
    for i, (a, t, r) in enumerate(zip(fused, torch32, ref)):
        e_k, e_t = (a.double() - r).abs().max().item(), (t.double() - r).abs().max().item()
        assert e_k <= 4 * e_t + 1.2e-7 * r.abs().max().item(), f"parameter {i}: {e_k:.3e} vs torch {e_t:.3e}"
