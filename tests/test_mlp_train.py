"""The training pass of the fused MLP engine (ops.mlp_net and ops.mlp_net_lsq: the C++ ops csrc/cpu/mlp_net.cpp and
the Triton ones kernels/mlp_train.py): forward and backward (every weight, bias and the input) and the
least-squares loss with its gradient equal to the PyTorch reference on many shapes, gradcheck in float64, the
argument checks, and train_score_mlp on it: the same parameters as eager training after n steps."""
import pytest
import torch
from conftest import backend_device, skip_unless_available, triton_gpu_with_two_programs

from fastsamp import backends, ops
from fastsamp.models import EnergyMLP, GaussianMixture, ScoreMLP, train_score_mlp
from fastsamp.ops import _library, _table, reference

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-4, atol=1e-5)}
# (B, D_in, H, O, L): one row and one input, odd batches, hidden widths that are not a multiple of the tile
# (16 float32 / 8 float64 lanes with AVX-512, half that with AVX2) or of the row blocks (48), no hidden layer, a
# wide output (the GEMM output layer);
# inputs one vector wide and a multiple of 4 vectors (the input gradient's GEMM, mlp::input_layer_vjp)
SHAPES = [(1, 1, 1, 1, 0), (3, 2, 7, 1, 1), (5, 1, 16, 2, 2), (97, 34, 33, 2, 2), (50, 40, 128, 8, 3),
          (131, 9, 130, 40, 1), (61, 16, 33, 5, 2), (61, 64, 33, 5, 2)]


BACKENDS = pytest.mark.parametrize("backend", ["cpp", "triton"])


@pytest.fixture(autouse=True)
def cpp(request):
    """The C++ backend ("auto" on the CPU), which every test but the Triton variants of BACKENDS runs."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is None or callspec.params.get("backend") != "triton":
        skip_unless_available("cpp")


def layers(D, H, O, L, dtype, seed=0):
    """Random weights [W_0 (H, D), W_1 .. W_L (H, H), W_out (O, H)] and biases, O(1) activations, requiring grad."""
    g = torch.Generator().manual_seed(seed)
    widths = [(H, D)] + [(H, H)] * L + [(O, H)]
    ws = [(2 * torch.randn(*w, generator=g, dtype=torch.float64) / w[1] ** 0.5).to(dtype) for w in widths]
    bs = [(0.5 * torch.randn(w[0], generator=g, dtype=torch.float64)).to(dtype) for w in widths]
    return [t.requires_grad_(True) for t in ws], [t.requires_grad_(True) for t in bs]


def on(device, *tensors):
    """Copies of the tensors on `device`, each requiring grad as its original does."""
    return [t.detach().to(device).requires_grad_(t.requires_grad) for t in tensors]


@BACKENDS
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("activation", ["silu", "gelu"])
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_forward_and_backward_equal_the_reference(op_device, backend, shape, activation, dtype):
    B, D, H, O, L = shape
    ws, bs = layers(D, H, O, L, dtype)
    x = torch.randn(B, D, dtype=dtype, requires_grad=True)
    g = torch.randn(B, O, dtype=dtype)
    dx, dg, *dps = on(op_device, x, g, *ws, *bs)
    out = ops.mlp_net(dx, dps[:len(ws)], dps[len(ws):], activation=activation, backend=backend)
    ref = ops.mlp_net(x, ws, bs, activation=activation, backend="torch")
    assert type(out.grad_fn).__name__ == "_MLPNetBackward"
    torch.testing.assert_close(out.cpu(), ref, **TOL[dtype])
    got = torch.autograd.grad(out, [dx, *dps], dg)
    want = torch.autograd.grad(ref, [x, *ws, *bs], g)
    for name, a, b in zip(["x"] + [f"W{k}" for k in range(len(ws))] + [f"b{k}" for k in range(len(bs))], got, want):
        scale = b.abs().max().clamp(min=1.0)  # float32 sums over B rows: relative to the gradient's size
        torch.testing.assert_close(a.cpu() / scale, b / scale, **TOL[dtype], msg=name)


@BACKENDS
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_lsq_loss_and_gradient_equal_the_reference(op_device, backend, shape, dtype):
    B, D, H, O, L = shape
    ws, bs = layers(D, H, O, L, dtype)
    x, c, k = torch.randn(B, D, dtype=dtype), torch.randn(B, O, dtype=dtype), torch.rand(B, dtype=dtype) + 0.5
    dx, dc, dk, *dps = on(op_device, x, c, k, *ws, *bs)
    loss = ops.mlp_net_lsq(dx, dps[:len(ws)], dps[len(ws):], dc, dk, backend=backend)
    ref = ((c + k[:, None] * ops.mlp_net(x, ws, bs, backend="torch")) ** 2).sum(1).mean()
    torch.testing.assert_close(loss.cpu(), ref, **TOL[dtype])
    for a, b in zip(torch.autograd.grad(2.5 * loss, dps), torch.autograd.grad(2.5 * ref, ws + bs)):
        scale = b.abs().max().clamp(min=1.0)
        torch.testing.assert_close(a.cpu() / scale, b / scale, **TOL[dtype])
    torch.testing.assert_close(ops.mlp_net_lsq(x, ws, bs, c, k, backend="torch"), ref, **TOL[dtype])


def test_gradcheck_float64():
    for B, D, H, O, L in [(3, 2, 5, 2, 1), (1, 1, 3, 1, 0), (7, 3, 9, 4, 2)]:
        ws, bs = layers(D, H, O, L, torch.float64, seed=B)
        x = torch.randn(B, D, dtype=torch.float64, requires_grad=True)
        n = len(ws)
        for activation in ("silu", "gelu"):
            def f(x_, *p, n=n, activation=activation):
                return ops.mlp_net(x_, p[:n], p[n:], activation=activation)
            assert torch.autograd.gradcheck(f, (x, *ws, *bs))
        c, k, x = torch.randn(B, O, dtype=torch.float64), torch.rand(B, dtype=torch.float64) + 0.5, x.detach()

        def lsq(*p, n=n, x=x, c=c, k=k):
            return ops.mlp_net_lsq(x, p[:n], p[n:], c, k)
        assert torch.autograd.gradcheck(lsq, (*ws, *bs))


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_a_second_derivative_through_mlp_net_raises(backend):
    """The backward is first order: after autograd.grad(create_graph=True) a second grad raises naming mlp_net,
    also to weights the first gradient depends on only through the saved tensors (W_0 here: the cotangent depends
    on W_out alone), where the first derivative itself is kept."""
    ws, bs = layers(3, 6, 2, 1, torch.float64)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = ops.mlp_net(x, ws, bs, backend=backend)
    g_x, = torch.autograd.grad(y, x, ws[-1].sum() * torch.ones_like(y), create_graph=True)
    torch.testing.assert_close(g_x, torch.autograd.grad(y, x, ws[-1].sum().detach() * torch.ones_like(y),
                                                        retain_graph=True)[0], rtol=0, atol=0)
    for wrt in (ws[0], ws[-1]):
        with pytest.raises(RuntimeError, match="mlp_net is differentiable once"):
            torch.autograd.grad(g_x.sum(), wrt, retain_graph=True)
    g_w = torch.autograd.grad(ops.mlp_net(x, ws, bs, backend=backend).sum(), ws[0], create_graph=True)[0]
    with pytest.raises(RuntimeError, match="mlp_net is differentiable once"):
        g_w.square().sum().backward()


@BACKENDS
def test_the_input_gradient_only_when_asked(op_device, backend):
    ws, bs = layers(3, 8, 2, 1, torch.float64)
    ws, bs = on(op_device, *ws), on(op_device, *bs)
    x = torch.randn(10, 3, dtype=torch.float64, device=op_device)  # no grad: the backward kernel skips W_0ᵀ δz_0
    ops.mlp_net(x, ws, bs, backend=backend).sum().backward()
    assert x.grad is None and all(p.grad is not None for p in ws + bs)
    params = [p.detach() for p in (ws[0], bs[0], ws[-1], bs[-1], ws[1], bs[1])]
    g_x, g_params = backends._load(backend)[0].mlp_net_backward(x, params, 1, torch.ones(10, 2, dtype=torch.float64,
                                                                                         device=op_device), False, None)
    assert g_x is None and [g.shape for g in g_params] == [p.shape for p in params]
    if backend == "cpp":  # the registered op, its optional output
        g_x, _ = torch.ops.fastsamp.mlp_net_backward(x, params, 1, torch.ones(10, 2, dtype=torch.float64), False,
                                                    None)
        assert g_x is None


def packed(ws, bs):
    """The layers in the backend ops' order [W_in, b_in, W_out, b_out, W_1, b_1, ...], detached."""
    order = [ws[0], bs[0], ws[-1], bs[-1]] + [t for k in range(1, len(ws) - 1) for t in (ws[k], bs[k])]
    return [t.detach() for t in order]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("activation", ["silu", "gelu"])
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_training_forward_keeps_the_activations(shape, activation, dtype):
    """mlp_net_train (C++): f(x) and the hidden activations u_k, act'(z_k) of every row equal the reference's; the
    backward from them gives the recomputing backward's gradients bit for bit, also from a tensor that starts off the
    vector alignment (copied in, not read in place)."""
    B, D, H, O, L = shape
    ws, bs = layers(D, H, O, L, dtype)
    params, act = packed(ws, bs), ops.mlp.ACTIVATIONS[activation]
    x, g = torch.randn(B, D, dtype=dtype), torch.randn(B, O, dtype=dtype)
    cpp = backends._load("cpp")[0]
    out, kept = cpp.mlp_net_train(x, params, act)
    want_out, want_kept = reference.mlp_net_train(x, params, act)
    assert kept.shape == (2 * (L + 1), B, H)
    torch.testing.assert_close(out, want_out, **TOL[dtype])
    torch.testing.assert_close(kept, want_kept, **TOL[dtype])
    torch.testing.assert_close(out, cpp.mlp_net(x, params, act), rtol=0, atol=0)
    recomputed = cpp.mlp_net_backward(x, params, act, g, True, None)
    shifted = torch.empty(kept.numel() + 1, dtype=dtype)[1:].view(kept.shape).copy_(kept)
    for given in (kept, shifted):
        g_x, g_params = cpp.mlp_net_backward(x, params, act, g, True, given)
        for a, b in zip([g_x, *g_params], [recomputed[0], *recomputed[1]], strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("backend,keeps", [("cpp", True), ("torch", False), ("triton", False)])
def test_mlp_net_saves_the_kept_activations_on_the_cpp_path(op_device, backend, keeps):
    """Differentiated, ops.mlp_net on the C++ kernels saves mlp_net_train's (2(L+1), B, H) activations for the backward
    (no forward recomputed there); the other backends save none."""
    ws, bs = layers(3, 20, 2, 2, torch.float32)
    ws, bs = on(op_device, *ws), on(op_device, *bs)
    out = ops.mlp_net(torch.randn(50, 3, device=op_device), ws, bs, backend=backend)
    saved = [tuple(t.shape) for t in out.grad_fn.saved_tensors if t is not None]
    assert ((6, 50, 20) in saved) == keeps
    out.sum().backward()
    assert all(p.grad is not None for p in ws + bs)


def test_the_kept_activations_are_capped(monkeypatch):
    """backend "auto" on CPU tensors keeps them up to ops.mlp.KEEP_ACTIVATIONS_BYTES, then recomputes: same bits."""
    ws, bs = layers(3, 20, 2, 2, torch.float32)
    x = torch.randn(50, 3)
    grads = []
    for cap, keeps in ((6 * 50 * 20 * 4, True), (6 * 50 * 20 * 4 - 1, False)):
        monkeypatch.setattr(ops.mlp, "KEEP_ACTIVATIONS_BYTES", cap)
        out = ops.mlp_net(x, ws, bs)
        assert ((6, 50, 20) in [tuple(t.shape) for t in out.grad_fn.saved_tensors if t is not None]) == keeps
        grads.append(torch.autograd.grad(out.sum(), ws + bs))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_several_threads_equal_one():
    ws, bs = layers(6, 64, 3, 2, torch.float64)
    x = torch.randn(1000, 6, dtype=torch.float64)
    one = torch.autograd.grad(ops.mlp_net(x, ws, bs).square().sum(), ws + bs)
    torch.set_num_threads(2)  # the one_thread fixture restores it
    two = torch.autograd.grad(ops.mlp_net(x, ws, bs).square().sum(), ws + bs)
    for a, b in zip(one, two):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_float32_gradient_sums_over_a_large_batch_are_as_accurate_as_pytorch():
    """B = 65536 rows are ~1400 blocks of 48 per thread: the kernel's per-thread sums are staged per kFlush blocks
    (mlp::StagedGrads), so its float32 gradients stay within a few times PyTorch's float32 error against the float64
    gradients of the same (float32-valued) inputs (plus one float32 epsilon of the gradient's scale); a single
    running sum over the blocks was up to ~19x PyTorch's error here (the biases)."""
    B, D, H, O, L = 65536, 4, 32, 4, 1
    ws, bs = layers(D, H, O, L, torch.float32, seed=3)
    g = torch.Generator().manual_seed(4)
    x, c = torch.randn(B, D, generator=g), torch.randn(B, O, generator=g)
    k = torch.rand(B, generator=g) + 0.5
    ps = ws + bs
    fused = torch.autograd.grad(ops.mlp_net_lsq(x, ws, bs, c, k), ps)
    torch32 = torch.autograd.grad(ops.mlp_net_lsq(x, ws, bs, c, k, backend="torch"), ps)
    p64 = [p.detach().double().requires_grad_(True) for p in ps]
    n = len(ws)
    ref = torch.autograd.grad(ops.mlp_net_lsq(x.double(), p64[:n], p64[n:], c.double(), k.double(), backend="torch"),
                              p64)
    for i, (a, t, r) in enumerate(zip(fused, torch32, ref)):
        e_k, e_t = (a.double() - r).abs().max().item(), (t.double() - r).abs().max().item()
        assert e_k <= 4 * e_t + 1.2e-7 * r.abs().max().item(), f"parameter {i}: {e_k:.3e} vs torch {e_t:.3e}"


def test_bad_inputs_name_the_argument():
    ws, bs = layers(3, 8, 2, 1, torch.float32)
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"weights\[1\]"):
        ops.mlp_net(x, [ws[0], torch.zeros(8, 7), ws[2]], bs)
    with pytest.raises(ValueError, match=r"weights\[0\]"):
        ops.mlp_net(torch.randn(4, 5), ws, bs)  # W_0 takes 3 inputs
    with pytest.raises(ValueError, match=r"biases\[2\]"):
        ops.mlp_net(x, ws, [bs[0], bs[1], torch.zeros(3)])
    with pytest.raises(TypeError, match=r"biases\[0\].*dtype"):
        ops.mlp_net(x, ws, [bs[0].double(), bs[1], bs[2]])
    with pytest.raises(ValueError, match="weights and biases"):
        ops.mlp_net(x, ws, bs[:2])
    with pytest.raises(ValueError, match=r"weights\[0\]"):
        ops.mlp_net(x, [], [])
    with pytest.raises(ValueError, match="activation"):
        ops.mlp_net(x, ws, bs, activation="relu")
    with pytest.raises(ValueError, match="x must have shape"):
        ops.mlp_net(torch.randn(3), ws, bs)
    with pytest.raises(ValueError, match=r"c must have shape \(4, 2\)"):
        ops.mlp_net_lsq(x, ws, bs, torch.zeros(4, 3), torch.ones(4))
    with pytest.raises(ValueError, match=r"k must have shape \(4,\)"):
        ops.mlp_net_lsq(x, ws, bs, torch.zeros(4, 2), torch.ones(4, 1))
    with pytest.raises(ValueError, match="must not require grad"):
        ops.mlp_net_lsq(x.requires_grad_(True), ws, bs, torch.zeros(4, 2), torch.ones(4))


def test_triton_ops_twice_on_cuda_with_two_programs_give_equal_bits(monkeypatch):
    """CUDA only: mlp_net with its backward (g_x too) and mlp_net_lsq called twice on the same inputs, the grid
    bounded to 2 programs (13 row blocks of 16: each program loops over several, reusing its scratch and gradient
    row), give torch.equal outputs and gradients (a missing barrier between a program's blocks or layers would show
    as a run-to-run difference). Hidden 150 (the tiled path, three chunks, the last partial)."""
    device = triton_gpu_with_two_programs(monkeypatch)
    B, D, H, O, L = 200, 6, 150, 4, 2
    ws, bs = layers(D, H, O, L, torch.float32, seed=9)
    x, c, k, g = on(device, torch.randn(B, D, requires_grad=True), torch.randn(B, O), torch.rand(B) + 0.5,
                    torch.randn(B, O))
    ps = on(device, *ws, *bs)
    runs = []
    for _ in range(2):
        out = ops.mlp_net(x, ps[:len(ws)], ps[len(ws):], backend="triton")
        loss = ops.mlp_net_lsq(x.detach(), ps[:len(ws)], ps[len(ws):], c, k, backend="triton")
        runs.append([out.detach(), *torch.autograd.grad(out, [x, *ps], g), loss.detach(),
                     *torch.autograd.grad(loss, ps)])
    for i, (a, b) in enumerate(zip(*runs)):
        assert torch.equal(a, b), f"output {i} differs between two calls"


def test_triton_gradient_rows_are_bounded(monkeypatch):
    """The gradient ops keep one gradient row (n_params) per program, at most GRAD_ROWS_BYTES of them: below one
    row's size a single program takes every row block, with the same gradients as the reference (B = 131: 5 blocks
    under the interpreter, 9 on a GPU)."""
    skip_unless_available("triton")
    mlp_train = backends._load("triton")[0].mlp_train
    device = backend_device("triton")
    ws, bs = layers(5, 40, 3, 1, torch.float64)
    x, c, k = torch.randn(131, 5, dtype=torch.float64), torch.randn(131, 3, dtype=torch.float64), torch.rand(
        131, dtype=torch.float64) + 0.5
    params = [p.detach() for p in (ws[0], bs[0], ws[-1], bs[-1], ws[1], bs[1])]
    n_bytes = sum(p.numel() for p in params) * 8
    monkeypatch.setattr(mlp_train, "GRAD_ROWS_BYTES", n_bytes)
    assert mlp_train._Net("mlp_net_lsq", x, params, grads=True).programs == 1
    assert mlp_train._Net("mlp_net", x, params).programs > 1  # the forward keeps its grid
    monkeypatch.setattr(mlp_train, "GRAD_ROWS_BYTES", 3 * n_bytes)
    assert mlp_train._Net("mlp_net_lsq", x, params, grads=True).programs == min(
        3, mlp_train.persistent_programs(5, x.device))
    monkeypatch.setattr(mlp_train, "GRAD_ROWS_BYTES", n_bytes - 1)  # under one row: still one program
    dx, dc, dk, *dps = on(device, x, c, k, *ws, *bs)
    loss = ops.mlp_net_lsq(dx, dps[:len(ws)], dps[len(ws):], dc, dk, backend="triton")
    ref = ops.mlp_net_lsq(x, ws, bs, c, k, backend="torch")
    torch.testing.assert_close(loss.cpu(), ref, **TOL[torch.float64])
    for a, b in zip(torch.autograd.grad(loss, dps), torch.autograd.grad(ref, ws + bs)):
        torch.testing.assert_close(a.cpu(), b, **TOL[torch.float64])


def test_triton_size_limits_and_the_reference_above_them():
    """The Triton ops of one MLP hold an input row and an output row in registers: D_in and O up to MLP_NET_MAX_IN
    (any hidden width). Above either, an explicit backend="triton" raises naming the op and the width, and the
    registered ops' kernels ("auto" on CUDA) run the reference (`_above_limits`, which reads both widths)."""
    skip_unless_available("triton")
    kernels = backends._load("triton")[0]
    most, device = kernels.MLP_NET_MAX_IN, backend_device("triton")
    for name in ("mlp_net", "mlp_net_backward", "mlp_net_lsq", "mlp_net_energy_lsq"):
        fn = getattr(kernels, name)
        assert _library.max_d(fn, name) == most
        above = _library._above_limits(fn, _table.OPS[name])
        for D, O, want in ((most, most, False), (most + 1, 1, True), (2, most + 1, True)):
            ws, bs = layers(D, 8, O, 1, torch.float32)
            params = [p.detach() for p in (ws[0], bs[0], ws[-1], bs[-1], ws[1], bs[1])]
            assert above((torch.zeros(1, D), params)) == want, (name, D, O)
    wide_w, wide_b = layers(2, 8, most + 1, 0, torch.float32)
    with pytest.raises(ValueError, match=f"triton mlp_net supports the output width O = weights\\[-1\\].shape\\[0\\] "
                                         f"<= {most}, got {most + 1}"):
        ops.mlp_net(torch.randn(3, 2, device=device), on(device, *wide_w), on(device, *wide_b), backend="triton")
    tall_w, tall_b = layers(most + 1, 8, 2, 0, torch.float32)
    with pytest.raises(ValueError, match=f"mlp_net_lsq supports D <= {most}, got D = {most + 1}"):
        ops.mlp_net_lsq(torch.randn(3, most + 1, device=device), on(device, *tall_w), on(device, *tall_b),
                        torch.zeros(3, 2, device=device), torch.ones(3, device=device), backend="triton")


DATA = GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 0.0]]), torch.log(torch.tensor([0.4, 0.6])),
                       torch.tensor([0.5, 0.3])).sample(1024, torch.Generator().manual_seed(1))


# train_score_mlp's parameterisations and the fused op each trains through
PARAMETERISATIONS = [("score", "mlp_net_lsq"), ("energy", "mlp_net_energy_lsq")]


@pytest.mark.parametrize("parameterisation", [p for p, _ in PARAMETERISATIONS])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_fused_training_equals_eager(dtype, parameterisation):
    """Same draws, same loss: the parameters after 25 Adam steps agree to rounding (float32: Adam's g/√v
    divides rounding-level gradient differences by small second moments, hence 1e-4 of the parameter scale)."""
    kw = dict(n_iters=25, batch_size=99, hidden=33, seed=3, dtype=dtype, parameterisation=parameterisation)
    fused, eager = train_score_mlp(DATA, fused=True, **kw), train_score_mlp(DATA, fused=False, **kw)
    assert isinstance(fused, EnergyMLP if parameterisation == "energy" else ScoreMLP)
    assert next(fused.parameters()).dtype == dtype
    tol = dict(rtol=1e-10, atol=1e-11) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(fused.named_parameters(), eager.parameters()):
        torch.testing.assert_close(p, q, **tol, msg=name)
    fresh = train_score_mlp(DATA, fused=False, **dict(kw, n_iters=0))
    moved = max((p - q).abs().max().item() for p, q in zip(eager.parameters(), fresh.parameters()))
    assert moved > 1e-3  # the comparison is not between untrained networks


@pytest.mark.parametrize("parameterisation,op", PARAMETERISATIONS, ids=[p for p, _ in PARAMETERISATIONS])
def test_training_runs_fused_by_default(monkeypatch, parameterisation, op):
    """One call of the parameterisation's fused op per step by default; none with fused=False or from the other
    parameterisation."""
    calls = []
    real = getattr(ops, op)
    monkeypatch.setattr(ops, op, lambda *a, **k: calls.append(1) or real(*a, **k))
    train_score_mlp(DATA, n_iters=2, batch_size=16, hidden=8, parameterisation=parameterisation)
    assert len(calls) == 2
    train_score_mlp(DATA, n_iters=2, batch_size=16, hidden=8, parameterisation=parameterisation, fused=False)
    other, = (p for p, _ in PARAMETERISATIONS if p != parameterisation)
    train_score_mlp(DATA, n_iters=2, batch_size=16, hidden=8, parameterisation=other)
    assert len(calls) == 2


def test_a_bad_dtype_is_refused():
    with pytest.raises(TypeError, match="dtype"):
        train_score_mlp(DATA, n_iters=1, dtype=torch.float16)


def test_mlp_net_on_a_score_mlps_layers_equals_its_network():
    """ops.mlp_net on a ScoreMLP's input rows [x, sin(t ω), cos(t ω)] and its Linear layers equals net.net (the
    eager network), gradients to every parameter too."""
    from fastsamp.models import ScoreMLP
    torch.manual_seed(0)
    net = ScoreMLP(3, hidden=20, n_freq=4, data_mean=torch.randn(3), data_var=1.4, dtype=torch.float64)
    x, t = torch.randn(50, 3, dtype=torch.float64), torch.rand(50, dtype=torch.float64)
    inp = net.gaussian_and_input(x, t)[2]
    fused, eager = ops.mlp_net(inp, *net._layers()), net.net(inp)
    torch.testing.assert_close(fused, eager, rtol=1e-12, atol=1e-12)
    params = list(net.parameters())
    grads = [torch.autograd.grad(out.square().sum(), params) for out in (fused, eager)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_fused_dsm_loss_refuses_a_network_it_cannot_pack():
    """dsm_loss(fused=True) takes a ScoreMLP's or EnergyMLP's standard Sequential(Linear, SiLU, ..., Linear) only:
    a replaced net raises instead of giving a wrong loss."""
    from fastsamp.mlp_models import dsm_loss
    from fastsamp.models import EnergyMLP, ScoreMLP
    x0, t, z = torch.randn(8, 2), torch.rand(8, 1), torch.randn(8, 2)
    tanh_nets = [ScoreMLP(2, hidden=8, n_freq=2), EnergyMLP(2, hidden=8, n_freq=2)]
    for net in tanh_nets:
        net.net[1] = torch.nn.Tanh()
    for net in tanh_nets:
        with pytest.raises(TypeError, match=r"dsm_loss\(fused=True\) needs a ScoreMLP"):
            dsm_loss(net, x0, t, z, fused=True)
        assert torch.isfinite(dsm_loss(net, x0, t, z))  # the eager loss takes any network


def test_float64_training_keeps_the_buffers_in_double():
    """dtype=torch.float64: the data mean and variance and the frequencies are float64 values, not rounded
    through float32."""
    data = DATA.double() + 1e-9
    net = train_score_mlp(data, n_iters=0, hidden=8, dtype=torch.float64)
    assert all(b.dtype == torch.float64 for b in net.buffers())
    torch.testing.assert_close(net.data_mean, data.mean(0), rtol=0, atol=0)
    assert net.data_var.item() == float(data.var(0).mean())
