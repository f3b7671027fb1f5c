"""The model protocol (fastsamp.protocol): what a user's own model needs, the errors when it lacks it,
the BlackJAX-style kernels (init/step over ChainState), ops.energy_mh_accept and tensor schedules."""
import math

import pytest
import torch

from fastsamp import backends, ops
from fastsamp.models import GaussianMixture, ScoreModel
from fastsamp.protocol import CountingModel
from fastsamp.samplers import annealed_mcmc, mcmc
from fastsamp.samplers.kernels import HMC, ChainState, CorrectorSpec, Langevin, PhiloxKey, ScoreMH, make_kernel
from fastsamp.schedules import VE, VP
from fastsamp.targets import get_target

MIX = GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 0.0]], dtype=torch.float64),
                      torch.log(torch.tensor([0.4, 0.6], dtype=torch.float64)),
                      torch.tensor([0.5, 0.3], dtype=torch.float64))


class GaussianNet(torch.nn.Module):
    """A user's network: the score of N(0, I) at every t, with one (unused) parameter."""

    def __init__(self, dim=2, dtype=torch.float32):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(dim, dtype=dtype))

    def forward(self, x, t):
        return -x + 0 * self.w


def test_plain_module_and_callable_are_models():
    net = GaussianNet()
    with pytest.raises(TypeError, match="GaussianNet is a plain callable / nn.Module without a `dim`"):
        annealed_mcmc(net, 16, n_levels=3)
    net.dim = 2
    x, st = annealed_mcmc(net, 4000, n_levels=20, n_corrector_steps=2, seed=1)  # VP schedule by default
    assert abs(x.var().item() - 1.0) < 0.1 and st.accept_rate[-1] > 0.5
    x, rate = mcmc(lambda x, t: -x, torch.randn(64, 3), n_steps=3)  # dim from the chains
    assert x.shape == (64, 3) and rate.shape == (64,)


def test_duck_typed_model_without_backend_keyword():
    class Duck:
        dim, schedule = 2, VP()

        def score(self, x, t):
            return -x

    x, st = annealed_mcmc(Duck(), 64, n_levels=4, corrector="hmc")
    assert x.shape == (64, 2) and not st.fused


def test_default_mh_follows_the_corrector():
    for corrector in ("ula", "uhmc"):
        x, st = annealed_mcmc(MIX, 32, n_levels=3, corrector=corrector)
        assert all(r == 1.0 for r in st.accept_rate)
    with pytest.raises(ValueError, match="has no MH step"):
        annealed_mcmc(MIX, 32, n_levels=3, corrector="ula", mh="score")


def test_missing_pieces_are_named():
    class NoSchedule:
        dim = 2

        def score(self, x, t):
            return -x

    with pytest.raises(TypeError, match="got NoSchedule: it has no `schedule`"):
        annealed_mcmc(NoSchedule(), 8, n_levels=3)
    mcmc(NoSchedule(), torch.randn(8, 2), n_steps=1)  # mcmc needs no schedule
    with pytest.raises(ValueError, match="mh='energy' needs a model with an energy .* NoSchedule"):
        mcmc(NoSchedule(), torch.randn(8, 2), mh="energy")


def test_network_dtype_mismatch_is_named():
    net = GaussianNet()
    net.dim = 2
    with pytest.raises(TypeError, match="GaussianNet has float32 parameters but the chains are float64"):
        annealed_mcmc(net, 8, n_levels=3, dtype=torch.float64)
    with pytest.raises(TypeError, match="ScoreModel: its network GaussianNet has float32"):
        mcmc(ScoreModel(net, dim=2), torch.randn(8, 2, dtype=torch.float64), n_steps=1)


@pytest.mark.parametrize("bad,match", [
    (lambda x, t: -x[:, :1], r"returned a tensor of shape \(8, 1\).*expected shape \(8, 2\)"),
    (lambda x, t: -x.double(), "returned a tensor of shape .*float64.*expected .*float32"),
    (lambda x, t: (-x).tolist(), "returned list, expected a tensor"),
])
def test_wrong_model_output_is_named_as_the_models(bad, match):
    with pytest.raises(TypeError, match="model ScoreModel.score\\(x, t\\) " + match):
        mcmc(ScoreModel(bad, dim=2), torch.randn(8, 2), n_steps=1)


def test_errors_inside_the_model_get_a_note():
    def broken(x, t):
        raise RuntimeError("mat1 and mat2 must have the same dtype")

    with pytest.raises(RuntimeError, match="same dtype") as e:
        mcmc(ScoreModel(broken, dim=2), torch.randn(8, 2), n_steps=1)
    assert any("raised inside model ScoreModel.score(x, t)" in n for n in e.value.__notes__)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_cuda_device_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="device='cuda' but CUDA is not available"):
        annealed_mcmc(MIX, 8, n_levels=3, device="cuda")


def test_targets_are_models():
    target = get_target("25gmm")
    x0 = target.sample(512, torch.Generator().manual_seed(0)).float()
    x, rate = mcmc(target, x0, mh="energy", n_steps=5, step_size=0.05)
    assert rate.mean() > 0.5 and torch.isfinite(x).all()
    counted = CountingModel(target)
    counted.score_and_log_prob(x0)  # t defaults to None for a target
    assert counted.calls == 512 and counted.has_energy


# --- kernels: init / step over a plain state ---------------------------------------------------------------

def test_kernel_steps_are_the_samplers_moves():
    x0 = MIX.sample(256, torch.Generator().manual_seed(0))
    want, rate = mcmc(MIX, x0, t=0.2, n_steps=4, step_size=0.3, n_trapezoid=2, seed=7, offset=3, fused=False)
    model = CountingModel(MIX)
    kernel = Langevin(model, 0.2, torch.full((256,), 0.3, dtype=x0.dtype), ScoreMH(2))
    state = kernel.init(x0)
    accepted = torch.zeros(256, dtype=x0.dtype)
    for m in range(4):
        state, info = kernel.step(state, PhiloxKey(7, 3 + m, 0))
        accepted += info.accepted
        assert info.log_alpha.shape == (256,)
    torch.testing.assert_close(state.x, want, rtol=0, atol=0)
    torch.testing.assert_close(accepted / 4, rate)
    assert model.calls == 256 * (1 + 4 * 2)


def test_rejected_hmc_flips_the_momentum():
    x0 = MIX.sample(64, torch.Generator().manual_seed(1))
    spec = CorrectorSpec("hmc", "score", n_steps=1, n_leapfrog=3, damping=0.5)
    kernel = make_kernel(CountingModel(MIX), 0.0, torch.full((64,), 0.6, dtype=x0.dtype), spec)
    assert isinstance(kernel, HMC) and kernel.damping == 0.5  # an explicit damping applies to "hmc" too
    kernel = HMC(kernel.model, 0.0, kernel.step_size, kernel.mh, 3, damping=0.5)
    state = kernel.init(x0, torch.randn(64, 2, dtype=x0.dtype))
    refreshed = ops.momentum_refresh(state.momentum, 0.5, seed=0, offset=0)
    new, info = kernel.step(state, PhiloxKey(0, 0, 0))
    rejected = ~info.accepted
    assert rejected.any() and info.accepted.any()
    torch.testing.assert_close(new.momentum[rejected], -refreshed[rejected])
    torch.testing.assert_close(new.x[rejected], x0[rejected])
    assert isinstance(new, ChainState) and new.logp is None


# --- ops.energy_mh_accept ---------------------------------------------------------------------------------

def test_energy_mh_accept_is_the_exact_mala_test():
    g = torch.Generator().manual_seed(0)
    x, xp = torch.randn(32, 3, generator=g, dtype=torch.float64), torch.randn(32, 3, generator=g, dtype=torch.float64)
    s, sp = -x, -xp
    logp, logp_p = -0.5 * (x * x).sum(1), -0.5 * (xp * xp).sum(1)
    u = torch.rand(32, generator=g, dtype=torch.float64)
    u[0] = float("nan")
    x_new, s_new, logp_new, acc, log_alpha = ops.energy_mh_accept(x, xp, s, sp, logp, logp_p, 0.2, u)
    fwd, bwd = xp - x - 0.2 * s, x - xp - 0.2 * sp
    want = logp_p - logp - ((bwd * bwd).sum(1) - (fwd * fwd).sum(1)) / 0.8
    torch.testing.assert_close(log_alpha, want)
    assert not acc[0] and torch.equal(acc[1:], torch.log(u[1:]) < want[1:])
    torch.testing.assert_close(x_new, torch.where(acc[:, None], xp, x), rtol=0, atol=0)
    torch.testing.assert_close(logp_new, torch.where(acc, logp_p, logp), rtol=0, atol=0)
    with pytest.raises(ValueError, match="logp_prop must have shape \\(32,\\)"):
        ops.energy_mh_accept(x, xp, s, sp, logp, logp_p[:3], 0.2, u)


def test_a_backend_without_the_ops_kernel_is_named():
    """An explicit backend that lacks the op's kernel raises naming both (policy_rollout: the reference and C++
    only)."""
    if not backends.is_available("triton"):
        pytest.skip("the triton backend is not available")
    from fastsamp.samplers.diffusion import DriftNet

    net = DriftNet(2, hidden=8, n_harmonics=4)
    temb = net.time_features(torch.arange(3) / 3)[0].detach()
    with pytest.raises(ValueError, match="op 'policy_rollout' has no 'triton' kernel"):
        ops.policy_rollout(net, temb, 4, sigma=1.0, backend="triton")


# --- schedules on tensors -------------------------------------------------------------------------------

@pytest.mark.parametrize("schedule", [VP(), VE()], ids=["VP", "VE"])
def test_schedules_take_tensors_and_floats(schedule):
    t = torch.tensor([0.0, 0.25, 0.7, 1.0], dtype=torch.float64)
    for name in ("alpha", "sigma2", "sigma", "drift_coef", "g2"):
        got = getattr(schedule, name)(t)
        assert isinstance(got, torch.Tensor) and got.shape == t.shape
        want = [getattr(schedule, name)(float(v)) for v in t]
        assert all(math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-300) for a, b in zip(got.tolist(), want))
    with pytest.raises(TypeError, match="t must be a float or a floating tensor"):
        schedule.alpha(torch.tensor([0, 1]))


# --- every model of the package follows the protocol -----------------------------------------------------

def _conforming_models():
    from fastsamp.experiments import digits
    from fastsamp.models import EnergyModel, Product, ScoreMLP
    from fastsamp.samplers.importance import Tilted
    mix32 = MIX.to(dtype=torch.float32)
    posterior = digits.NoisePosterior(digits.VAEDecoder(latent_dim=2, hidden=8),
                                      lambda x: -x.square().sum(1), lam=0.5)
    return {
        "GaussianMixture": mix32, "Product": Product(mix32, mix32),
        "ScoreModel": ScoreModel(lambda x, t: -x, 2), "ScoreMLP": ScoreMLP(2, hidden=8),
        "EnergyModel": EnergyModel(lambda x, t: 0.5 * x.square().sum(1), 2),
        "Tilted": Tilted(mix32, lambda x: -x.square().sum(1)), "target 25gmm": get_target("25gmm"),
        "NoisePosterior": posterior,
    }


@pytest.mark.parametrize("name", list(_conforming_models()))
def test_every_model_follows_the_protocol(name):
    model = _conforming_models()[name]
    x = torch.randn(5, 2)
    x_out, rate = mcmc(model, x, n_steps=2, step_size=0.01)
    assert x_out.shape == (5, 2) and rate.shape == (5,)
    counted = CountingModel(model)
    assert counted.score(x, 0.5).shape == (5, 2)
    if counted.has_energy:
        s, logp = counted.score_and_log_prob(x, 0.5)
        assert logp.shape == (5,)
        mcmc(model, x, mh="energy", n_steps=2, step_size=0.01)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_every_sampler_names_a_missing_cuda_device():
    from fastsamp.samplers import importance_sde
    from fastsamp.samplers.diffusion import DiffusionSampler
    with pytest.raises(ValueError, match="device='cuda' but CUDA is not available"):
        importance_sde(MIX, lambda x: x[:, 0], 8, n_steps=2, device="cuda")
    sampler = DiffusionSampler(get_target("25gmm"), n_steps=4, hidden=8, n_harmonics=4)
    with pytest.raises(ValueError, match="device='cuda' but CUDA is not available"):
        sampler.sample(4, device="cuda")
