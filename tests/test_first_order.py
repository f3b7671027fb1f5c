"""The fused backwards are first order: a second derivative through them raises, naming the op, instead of silently
dropping the terms through their saved tensors (`ops._autograd.first_order`); under create_graph=True the first
derivative is bit for bit the plain one. mlp_net's case: tests/test_mlp_train.py."""
import pytest
import torch

from fastsamp import backends, ops
from fastsamp.samplers.diffusion import DriftNet


def _mlp(loss_op):
    torch.manual_seed(0)
    ws = [torch.randn(8, 3, requires_grad=True), torch.randn(3, 8, requires_grad=True)]
    bs = [torch.randn(8, requires_grad=True), torch.randn(3, requires_grad=True)]
    x, c, k = torch.randn(9, 3), torch.randn(9, 3), torch.rand(9)
    if loss_op == "mlp_net_lsq":
        return lambda: ops.mlp_net_lsq(x, ws, bs, c, k), ws + bs
    v, sigma, z = torch.rand(9) + 0.5, torch.rand(9), torch.randn(9, 3)
    return lambda: ops.mlp_net_energy_lsq(x, ws, bs, c, v, sigma, z), ws + bs


def _em(given):
    torch.manual_seed(0)
    x, drift = torch.randn(7, 3, requires_grad=True), torch.randn(7, 3, requires_grad=True)
    if given:
        x_next = torch.randn(7, 3)
        return lambda: sum(t.sum() for t in ops.em_step_logprob(x, drift, sigma=1.0, t=0.3, h=0.1,
                                                                  x_next=x_next)[1:]), [x, drift]
    return lambda: sum((t * t).sum() for t in ops.em_step_logprob(x, drift, sigma=1.0, t=0.3, h=0.1,
                                                                    seed=1)), [x, drift]


def _policy(op):
    torch.manual_seed(0)
    net, T = DriftNet(3, hidden=16, n_harmonics=8, n_layers=1), 5
    ts = torch.arange(T) / T
    if op == "policy_log_pf":
        states = ops.policy_rollout(net, net.time_features(ts)[0].detach(), 4, sigma=1.0)[0]
        loss = lambda: ops.policy_log_pf(net, states, net.time_features(ts)[0], sigma=1.0, backend="cpp").sum()  # noqa: E731
    else:
        def loss():
            states, _, log_pb = ops.policy_rollout(net, net.time_features(ts)[0], 4, sigma=1.0, reparam=True)
            return (states ** 2).sum() + log_pb.sum()
    return loss, [net.state.weight, net.joint[1].weight]


CASES = {"mlp_net_lsq": lambda: _mlp("mlp_net_lsq"), "mlp_net_energy_lsq": lambda: _mlp("mlp_net_energy_lsq"),
         "em_step_logprob": lambda: _em(False), "em_step_logprob x_next": lambda: _em(True),
         "policy_log_pf": lambda: _policy("policy_log_pf"), "policy_rollout": lambda: _policy("policy_rollout")}


@pytest.mark.skipif(not backends.is_available("cpp"), reason="the fused C++ kernels")
@pytest.mark.parametrize("case", list(CASES))
def test_second_derivative_raises_naming_the_op(case):
    op = case.split()[0]
    loss, wrt = CASES[case]()
    plain = torch.autograd.grad(loss(), wrt)
    grads = torch.autograd.grad(loss(), wrt, create_graph=True)
    assert all(torch.equal(a, b) for a, b in zip(plain, grads))  # first order unchanged under create_graph
    assert all(g.requires_grad for g in grads)
    with pytest.raises(RuntimeError, match=f"{op} is differentiable once"):
        torch.autograd.grad(sum((g * g).sum() for g in grads), wrt)
    grads = torch.autograd.grad(loss(), wrt, create_graph=True)
    with pytest.raises(RuntimeError, match=f"{op} is differentiable once"):
        sum((g * g).sum() for g in grads).backward()
