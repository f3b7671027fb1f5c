"""torch.func's transforms (grad, vmap, vmap of grad) of the public ops whose backward is a fused kernel of its own
autograd.Function (em_step_logprob, mlp_net, mlp_net_lsq, policy_log_pf, policy_rollout(reparam=True)): the
reference's values and gradients (backend="torch", differentiated by autograd), a second derivative refused naming
the op, and nothing of a transform kept for later calls."""
import pytest
import torch

from fastsamp import ops
from fastsamp.samplers.diffusion import DriftNet

F64 = torch.float64
B, D, T, V = 5, 2, 4, 3


def em_step(x, backend="auto"):
    return ops.em_step_logprob(x, 0.5 * x, sigma=1.0, t=0.2, h=0.1, noise=x.flip(0), backend=backend)


def em_loss(x, backend="auto"):
    return sum(o.square().sum() for o in em_step(x, backend))


_G = torch.Generator().manual_seed(1)
WEIGHTS = [torch.randn(8, D, generator=_G, dtype=F64), torch.randn(8, 8, generator=_G, dtype=F64),
           torch.randn(D, 8, generator=_G, dtype=F64)]
BIASES = [torch.randn(w.shape[0], generator=_G, dtype=F64) for w in WEIGHTS]


def net_loss(w0, x, backend="auto"):
    return ops.mlp_net(x, [w0, *WEIGHTS[1:]], BIASES, backend=backend).square().sum()


def lsq_loss(w0, x, backend="auto"):
    c, k = torch.cos(x), 1.0 + x[:, 0].square()
    return ops.mlp_net_lsq(x, [w0, *WEIGHTS[1:]], BIASES, c, k, backend=backend)


@pytest.fixture
def x():
    return torch.randn(B, D, generator=torch.Generator().manual_seed(0), dtype=F64)


def test_em_step_logprob(x):
    xs = torch.stack([x, x + 0.1, x - 0.2])
    torch.testing.assert_close(torch.func.grad(em_loss)(x), torch.func.grad(lambda a: em_loss(a, "torch"))(x))
    got, expect = torch.func.vmap(em_step)(xs), [em_step(a) for a in xs]
    for k, g in enumerate(got):
        assert torch.equal(g, torch.stack([e[k] for e in expect]))
    torch.testing.assert_close(torch.func.vmap(torch.func.grad(em_loss))(xs),
                               torch.stack([torch.func.grad(lambda a: em_loss(a, "torch"))(a) for a in xs]))


@pytest.mark.parametrize("loss", [net_loss, lsq_loss], ids=["mlp_net", "mlp_net_lsq"])
def test_network_ops(x, loss):
    """Gradients in the first layer's weight, per sample of a batch of inputs (vmap of grad) and of one (grad)."""
    w0 = WEIGHTS[0]
    xs = torch.stack([x, x + 0.1, x - 0.2])

    def reference(w, a):
        return loss(w, a, "torch")

    torch.testing.assert_close(torch.func.grad(loss)(w0, x), torch.func.grad(reference)(w0, x))
    torch.testing.assert_close(torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(w0, xs),
                               torch.stack([torch.func.grad(reference)(w0, a) for a in xs]))
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.func.grad(lambda w: torch.func.grad(loss)(w, x).sum())(w0)


def test_policy_ops():
    """policy_log_pf's gradient in the time embedding and vmap over states; the reparameterised rollout's gradient
    (the fused adjoint sweep), then the same call in plain autograd (nothing kept from the transform: the kernels'
    step times were cached as a transform's dead wrapper, which failed the next call)."""
    torch.manual_seed(0)
    net = DriftNet(D, hidden=16, n_harmonics=8, n_layers=2).to(F64)
    temb = net.time(torch.arange(T, dtype=F64) / T).detach()
    states = torch.randn(V, T + 1, B, D, dtype=F64)

    def log_pf(s, te=temb, backend="auto"):
        return ops.policy_log_pf(net, s, te, sigma=1.0, backend=backend)

    torch.testing.assert_close(torch.func.vmap(log_pf)(states),
                               torch.stack([log_pf(s, backend="torch") for s in states]))
    torch.testing.assert_close(torch.func.grad(lambda te: log_pf(states[0], te).square().sum())(temb),
                               torch.func.grad(lambda te: log_pf(states[0], te, "torch").square().sum())(temb))

    def rollout_loss(te, backend="auto"):
        return ops.policy_rollout(net, te, B, sigma=1.0, reparam=True, seed=3, backend=backend)[0].square().sum()

    got = torch.func.grad(rollout_loss)(temb)
    torch.testing.assert_close(got, torch.func.grad(lambda te: rollout_loss(te, "torch"))(temb))
    te = temb.clone().requires_grad_()
    rollout_loss(te).backward()
    torch.testing.assert_close(te.grad, got, rtol=0, atol=0)


def test_langevin_log_pf_under_grad_and_vmap():
    """With the Langevin term: torch.func.grad in lgv runs the fused kernels and equals regular autograd; vmap over
    states is refused naming the op (the kernel writes the target's scores into `scores`: no batching rule)."""
    from fastsamp.targets import get_target
    target = get_target("25gmm").to(F64)
    torch.manual_seed(0)
    net = DriftNet(target.dim, hidden=16, n_harmonics=8, langevin=True).to(F64)
    temb, lgv = (t.detach() for t in net.time_features(torch.arange(T, dtype=F64) / T))
    states = 3 * torch.randn(T + 1, B, target.dim, dtype=F64)

    def loss(lv, s=states):
        return ops.policy_log_pf(net, s, temb, lgv=lv, sigma=1.0, target=target).square().sum()

    lv = lgv.clone().requires_grad_()
    loss(lv).backward()
    torch.testing.assert_close(torch.func.grad(loss)(lgv), lv.grad, rtol=0, atol=0)
    with pytest.raises(NotImplementedError, match="policy_log_pf with the Langevin term"):
        torch.func.vmap(lambda s: loss(lgv, s))(torch.stack([states, states + 0.1]))
