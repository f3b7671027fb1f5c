"""Classifier-guided digits (fastsamp.experiments.guided_digits): the guided target's score and log-density,
the exactness of its MH test with the λ-scaled classifier term, the midpoint trapezoid of score-HMC, and a
tiny end-to-end run of benchmarks/guided_digits.py."""
import json
import math

import pytest
import torch
from conftest import load_benchmark

from fastsamp import ops
from fastsamp.experiments.guided_digits import EnergyNet, EpsNet, GuidedModel, MidpointHMC, TimeClassifier
from fastsamp.experiments.guided_digits.sampling import HybridLangevin, step_size
from fastsamp.models import EnergyModel, ScoreModel
from fastsamp.protocol import CountingModel
from fastsamp.samplers.kernels import HMC, EnergyMH, Langevin, NoMH, PhiloxKey, ScoreMH


def _frozen(net):
    torch.manual_seed(0)
    for p in net.parameters():
        p.data.normal_(0, 0.3)
    return net.eval().requires_grad_(False)


def _grad(f, x):
    x = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(x).sum(), x)
    return g


@pytest.mark.parametrize("kind", ["score", "energy"])
def test_guided_score_is_prior_score_plus_lambda_classifier_gradient(kind):
    torch.manual_seed(1)
    clf = _frozen(TimeClassifier(hidden=16, n_blocks=1, n_steps=50))
    x, y, t, lam = torch.randn(6, 64), torch.tensor([0, 3, 9]), 7 / 50, 20.0
    if kind == "score":
        net = _frozen(EpsNet(hidden=16, n_blocks=1, n_steps=50))
        prior, prior_score = ScoreModel(net.score, 64, schedule=net.schedule), net.score(x, t)
    else:
        net = _frozen(EnergyNet(hidden=16, n_blocks=1, n_steps=50))
        prior, prior_score = EnergyModel(net, 64, schedule=net.schedule), -_grad(lambda z: net(z, t), x)
    model = GuidedModel(prior, clf, y, lam=lam)
    y_rows = y.repeat(2)  # 6 rows of 3 chains: the kernels' batched proposal points
    class_grad = _grad(lambda z: clf.log_prob(z, t, y_rows), x)
    torch.testing.assert_close(model.score(x, t), prior_score + lam * class_grad, rtol=1e-5, atol=1e-5)
    if kind == "energy":
        s, logp = model.score_and_log_prob(x, t)
        torch.testing.assert_close(s, prior_score + lam * class_grad, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(logp, -net(x, t) + lam * clf.log_prob(x, t, y_rows))
        paper = GuidedModel(prior, clf, y, lam=lam, lam_mh=1.0)
        torch.testing.assert_close(paper.log_prob(x, t), -net(x, t) + clf.log_prob(x, t, y_rows))
        torch.testing.assert_close(paper.score(x, t), model.score(x, t))  # the proposal keeps λ
    with pytest.raises(ValueError, match="multiple"):
        model.score(x[:4], t)


class GaussianLikelihood:
    """log p(y | x) = −½|x − m_y|²/v: a 'classifier' whose tempered product with N(0, I) is Gaussian."""

    def __init__(self, means, v):
        self.means, self.v = means, v

    def log_prob(self, x, t, y):
        return -0.5 * ((x - self.means[y]) ** 2).sum(1) / self.v


def _gaussian_case(lam_mh=None, dtype=torch.float64):
    means, v, lam = torch.tensor([[1.0, -0.5]], dtype=dtype), 4.0, 20.0
    prior = EnergyModel(lambda x, t: 0.5 * (x**2).sum(1), 2)
    model = GuidedModel(prior, GaussianLikelihood(means, v), torch.zeros(1, dtype=torch.long), lam=lam, lam_mh=lam_mh)
    precision = 1 + lam / v  # N(0, I) · N(m, v/λ)
    return model, (lam / v) * means[0] / precision, 1 / precision


def test_mh_log_alpha_uses_the_lambda_scaled_classifier_term():
    """One MALA step: log α equals the closed form for π ∝ N(0, I) exp(λ log p(y|x)), not for λ = 1."""
    model, _, _ = _gaussian_case()
    x = torch.tensor([[0.3, 0.2]], dtype=torch.float64)
    eps = torch.tensor([0.3], dtype=torch.float64)
    kernel = Langevin(CountingModel(model), 0.0, eps, EnergyMH(), backend="torch")
    state, info = kernel.step(kernel.init(x.repeat(1, 1)), PhiloxKey(3, 0, 0))
    from fastsamp import ops
    xi = ops.normal(3, 0, 1, 2, dtype=torch.float64)
    xp = x + eps * model.score(x, 0.0) + (2 * eps).sqrt() * xi

    m = torch.tensor([1.0, -0.5], dtype=torch.float64)

    def log_target(z):  # log N(0, I) + λ log p(y|x), λ = 20, v = 4
        return -0.5 * (z**2).sum(1) + 20.0 * (-0.5 * ((z - m) ** 2).sum(1) / 4)

    def log_q(to, frm):
        return -((to - frm - eps * model.score(frm, 0.0)) ** 2).sum(1) / (4 * eps)

    expected = log_target(xp) - log_target(x) + log_q(x, xp) - log_q(xp, x)
    torch.testing.assert_close(info.log_alpha, expected)


def _run_chains(model, mean, var, mh, seed, B=3000, n_moves=40):
    """n_moves MALA moves (step ½ var) of B chains started at exact draws of the target N(mean, var I)."""
    model.y = torch.zeros(B, dtype=torch.long)
    kernel = Langevin(CountingModel(model), 0.0, torch.full((B,), 0.5 * var, dtype=torch.float64), mh)
    x0 = mean + var**0.5 * torch.randn(B, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    state = kernel.init(x0)
    for m in range(n_moves):
        state, _ = kernel.step(state, PhiloxKey(seed, m, 0))
    return state.x


@pytest.mark.parametrize("mh, exact", [(EnergyMH(), True), (ScoreMH(2), True), (NoMH(), False)])
def test_mala_keeps_the_guided_gaussian_target(mh, exact):
    """From exact draws, a large step: the MH-corrected chains keep the target's mean and variance (the
    score-MH trapezoid is exact for a Gaussian); the unadjusted ones inflate the variance (by 1/(1 − εP/2))."""
    model, mean, var = _gaussian_case()
    x = _run_chains(model, mean, var, mh, seed=11)
    err = max(float((x.mean(0) - mean).abs().max()) / var**0.5, float((x.var(0) / var - 1).abs().max()))
    assert (err < 0.1) == exact, err


def test_paper_mh_with_unscaled_classifier_term_is_biased():
    """The paper's acceptance (λ in the proposal, log p(y|x) unscaled in the test) leaves the target."""
    model, mean, var = _gaussian_case(lam_mh=1.0)
    x = _run_chains(model, mean, var, EnergyMH(), seed=5)
    assert float((x.var(0) / var - 1).abs().max()) > 0.3


def _hybrid_case(prior_net, lam_mh, n_trapezoid, B=5, seed=4):
    """One HybridLangevin move (float64) of B chains of π ∝ p_t(x) p_t(y|x)^20, a frozen TimeClassifier:
    (the kernel's log α, x, x', the guided score, ε)."""
    torch.manual_seed(0)
    clf = _frozen(TimeClassifier(hidden=16, n_blocks=1, n_steps=50)).double()
    y, t = torch.arange(B) % 10, 7 / 50
    model = GuidedModel(ScoreModel(prior_net, 64), clf, y, lam=20.0, lam_mh=lam_mh)
    x = 0.5 * torch.randn(B, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    eps = torch.full((B,), 2e-3, dtype=torch.float64)
    kernel = HybridLangevin(model, CountingModel(model.prior), t, eps, n_trapezoid, backend="torch")
    state, info = kernel.step(kernel.init(x), PhiloxKey(seed, 0, 0))
    x_prop = x + eps[:, None] * model.score(x, t) + (2 * eps[:, None]).sqrt() * ops.normal(seed, 0, B, 64,
                                                                                           dtype=torch.float64)

    def log_q(to, frm):  # the guided MALA proposal density, up to a constant
        return -((to - frm - eps[:, None] * model.score(frm, t)) ** 2).sum(1) / (4 * eps)

    log_class = clf.log_prob(x_prop, t, y) - clf.log_prob(x, t, y)
    return info.log_alpha, log_q(x, x_prop) - log_q(x_prop, x) + (model.lam_mh * log_class), x, x_prop, t


@pytest.mark.parametrize("lam_mh", [None, 1.0])
def test_hybrid_mh_is_exact_for_a_gaussian_prior(lam_mh):
    """The prior N(0, I) (linear score: the trapezoid is exact for any n): log α = log N(x'; 0, I) −
    log N(x; 0, I) + λ_mh Δlog p(y|x) + the proposal ratio, in closed form (λ_mh = λ, and the paper's 1)."""
    for n in (1, 9):
        log_alpha, rest, x, x_prop, _ = _hybrid_case(lambda z, t: -z, lam_mh, n)
        exact = -0.5 * (x_prop**2).sum(1) + 0.5 * (x**2).sum(1) + rest
        torch.testing.assert_close(log_alpha, exact, rtol=0, atol=1e-10)


def test_hybrid_mh_trapezoid_converges_to_the_brute_force_line_integral():
    """A frozen ε-network prior (float64): the hybrid log α against the float64 brute-force line integral
    of its score (20,001-point trapezoid): the error is small and falls about as 1/n² with the paper's
    10 points (n = 9) against 2 points (n = 1)."""
    net = _frozen(EpsNet(hidden=16, n_blocks=1, n_steps=50)).double()
    errors, integral = {}, None
    for n in (1, 9):
        log_alpha, rest, x, x_prop, t = _hybrid_case(net.score, None, n)
        if integral is None:  # the same move for both n (same seeds): its segment integrated once, in one batch
            s = torch.linspace(0, 1, 20001, dtype=torch.float64)
            d = x_prop - x
            points = (x + s[:, None, None] * d).reshape(-1, x.shape[1])  # (20001·B, D)
            along = (net.score(points, t).view(len(s), *x.shape) * d).sum(2)  # (20001, B)
            integral = torch.trapezoid(along, s, dim=0)
        errors[n] = float((log_alpha - (integral + rest)).abs().max())
    assert errors[9] < 1e-3 * max(1.0, float(integral.abs().max()))
    assert errors[9] < errors[1] / 20, errors


def test_hybrid_mh_keeps_the_guided_gaussian_target_and_the_papers_term_does_not():
    """N(0, I) as a score-only prior times the Gaussian 'classifier' to the λ: from exact draws, 40 hybrid
    moves keep the target's mean and variance with λ_mh = λ and leave it with the paper's λ_mh = 1."""
    means, v, lam, B, seed = torch.tensor([[1.0, -0.5]], dtype=torch.float64), 4.0, 20.0, 3000, 7
    precision = 1 + lam / v
    mean, var = (lam / v) * means[0] / precision, 1 / precision
    for lam_mh, exact in ((None, True), (1.0, False)):
        model = GuidedModel(ScoreModel(lambda z, t: -z, 2), GaussianLikelihood(means, v),
                            torch.zeros(B, dtype=torch.long), lam=lam, lam_mh=lam_mh)
        kernel = HybridLangevin(model, CountingModel(model.prior), 0.0,
                                torch.full((B,), 0.5 * var, dtype=torch.float64), 2)
        x0 = mean + var**0.5 * torch.randn(B, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        state = kernel.init(x0)
        for m in range(40):
            state, _ = kernel.step(state, PhiloxKey(seed, m, 0))
        err = max(float((state.x.mean(0) - mean).abs().max()) / var**0.5,
                  float((state.x.var(0) / var - 1).abs().max()))
        assert (err < 0.1) == exact, (lam_mh, err)


def test_midpoint_hmc_trapezoid_halves_the_error_of_the_path_trapezoid():
    """ΔlogP along the leapfrog path for a quartic log-density: the midpoint rule's error is about a quarter
    of the plain trapezoid's (2 vs 1 sub-intervals per segment)."""
    class Quartic:
        dim = 3

        def score(self, x, t):
            return -x**3

    def logp(x):
        return -0.25 * (x**4).sum(1)

    x = torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    p = torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    eps = torch.full((64,), 0.4, dtype=torch.float64)
    errors = {}
    for cls in (HMC, MidpointHMC):
        kernel = cls(CountingModel(Quartic()), 0.0, eps, ScoreMH(), n_leapfrog=3, backend="torch")
        end, delta = kernel.trajectory(kernel.init(x, p))
        errors[cls.__name__] = float((delta - (logp(end.x) - logp(x))).abs().mean())
    assert errors["MidpointHMC"] < 0.35 * errors["HMC"]


def test_step_size_rule_and_hmc_mass():
    assert step_size(2.0, 1.5, 0.01, False).item() == pytest.approx(2.0 * 0.01**1.5)
    assert step_size(2.0, 1.5, 0.01, True).item() == pytest.approx(2.0 * 0.01**1.5 / 0.01)
    a = torch.tensor([1.0, 2.0])
    assert step_size(a, 1.0, 0.1, False).tolist() == pytest.approx([0.1, 0.2])


def test_tiny_end_to_end_run(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTSAMP_CACHE", str(tmp_path / "cache"))
    runner = load_benchmark("guided_digits.py", "guided_digits_runner")
    labels = ["LA-10 (score)", "HMC (score)", "LA (energy)", "LA, paper's MH (λ_mh=1) (energy)"]
    out = tmp_path / "out"
    assert runner.main(["--size", "tiny", "--per-class", "1", "--seeds", "2", "--candidates", "2",
                        "--val-per-class", "1", "--out", str(out), "--methods", *labels]) == 0
    result = json.loads((out / "guided_digits.json").read_text())
    rows = {r["label"]: r for r in result["methods"]}
    assert list(rows) == labels
    assert rows["LA-10 (score)"]["n_trapezoid"] == 9 and rows["LA-10 (score)"]["n_trapezoid_points"] == 10
    assert rows["LA, paper's MH (λ_mh=1) (energy)"]["lam_mh"] == 1.0
    assert rows["LA, paper's MH (λ_mh=1) (energy)"]["a"] == rows["LA (energy)"]["a"]
    T = result["settings"]["n_levels"]
    # LA-10: per level below T, one evaluation at the start and 9 per move (x' and 8 interior points)
    assert rows["LA-10 (score)"]["score_evals_per_sample"] == T + (T - 1) * (1 + 6 * 9) - (T - 1)
    for r in rows.values():
        assert len(r["per_seed"]) == 2 and all(math.isfinite(r[k]) for k in ("accuracy", "confident", "frechet"))
    assert len(rows["LA (energy)"]["search"]["candidates"]) == 2
    assert (out / "guided_digits.png").stat().st_size > 0
    assert "| LA-10 | score |" in (out / "guided_digits.md").read_text()


def test_cli_verb_adds_the_hybrid_rows_to_a_recorded_table(tmp_path, monkeypatch):
    """`fastsamp guided-digits` (tiny): a one-row table, then `--add` of the score-LA-10 hybrid-MH ablation
    rows: they reuse LA-10's searched step size, keep the recorded row, and count the network at all 10
    points but the classifier only at x' (per level below T: 1 + 6 moves)."""
    from fastsamp.cli import main
    monkeypatch.setenv("FASTSAMP_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    common = ["guided-digits", "--size", "tiny", "--per-class", "1", "--seeds", "2", "--candidates", "2",
              "--val-per-class", "1", "--out", str(out)]
    assert main(common + ["--methods", "LA-10 (score)"]) == 0
    hybrid = ["LA-10, hybrid MH (λ_mh=λ) (score)", "LA-10, paper's MH (λ_mh=1) (score)"]
    assert main(common + ["--add", "--methods", *hybrid]) == 0
    result = json.loads((out / "guided_digits.json").read_text())
    rows = {r["label"]: r for r in result["methods"]}
    assert list(rows) == ["LA-10 (score)", *hybrid]
    T = result["settings"]["n_levels"]
    for label in hybrid:
        assert (rows[label]["a"], rows[label]["b"]) == (rows["LA-10 (score)"]["a"], rows["LA-10 (score)"]["b"])
        assert rows[label]["search"] == "the step size of the LA-10 (score) row"
        assert rows[label]["score_evals_per_sample"] == rows["LA-10 (score)"]["score_evals_per_sample"]
        assert rows[label]["classifier_evals"] == len(rows[label]["per_seed"]) * 10 * (1 + 7 * (T - 1))
    assert rows[hybrid[1]]["lam_mh"] == 1.0 and rows[hybrid[0]]["lam_mh"] == result["settings"]["lambda"]
    assert [a["labels"] for a in result["added"]] == [hybrid]
    assert result["added"][0]["command"].startswith("fastsamp guided-digits --size tiny ")
    assert "--add" in result["added"][0]["command"]
    table = (out / "guided_digits.md").read_text()
    assert "| LA-10, hybrid MH (λ_mh=λ) | score |" in table and f"({1 + 7 * (T - 1)} clf)" in table


def test_paper_rejection_rows_keep_the_momentum_and_reuse_the_hmc_step_size():
    """The HMC keep-vs-flip rows: the paper's rejection wraps each model's HMC test (score: the midpoint
    trapezoid) and takes the HMC row's step size."""
    from fastsamp.experiments.guided_digits import methods
    from fastsamp.samplers.kernels import KeepMomentumOnReject
    rows = {m.label: m for m in methods()}
    for model, inner in (("score", ScoreMH), ("energy", EnergyMH)):
        keep, flip = rows[f"HMC, paper's rejection (no flip) ({model})"], rows[f"HMC ({model})"]
        assert isinstance(keep.mh, KeepMomentumOnReject) and type(keep.mh.inner) is inner
        assert type(flip.mh) is inner and keep.step_from == flip.label and keep.midpoint == flip.midpoint


@pytest.mark.parametrize("model_kind", ["energy", "score"])
def test_batch_summed_proposal_ratio_adds_the_batch_sum_to_every_chain(model_kind):
    """The paper's image MALA (`BatchSummedProposalRatio`): log α_b = Δlog π_b + Σ_c r_c with r_c the per-chain
    proposal log-ratio (closed form, 5 chains of the Gaussian case; per chain, `EnergyMH`, Δlog π_b + r_b). Energy:
    Δlog π from the log-density, the kept log-density the accepted chains' own; score (LA-10, n = 9): the trapezoid
    of the guided score, exact for this linear score, from x′ and the 8 interior points in one call (9·B rows).
    The table's rows reuse the LA (energy) and LA-10 (score) rows' step sizes."""
    from fastsamp.experiments.guided_digits import methods
    from fastsamp.experiments.guided_digits.sampling import BatchSummedProposalRatio
    model, _, _ = _gaussian_case()
    B, n = 5, 9
    model.y = torch.zeros(B, dtype=torch.long)
    x = torch.randn(B, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    eps = torch.full((B,), 0.3, dtype=torch.float64)
    log_target = model.log_prob
    if model_kind == "score":  # the same target with a score-only prior N(0, I)
        model = GuidedModel(ScoreModel(lambda z, t: -z, 2), model.classifier, model.y, lam=model.lam)

    def one_move(mh):  # (the new state, its info, the model rows the move evaluated)
        counted = CountingModel(model)
        kernel = Langevin(counted, 0.0, eps, mh, backend="torch")
        state = kernel.init(x)
        calls = counted.calls
        return (*kernel.step(state, PhiloxKey(3, 0, 0)), counted.calls - calls)

    summed, info_sum, rows = one_move(BatchSummedProposalRatio(None if model_kind == "energy" else n))
    xp = x + eps[:, None] * model.score(x, 0.0) + (2 * eps[:, None]).sqrt() * ops.normal(3, 0, B, 2,
                                                                                         dtype=torch.float64)

    def log_q(to, frm):
        return -((to - frm - eps[:, None] * model.score(frm, 0.0)) ** 2).sum(1) / (4 * eps)

    r = log_q(x, xp) - log_q(xp, x)
    delta = log_target(xp, 0.0) - log_target(x, 0.0)
    torch.testing.assert_close(info_sum.log_alpha, delta + r.sum())
    assert (info_sum.log_alpha - (delta + r)).abs().max() > 1e-3  # the batch sum differs from r_b here
    torch.testing.assert_close(summed.x, torch.where(info_sum.accepted[:, None], xp, x))
    row = {m.label: m for m in methods()}[f"LA{'' if model_kind == 'energy' else '-10'}, paper's batch-summed "
                                          f"proposal ratio ({model_kind})"]
    assert isinstance(row.mh, BatchSummedProposalRatio) and row.step_from == row.label.replace(
        ", paper's batch-summed proposal ratio", "")
    if model_kind == "energy":
        torch.testing.assert_close(one_move(EnergyMH())[1].log_alpha, delta + r)
        torch.testing.assert_close(summed.logp, torch.where(info_sum.accepted, log_target(xp, 0.0), log_target(x, 0.0)))
        assert rows == B and row.mh.n_trapezoid is None
    else:
        assert summed.logp is None and rows == n * B and row.mh.n_trapezoid == n


def test_batch_summed_proposal_ratio_leaves_the_target():
    """From exact draws of the guided Gaussian target, the batch-summed test (one batch of 3000 chains) inflates the
    variance as an unadjusted sampler does (1.37–1.45× here), where the per-chain test keeps it (0.98×)."""
    from fastsamp.experiments.guided_digits.sampling import BatchSummedProposalRatio
    model, mean, var = _gaussian_case()
    x = _run_chains(model, mean, var, BatchSummedProposalRatio(), seed=11)
    assert float((x.var(0) / var - 1).min()) > 0.2


def test_batch_summed_score_trapezoid_is_the_library_trapezoid():
    """A non-linear guided score (prior score −z³ in 2-D, the Gaussian 'classifier'), where T_9 differs from T_1:
    on the same key, log α of `BatchSummedProposalRatio(9)` minus that of the library's `ScoreMH(9)` is Σ_c r_c − r_b
    (r the per-chain proposal log-ratio, closed form), so its trapezoid (x′, interior points, weights) is ScoreMH's."""
    from fastsamp.experiments.guided_digits.sampling import BatchSummedProposalRatio
    means, B, n = torch.tensor([[1.0, -0.5]], dtype=torch.float64), 6, 9
    model = GuidedModel(ScoreModel(lambda z, t: -z**3, 2), GaussianLikelihood(means, 4.0),
                        torch.zeros(B, dtype=torch.long), lam=20.0)
    x = torch.randn(B, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    eps = torch.full((B,), 0.05, dtype=torch.float64)

    def log_alpha(mh):
        kernel = Langevin(CountingModel(model), 0.0, eps, mh, backend="torch")
        return kernel.step(kernel.init(x), PhiloxKey(3, 0, 0))[1].log_alpha

    xp = x + eps[:, None] * model.score(x, 0.0) + (2 * eps[:, None]).sqrt() * ops.normal(3, 0, B, 2,
                                                                                         dtype=torch.float64)
    fwd, bwd = xp - x - eps[:, None] * model.score(x, 0.0), x - xp - eps[:, None] * model.score(xp, 0.0)
    r = ((fwd**2).sum(1) - (bwd**2).sum(1)) / (4 * eps)
    library = log_alpha(ScoreMH(n))
    assert (library - log_alpha(ScoreMH(1))).abs().min() > 1e-3  # the interior points matter here
    torch.testing.assert_close(log_alpha(BatchSummedProposalRatio(n)) - library, r.sum() - r, rtol=0, atol=1e-10)


def test_batch_summed_checks_count_shared_decisions():
    """`guided_digits_checks.bands`' all-or-none fraction and majority share on recorded moves with known decisions:
    per band one move accepted by every chain, one by none and one by a quarter of the batch."""
    checks = load_benchmark("guided_digits_checks.py", "guided_digits_checks")
    B, moves = 8, []
    for lo, _ in checks.BANDS:
        for n_acc in (B, 0, B // 4):
            r = torch.randn(B, dtype=torch.float64)
            moves.append((lo, r, -r + 0.1, torch.arange(B) < n_acc))
    for band in checks.bands(moves):
        assert band["all_or_none"] == pytest.approx(2 / 3)
        assert band["majority_share"] == pytest.approx((1 + 1 + 0.75) / 3)
        assert band["accept"] == pytest.approx((1 + 0 + 0.25) / 3)


@pytest.mark.parametrize("n_trapezoid", [None, 9])
def test_batch_summed_proposal_ratio_per_replicate_sums_within_each_batch(n_trapezoid):
    """`BatchSummedProposalRatio(groups=k)`: one move of 6 chains in 2 batches equals the two batches of 3 run apart
    (the second at chain offset 3, so the same Philox draws per chain); the table's "one batch per replicate" rows
    build it with the run's replicates, the whole-run rows with one batch."""
    from fastsamp.experiments.guided_digits import methods
    from fastsamp.experiments.guided_digits.sampling import BatchSummedProposalRatio
    model, _, _ = _gaussian_case()
    if n_trapezoid is not None:
        model = GuidedModel(ScoreModel(lambda z, t: -z**3, 2), model.classifier, model.y, lam=model.lam)
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(8))

    def move(rows, groups, chain_offset):
        B = rows.stop - rows.start
        model.y = torch.zeros(B, dtype=torch.long)
        eps = torch.full((B,), 0.3, dtype=torch.float64)
        kernel = Langevin(CountingModel(model), 0.0, eps, BatchSummedProposalRatio(n_trapezoid, groups=groups),
                          backend="torch")
        return kernel.step(kernel.init(x[rows]), PhiloxKey(3, 0, chain_offset))

    whole, info = move(slice(0, 6), 2, 0)
    halves = [move(slice(0, 3), 1, 0), move(slice(3, 6), 1, 3)]
    torch.testing.assert_close(info.log_alpha, torch.cat([h[1].log_alpha for h in halves]))
    torch.testing.assert_close(whole.x, torch.cat([h[0].x for h in halves]))
    one_batch = move(slice(0, 6), 1, 0)[1].log_alpha
    assert (one_batch - info.log_alpha).abs().min() > 1e-6  # the other batch's sum is not in the test
    with pytest.raises(ValueError, match="do not split into 4 equal batches"):
        move(slice(0, 6), 4, 0)
    with pytest.raises(ValueError, match="groups"):
        BatchSummedProposalRatio(groups=0)
    rows = {m.label: m for m in methods()}
    for label in ("LA, paper's batch-summed proposal ratio (energy)",
                  "LA-10, paper's batch-summed proposal ratio (score)"):
        per_replicate = rows[label.replace(" (", ", one batch per replicate (")]
        assert per_replicate.step_from == rows[label].step_from
        assert per_replicate.mh_test(3).groups == 3 and rows[label].mh_test(3).groups == 1
        assert per_replicate.mh_test(3).n_trapezoid == rows[label].mh.n_trapezoid


def test_guided_sample_runs_the_per_replicate_batch_sum_per_replicate():
    """Through `guided_sample` (20 DDPM levels, a Gaussian energy prior): with `replicates=2` the first replicate of
    the per-replicate batch-summed row is that replicate run alone, bit for bit; the whole-run row's is not."""
    from fastsamp.ddpm import DDPM
    from fastsamp.experiments.guided_digits import guided_sample, methods
    rows = {m.label: m for m in methods()}
    whole = rows["LA, paper's batch-summed proposal ratio (energy)"]
    per_replicate = rows["LA, paper's batch-summed proposal ratio, one batch per replicate (energy)"]
    prior = EnergyModel(lambda x, t: 0.5 * (x**2).sum(1), 2, schedule=DDPM(n_steps=20))
    means = torch.tensor([[1.0, -0.5]], dtype=torch.float64)

    def sample(method, B, replicates):
        model = GuidedModel(prior, GaussianLikelihood(means, 4.0), torch.zeros(B, dtype=torch.long), lam=20.0)
        return guided_sample(model, method, a=0.05, b=0.5, seed=4, replicates=replicates, dtype=torch.float64)[0]

    alone = sample(per_replicate, 4, 1)
    assert torch.equal(sample(per_replicate, 8, 2)[:4], alone)
    assert not torch.equal(sample(whole, 8, 2)[:4], alone)
    with pytest.raises(ValueError, match="replicates"):
        sample(per_replicate, 8, 3)
