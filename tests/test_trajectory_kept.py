"""The hidden activations a policy rollout keeps for log p_F's backward (ops.policy_rollout(keep_activations=True),
ops.policy_log_pf(activations=); csrc/cpu/trajectory_policy.cpp, Kept): the backward that reads them gives the
gradients of the backward that recomputes the network's forward pass bit for bit (float32 and float64), the
kept values equal the PyTorch reference's, and the rollout's own outputs do not change when it keeps them.
Shapes: D = 1, odd B, several blocks of 48 chains, H whole vectors (the kernels write the kept arrays in place)
or not (copied), the clamp active, the Langevin term, and the LGCP size at small B and T."""
import pytest
import torch

from fastsamp import backends, ops
from fastsamp.samplers.diffusion import DriftNet

pytestmark = pytest.mark.skipif(not backends.is_available("cpp"),
                                reason=f"the C++ kernels are not built: {backends.availability()['cpp']}")
SIGMA = 1.3
DTYPES = pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
# (B, D, H, n_layers, T, explore, clip): H = 16 (float32) and 64 are whole vectors, H = 24 is not
CASES = [(7, 1, 16, 2, 12, 0.3, None), (301, 2, 64, 2, 20, 0.0, None), (13, 3, 24, 1, 10, 0.3, None),
         (50, 16, 64, 2, 8, 0.3, None), (9, 16, 64, 2, 10, 0.0, 0.3), (5, 1600, 64, 2, 3, 0.3, None)]
IDS = ["D1-B7", "D2-B301", "D3-H24", "D16-H64", "D16-clamped", "D1600-lgcp"]


def make_net(D, H, L, dtype, clip=None, **kw):
    torch.manual_seed(D + H)
    net = DriftNet(D, hidden=H, n_layers=L, n_harmonics=8, **kw)
    with torch.no_grad():  # the head is zero-initialised: make the drift non-zero and O(1)
        net.joint[-1].weight.normal_(0.0, 0.6)
        net.joint[-1].bias.normal_(0.0, 0.6)
        if net.lgv_scale is not None:
            net.lgv_scale.mlp[-1].bias.normal_(0.0, 0.3)
    if clip is not None:
        net.clip = clip
    return net.to(dtype)


def grads_of(net, B, T, explore, dtype, keep, target=None):
    """(rollout outputs, the gradients of Σ g log p_F w.r.t. every parameter) through the rollout's log p_F, its
    backward reading the kept activations (keep) or recomputing them."""
    net.zero_grad(set_to_none=True)
    temb, lgv = net.time_features(torch.arange(T, dtype=dtype) / T)
    kw = {} if lgv is None else dict(lgv=lgv.detach(), target=target)
    with torch.no_grad():
        out = ops.policy_rollout(net, temb.detach(), B, sigma=SIGMA, explore=explore, seed=3, keep_activations=keep,
                                 **kw)
    states, lpf = out[0], out[1]
    lp = {} if lgv is None else dict(lgv=lgv, scores=out[3])
    if keep:
        lp["activations"] = out[-1]
    log_pf = ops.policy_log_pf(net, states, temb, sigma=SIGMA, log_pf=lpf, **lp)
    g = torch.randn(B, T, dtype=dtype, generator=torch.Generator().manual_seed(1))
    (g * log_pf).sum().backward()
    rollout = out[:-1] if keep else out
    return rollout, {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@DTYPES
@pytest.mark.parametrize("B,D,H,L,T,explore,clip", CASES, ids=IDS)
def test_kept_activations_give_the_recomputed_gradients(dtype, B, D, H, L, T, explore, clip):
    net = make_net(D, H, L, dtype, clip)
    out_r, rec = grads_of(net, B, T, explore, dtype, keep=False)
    out_k, kept = grads_of(net, B, T, explore, dtype, keep=True)
    assert_same(out_k, out_r)  # the rollout's outputs do not change
    assert rec.keys() == kept.keys() and len(kept) == 5 + 2 + 2 * L + 2
    assert_same(list(kept.values()), list(rec.values()))
    if dtype == torch.float64:  # and against autograd of the PyTorch reference
        net.zero_grad(set_to_none=True)
        temb = net.time_features(torch.arange(T, dtype=dtype) / T)[0]
        g = torch.randn(B, T, dtype=dtype, generator=torch.Generator().manual_seed(1))
        (g * ops.policy_log_pf(net, out_k[0], temb, sigma=SIGMA, backend="torch")).sum().backward()
        for n, p in net.named_parameters():
            if p.grad is not None:
                scale = max(p.grad.abs().max().item(), 1.0)
                assert (kept[n] - p.grad).abs().max().item() <= 1e-10 * scale, n


@DTYPES
@pytest.mark.parametrize("target_name,lgv_per_dim", [("25gmm", False), ("funnel", True)])
def test_kept_activations_with_the_langevin_term(dtype, target_name, lgv_per_dim):
    """With the Langevin term the kept output is the sum before the clamp; lgv's gradient included."""
    from fastsamp.targets import get_target
    target = get_target(target_name).to(dtype)
    net = make_net(target.dim, 64, 2, dtype, langevin=True, lgv_per_dim=lgv_per_dim)
    out_r, rec = grads_of(net, 61, 10, 0.2, dtype, keep=False, target=target)
    out_k, kept = grads_of(net, 61, 10, 0.2, dtype, keep=True, target=target)
    assert_same(out_k, out_r)
    assert rec.keys() == kept.keys() and any(n.startswith("lgv_scale") for n in kept)
    assert_same(list(kept.values()), list(rec.values()))


@pytest.mark.parametrize("B,D,H,L,T,explore,clip", CASES[:4], ids=IDS[:4])
def test_kept_activations_equal_the_reference(B, D, H, L, T, explore, clip):
    """The kept values (u_k, gelu'(z_k)) equal the PyTorch reference's, float64."""
    net = make_net(D, H, L, torch.float64, clip)
    temb = net.time_features(torch.arange(T, dtype=torch.float64) / T)[0].detach()
    outs = [ops.policy_rollout(net, temb, B, sigma=SIGMA, explore=explore, seed=3, keep_activations=True,
                               backend=b) for b in ("cpp", "torch")]
    kept, ref = outs[0][-1], outs[1][-1]
    assert kept.shape == ref.shape == (T, 2 * (L + 1), B, H)
    assert (kept - ref).abs().max().item() <= 1e-10 * max(ref.abs().max().item(), 1.0)


def test_kept_activations_rejections():
    net = make_net(2, 16, 1, torch.float32)
    temb = net.time_features(torch.arange(4) / 4)[0]
    with pytest.raises(ValueError, match="keep_activations"):
        ops.policy_rollout(net, temb, 3, sigma=1.0, reparam=True, keep_activations=True)
    with torch.no_grad():
        states, lpf, _, act = ops.policy_rollout(net, temb.detach(), 3, sigma=1.0, keep_activations=True)
    with pytest.raises(ValueError, match="log_pf="):
        ops.policy_log_pf(net, states, temb, sigma=1.0, activations=act)
    with pytest.raises(ValueError, match="activations must have shape"):
        ops.policy_log_pf(net, states, temb, sigma=1.0, log_pf=lpf, activations=act[:, :, :2])
