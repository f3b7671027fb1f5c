"""The diffusion sampler's SubTB parts: the drift network's flow head on the fused path (one fused MLP op) = its
nn.Sequential, and the SubTB loss (its expanded square) = the sum over the sub-trajectories. (Fused SubTB with a flow
head of one Linear layer, n_layers=0, = eager: test_diffusion_sampler.test_fused_path_equals_eager_path.)"""
import pytest
import torch

from fastsamp.samplers.diffusion.networks import DriftNet
from fastsamp.samplers.diffusion.sampler import subtb_loss


@pytest.mark.parametrize("n_layers", [0, 1, 2, 3])
def test_fused_flow_head_equals_the_sequential(n_layers):
    """DriftNet.flow_of(hid, fused=True) (ops.mlp_net after the first GELU; n_layers=0, a single Linear, stays the
    Sequential) = flow_of(hid, fused=False) (the nn.Sequential with exact GELUs) in float64 to 1e-10: the values,
    hid's gradient and every flow-head parameter's gradient. Random weights (the last layer is zero-initialised) and
    hidden features of order 1-3, where GELU's tanh approximation is off by ~1e-4."""
    g = torch.Generator().manual_seed(n_layers)
    net = DriftNet(3, hidden=16, n_harmonics=4, n_layers=n_layers, flow=True).double()
    with torch.no_grad():
        for p in net.flow.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) / p.shape[-1] ** 0.5 * 2)
    hid = (2 * torch.randn(50, 16, generator=g, dtype=torch.float64)).requires_grad_()
    cotangent = torch.randn(50, generator=g, dtype=torch.float64)
    params = list(net.flow.parameters())
    results = []
    for fused in (True, False):
        flow = net.flow_of(hid, fused)
        assert flow.shape == (50,) and flow.dtype == torch.float64
        results.append((flow.detach(), *torch.autograd.grad(flow, [hid, *params], cotangent)))
    assert results[1][-2].abs().max() > 0.1  # the last layer's weight gradient: the earlier layers are used
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10 * (1 + want.abs().max().item()))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_trajectory_hidden_equals_state_plus_per_row_temb(dtype):
    """DriftNet.trajectory_hidden(x, temb, B) = state(x) + temb[t] on row t·B + b (values, and the gradients of x,
    temb and the state layer's weight and bias), T = 7 times, B = 5 chains; a temb of the wrong length is refused."""
    g = torch.Generator().manual_seed(0)
    T, B, D, H = 7, 5, 3, 16
    net = DriftNet(D, hidden=H, n_harmonics=4, flow=True).to(dtype)
    x = torch.randn(T * B, D, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    temb = torch.randn(T, H, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    cotangent = torch.randn(T * B, H, generator=g, dtype=torch.float64).to(dtype)
    wrt = [x, temb, net.state.weight, net.state.bias]
    got = net.trajectory_hidden(x, temb, B)
    want = net.state(x) + temb.repeat_interleave(B, 0)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, want, **tol)
    for a, b in zip(torch.autograd.grad(got, wrt, cotangent), torch.autograd.grad(want, wrt, cotangent)):
        torch.testing.assert_close(a, b, **tol)
    with pytest.raises(RuntimeError):
        net.trajectory_hidden(x, temb[:5], B)


def _subtb_by_pairs(log_f, log_pf, log_pb, lam):
    """The SubTB loss by its definition: every sub-trajectory (i, j), i < j, its squared residual weighted λ^(j−i)."""
    T = log_pf.shape[1]
    total = weights = 0.0
    for i in range(T + 1):
        for j in range(i + 1, T + 1):
            res = log_f[:, i] + (log_pf[:, i:j] - log_pb[:, i:j]).sum(1) - log_f[:, j]
            total = total + lam ** (j - i) * res ** 2
            weights += lam ** (j - i)
    return (total / weights).mean()


@pytest.mark.parametrize("T", [1, 2, 7, 25])
@pytest.mark.parametrize("lam", [0.5, 1.0, 2.0, 3.0])
def test_subtb_loss_equals_the_sum_over_sub_trajectories(T, lam):
    """The SubTB loss (the square expanded over the pairs, one matrix product) = the λ-weighted sum of the squared
    residuals of every sub-trajectory, values and gradients, in float64 on random flows and log-densities; the flows
    share an offset of 10⁷, against which the expanded square would cancel without the loss's centring."""
    g = torch.Generator().manual_seed(T)
    log_f = (1e7 + torch.randn(5, T + 1, generator=g, dtype=torch.float64)).requires_grad_()
    log_pf = torch.randn(5, T, generator=g, dtype=torch.float64).requires_grad_()
    log_pb = torch.randn(5, T, generator=g, dtype=torch.float64).requires_grad_()
    loss, expected = subtb_loss(log_f, log_pf, log_pb, lam), _subtb_by_pairs(log_f, log_pf, log_pb, lam)
    torch.testing.assert_close(loss, expected, rtol=1e-8, atol=0)
    for got, want in zip(torch.autograd.grad(loss, (log_f, log_pf, log_pb)),
                         torch.autograd.grad(expected, (log_f, log_pf, log_pb))):
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-8)


def test_subtb_loss_of_long_float32_trajectories_is_finite_and_exact():
    """T = 200 and λ = 2 in float32: λ^200 overflows float32 (weights λ^span / Σ λ^span would be inf / inf = NaN),
    the weights normalised by their largest do not; the value matches the float64 sum over the sub-trajectories.
    λ <= 0 raises."""
    g = torch.Generator().manual_seed(0)
    log_f, log_pf, log_pb = (torch.randn(3, n, generator=g) for n in (201, 200, 200))
    loss = subtb_loss(log_f, log_pf, log_pb, 2.0)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), _subtb_by_pairs(log_f.double(), log_pf.double(), log_pb.double(), 2.0),
                               rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="subtb_lambda"):
        subtb_loss(log_f, log_pf, log_pb, 0.0)
