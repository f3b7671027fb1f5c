"""Statistical tests of the fused MALA kernel against exact answers (fixed seeds).

Target: a 2-D Gaussian mixture. Chains start at exact samples; a correct MH kernel
keeps them exactly distributed, while unadjusted Langevin (mh="none") at this step size
inflates the within-mode variance by about 1/(1 − ε/(2v)) — the tolerances below fail it.
"""
import pytest
import torch
from conftest import COMPILED, TRITON_INTERPRETED, assert_moved, backend_device, skip_unless_available, skip_unless_op

from fastsamp import ops

MEANS = torch.tensor([[-2.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
WEIGHTS = torch.tensor([0.4, 0.6], dtype=torch.float64)
VARS = torch.tensor([0.5, 0.3], dtype=torch.float64)


def exact_samples(n, seed):
    g = torch.Generator().manual_seed(seed)
    k = torch.multinomial(WEIGHTS, n, replacement=True, generator=g)
    return MEANS[k] + VARS[k, None].sqrt() * torch.randn(n, 2, generator=g, dtype=torch.float64)


def moments(x):
    x = x.double().cpu()
    right = x[:, 0] > 0
    return {"p_right": right.double().mean().item(), "var_y": x[:, 1].var().item(),
            "var_x_right": x[right, 0].var().item(), "mean_x_right": x[right, 0].mean().item()}


EXACT = {"p_right": 0.6, "var_y": 0.4 * 0.5 + 0.6 * 0.3, "var_x_right": 0.3, "mean_x_right": 2.0}
TOL = {"p_right": 0.02, "var_y": 0.025, "var_x_right": 0.025, "mean_x_right": 0.03}


def assert_exact_moments(x, n):
    """The moments of the n chains x are the exact ones, within TOL widened by √(20000/n)."""
    m = moments(x)
    for key, want in EXACT.items():
        tol = TOL[key] * (20000 / n) ** 0.5
        assert abs(m[key] - want) < tol, f"{key}: {m[key]:.4f} vs exact {want} ({m})"


def device_and_chains(name):
    """The device of backend `name`'s runs (skipped where it is unavailable) and their number of chains: fewer under
    the Triton interpreter (numpy), which is slow."""
    if name != "torch":
        skip_unless_available(name)
    device = backend_device(name) if name != "torch" else torch.device("cpu")
    return device, 4000 if name == "triton" and TRITON_INTERPRETED else 20000


def run_chains(backend, device, dtype, mh, n_trapezoid, n=20000, steps=20, eps=0.2):
    x = exact_samples(n, seed=0).to(dtype=dtype, device=device)
    args = [t.to(dtype=dtype, device=device) for t in (MEANS, WEIGHTS.log(), VARS)]
    return ops.gmm_mala(x, *args, step_size=eps, n_steps=steps, n_trapezoid=n_trapezoid, seed=42, mh=mh,
                        backend=backend)


# The statistical invariance runs take 25-40 s each on the Triton interpreter (numpy): there they are
# `slow`; the interpreted kernels' parity with the reference stays in the default run (test_ops).
STAT_BACKENDS = [pytest.param(b, marks=pytest.mark.slow) if b == "triton" and TRITON_INTERPRETED else b
                 for b in ("torch",) + COMPILED]


@pytest.mark.parametrize("name", STAT_BACKENDS)
@pytest.mark.parametrize("mh,n_trapezoid", [("score", 2), ("score", 3), ("energy", 1)])
def test_mh_keeps_the_mixture_invariant(name, mh, n_trapezoid):
    device, n = device_and_chains(name)
    x, rate = run_chains(name, device, torch.float32, mh, n_trapezoid, n=n)
    assert_exact_moments(x, n)
    assert 0.3 < rate.mean().item() < 0.99
    assert_moved(x, exact_samples(n, seed=0))


def test_unadjusted_langevin_is_biased_at_this_step():
    """The control: the same run without MH misses the exact variances by far more than TOL,
    so the invariance test above can fail."""
    x, rate = run_chains("torch", torch.device("cpu"), torch.float64, "none", 1)
    m = moments(x)
    assert rate.min().item() == 1.0
    assert m["var_x_right"] - EXACT["var_x_right"] > 4 * TOL["var_x_right"], m


def test_one_interval_trapezoid_halves_the_langevin_bias():
    """n_trapezoid = 1 is exact only for quadratic log-densities; on the mixture it is an
    approximation, but it must still remove most of ULA's variance bias."""
    cpu = torch.device("cpu")
    bias = {mh: moments(run_chains("torch", cpu, torch.float64, mh, 1)[0])["var_x_right"] - EXACT["var_x_right"]
            for mh in ("none", "score")}
    assert 0 <= bias["score"] < 0.4 * bias["none"], bias


def from_the_origin(mh, n_trapezoid, n=20000):
    """n chains from the origin after 4000 MALA moves of step 0.4."""
    x = torch.zeros(n, 2, dtype=torch.float64)
    return ops.gmm_mala(x, MEANS, WEIGHTS.log(), VARS, step_size=0.4, n_steps=4000, n_trapezoid=n_trapezoid, seed=3,
                        mh=mh)[0]


@pytest.mark.slow
def test_mala_converges_from_a_point():
    """From every chain at the origin, long runs with the exact MH test reach the exact mode weights."""
    assert_exact_moments(from_the_origin("energy", 1), 20000)


@pytest.mark.slow
def test_score_mh_from_a_point_converges_as_the_trapezoid_refines():
    """The score-based MH test's trapezoid is exact for Gaussians only: between the modes the score bends, and the
    chains' stationary law is biased (docs/design.md). From the origin, long runs weight the narrow right mode
    p_right = 0.18 / 0.56 / 0.586 at n_trapezoid = 1 / 3 / 9 (exact 0.6; measured): the error must shrink as the
    rule refines, and at n_trapezoid = 9 the moments must be the exact ones."""
    errors = []
    for n_trapezoid in (1, 3, 9):
        x = from_the_origin("score", n_trapezoid)
        errors.append(abs(moments(x)["p_right"] - EXACT["p_right"]))
    assert errors[0] > errors[1] > errors[2], errors
    assert_exact_moments(x, 20000)


@pytest.mark.parametrize("name", STAT_BACKENDS)
@pytest.mark.parametrize("mh,n_leapfrog,damping", [
    ("score", 3, 0.0), ("energy", 3, 0.0), ("score", 1, 0.0),
    ("energy", 1, 0.7),  # partial refresh: exact thanks to the momentum flip on rejection
])
def test_hmc_keeps_the_mixture_invariant(name, mh, n_leapfrog, damping):
    """Fused HMC from exact samples stays exactly distributed."""
    device, n = device_and_chains(name)
    if name != "torch":
        skip_unless_op(name, "gmm_hmc")
    x = exact_samples(n, seed=1).to(dtype=torch.float32, device=device)
    args = [t.to(dtype=torch.float32, device=device) for t in (MEANS, WEIGHTS.log(), VARS)]
    x, rate = ops.gmm_hmc(x, *args, step_size=0.3, n_steps=20, n_leapfrog=n_leapfrog, seed=7, mh=mh,
                          damping=damping, backend=name)
    assert_exact_moments(x, n)
    assert 0.3 < rate.mean().item() < 0.999
    assert_moved(x, exact_samples(n, seed=1))
