"""The value-check switch: fastsamp.set_validation / validation / FASTSAMP_VALIDATE.

Value checks (finite / positive / in-range values of float arguments and tensor contents) read
tensors on the host; they run only with validation on and outside torch.compile tracing.
Structure checks (types, shapes, dtypes, devices, counts, the HMC damping's range) always run.
"""
import math
import os
import subprocess
import sys

import pytest
import torch

import fastsamp
from fastsamp import VP, ops
from fastsamp.ops import _checks

F64 = torch.float64
HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")


@pytest.fixture(autouse=True)
def _restore_validation():
    before = fastsamp.validation_enabled()
    yield
    fastsamp.set_validation(before)


def mix(D=3, K=2):
    torch.manual_seed(1)
    return torch.randn(K, D, dtype=F64), torch.zeros(K, dtype=F64), torch.ones(K, dtype=F64)


def test_switch_and_context_manager():
    fastsamp.set_validation(True)
    assert fastsamp.validation_enabled()
    with fastsamp.validation(False):
        assert not fastsamp.validation_enabled()
        with fastsamp.validation(True):
            assert fastsamp.validation_enabled()
        assert not fastsamp.validation_enabled()
    assert fastsamp.validation_enabled()
    with pytest.raises(TypeError, match="enabled must be a bool"):
        fastsamp.set_validation("off")


@pytest.mark.parametrize("raw,expect", [(None, True), ("", True), ("1", True), ("on", True), ("True", True),
                                        ("0", False), ("off", False), ("no", False), ("FALSE", False)])
def test_environment_variable(monkeypatch, raw, expect):
    if raw is None:
        monkeypatch.delenv("FASTSAMP_VALIDATE", raising=False)
    else:
        monkeypatch.setenv("FASTSAMP_VALIDATE", raw)
    assert _checks._validation_from_env() is expect


def test_environment_variable_sets_the_initial_value(monkeypatch):
    """A value it does not take is an error naming it; the import reads it (its values: `test_environment_variable`)."""
    monkeypatch.setenv("FASTSAMP_VALIDATE", "maybe")
    with pytest.raises(ValueError, match="FASTSAMP_VALIDATE must be one of"):
        _checks._validation_from_env()
    code = "import fastsamp; print(fastsamp.validation_enabled())"
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, FASTSAMP_VALIDATE="0"),
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_value_checks_are_off_structure_checks_stay():
    x = torch.randn(4, 3, dtype=F64)
    means, lw, var = mix()
    bad_eps = torch.tensor([0.1, math.nan, -1.0, 0.1], dtype=F64)
    bad_means = means.clone()
    bad_means[0, 0] = math.inf
    with fastsamp.validation(False):
        ops.mala_propose(x, x, bad_eps, seed=0)
        ops.mala_propose(x, x, math.nan, seed=0)
        ops.gmm_score(x, bad_means, lw, -var)
        ops.gmm_mala(x, means, lw, var, step_size=bad_eps, n_steps=1)
        ops.reverse_sde_step(x, x, t=0.5, h=1e-50, schedule=VP(), seed=0)
        with pytest.raises(ValueError, match="score must have shape"):
            ops.mala_propose(x, x[:3], bad_eps, seed=0)
        with pytest.raises(TypeError, match="step_size must be a real number"):
            ops.mala_propose(x, x, "0.1", seed=0)
        with pytest.raises(TypeError, match="means must have dtype"):
            ops.gmm_score(x, bad_means.float(), lw, var)
        with pytest.raises(ValueError, match="n_steps must be >= 1"):
            ops.gmm_mala(x, means, lw, var, step_size=0.1, n_steps=0)
    with pytest.raises(ValueError, match="step_size must be finite and > 0"):
        ops.mala_propose(x, x, bad_eps, seed=0)
    with pytest.raises(ValueError, match="means must be finite"):
        ops.gmm_score(x, bad_means, lw, var)


@pytest.mark.parametrize("damping", [1.0, 1.5, -0.1, math.nan])
def test_damping_is_checked_with_validation_off(damping):
    """The HMC damping's range is checked whatever the switch (a Python scalar, once per call): γ = 1 never
    refreshes the momentum, so chains from one point stay one deterministic trajectory with acceptance 1 and
    no NaN to show it; the fused CPU kernels reject it themselves, and the generic path says the same."""
    from fastsamp.models import GaussianMixture
    from fastsamp.samplers.annealed import mcmc
    x = torch.randn(4, 3, dtype=F64)
    means, lw, var = mix()
    message = "damping must be in \\[0.0, 1.0\\), got"
    with fastsamp.validation(False):
        with pytest.raises(ValueError, match=message):
            ops.momentum_refresh(x, damping, seed=0)
        with pytest.raises(ValueError, match=message):
            ops.gmm_hmc(x, means, lw, var, step_size=0.1, n_steps=1, damping=damping)
        with pytest.raises(ValueError, match=message):
            mcmc(GaussianMixture(means, lw, var), x, corrector="hmc", damping=damping, n_steps=1, fused=False)


def _one_move(op, backend, x, eps, means, lw, var):
    """The outputs of one call of `op` with per-chain step sizes eps."""
    torch.manual_seed(2)
    s, s2, u = torch.randn_like(x), torch.randn_like(x), torch.rand(x.shape[0], dtype=x.dtype)
    if op == "mala_propose":
        return (ops.mala_propose(x, s, eps, seed=3, backend=backend),)
    if op == "score_mh_accept":
        return ops.score_mh_accept(x, x + 0.1 * s2, s, s2, eps, u, backend=backend)
    if op == "leapfrog":
        return ops.leapfrog(x, s2, s, eps, backend=backend)
    kw = dict(step_size=eps, n_steps=3, seed=4, backend=backend)
    return getattr(ops, op)(x, means, lw, var, **kw)


@pytest.mark.parametrize("op", ["mala_propose", "score_mh_accept", "leapfrog", "gmm_mala", "gmm_hmc"])
@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_non_finite_chain_stays_in_its_chain_with_validation_off(op, backend):
    """A NaN (or negative) step size of one chain, unchecked, reaches only that chain: every other
    chain's outputs are finite and equal to the validated run with a valid step size there."""
    from conftest import skip_unless_available
    if backend != "torch":
        skip_unless_available(backend)
    x = torch.randn(6, 3, dtype=F64)
    means, lw, var = mix()
    good = torch.full((6,), 0.05, dtype=F64)
    expect = _one_move(op, backend, x, good, means, lw, var)
    keep = torch.tensor([True, True, False, True, False, True])
    bad = good.clone()
    bad[2], bad[4] = math.nan, -1.0
    with fastsamp.validation(False):
        got = _one_move(op, backend, x, bad, means, lw, var)
    for g, e in zip(got, expect):
        if g.is_floating_point():
            assert torch.isfinite(g[keep]).all()
        torch.testing.assert_close(g[keep], e[keep], rtol=0, atol=0)
    if op == "score_mh_accept":  # the NaN chain's log α is NaN: rejected
        assert math.isnan(got[3][2]) and not got[2][2]
    elif op in ("gmm_mala", "gmm_hmc"):  # NaN proposals are all rejected
        assert got[1][2] == 0
    else:
        assert not torch.isfinite(got[0][2]).all()


@pytest.fixture
def no_host_reads(monkeypatch):
    """Reading a tensor's value on the host (a device sync on a GPU) raises while the fixture is active."""
    def refuse(name):
        def read(self, *args, **kwargs):
            raise AssertionError(f"Tensor.{name} called: a host read of a tensor's value")
        return read
    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, refuse(name))


def _calls_with_tensor_arguments(backend):
    torch.manual_seed(0)
    x, s = torch.randn(64, 8), torch.randn(64, 8)
    eps, u = torch.full((64,), 0.1), torch.rand(64)
    means, lw, var = torch.randn(4, 8), torch.zeros(4), torch.ones(4)
    ops.gmm_score(x, means, lw, var, alpha=0.9, sigma2=0.1, backend=backend)
    ops.gmm_mala(x, means, lw, var, step_size=eps, n_steps=2, seed=1, backend=backend)
    ops.gmm_hmc(x, means, lw, var, step_size=eps, n_steps=2, seed=1, backend=backend)
    ops.mala_propose(x, s, eps, seed=1, backend=backend)
    ops.score_mh_accept(x, x, s, s, eps, u, backend=backend)
    ops.leapfrog(x, s, s, eps, backend=backend)
    ops.reverse_sde_step(x, s, t=0.5, h=0.01, schedule=VP(), seed=1, backend=backend)


def test_no_host_read_of_tensor_values_with_validation_off(no_host_reads):
    """With validation off, the checks of the cpp path read no tensor value on the host (no .item(),
    bool(), .tolist()): on a GPU no device sync, under torch.compile no graph break from the checks."""
    from conftest import skip_unless_available
    skip_unless_available("cpp")
    with fastsamp.validation(False):
        _calls_with_tensor_arguments("cpp")
    with pytest.raises(AssertionError, match="host read"):  # the validated path does read them
        _calls_with_tensor_arguments("cpp")


def test_checks_cause_no_graph_break_under_compile():
    """While torch.compile traces, the value checks are skipped (default settings): no graph break comes
    from fastsamp/ops/_checks.py. (The direct pybind call of the cpp kernel still breaks the graph
    until the ops are registered with torch.library.)"""
    from conftest import skip_unless_available
    skip_unless_available("cpp")
    assert fastsamp.validation_enabled()
    means, lw, var = torch.randn(4, 3), torch.zeros(4), torch.ones(4)

    def step(x, s, eps, u):
        score, _ = ops.gmm_score(x, means, lw, var, backend="cpp")
        x_prop = ops.mala_propose(x, score, eps, seed=0, backend="cpp")
        return ops.score_mh_accept(x, x_prop, score, s, eps, u, backend="cpp")

    torch._dynamo.reset()
    try:
        ex = torch._dynamo.explain(step)(torch.randn(8, 3), torch.randn(8, 3), torch.full((8,), 0.1), torch.rand(8))
    finally:
        torch._dynamo.reset()
    frames = [f.filename for r in ex.break_reasons for f in r.user_stack]
    assert frames, "expected the pybind call to break the graph (update this test once the ops are registered)"
    assert not [f for f in frames if f.endswith("_checks.py")], ex.break_reasons


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (counts device syncs)")
def test_checks_do_not_sync_cuda_with_validation_off():
    """On CUDA tensors the checks of a whole op's arguments make no device sync with validation off
    (torch.cuda.set_sync_debug_mode raises on one), and do sync with it on."""
    x, s = torch.randn(64, 8, device="cuda"), torch.randn(64, 8, device="cuda")
    eps, u = torch.full((64,), 0.1, device="cuda"), torch.rand(64, device="cuda")
    means, lw, var = torch.randn(4, 8, device="cuda"), torch.zeros(4, device="cuda"), torch.ones(4, device="cuda")

    def check_all():
        _checks.state("x", x)
        _checks.like("score", s, x)
        _checks.step_size(eps, x)
        _checks.step_size(0.1, x)
        _checks.uniforms("u", u, x)
        _checks.mixture(x, means, lw, var, 0.9, 0.1)

    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with fastsamp.validation(False):
            check_all()
        with pytest.raises(RuntimeError, match="synchroniz"):
            check_all()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_degenerate_mixture_check_equals_the_elementwise_one(dtype):
    """The mixture check evaluates alpha² v + sigma2 on the host at the extreme variances; it refuses
    exactly the mixtures whose elementwise torch value is non-finite or below the smallest normal value (<= 0 or
    subnormal: the compiled kernels flush subnormals to 0) somewhere."""
    gen = torch.Generator().manual_seed(5)
    big = 300 if dtype == torch.float64 else 38
    x = torch.zeros(2, 3, dtype=dtype)
    for _ in range(300):
        e = (torch.rand(4, generator=gen, dtype=torch.float64) * 2 - 1) * (big + 8)
        alpha, sigma2 = 10 ** (e[0].item() / 2), (0.0 if e[1] < 0 else 10 ** e[1].item())
        variances = (10 ** ((torch.rand(3, generator=gen, dtype=torch.float64) * 2 - 1) * big)).to(dtype)
        if not (variances > 0).all() or not torch.isfinite(variances).all():
            continue
        s = alpha * alpha * variances + sigma2
        expect_ok = bool((torch.isfinite(s) & (s >= torch.finfo(dtype).tiny)).all())
        means, lw = torch.zeros(3, 3, dtype=dtype), torch.zeros(3, dtype=dtype)
        try:
            _checks.mixture(x, means, lw, variances, alpha, sigma2)
            ok = True
        except ValueError as err:
            if "degenerate mixture" not in str(err):  # alpha or sigma2 themselves out of the dtype's range
                continue
            ok = False
        assert ok == expect_ok, (alpha, sigma2, variances)


def _bad_scalar_calls():
    """Calls whose bad scalar (value checks off) made the host arithmetic of an op or of its reference raise
    Python's 'math domain error' / ZeroDivisionError, which names no argument."""
    from fastsamp.samplers.diffusion import DriftNet
    torch.manual_seed(0)
    x, s = torch.randn(4, 3, dtype=F64), torch.randn(4, 3, dtype=F64)
    net = DriftNet(3, hidden=8, n_harmonics=4, n_layers=1).double()
    temb = net.time_features(torch.arange(3, dtype=F64) / 3)[0].detach()
    states = torch.randn(4, 4, 3, dtype=F64)
    score_net = ops.ScoreNet((0.3 * torch.randn(5, 7, dtype=F64), 0.3 * torch.randn(3, 5, dtype=F64)),
                             (torch.zeros(5, dtype=F64), torch.zeros(3, dtype=F64)), torch.ones(2, dtype=F64),
                             torch.zeros(3, dtype=F64), -1.0, 0.4, 0.8, 0.0)  # data_var < 0: v < 0
    return {
        "sde_h<0": lambda b: ops.reverse_sde_step(x, s, t=0.5, h=-0.01, schedule=VP(), seed=1, backend=b),
        "guided_fd_eps=0": lambda b: ops.guided_sde_step(x, s, s, s, t=0.5, h=0.01, schedule=VP(), fd_eps=0.0,
                                                         seed=1, backend=b),
        "em_h<0": lambda b: ops.em_step_logprob(x, s, sigma=1.0, t=0.5, h=-0.01, seed=1, backend=b),
        "em_t+h=0": lambda b: ops.em_step_logprob(x, s, sigma=1.0, t=0.0, h=0.0, seed=1, backend=b),
        "rollout_h=0": lambda b: ops.policy_rollout(net, temb, 4, sigma=1.0, h=0.0, seed=1, backend=b),
        "rollout_h<0": lambda b: ops.policy_rollout(net, temb, 4, sigma=1.0, h=-0.1, seed=1, backend=b),
        "log_pf_sigma=0": lambda b: ops.policy_log_pf(net, states, temb, sigma=0.0, backend=b),
        "log_pf_h<0": lambda b: ops.policy_log_pf(net, states, temb, sigma=1.0, h=-0.1, backend=b),
        "mlp_score_v<0": lambda b: ops.mlp_score(x, score_net, backend=b),
    }


@pytest.mark.parametrize("case", list(_bad_scalar_calls()))
def test_a_bad_scalar_gives_non_finite_values_on_every_backend_with_validation_off(case):
    """As the compiled kernels do: NaN/inf in the outputs (the reference raised, or both backends did)."""
    call = _bad_scalar_calls()[case]
    with fastsamp.validation(False):
        expect = call("torch")
        if fastsamp.backends.is_available("cpp"):
            for got, want in zip(call("cpp"), expect):
                torch.testing.assert_close(got, want, equal_nan=True, rtol=1e-10, atol=1e-10)
    assert not all(bool(t.isfinite().all()) for t in (expect if isinstance(expect, tuple) else (expect,)))
