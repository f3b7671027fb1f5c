"""FusedMLP: a user's own Sequential(Linear, act, ..., Linear) evaluated by the fused network op ops.mlp_net. Its
values and gradients (to x and every parameter) against the Sequential itself under torch autograd, float64 and
float32, odd sizes, no hidden (H, H) layer and several, both activations; the architectures it cannot take refused
naming the layer; the parameters stay the Sequential's (state_dict, optimiser)."""
import pytest
import torch
from torch import nn

from fastsamp.models import FusedMLP, ScoreModel
from fastsamp.samplers import annealed_mcmc

TOL = {torch.float64: {"rtol": 1e-10, "atol": 1e-10}, torch.float32: {"rtol": 2e-5, "atol": 2e-5}}


def sequential(d_in, hidden, d_out, n_hidden, act, dtype, seed=0):
    torch.manual_seed(seed)
    mods = [nn.Linear(d_in, hidden), act()]
    for _ in range(n_hidden):
        mods += [nn.Linear(hidden, hidden), act()]
    return nn.Sequential(*mods, nn.Linear(hidden, d_out)).to(dtype)


def _device(name):
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA: no GPU on this machine (the Triton kernels run under the interpreter in test_mlp_train.py)")
    return torch.device(name)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("act", [nn.SiLU, nn.GELU], ids=["silu", "gelu"])
@pytest.mark.parametrize("B,d_in,hidden,d_out,n_hidden", [(1, 1, 3, 1, 0), (37, 9, 16, 8, 2), (130, 5, 33, 2, 1)])
def test_values_and_gradients_are_the_sequentials(device, dtype, act, B, d_in, hidden, d_out, n_hidden):
    """On CUDA tensors FusedMLP runs the Triton kernels of kernels/mlp_train.py (ieee dots: the same tolerances)."""
    device = _device(device)
    seq = sequential(d_in, hidden, d_out, n_hidden, act, dtype).to(device)
    fused = FusedMLP(seq)
    x = torch.randn(B, d_in, dtype=dtype, device=device, requires_grad=True)
    g = torch.randn(B, d_out, dtype=dtype, device=device)
    out, expect = fused(x), seq(x)
    torch.testing.assert_close(out, expect, **TOL[dtype])
    params = list(seq.parameters())
    got = torch.autograd.grad(out, [x, *params], g)
    want = torch.autograd.grad(expect, [x, *params], g)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **TOL[dtype])
    with torch.no_grad():
        torch.testing.assert_close(fused(x), expect, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("act", [nn.SiLU, nn.GELU], ids=["silu", "gelu"])
@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_squared_error_and_its_gradients_are_the_sequentials(device, dtype, act, backend):
    """squared_error(x, y) = mean_b |f(x_b) − y_b|² in one kernel call: the value and every parameter's gradient of
    the same loss through the Sequential; leading dims flattened; a bad y or x and y requiring grad refused."""
    device = _device(device)
    seq = sequential(5, 33, 3, 2, act, dtype).to(device)
    fused = FusedMLP(seq, backend=backend)
    x, y = torch.randn(4, 37, 5, dtype=dtype, device=device), torch.randn(4, 37, 3, dtype=dtype, device=device)
    loss = fused.squared_error(x, y)
    expect = ((seq(x) - y) ** 2).sum(-1).mean()
    torch.testing.assert_close(loss, expect, **TOL[dtype])
    params = list(seq.parameters())
    for a, b in zip(torch.autograd.grad(loss, params), torch.autograd.grad(expect, params), strict=True):
        scale = b.abs().max().clamp(min=1.0)  # float32 sums over 148 rows
        torch.testing.assert_close(a / scale, b / scale, **TOL[dtype])
    with pytest.raises(ValueError, match=r"y must have shape \(4, 37, 3\), got \(4, 37, 2\)"):
        fused.squared_error(x, y[..., :2])
    with pytest.raises(TypeError, match="y must have dtype"):
        fused.squared_error(x, y.to(torch.float16 if dtype == torch.float32 else torch.float32))
    with pytest.raises(ValueError, match="x and y must not require grad"):
        fused.squared_error(x, y.clone().requires_grad_(True))
    with pytest.raises(ValueError, match="x and y must not require grad"):
        fused.squared_error(x.requires_grad_(True), y)


def test_leading_dims_as_the_sequential_takes_them():
    seq = sequential(3, 8, 2, 1, nn.SiLU, torch.float64)
    for shape in [(3,), (4, 5, 3)]:
        x = torch.randn(*shape, dtype=torch.float64)
        out = FusedMLP(seq)(x)
        assert out.shape == (*shape[:-1], 2)
        torch.testing.assert_close(out, seq(x), **TOL[torch.float64])


def test_the_parameters_are_the_sequentials():
    seq = sequential(3, 8, 3, 1, nn.SiLU, torch.float64)
    fused = FusedMLP(seq)
    assert [k for k, _ in fused.named_parameters()] == [f"net.{k}" for k, _ in seq.named_parameters()]
    opt = torch.optim.SGD(fused.parameters(), lr=0.1)
    x, y = torch.randn(64, 3, dtype=torch.float64), torch.randn(64, 3, dtype=torch.float64)
    before = ((seq(x) - y) ** 2).mean().item()
    for _ in range(20):
        opt.zero_grad()
        ((fused(x) - y) ** 2).mean().backward()
        opt.step()
    assert ((seq(x) - y) ** 2).mean().item() < before  # the Sequential's own weights were trained


@pytest.mark.parametrize("net,match", [
    (nn.Linear(3, 3), "Sequential"),
    (nn.Sequential(nn.Linear(3, 3)), "at least two Linear"),
    (nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 3)), "SiLU"),
    (nn.Sequential(nn.Linear(3, 8), nn.GELU(approximate="tanh"), nn.Linear(8, 3)), "exact"),
    (nn.Sequential(nn.Linear(3, 8), nn.SiLU(), nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 3)), "all"),
    (nn.Sequential(nn.Linear(3, 8), nn.SiLU(), nn.Linear(8, 4), nn.SiLU(), nn.Linear(4, 3)), r"net\[2\]"),
    (nn.Sequential(nn.Linear(3, 8), nn.SiLU(), nn.Linear(8, 3, bias=False)), r"net\[2\] must be .* with a bias"),
])
def test_architectures_it_cannot_take(net, match):
    with pytest.raises(ValueError, match=match):
        FusedMLP(net)


def test_in_a_sampler():
    """A user's score network built on FusedMLP runs annealed_mcmc's generic moves: the samples of the same network
    evaluated by its Sequential, up to the MH decisions the last bits can flip."""
    torch.manual_seed(0)
    seq = sequential(3, 32, 2, 1, nn.SiLU, torch.float32)

    def score(mlp):
        return lambda x, t: mlp(torch.cat([x, torch.full_like(x[:, :1], t)], 1)) - x

    kw = {"n_levels": 10, "n_corrector_steps": 2, "n_trapezoid": 3, "step_size": 0.05, "seed": 0}
    x, stats = annealed_mcmc(ScoreModel(score(FusedMLP(seq)), 2), 512, **kw)
    x_seq, stats_seq = annealed_mcmc(ScoreModel(score(seq), 2), 512, **kw)
    same = (x - x_seq).abs().amax(1) < 1e-4
    assert same.float().mean() > 0.95, same.float().mean()
    assert abs(stats.accept_rate[-1] - stats_seq.accept_rate[-1]) < 0.02


def test_compiles_with_no_graph_break(dynamo_reset):
    """torch.compile(fullgraph=True) of FusedMLP for inference (no_grad: one opaque fastsamp::mlp_net node; the
    Function's apply traced with nothing to differentiate broke the graph before) and of a training loss through it
    (its fused backward): eager's values and gradients."""
    seq = sequential(5, 16, 3, 1, nn.SiLU, torch.float32)
    fused, x = FusedMLP(seq), torch.randn(37, 5)
    with torch.no_grad():
        explain = torch._dynamo.explain(fused)(x)
        assert explain.graph_break_count == 0, explain.break_reasons
        assert any("fastsamp.mlp_net" in str(n.target) for g in explain.graphs for n in g.graph.nodes)
        compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(x), fused(x), rtol=0, atol=0)

    def loss(x):
        return (fused(x) ** 2).mean()
    compiled_loss = torch.compile(loss, fullgraph=True, backend="aot_eager")
    params = list(fused.parameters())
    got = torch.autograd.grad(compiled_loss(x), params)
    for g, e in zip(got, torch.autograd.grad(loss(x), params), strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=0)
