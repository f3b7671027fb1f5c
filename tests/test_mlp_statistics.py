"""Statistics of annealed MCMC on a product of two trained ScoreMLPs, and of two trained EnergyMLPs (issue 11,
"score-MH must not be worse than ULA on a 2-D product, with tolerances that a broken kernel fails").

Two isotropic 2-D Gaussian mixtures A, B (two components each) have an exact product A·B, a four-component
mixture (`Product.as_mixture`). A ScoreMLP is trained on samples of each (hidden 64, 1500 Adam steps, fixed
seeds) and `annealed_mcmc` samples Product(net_A, net_B) on the fused kernels (ops.mlp_mala) with

- MALA, the score-trapezoid MH (n_trapezoid 2), and
- ULA with the same step size, large enough (ε = 0.3 at t_min, about 1.75× the product's component
  variance 0.171) that its discretisation bias, a variance inflation, dominates the networks' error.

Both are compared to exact samples of A·B by the exact 2-Wasserstein distance (fastsamp.metrics).

Measured (float64 chains, 2000 chains, 20 levels × 20 moves; networks and reference fixed), chain seed 0
(the test) and seeds 1-5 (run outside pytest): W2(MALA, exact) 0.122 and 0.132-0.156, W2(ULA, exact) 0.335
and 0.350-0.370, their difference 0.19-0.24; W2 between two exact sample sets of this size 0.067;
final-level MALA acceptance 0.699-0.701. A broken MH (the "MALA" run with mh="none", which is what an
always-accept kernel does) gives the ULA samples: W2 0.335, acceptance 1.000, and fails every bound below
(checked by running the test so broken: `W2(MALA) <= 0.2` fires).
Bounds: W2(MALA) ≤ 0.2, W2(ULA) - W2(MALA) ≥ 0.1, final-level acceptance in [0.5, 0.9]. The generic path
(fused=False) gives the same samples to 1e-8 and the same acceptance (same Philox stream). About 13-15 s on
one thread (training 6 s).

The same with EnergyMLPs (`parameterisation="energy"`, the same networks and training) and the exact energy MH
(ops.mlp_energy_mala, mh="energy"), marked slow (its training runs fused, ops.mlp_net_energy_lsq; through the
energy's autograd score, fused=False, it took about 26 s on the loaded 2-core machine). Measured, chain seeds
0-2: W2(MALA) 0.131, 0.136, 0.125, W2(ULA) 0.346, 0.357, 0.361, final-level acceptance 0.708-0.709 (score-MH
MALA on the same energy networks: W2 0.134, 0.141, 0.132); the same bounds.
"""
import pytest
import torch

from fastsamp.metrics import wasserstein2
from fastsamp.models import GaussianMixture, Product, train_score_mlp
from fastsamp.samplers import annealed_mcmc

F64 = torch.float64
N_CHAINS = 2000
SAMPLER = dict(n_levels=20, n_corrector_steps=20, step_size=0.3, n_trapezoid=2, dtype=F64)
W2_MALA_MAX = 0.2  # measured 0.122-0.156
W2_MARGIN = 0.1  # W2(ULA) - W2(MALA), measured 0.19-0.24
ACCEPT_BAND = (0.5, 0.9)  # final-level MALA acceptance, measured 0.699-0.701


def factors():
    """The two exact 2-D mixtures whose product is the target."""
    a = GaussianMixture(torch.tensor([[-1.0, 0.0], [1.0, 0.0]], dtype=F64), torch.zeros(2, dtype=F64),
                        torch.tensor([0.3, 0.3], dtype=F64))
    b = GaussianMixture(torch.tensor([[0.0, 0.6], [0.5, -0.8]], dtype=F64), torch.tensor([0.0, -0.4], dtype=F64),
                        torch.tensor([0.4, 0.4], dtype=F64))
    return a, b


def trained_product(parameterisation="score"):
    """(Product of the two trained ScoreMLPs (EnergyMLPs) in float64, exact product mixture)."""
    a, b = factors()
    g = torch.Generator().manual_seed(0)
    nets = [train_score_mlp(m.sample(4000, g), n_iters=1500, batch_size=256, hidden=64, seed=i,
                            parameterisation=parameterisation).double() for i, m in enumerate((a, b))]
    return Product(*nets), Product(a, b).as_mixture()


def final_accept(stats):
    """Mean MALA acceptance over the last 5 levels (t near t_min, where the target is the product)."""
    return sum(stats.accept_rate[-5:]) / 5


def trained(parameterisation):
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: one thread is fastest and immune to a busy machine
    try:
        model, exact = trained_product(parameterisation)
        yield model, exact, exact.sample(N_CHAINS, torch.Generator().manual_seed(123))
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def setup():
    yield from trained("score")


@pytest.fixture(scope="module")
def energy_setup():
    yield from trained("energy")


def test_score_mh_beats_ula_on_a_product_of_trained_mlps(setup):
    check_mala_beats_ula(*setup, mh="score")


@pytest.mark.slow
def test_energy_mh_beats_ula_on_a_product_of_trained_energy_mlps(energy_setup):
    check_mala_beats_ula(*energy_setup, mh="energy")


def check_mala_beats_ula(model, exact, ref, mh):
    x_mala, s_mala = annealed_mcmc(model, N_CHAINS, corrector="mala", mh=mh, seed=0, **SAMPLER)
    x_ula, s_ula = annealed_mcmc(model, N_CHAINS, corrector="ula", seed=0, **SAMPLER)
    assert s_mala.fused and s_ula.fused
    w2_mala, w2_ula = wasserstein2(x_mala, ref), wasserstein2(x_ula, ref)
    values = f"W2 to the exact product: MALA {w2_mala:.4f}, ULA {w2_ula:.4f}"
    assert w2_mala <= W2_MALA_MAX, values
    assert w2_ula - w2_mala >= W2_MARGIN, values
    assert ACCEPT_BAND[0] <= final_accept(s_mala) <= ACCEPT_BAND[1], s_mala.accept_rate[-5:]


def test_generic_path_gives_the_same_samples(setup):
    """fused=False runs the generic kernels with the same Philox draws: the same chains, the same acceptance."""
    model = setup[0]
    x_fused, s_fused = annealed_mcmc(model, 500, corrector="mala", seed=3, **SAMPLER)
    x_gen, s_gen = annealed_mcmc(model, 500, corrector="mala", seed=3, fused=False, **SAMPLER)
    assert s_fused.fused and not s_gen.fused
    torch.testing.assert_close(x_fused, x_gen, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(torch.tensor(s_fused.accept_rate), torch.tensor(s_gen.accept_rate), rtol=0,
                               atol=1e-12)
