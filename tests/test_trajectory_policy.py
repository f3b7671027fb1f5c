"""The trajectory family's fused DriftNet policy kernels (ops.policy_rollout, ops.policy_log_pf;
csrc/cpu/trajectory_policy.cpp):
whole-trajectory rollout, batched log p_F and its backward against the step-by-step
DiffusionSampler path and PyTorch autograd (the reference, backend="torch").

Policy kernels: float64 must agree with the PyTorch path to rounding (1e-10 / 1e-9 for gradients).
float32 is held to "as accurate as PyTorch's own float32 path": both are compared with the float64
run of the same (float32-valued) weights and the same Philox stream, and the kernel's error may be at
most 4x PyTorch's (plus a floor of a few float32 ulps of the output's scale). Their errors are of the
same nature — float32 rounding of 64-term dot products, of the GELU (the kernel's erf has a few ulp of
error, like torch's vectorised erf) and of the x + h·drift + qξ updates compounded over T steps — so a
fixed tolerance would only restate one machine's numbers."""
import copy
import functools

import pytest
import torch

from fastsamp import backends, ops
from fastsamp.ops.trajectory import PolicyParams
from fastsamp.samplers.diffusion import DiffusionSampler, DriftNet

cpp_only = pytest.mark.skipif(not backends.is_available("cpp"),
                              reason=f"the C++ kernels are not built: {backends.availability()['cpp']}")
POLICY_SIGMA = 1.3
reference_log_pf = functools.partial(ops.policy_log_pf, backend="torch")


class Gauss:
    """Minimal target: log R = −|x|²/2 (only log_prob is used on the plain path)."""

    def __init__(self, dim):
        self.dim = dim

    def log_prob(self, x):
        return -0.5 * (x * x).sum(-1)

    def score(self, x):
        return -x


def make_sampler(D, H, L, T, dtype, seed=0, clip=None):
    torch.manual_seed(seed)
    s = DiffusionSampler(Gauss(D), sigma=POLICY_SIGMA, n_steps=T, fused=False, hidden=H, n_layers=L, n_harmonics=8)
    with torch.no_grad():  # the head is zero-initialised: make the drift non-zero and O(1)
        s.net.joint[-1].weight.normal_(0.0, 0.6)
        s.net.joint[-1].bias.normal_(0.0, 0.6)
    if clip is not None:
        s.net.clip = clip
    return s.to(dtype)


def temb_of(s, dtype):
    ts = torch.arange(s.n_steps + 1, dtype=dtype) * s.h
    return s.net.time_features(ts[:-1])[0]


def err(a, b):
    return (a.double() - b.double()).abs().max().item()


def check(name, out, ref, dtype, torch32=None, ref64=None, rtol=1e-10):
    """float64: out ≈ ref. float32: |out − ref64| <= 4 |torch32 − ref64| + 8 ulp of the scale."""
    assert out.shape == ref.shape and out.dtype == dtype, name
    if dtype == torch.float64:
        scale = max(ref.abs().max().item(), 1.0)
        assert err(out, ref) <= rtol * scale, f"{name}: {err(out, ref):.3e} > {rtol * scale:.1e}"
    else:
        scale = max(ref64.abs().max().item(), 1e-30)
        e_k, e_t = err(out, ref64), err(torch32, ref64)
        assert e_k <= 4 * e_t + 8 * 6e-8 * scale, f"{name}: kernel error {e_k:.3e}, torch float32 error {e_t:.3e}"


# (B, D, H, n_layers, T, explore): odd B (1, 7, 301: several blocks of 48 chains and a ragged
# tail on each of 2 threads), D = 1, 2, 32, H = 16, 64 (one / four float32 vectors; two / eight
# float64), 1 and 2 hidden layers; H = 24 is padded to whole vectors inside the kernels. Wide targets, small
# B and T: D = 129 (one float32 lane past 8 vectors; the output layer as a padded GEMM, not dot products), 300,
# 1600 (LGCP: input-layer dot products of 1600 terms, the float32 check against PyTorch's blocked GEMM)
POLICY_CASES = [(301, 2, 64, 2, 100, 0.3), (7, 32, 16, 1, 25, 0.0), (1, 1, 16, 2, 25, 0.3), (7, 2, 64, 1, 25, 0.0),
                (37, 32, 64, 2, 20, 0.3), (13, 3, 24, 2, 10, 0.3),
                (5, 129, 24, 1, 4, 0.3), (9, 300, 64, 2, 3, 0.0), (3, 1600, 64, 2, 2, 0.3)]
POLICY_IDS = [f"B{c[0]}-D{c[1]}-H{c[2]}-L{c[3]}-T{c[4]}-e{c[5]}" for c in POLICY_CASES]


@cpp_only
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("B,D,H,L,T,explore", POLICY_CASES, ids=POLICY_IDS)
def test_rollout_matches_sampler(dtype, B, D, H, L, T, explore):
    """One kernel call = DiffusionSampler(fused=False).forward_trajectories (per-step net + em_step_logprob)."""
    s = make_sampler(D, H, L, T, dtype)
    seed = 12345
    with torch.no_grad():
        traj = s.forward_trajectories(B, seed=seed, explore=explore, dtype=dtype)
        states, log_pf, log_pb = ops.policy_rollout(s.net, temb_of(s, dtype), B, sigma=POLICY_SIGMA, h=s.h,
                                                  explore=explore, seed=seed)
        ref64 = None
        if dtype == torch.float32:
            s64 = copy.deepcopy(s).double()
            ref64 = s64.forward_trajectories(B, seed=seed, explore=explore, dtype=torch.float64)
    assert states.shape == (T + 1, B, D) and log_pf.shape == (B, T) and log_pb.shape == (B, T)
    for name, out in (("states", states), ("log_pf", log_pf), ("log_pb", log_pb)):
        ref = getattr(traj, name)
        check(name, out, ref, dtype, ref, None if ref64 is None else getattr(ref64, name))
    assert (log_pb[:, 0] == 0).all()


@cpp_only
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("B,D,H,L,T,explore", POLICY_CASES, ids=POLICY_IDS)
def test_log_pf_matches_sampler_evaluate(dtype, B, D, H, L, T, explore):
    """policy_log_pf = DiffusionSampler._evaluate on fixed trajectories (forward ones and bridges)."""
    s = make_sampler(D, H, L, T, dtype, seed=1)
    with torch.no_grad():
        fwd = ops.policy_rollout(s.net, temb_of(s, dtype), B, sigma=POLICY_SIGMA, explore=explore, seed=3)[0]
        bwd = s.backward_trajectories(torch.randn(B, D, dtype=dtype) * 2, seed=4).states
        for states in (fwd, bwd):
            out = ops.policy_log_pf(s.net, states, temb_of(s, dtype), sigma=POLICY_SIGMA)
            ref = s._evaluate(states, False)[0]
            ref64 = None
            if dtype == torch.float32:
                ref64 = copy.deepcopy(s).double()._evaluate(states.double(), False)[0]
            check("log_pf", out, ref, dtype, ref, ref64)


@cpp_only
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_rollout_log_pf_is_the_forward_kernel(dtype):
    """The rollout's log p_F is bit for bit policy_log_pf of its states (explore widens only the
    sampling), so a caller may pass it as `log_pf=` and skip the forward kernel."""
    s = make_sampler(5, 64, 2, 30, dtype, seed=6)
    temb = temb_of(s, dtype).detach()
    states, log_pf, _ = ops.policy_rollout(s.net, temb, 61, sigma=POLICY_SIGMA, explore=0.4, seed=2)
    assert torch.equal(ops.policy_log_pf(s.net, states, temb, sigma=POLICY_SIGMA), log_pf)
    g = torch.randn(61, 30, dtype=dtype)
    grads = []
    for given in (None, log_pf):
        temb_g = temb.clone().requires_grad_()
        s.net.zero_grad(set_to_none=True)
        out = ops.policy_log_pf(s.net, states, temb_g, sigma=POLICY_SIGMA, log_pf=given)
        assert torch.equal(out, log_pf)
        (g * out).sum().backward()
        grads.append([temb_g.grad] + [p.grad for p in PolicyParams(s.net).tensors()])
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def _grads(s, states, g, fn, dtype):
    """Gradients of Σ g·log_pf w.r.t. every net parameter (through temb into the time MLP)."""
    net = s.net
    net.zero_grad(set_to_none=True)
    temb = temb_of(s, dtype)
    loss = (g * fn(net, states, temb, sigma=POLICY_SIGMA)).sum()
    loss.backward()
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


@cpp_only
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("B,D,H,L,T,explore,clip", [c + (None,) for c in POLICY_CASES] + [(7, 2, 16, 2, 25, 0.0, 0.5)],
                         ids=POLICY_IDS + ["clamped"])
def test_log_pf_gradients(dtype, B, D, H, L, T, explore, clip):
    """backward() of the fused op = autograd of the PyTorch reference, for every parameter it touches
    (state, joint hidden and output layers; the time MLP through temb). The last case clamps the
    drift of about half of the outputs (clip 0.5): no gradient flows there."""
    s = make_sampler(D, H, L, T, dtype, seed=2, clip=clip)
    with torch.no_grad():
        states = ops.policy_rollout(s.net, temb_of(s, dtype), B, sigma=POLICY_SIGMA, explore=explore, seed=5)[0]
        if clip is not None:  # the clamp is active on a good share of the outputs
            raw = s.net.joint(s.net.state(states[:-1]) + temb_of(s, dtype)[:, None])[..., :D]
            assert 0.2 < (raw.abs() > clip).double().mean() < 0.8
    g = torch.randn(B, T, dtype=dtype)
    out = _grads(s, states, g, ops.policy_log_pf, dtype)
    ref = _grads(s, states, g, reference_log_pf, dtype)
    assert out.keys() == ref.keys() and len(out) == 5 + 2 + 2 * L + 2  # time (phase, 2 Linear), state, joint
    ref64 = None
    if dtype == torch.float32:
        s64 = copy.deepcopy(s).double()
        ref64 = _grads(s64, states.double(), g.double(), reference_log_pf, torch.float64)
    for name in out:
        check(f"grad {name}", out[name], ref[name], dtype, ref[name], None if ref64 is None else ref64[name],
              rtol=1e-9)
    # the unused raw log-variance rows of the output layer get no gradient
    assert (out["joint." + str(2 * L + 1) + ".weight"][D:] == 0).all()


def _reparam_grads(s, B, explore, weights, backend, dtype):
    """Outputs of the reparameterised rollout and the gradients w.r.t. every net parameter of
    Σ a·states + Σ b·log_pb + Σ log_pf + ½|x_T|² (weights = (a, b))."""
    s.net.zero_grad(set_to_none=True)
    out = ops.policy_rollout(s.net, temb_of(s, dtype), B, sigma=POLICY_SIGMA, explore=explore, seed=5, reparam=True,
                             backend=backend)
    states, log_pf, log_pb = out
    a, b = (w.to(dtype) for w in weights)
    ((a * states).sum() + (b * log_pb).sum() + log_pf.sum() + 0.5 * (states[-1] ** 2).sum()).backward()
    return [t.detach() for t in out], {n: p.grad.clone() for n, p in s.net.named_parameters() if p.grad is not None}


@cpp_only
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("B,D,H,L,T,explore,clip", [c + (None,) for c in POLICY_CASES] + [(7, 2, 16, 2, 25, 0.0, 0.5)],
                         ids=POLICY_IDS + ["clamped"])
def test_reparam_rollout_gradients(dtype, B, D, H, L, T, explore, clip):
    """policy_rollout(reparam=True) (PIS): its outputs equal the no-grad rollout's, and the one-kernel
    backward (the adjoint sweep through the steps) equals autograd through the PyTorch reference, for
    gradients on the states (every step and x_T), on log p_B and (none) on log p_F; the last case
    clamps about half of the drift outputs."""
    s = make_sampler(D, H, L, T, dtype, seed=3, clip=clip)
    g = torch.Generator().manual_seed(1)
    weights = (torch.randn(T + 1, B, D, generator=g, dtype=torch.float64),
               torch.randn(B, T, generator=g, dtype=torch.float64))
    outs, grads = _reparam_grads(s, B, explore, weights, "auto", dtype)
    ref_outs, ref = _reparam_grads(s, B, explore, weights, "torch", dtype)
    with torch.no_grad():
        plain = ops.policy_rollout(s.net, temb_of(s, dtype), B, sigma=POLICY_SIGMA, explore=explore, seed=5)
    for o, p in zip(outs, plain):
        assert torch.equal(o, p)
    assert grads.keys() == ref.keys() and len(grads) == 5 + 2 + 2 * L + 2
    ref64 = None
    if dtype == torch.float32:
        s64 = copy.deepcopy(s).double()
        ref_outs64, ref64 = _reparam_grads(s64, B, explore, weights, "torch", torch.float64)
    for name, o, r in zip(("states", "log_pf", "log_pb"), outs, ref_outs):
        check(name, o, r, dtype, r, None if ref64 is None else ref_outs64[("states", "log_pf", "log_pb").index(name)])
    for name in grads:
        check(f"grad {name}", grads[name], ref[name], dtype, ref[name], None if ref64 is None else ref64[name],
              rtol=1e-9)


@cpp_only
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("D", [1, 2, 3, 32])
def test_constant_drift_is_exactly_em_step_logprob(dtype, D):
    """With the head's weight zeroed the drift is exactly clamp(b_o[:D]) (a non-zero constant, one entry
    clamped) and the rollout's states are bit for bit those of the per-step C++ em_step_logprob path:
    the same Philox normals and the same transition arithmetic. log p_F / log p_B sum each row in
    that kernel's order (bitwise equal in practice, but a row's SIMD reduction order is the
    compiler's, so they are held to rounding)."""
    torch.manual_seed(0)
    B, T, explore, seed = 45, 12, 0.2, 2**40 + 7
    net = DriftNet(D, hidden=16, n_harmonics=8, n_layers=2).to(dtype)
    net.clip = 1.5
    with torch.no_grad():
        net.joint[-1].bias.normal_(0.0, 1.0)
        net.joint[-1].bias[0] = -2.0
    temb = net.time(torch.arange(T, dtype=dtype) / T).detach()
    states, log_pf, log_pb = ops.policy_rollout(net, temb, B, sigma=POLICY_SIGMA, explore=explore, seed=seed)
    drift = net.joint[-1].bias[:D].detach().clamp(-1.5, 1.5).expand(B, D).contiguous()
    x = torch.zeros(B, D, dtype=dtype)
    ts = torch.arange(T + 1, dtype=dtype) * (1.0 / T)  # the sampler's grid
    for i in range(T):
        x, lpf, lpb = ops.em_step_logprob(x, drift, sigma=POLICY_SIGMA, t=float(ts[i]), h=1.0 / T, seed=seed, offset=i,
                                          explore=explore, backend="cpp")
        assert torch.equal(states[i + 1], x), i
        # the row sums follow that kernel's order too (same bits with this build; rounding otherwise)
        torch.testing.assert_close(log_pf[:, i], lpf, rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(log_pb[:, i], lpb, rtol=1e-6, atol=1e-5)


@cpp_only
def test_thread_count_and_blocking_do_not_change_results():
    """Chains are independent: rollout and log_pf are bitwise the same for any thread count and for a
    chain's position in its block; the backward's per-thread sums agree to rounding."""
    s = make_sampler(2, 64, 2, 30, torch.float64, seed=3)
    temb = temb_of(s, torch.float64).detach()
    runs = [ops.policy_rollout(s.net, temb, 301, sigma=POLICY_SIGMA, explore=0.3, seed=9, n_threads=n)
            for n in (1, 2, 3)]
    for r in runs[1:]:
        for a, b in zip(runs[0], r):
            assert torch.equal(a, b)
    sub = ops.policy_rollout(s.net, temb, 100, sigma=POLICY_SIGMA, explore=0.3, seed=9, n_threads=2)
    for a, b in zip(sub, runs[0]):  # chain b draws the same stream whatever B is
        assert torch.equal(a, b[:, :100] if a.dim() == 3 else b[:100])
    states = runs[0][0]
    lp = [ops.policy_log_pf(s.net, states, temb, sigma=POLICY_SIGMA, n_threads=n) for n in (1, 2)]
    assert torch.equal(lp[0], lp[1])
    g = torch.randn(301, 30, dtype=torch.float64)
    grads = []
    for n in (1, 2):
        temb_g = temb.clone().requires_grad_()
        s.net.zero_grad(set_to_none=True)
        (g * ops.policy_log_pf(s.net, states, temb_g, sigma=POLICY_SIGMA, n_threads=n)).sum().backward()
        grads.append([temb_g.grad] + [p.grad for p in PolicyParams(s.net).tensors()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@cpp_only
def test_empty_batch_gives_zero_gradients():
    """B = 0: the backward kernels are not called (the op table's guard) and every gradient is zero, with and
    without the Langevin term (whose kernels need a non-null scores pointer)."""
    s = make_sampler(2, 16, 2, 5, torch.float64)
    temb = temb_of(s, torch.float64).detach().requires_grad_()
    params = PolicyParams(s.net).tensors()
    ops.policy_log_pf(s.net, torch.zeros(6, 0, 2, dtype=torch.float64), temb, sigma=POLICY_SIGMA).sum().backward()
    states, _, log_pb = ops.policy_rollout(s.net, temb, 0, sigma=POLICY_SIGMA, reparam=True)
    (states.sum() + log_pb.sum()).backward()
    for t in [temb] + params:
        assert t.grad is not None and not t.grad.any()
    lgv, scores = torch.ones(5, 1, dtype=torch.float64), torch.zeros(5, 0, 2, dtype=torch.float64)
    for op, extra, kept in [("policy_log_pf_backward", (torch.zeros(0, 5, dtype=torch.float64),), (None,)),
                            ("policy_reparam_backward", (torch.arange(5, dtype=torch.float64) * s.h, None, None), ())]:
        grads = backends.resolve("cpp", op, torch.device("cpu"))(states, temb.detach(), [p.detach() for p in params],
                                                                 *extra, POLICY_SIGMA, s.h, 5.0, 0, lgv, 0.3, scores,
                                                                 *kept)
        assert not grads[0].any() and not any(g.any() for g in grads[1]) and not grads[2].any(), op


@cpp_only
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_nan_chain_stays_in_its_chain(dtype):
    s = make_sampler(3, 16, 2, 20, dtype, seed=4)
    temb = temb_of(s, dtype).detach()
    x0 = torch.randn(50, 3, dtype=dtype)
    clean = ops.policy_rollout(s.net, temb, 50, sigma=POLICY_SIGMA, explore=0.1, seed=1, x0=x0)
    x0[17, 1] = float("nan")
    dirty = ops.policy_rollout(s.net, temb, 50, sigma=POLICY_SIGMA, explore=0.1, seed=1, x0=x0)
    keep = torch.arange(50) != 17
    for a, b in zip(clean, dirty):
        if a.dim() == 3:
            assert torch.equal(a[:, keep], b[:, keep]) and torch.isnan(b[:, 17]).any(-1).all()
        else:
            assert torch.equal(a[keep], b[keep])
    assert torch.isnan(dirty[1][17]).all() and torch.isnan(dirty[2][17, 1:]).all() and dirty[2][17, 0] == 0
    states = clean[0].clone()
    states[7, 17, 0] = float("nan")
    lp_clean = ops.policy_log_pf(s.net, clean[0], temb, sigma=POLICY_SIGMA)
    lp = ops.policy_log_pf(s.net, states, temb, sigma=POLICY_SIGMA)
    assert torch.equal(lp[keep], lp_clean[keep])
    bad = torch.isnan(lp[17])
    assert bad[6] and bad[7] and bad.sum() == 2


@cpp_only
def test_rejects_unsupported_nets_and_inputs():
    temb = torch.zeros(10, 16)
    for kw in ({"langevin": True}, {"learned_variance": True}):
        net = DriftNet(2, hidden=16, n_harmonics=8, **kw)
        with pytest.raises(ValueError):
            ops.policy_rollout(net, temb, 4, sigma=1.0)
        with pytest.raises(ValueError):
            ops.policy_log_pf(net, torch.zeros(11, 4, 2), temb, sigma=1.0)
    net = DriftNet(2, hidden=16, n_harmonics=8)
    with pytest.raises(ValueError):
        ops.policy_rollout(net, torch.zeros(10, 8), 4, sigma=1.0)
    with pytest.raises(ValueError):
        ops.policy_log_pf(net, torch.zeros(11, 4, 3), temb, sigma=1.0)
    with pytest.raises(TypeError):
        ops.policy_log_pf(net, torch.zeros(11, 4, 2, dtype=torch.float64), temb, sigma=1.0)
    with pytest.raises(ValueError):
        ops.policy_rollout(net, temb, 4, sigma=-1.0)
    s, lpf, lpb = ops.policy_rollout(net, temb, 0, sigma=1.0)
    assert s.shape == (11, 0, 2) and lpf.shape == (0, 10)


@cpp_only
@pytest.mark.parametrize("target_name", ["25gmm", "40gmm", "funnel", "manywell"])
def test_langevin_target_scores_in_the_kernel(target_name):
    """The kernels' target scores (csrc/cpu/target_score.h, from target.score_kernel) = target.score:
    policy_log_pf with the score computed in the kernel equals it with target.score's values (float64,
    states spread over the modes and the funnel's neck), and its backward gives the same gradients."""
    from fastsamp.targets import get_target
    target = get_target(target_name).to(torch.float64)
    T, B, D = 6, 37, target.dim
    torch.manual_seed(0)
    net = DriftNet(D, hidden=16, n_harmonics=8, langevin=True, lgv_per_dim=target_name == "funnel").double()
    with torch.no_grad():
        net.lgv_scale.mlp[-1].bias.normal_(0.0, 0.3)
        net.joint[-1].weight.normal_(0.0, 0.3)
    states = 3 * torch.randn(T + 1, B, D, dtype=torch.float64)
    outs = []
    for kw in ({"target": target}, {"scores": target.score(states[:-1])}):
        net.zero_grad(set_to_none=True)
        temb, lgv = net.time_features(torch.arange(T, dtype=torch.float64) / T)
        lp = ops.policy_log_pf(net, states, temb, lgv=lgv, sigma=POLICY_SIGMA, **kw)
        lp.sum().backward()
        outs.append([lp.detach()] + [p.grad.clone() for p in net.parameters() if p.grad is not None])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11 * float(b.abs().max()))


@cpp_only
def test_langevin_rejections():
    from fastsamp.targets import GMM25
    class OwnScore(GMM25):
        def _score(self, x):
            return -x
    assert GMM25().score_kernel(torch.float32) is not None and OwnScore().score_kernel(torch.float32) is None
    net = DriftNet(2, hidden=16, n_harmonics=8, langevin=True)
    temb, lgv = (t.detach() for t in net.time_features(torch.arange(10) / 10))
    with pytest.raises(ValueError, match="score_kernel"):
        ops.policy_rollout(net, temb, 4, lgv=lgv, target=OwnScore(), sigma=1.0)
    with pytest.raises(ValueError, match="C\\+\\+"):
        ops.policy_rollout(net, temb, 4, lgv=lgv, target=GMM25(), sigma=1.0, backend="torch")
    with pytest.raises(ValueError, match="lgv"):
        ops.policy_rollout(DriftNet(2, hidden=16, n_harmonics=8), temb, 4, lgv=lgv, target=GMM25(), sigma=1.0)
    with pytest.raises(ValueError, match="scores= .* or target="):
        ops.policy_log_pf(net, torch.zeros(11, 4, 2), temb, lgv=lgv, sigma=1.0)
    states, lpf, lpb, scores = ops.policy_rollout(net, temb, 4, lgv=lgv, target=GMM25(), sigma=1.0)
    assert scores.shape == (10, 4, 2)
    torch.testing.assert_close(scores, GMM25().score(states[:-1]))


def gelu_probe(dtype, x):
    """gelu(gelu(x)) as computed by the kernels: a one-step rollout of a net wired to it (state
    Linear picks x, the hidden Linear is the identity, the head picks unit 0), with h = 2^20 and
    σ = 1e-15 (σ²h = 1e-24, a normal float32; noise ~1e-12, below one rounding of h·drift at |drift| >= 1e-2, and
    1e-18 of the drift) so that x_1 = x_0 + h·drift recovers the drift to one rounding of h·drift."""
    H, h = 16, 2.0**20
    net = DriftNet(1, hidden=H, n_harmonics=4, n_layers=1).to(dtype)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.state.weight[0, 0] = 1.0
        net.joint[1].weight.copy_(torch.eye(H))
        net.joint[-1].weight[0, 0] = 1.0
    x = x.to(dtype)
    states = ops.policy_rollout(net, torch.zeros(1, H, dtype=dtype), x.shape[0], sigma=1e-15, h=h, x0=x[:, None])[0]
    return ((states[1] - states[0]) / h)[:, 0]


@cpp_only
def test_gelu_accuracy():
    """The kernels' GELU (float64: Cody's erf/erfc; float32: a rational erf) against torch's exact-erf GELU,
    through gelu(gelu(x)): float64 to a few 1e-16, float32 to a few float32 ulp of max(|x|, 1)."""
    x = torch.cat([torch.linspace(-12, 12, 4801, dtype=torch.float64),
                   torch.tensor([0.0, -0.0, 1e-30, -1e-30, 0.66291, -0.66291, 0.66292, -0.66292, 40.0, -40.0])])
    gelu = torch.nn.functional.gelu
    for dtype, tol in ((torch.float64, 8e-16), (torch.float32, 1.2e-6)):
        xd = x.to(dtype)
        got = gelu_probe(dtype, xd).double()
        ref = gelu(gelu(xd.double()))
        scale = xd.double().abs().clamp(min=1.0)
        worst = ((got - ref).abs() / scale).max().item()
        assert worst <= tol, (dtype, worst)
        if dtype == torch.float32:  # torch's own float32 GELU is no more accurate
            t32 = gelu(gelu(xd)).double()
            assert worst <= 4 * ((t32 - ref).abs() / scale).max().item() + 1e-7
