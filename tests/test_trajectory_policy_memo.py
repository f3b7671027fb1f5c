"""The policy ops' memo of a DriftNet's checked, packed layers (ops/trajectory.py PolicyParams, `_layers.memoised`):
repeated calls check and pack the layers once, and every change of them is seen (an in-place write, a new
Parameter, a dtype change, writes that bump no version counter); the memo keeps one state of the layers."""
import copy

import pytest
import torch
from test_trajectory_policy import POLICY_SIGMA, cpp_only, make_sampler, temb_of

from fastsamp import ops


@cpp_only
def test_memoised_layers_see_every_change(monkeypatch):
    """Repeated policy calls with unchanged weights check and pack the layers once (bits unchanged against a copy
    of the net, whose memo is its own); an in-place write (an optimizer step), a new Parameter and a dtype change
    of the module (`.data =`) are seen."""
    from fastsamp.ops import _layers
    builds = []
    pack = _layers.pack_layers
    monkeypatch.setattr(_layers, "pack_layers", lambda *a, **k: builds.append(1) or pack(*a, **k))
    s = make_sampler(2, 8, 1, 3, torch.float64, seed=4)
    temb = temb_of(s, torch.float64)

    def both(net):
        states, log_pf, _ = ops.policy_rollout(net, temb, 5, sigma=POLICY_SIGMA, seed=2)
        return states, log_pf, ops.policy_log_pf(net, states, temb, sigma=POLICY_SIGMA)

    def same(a, b):
        return all(torch.equal(u, v) for u, v in zip(a, b))

    first = both(s.net)
    assert same(both(s.net), first) and len(builds) == 2  # rollout (cast, no grad) and log_pf: one memo each
    assert same(both(copy.deepcopy(s.net)), first) and len(builds) == 4
    with torch.no_grad():
        s.net.state.weight.add_(0.25)
    n = len(builds)
    stepped = both(s.net)
    assert len(builds) == n + 2 and not same(stepped, first) and same(stepped, both(copy.deepcopy(s.net)))
    s.net.joint[1].weight = torch.nn.Parameter(s.net.joint[1].weight.detach() * 0.5)
    n = len(builds)
    assert same(both(s.net), both(copy.deepcopy(s.net))) and len(builds) == n + 4
    s.net.float()  # parameters converted in place (`.data =`): same objects, new dtype
    with pytest.raises(TypeError, match="dtype"):
        ops.policy_log_pf(s.net, first[0], temb, sigma=POLICY_SIGMA)


def _rollout64(net, temb):
    """A float64 rollout and log p_F of `net` (a float32 net: the layers are cast, a copy the memo must not keep)."""
    states, log_pf, _ = ops.policy_rollout(net, temb, 5, sigma=POLICY_SIGMA, seed=2, dtype=torch.float64)
    return states, log_pf


@cpp_only
@pytest.mark.parametrize("write", ["fused_adam", "data_mul", "data_transpose"])
def test_memoised_layers_see_writes_without_a_version_bump(write):
    """Writes that bump no version counter are seen by a rollout that casts a float32 net to float64: a fused Adam
    step, `p.data.mul_()`, and `w.data = w.data.t()` on a square hidden layer (only the strides change). Each result
    equals a fresh deep copy's."""
    s = make_sampler(2, 8, 1, 3, torch.float32, seed=4)
    temb = temb_of(s, torch.float32).detach().double()
    first = _rollout64(s.net, temb)
    hidden = s.net.joint[1].weight  # (H, H)
    if write == "fused_adam":
        opt = torch.optim.Adam(s.net.parameters(), lr=0.1, fused=True)
        for p in s.net.parameters():
            p.grad = torch.ones_like(p)
        versions = [p._version for p in s.net.parameters()]
        opt.step()
        assert versions == [p._version for p in s.net.parameters()]  # what the memo cannot rely on
    elif write == "data_mul":
        hidden.data.mul_(0.5)
    else:
        hidden.data = hidden.data.t()
    stepped = _rollout64(s.net, temb)
    # the states, not log p_F: log p_F of a rollout's own steps is the log-density of its noise, whatever the
    # drift, so it changes only by rounding (on some CPUs not at all)
    assert not torch.equal(stepped[0], first[0])
    for a, b in zip(stepped, _rollout64(copy.deepcopy(s.net), temb)):
        assert torch.equal(a, b)


@cpp_only
def test_memo_keeps_one_state_of_the_layers():
    """After a dtype change of the net and a rollout, the memo holds the current layers only (no old storage)."""
    from fastsamp.ops.trajectory import _CHECKED
    s = make_sampler(2, 8, 1, 3, torch.float32, seed=4)
    temb = temb_of(s, torch.float32).detach()
    ops.policy_rollout(s.net, temb, 5, sigma=POLICY_SIGMA, seed=2)
    ops.policy_log_pf(s.net, ops.policy_rollout(s.net, temb, 5, sigma=POLICY_SIGMA, seed=2)[0], temb,
                      sigma=POLICY_SIGMA)
    assert len(_CHECKED[s.net]) >= 1
    s.net.double()
    ops.policy_rollout(s.net, temb.double(), 5, sigma=POLICY_SIGMA, seed=2)
    memo = _CHECKED[s.net]
    assert len({key for key, _, _ in memo.values()}) == 1
    assert all(t.dtype == torch.float64 for _, tensors, _ in memo.values() for t in tensors)
