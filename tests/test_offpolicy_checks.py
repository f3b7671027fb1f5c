"""benchmarks/offpolicy_checks.py: the released gfn-diffusion formulas (written out in
fastsamp/experiments/offpolicy_released.py) agree with
fastsamp's targets, log w and PIS gradient (the checks of checks/funnel_tb.md, pis_25gmm.md and pis_funnel.md
rest on them), and its training loop and command line run on tiny sizes."""
import json
import math

import pytest
import torch
from conftest import load_benchmark

from fastsamp.experiments import offpolicy
from fastsamp.metrics import log_z_estimates


def _checks():
    return load_benchmark("offpolicy_checks.py", "offpolicy_checks")


@pytest.mark.parametrize("name", ["25gmm", "funnel", "40gmm", "manywell"])
def test_released_log_r_is_our_target(name):
    """Same log density; the released log Z (0, or many_well.py's gt_logz) is ours to float64 rounding of Z_1."""
    checks = _checks()
    sampler, _ = offpolicy.build(name, "pis", n_steps=4)
    x = 4 * torch.randn(64, sampler.target.dim, generator=torch.Generator().manual_seed(0))
    if name == "40gmm":  # near the means, where the log density is not dominated by one distant mode
        x = sampler.target.means[torch.arange(64) % 40].float() + x
    if name == "manywell":  # inside the wells (|a| ≤ 2.5), where log R is O(100), not O(−10⁴)
        x = x.clamp(-2.5, 2.5)
    torch.testing.assert_close(checks.released_log_r(sampler.target, x), sampler.target.log_prob(x),
                               rtol=1e-5, atol=1e-4)
    log_Z = sampler.target.log_Z if name == "manywell" else 0.0
    assert checks.released_log_Z(sampler.target) == pytest.approx(log_Z, abs=1e-6)


def test_released_noise_recovers_the_noise_of_a_released_rollout():
    """With the network's drifts (recomputed) or the rollout's (given), the noise that drove the states."""
    checks = _checks()
    sampler, _ = offpolicy.build("funnel", "pis", n_steps=6, seed=1)
    checks.released_train(sampler, 2, seed=1, objective="pis")  # a nonzero drift
    noise = torch.randn(6, 5, sampler.target.dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        states, drifts = checks.released_rollout(sampler, 5, reparam=True, noise=noise)
    assert drifts.abs().max() > 0
    torch.testing.assert_close(checks.released_noise(sampler, states), noise, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(checks.released_noise(sampler, states, drifts), noise, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("trained", [False, True])
def test_pis_loss_and_gradient_equal_the_released_step_on_the_same_noise(trained):
    """Fused kernels and eager path against gfn-diffusion's pis loss (reparameterised rollout), from the
    initial network and after a few Adam steps (zero-initialised last layer: the drift is 0 at first)."""
    checks = _checks()
    sampler, _ = offpolicy.build("25gmm", "pis", n_steps=8, seed=3)
    if trained:
        checks.released_train(sampler, 5, seed=3, objective="pis")
    out = checks.compare_pis_gradients(sampler, batch=16, seed=1, name="tiny")
    assert out["loss_fused"] == pytest.approx(out["loss_released"], rel=1e-5)
    assert out["loss_eager"] == pytest.approx(out["loss_released"], rel=1e-5)
    assert out["states_max_abs_diff_fused_vs_released"] < 1e-4
    for path in ("fused", "eager"):
        assert out[f"grad_{path}_vs_released_max_rel"] < 1e-3
        assert out[f"grad_{path}_vs_released_cosine"] > 1 - 1e-6
    assert out["grad_norm_released"] > 0


def test_released_training_returns_losses_and_curve():
    checks = _checks()
    sampler, _ = offpolicy.build("25gmm", "pis", n_steps=4)
    before = [p.detach().clone() for p in sampler.net.parameters()]
    losses, curve = checks.released_train(sampler, 4, seed=0, objective="pis", curve=2,
                                          point=lambda it: {"iteration": it})
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert curve == [{"iteration": 2}, {"iteration": 4}]
    assert any(not torch.equal(a, b) for a, b in zip(before, sampler.net.parameters()))
    with pytest.raises(ValueError, match="objective"):
        checks.released_loss(sampler, "vargrad")


def test_gradients_command_prints_one_line_per_model_and_seed(tmp_path, capsys):
    checks = _checks()
    sampler, _ = offpolicy.build("25gmm", "pis", n_steps=100)
    path = str(tmp_path / "25gmm_pis_seed0.pt")
    sampler.save(path)
    checks.main(["gradients", "--target", "25gmm", "--batch", "4", "--repeats", "1", "--models", path])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["model"] for d in lines] == ["initial network (seed 0)", "25gmm_pis_seed0.pt"]
    assert all(d["grad_fused_vs_released_max_rel"] < 1e-3 for d in lines)


@pytest.mark.parametrize("method", ["pis", "tb+expl+lp+ls"])
def test_manywell_command_finds_the_method_s_models_and_the_orthant_limit(tmp_path, capsys, monkeypatch, method):
    """`manywell --method M` reads OUT/manywell_M_seed*.pt (or --models, also a training checkpoint's model); the
    collapse limit is −16 log P(a > 0) with P(a > 0) = 0.844307 (checks/funnel_tb.md §5); the signed errors are
    log Ẑ^RW − log Z with Manywell's log Z = 164.7 and the left-well counts those of the draws at seeds 1, 2."""
    checks = _checks()
    monkeypatch.setattr(checks, "OUT", str(tmp_path))
    sampler = offpolicy.build("manywell", method)[0]  # the preset's steps: load_model builds those
    sampler.save(str(tmp_path / f"manywell_{method}_seed0.pt"))
    torch.save({"model": sampler.state_dict()}, str(tmp_path / "run.ckpt"))
    checks.main(["manywell", "--method", method, "--repeats", "2"])
    checks.main(["manywell", "--method", method, "--repeats", "2", "--models", str(tmp_path / "run.ckpt")])
    line, from_ckpt = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert from_ckpt["model"] == "run.ckpt" and from_ckpt["left_wells_drawn"] == line["left_wells_drawn"]
    assert line["model"] == f"manywell_{method}_seed0.pt" and line["pooled_n"] == 4000
    assert line["p_right_exact"] == pytest.approx(0.844307, abs=1e-6)
    assert line["orthant_limit"] == pytest.approx(-16 * math.log(line["p_right_exact"]))
    draws = [sampler.sample(2000, seed=s) for s in (1, 2)]
    signed = [log_z_estimates(lw)["log_Z"] - sampler.target.log_Z for _, lw in draws]
    assert sampler.target.log_Z == pytest.approx(164.696, abs=1e-3)
    assert line["log_Z_rw_error_per_2000"]["values"] == pytest.approx(signed)
    assert line["delta_log_Z_rw_per_2000"]["values"] == pytest.approx([abs(e) for e in signed])
    a = torch.cat([x for x, _ in draws])[:, 0::2]
    k = (a < 0).sum(1)
    assert line["left_wells_drawn"] == pytest.approx((torch.bincount(k, minlength=17) / 4000).tolist())
    assert line["right_well_fraction"] == pytest.approx(float((a > 0).float().mean()))
    assert line["left_wells_exact"][0] == pytest.approx(line["p_right_exact"] ** 16)
    top = torch.cat([lw for _, lw in draws]).argsort(descending=True)[:10]
    assert line["largest_weights_left_wells"] == k[top].tolist()


@pytest.mark.parametrize("rows, r", [
    ([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]], 0.5),  # k = 0, 2, 1, 1: q_k = Binomial(2, 1/2)
    ([[1.0, 1.0], [1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]], 0.625),  # k = 0, 0, 1, 2: not a product of wells
])
def test_left_wells_on_four_samples_of_two_wells(rows, r):
    """Two wells, P(a > 0) = p = 3/4, π_k = Binomial(2, 1/4) = (9, 6, 1)/16; each sample weighted π_k / q_k, the
    weight of a sampler exact within each class k: the self-normalised P(k) is π_k, the ESS of these weights is
    `left_wells_ess_bound`, and with independent wells (first case, r = 1/2) (p²/r + (1 − p)²/(1 − r))^−2 = 0.64."""
    checks = _checks()
    a = torch.tensor(rows, dtype=torch.float64)
    k = (a < 0).sum(1)
    q = torch.bincount(k, minlength=3).double() / 4
    exact = torch.tensor([9.0, 6.0, 1.0], dtype=torch.float64) / 16
    log_w = (exact[k] / q[k]).log()
    out = checks.left_wells(a, log_w, 0.75)
    assert out["right_well_fraction"] == pytest.approx(r)
    assert out["left_wells_drawn"] == q.tolist() and out["left_wells_exact"] == pytest.approx(exact.tolist())
    assert out["left_wells_reweighted"] == pytest.approx(exact.tolist())
    assert out["reweighted_right_well_fraction"] == pytest.approx(0.75)
    assert out["left_wells_kl"] == pytest.approx(float((q * (q / exact).log()).sum()))
    assert out["left_wells_ess_bound"] == pytest.approx(log_z_estimates(log_w)["ess"])
    assert out["independent_wells_ess"] == pytest.approx((0.75 ** 2 / r + 0.25 ** 2 / (1 - r)) ** -2)
    w2 = torch.zeros(3, dtype=torch.float64).index_add_(0, k, log_w.exp() ** 2)
    assert out["left_wells_w2_share"] == pytest.approx((w2 / w2.sum()).tolist())
    if r == 0.5:
        assert out["independent_wells_ess"] == pytest.approx(0.64) == out["left_wells_ess_bound"]
        assert out["left_wells_w2_share"] == pytest.approx([0.81, 0.18, 0.01])  # weights 9, 3, 3, 1 (/ 4)
        assert out["left_wells_effective_draws"] == pytest.approx([1.0, 2.0, 1.0])
        assert out["largest_weights_left_wells"][0] == 0 and out["largest_weights_left_wells"][-1] == 2
    else:
        assert out["left_wells_ess_bound"] == pytest.approx(256 / 310)  # < independent wells' 0.879
        assert out["left_wells_effective_draws"] == pytest.approx([2.0, 1.0, 1.0])


def test_spread_command_reproduces_the_table_s_evaluation(tmp_path, capsys):
    """`spread --first-seed 10000 --repeats 1` is the table's evaluation of a seed-0 run
    (experiments.offpolicy.evaluate at seed 10_000 + training seed)."""
    checks = _checks()
    sampler, _ = offpolicy.build("funnel", "pis", n_steps=4)
    checks.released_train(sampler, 2, seed=0, objective="pis")  # a nonzero drift
    path = str(tmp_path / "funnel_pis_seed0.pt")
    sampler.save(path)
    checks.main(["spread", "--models", path, "--first-seed", "10000", "--repeats", "1"])
    table = json.loads(capsys.readouterr().out)
    m = offpolicy.evaluate(sampler, sampler.target, n=2000, seed=10_000)
    assert table["delta_log_Z_per_2000"]["values"] == [pytest.approx(m["delta_log_Z"])]
    assert table["delta_log_Z_rw_per_2000"]["values"] == [pytest.approx(m["delta_log_Z_rw"])]
    assert table["delta_log_Z_rw_per_10000"] is None  # fewer than five evaluations


def test_manywell_spread_and_evaluate_with_the_released_estimator(tmp_path, capsys):
    """A tiny Manywell model (log Z = 164.7, released: many_well.py's unnormalised log R against gt_logz): the
    released and our pooled ELBO agree within 2 nats (se ≈ 0.2 over 10,000 draws; a wrong log Z offset gives
    ~165); five evaluations make one group of 10,000 (the pooled estimate); the signed errors' quantiles
    are theirs; `evaluate --target manywell`: the released log w of our trajectories is ours."""
    checks = _checks()
    sampler, _ = offpolicy.build("manywell", "tb", n_steps=4)
    checks.released_train(sampler, 2, seed=0, objective="tb")  # a nonzero drift
    path = str(tmp_path / "manywell_tb_seed0.pt")
    sampler.save(path)
    checks.main(["spread", "--target", "manywell", "--models", path, "--repeats", "5", "--released"])
    out = json.loads(capsys.readouterr().out)
    released = out["released"]
    assert abs(out["delta_log_Z_pooled"] - released["delta_log_Z_pooled"]) < 2
    assert 10 < out["delta_log_Z_pooled"] < 150  # an untrained sampler, against log Z = 164.7
    for res in (out, released):
        assert res["delta_log_Z_rw_per_10000"]["values"] == [pytest.approx(res["delta_log_Z_rw_pooled"])]
        signed = res["log_Z_rw_error_per_2000"]["values"]
        quantiles = res["log_Z_rw_error_quantiles"]
        assert (quantiles["min"], quantiles["max"]) == (min(signed), max(signed))
        assert quantiles["0.5"] == pytest.approx(sorted(signed)[2])
    ours_signed = [log_z_estimates(sampler.sample(2000, seed=s)[1])["log_Z"] - 164.69567 for s in range(1, 6)]
    assert out["log_Z_rw_error_per_2000"]["values"] == pytest.approx(ours_signed, abs=1e-4)
    checks.main(["evaluate", "--target", "manywell", "--models", path, "--repeats", "1"])
    line = json.loads(capsys.readouterr().out)
    assert line["same_trajectories_max_abs_log_w_diff"] < 0.05
    assert abs(line["ours_delta_log_Z"]["mean"] - line["released_delta_log_Z"]["mean"]) < 3


def test_curve_command_on_a_checkpoint_folder(tmp_path, capsys):
    """`curve --checkpoints DIR --models PT`: one line per checkpoint, then the model; W2 that of `evaluate` at
    seed 1, var b and sd |a| of the draws at seed 7."""
    checks = _checks()
    sampler, _ = offpolicy.build("manywell", "tb", n_steps=4)
    sampler.save(str(tmp_path / "final.pt"))
    torch.save({"model": sampler.state_dict()}, str(tmp_path / "it1.ckpt"))  # the preset's 100 steps
    checks.main(["curve", "--checkpoints", str(tmp_path), "--models", str(tmp_path / "final.pt"),
                 "--method", "tb", "--repeats", "1", "--samples", "500"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["model"] for d in lines] == ["it1.ckpt", "final.pt"]
    x, _ = sampler.sample(500, seed=7)
    assert lines[1]["var_b"] == pytest.approx(float(x[:, 1::2].var()), rel=1e-5)
    assert lines[1]["sd_abs_a"] == pytest.approx(float(x[:, 0::2].abs().std()), rel=1e-5)
    m = offpolicy.evaluate(sampler, sampler.target, n=2000, seed=1)
    assert lines[1]["w2"] == pytest.approx(m["w2"]) and lines[1]["w2_exact"] == pytest.approx(m["w2_exact"])


def test_mode_geometry_on_two_modes_in_one_dimension():
    """μ = (1, −3) in 1-D: the cell of μ_0 is x > −1, so the share of N(0, v) nearest to μ_0 is Φ(1/√v);
    logit gap ½(9 − 1) = 4, boundary distance 8 / (2·4) = 1."""
    checks = _checks()
    out = checks.mode_geometry(torch.tensor([[1.0], [-3.0]]), samples=200_000, variances=(1.0, 4.0))
    assert (out["nearest_mode"], out["nearest_norm"], out["next_norm"]) == (0, 1.0, 3.0)
    assert out["cell_boundary_distance"] == pytest.approx(1.0) and out["logit_gap_at_0"] == pytest.approx(4.0)
    for v in (1.0, 4.0):
        share = 0.5 * (1 + math.erf(1 / math.sqrt(2 * v)))
        assert out[f"share_nearest_sigma2_{v:g}"] == pytest.approx(share, abs=0.005)
        assert out[f"modes_drawn_sigma2_{v:g}"][1] == pytest.approx(1 - share, abs=0.005)


def test_gmm40_command_and_the_curve_s_modes(capsys, monkeypatch):
    """`gmm40` prints one line per draw of the means (seed 0: the mean nearest 0 is μ_16); a training curve
    point of a 40GMM sampler lists the modes its samples are nearest to; `train --mean-seed` on another
    target is refused before any model is built."""
    checks = _checks()
    checks.main(["gmm40", "--mean-seeds", "0", "1", "--samples", "1000"])
    first, second = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (first["means_seed"], first["nearest_mode"], second["means_seed"]) == (0, 16, 1)
    assert first["nearest_norm"] == pytest.approx(132.644, abs=1e-3) and first["share_nearest_sigma2_5"] == 1.0
    sampler, _ = offpolicy.build("40gmm", "tb", n_steps=4)
    point = checks._curve_point(sampler, 1)
    assert point["modes"] == {16: 1.0} and point["modes_hit"] == 1
    monkeypatch.setattr(checks, "build", lambda *a, **kw: pytest.fail("built a model before checking --mean-seed"))
    with pytest.raises(ValueError, match="--mean-seed"):
        checks.main(["train", "--target", "funnel", "--mean-seed", "1", "--iterations", "1"])


@pytest.mark.parametrize("name", ["40gmm", "manywell"])
def test_released_log_w_of_a_langevin_network_is_ours(name):
    """LP presets: the released formulas add the network's Langevin term (scale × ∇ log R) to the drift, so
    log w of our trajectories agrees (the evaluation `train` prints for TB + Expl. + LP + LS)."""
    checks = _checks()
    sampler, _ = offpolicy.build(name, "tb+expl+lp+ls", n_steps=6, seed=2)
    traj = sampler.forward_trajectories(8, seed=3)
    torch.testing.assert_close(checks.released_log_w(sampler, traj.states), traj.log_weights().detach(),
                               rtol=1e-5, atol=0.05)


def _small_lgcp(grid, n_points):
    from fastsamp.experiments import lgcp_reference as ref
    from fastsamp.targets import LGCP

    points = torch.rand(n_points, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    target = LGCP(points=points.numpy(), grid=grid)
    return ref, target, ref.laplace(target)


def _laplace_draws(lap, n, scale, seed):
    """n draws of N(x*, scale² H⁻¹) and their log density."""
    dim = lap["map"].shape[0]
    z = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    draws = lap["map"] + scale * torch.linalg.solve_triangular(lap["chol"].T, z.T, upper=True).T
    return draws, (-0.5 * (z * z).sum(1) - 0.5 * dim * math.log(2 * math.pi)
                   + float(torch.log(torch.diagonal(lap["chol"])).sum()) - dim * math.log(scale))


def test_lgcp_reference_on_a_small_lgcp_agrees_with_brute_force_importance_sampling(one_thread):
    """D = 25 (grid 5, 200 uniform points): Newton's MAP is a zero of the score and H is −∇² log R (finite
    differences of the score); AIS (1024 chains, two seeds pooled)
    agrees with importance sampling of 10⁵ draws from the Laplace Gaussian widened 1.3× within 4 standard errors at
    K = 50 and at K = 2 (AIS is unbiased at any K: this catches a weight added after the move), with MALA acceptance
    in (0.3, 0.95) per run (a disabled or always-rejecting MH step fails), while the Laplace value is ≈ 0.2 (> 10 se)
    off; and the AIS particles' weighted moments are those of the same draws (per-coordinate mean within 4.5 Monte
    Carlo sd, sd within 5 Monte Carlo sd, 1/√(2 ESS) relative, ≈ 8 %)."""
    ref, target, lap = _small_lgcp(5, 200)
    assert float(target.score(lap["map"]).abs().max()) < 1e-8
    x, e = lap["map"] + 0.3, 1e-6 * torch.eye(25, dtype=torch.float64)
    fd = (target.score(x + e) - target.score(x - e)) / 2e-6  # row i: ∂ ∇ log R / ∂x_i
    torch.testing.assert_close(target.hessian(x), -fd, rtol=1e-6, atol=1e-6)
    draws, log_q = _laplace_draws(lap, 100_000, 1.3, seed=1)
    log_w_is = target.log_prob(draws) - log_q
    brute = ref.log_mean_exp_se(log_w_is, n_boot=0)
    out, _, moments = ref.reference(target, n_chains=1024, temps=(2, 50), seeds=(0, 1), step_size=0.3)
    assert [(r["n_temps"], r["seed"]) for r in out["runs"]] == [(2, 0), (2, 1), (50, 0), (50, 1)]
    assert all(0.3 < r["acceptance"] < 0.95 for r in out["runs"])
    se = math.hypot(out["reference_se"], brute["se_delta"])
    assert se < 0.02
    assert out["reference_log_Z"] == pytest.approx(brute["log_Z"], abs=4 * se)
    k2 = out["pooled"][0]
    assert k2["n_temps"] == 2 and k2["log_Z"] == pytest.approx(brute["log_Z"], abs=4 * math.hypot(
        max(k2["se_delta"], k2["se_bootstrap"]), brute["se_delta"]))
    assert abs(out["laplace_log_Z"] - brute["log_Z"]) > 10 * se
    assert out["laplace_elbo"] < brute["log_Z"] and out["laplace_elbo_se"] < 0.05
    mean, sd = moments["ais"]
    mean_is, sd_is = ref.weighted_moments(draws, log_w_is)
    ess = out["reference_ess"]
    assert float(((mean - mean_is) / sd_is).abs().max()) < 4.5 / math.sqrt(ess)  # Monte Carlo error of the mean
    torch.testing.assert_close(sd, sd_is, atol=0, rtol=5 / math.sqrt(2 * ess))  # 5 MC sd of an sd


@pytest.mark.parametrize("correlated", [False, True])
def test_lgcp_kl_lower_bound_against_the_exact_kl_of_a_gaussian(correlated, one_thread):
    """kl_lower_bound at D = 25 against KL(q ‖ π) = E_q[log q − log R] + log Z of 10⁵ draws of a Gaussian q with a known
    density: q = N(x*, 1.69 H⁻¹) is a product in u = Lᵀ(x − x*), so the bound is tight (equal within 4 se); a
    correlated, shifted q (u ~ N(0.7, A Aᵀ), A = 0.8 I + 0.1 11ᵀ) has total correlation, so the bound is below."""
    ref, target, lap = _small_lgcp(5, 200)
    eye = torch.eye(25, dtype=torch.float64)
    a, shift = (0.8 * eye + 0.1 * torch.ones(25, 25, dtype=torch.float64), 0.7) if correlated else (1.3 * eye, 0.0)
    z = torch.randn(100_000, 25, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x = lap["map"] + torch.linalg.solve_triangular(lap["chol"].T, (z @ a.T + shift).T, upper=True).T
    log_q = (-0.5 * (z * z).sum(1) - 12.5 * math.log(2 * math.pi) - float(torch.linalg.slogdet(a)[1])
             + float(torch.log(torch.diagonal(lap["chol"])).sum()))
    d = log_q - target.log_prob(x)
    log_z = lap["log_Z"]  # any value: both sides carry + log Z
    exact, se = float(d.mean()) + log_z, float(d.std()) / math.sqrt(d.numel())
    bound = ref.kl_lower_bound(x, target, lap, log_z)
    assert bound["e_log_r_minus_log_q_laplace_se"] > 0
    if correlated:
        assert bound["kl_to_target_lower_bound"] < exact - 4 * se
    else:
        assert bound["kl_to_target_lower_bound"] == pytest.approx(exact, abs=4 * se)


def test_lgcp_reference_in_the_sparse_regime(one_thread):
    """D = 64 (grid 8, 20 points; sparse counts, as the pines, where the Laplace value is high): AIS (1024 chains, two
    seeds pooled) at K = 10 and K = 100 agree within 4 se, and K = 100 agrees with 2·10⁵-draw importance sampling from
    the Laplace Gaussian widened 1.2× within 5 se (heavy-tailed weights: its delta se is optimistic), while the
    Laplace value is > 10 se high."""
    ref, target, lap = _small_lgcp(8, 20)
    draws, log_q = _laplace_draws(lap, 200_000, 1.2, seed=1)
    brute = ref.log_mean_exp_se(target.log_prob(draws) - log_q, n_boot=0)
    out, _, _ = ref.reference(target, n_chains=1024, temps=(10, 100), seeds=(0, 1), step_size=0.2)
    assert all(0.3 < r["acceptance"] < 0.95 for r in out["runs"])
    k10, k100 = ({**p, "se": max(p["se_delta"], p["se_bootstrap"])} for p in out["pooled"])
    assert k100["se"] < 0.03
    assert k10["log_Z"] == pytest.approx(k100["log_Z"], abs=4 * math.hypot(k10["se"], k100["se"]))
    se = math.hypot(k100["se"], brute["se_delta"])
    assert k100["log_Z"] == pytest.approx(brute["log_Z"], abs=5 * se)
    assert out["laplace_log_Z"] - k100["log_Z"] > 10 * se


def test_lgcp_command_on_a_tiny_grid(tmp_path, capsys, one_thread):
    """`lgcp --grid 5 --points synthetic` (D = 25, no data needed): the written reference log Z agrees with
    importance sampling of 10⁵ draws from the Laplace Gaussian widened 1.3× within 4 se; the command builds the LGCP
    that --grid and --points name (its Laplace log Z is that of LGCP(points="synthetic", grid=5): the value is
    passed through, its correctness is the Laplace tests'), and the printed line is the file's."""
    from fastsamp.experiments import lgcp_reference as ref
    from fastsamp.targets import LGCP

    out = tmp_path / "ref.json"
    checks = _checks()
    checks.main(["lgcp", "--grid", "5", "--points", "synthetic", "--chains", "512", "--temps", "30", "--seeds", "0",
                 "1", "--step-size", "0.3", "--out", str(out)])
    res = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == {k: v for k, v in res.items() if k not in ("models", "threads")}
    assert res["dim"] == 25 and res["models"] == [] and [r["seed"] for r in res["runs"]] == [0, 1]
    target = LGCP(points="synthetic", grid=5)
    lap = ref.laplace(target)
    assert res["laplace_log_Z"] == pytest.approx(lap["log_Z"], rel=1e-12)
    draws, log_q = _laplace_draws(lap, 100_000, 1.3, seed=1)
    brute = ref.log_mean_exp_se(target.log_prob(draws) - log_q, n_boot=0)
    se = math.hypot(res["reference_se"], brute["se_delta"])
    assert se < 0.05 and res["reference_log_Z"] == pytest.approx(brute["log_Z"], abs=4 * se)


def test_lgcp_command_against_a_saved_model(tmp_path, capsys, monkeypatch, one_thread):
    """`lgcp --grid 5 --models` on a tiny untrained network (5×5 synthetic, 4 steps; the saved sampler reloads on
    its grid): Δ = reference − ELBO and reference − log Ẑ^RW, the model's JSON loss, both moments, the KL bound and
    fused = eager TB gradient; a model of another grid (the default 40) or point pattern is refused, by the command
    before the reference is computed."""
    from fastsamp.experiments import lgcp_reference as ref
    from fastsamp.samplers.diffusion import DiffusionSampler
    from fastsamp.targets import LGCP

    path = tmp_path / "lgcp_tb_seed0.pt"
    torch.manual_seed(0)
    DiffusionSampler(LGCP(points="synthetic", grid=5), n_steps=4, hidden=8, n_harmonics=4).save(str(path))
    (tmp_path / "lgcp_tb_seed0.json").write_text(json.dumps({"final_loss": 12.5}))
    out = tmp_path / "ref.json"
    checks = _checks()
    args = ["lgcp", "--points", "synthetic", "--chains", "4", "--temps", "1", "--seeds", "0", "--repeats", "1",
            "--batch", "4", "--models", str(path), "--out", str(out)]
    checks.main(args + ["--grid", "5"])
    res = json.loads(out.read_text())
    (m,) = res["models"]
    assert json.loads(capsys.readouterr().out.splitlines()[1]) == m
    assert m["model"] == "lgcp_tb_seed0.pt" and m["final_loss"] == 12.5 and res["dim"] == 25
    assert m["delta_elbo"] == pytest.approx(res["reference_log_Z"] - m["elbo"])
    assert m["delta_log_Z_rw"] == pytest.approx(res["reference_log_Z"] - m["log_Z_rw"])
    assert m["elbo"] < m["log_Z_rw"] < res["reference_log_Z"]  # an untrained sampler is far off
    for vs in (m["vs_ais"], m["vs_laplace"]):
        assert 0 < vs["mean_error_rms"] <= vs["mean_error_max"] and 0 < vs["sd_ratio"]["min"] <= vs["sd_ratio"]["max"]
    assert m["kl_bound"]["kl_to_target_lower_bound"] > 0
    assert m["tb_fused_vs_eager"]["grad_cosine"] > 1 - 1e-6
    sampler = DiffusionSampler.load(str(path))
    with pytest.raises(ValueError, match="not the reference's"):
        ref.model_report(sampler, str(path), LGCP(points="synthetic", grid=5, seed=1), 0.0, None, {}, 1, 4)
    monkeypatch.setattr(ref, "reference", lambda *a: pytest.fail("the reference ran before the models' check"))
    with pytest.raises(ValueError, match="not the reference's.*dim=25.*dim=1600"):
        checks.main(args)  # --grid 40
    with pytest.raises(SystemExit, match=r"takes saved samplers \(\.pt\)"):  # a checkpoint records no grid
        checks.main([a.replace(".pt", ".ckpt") for a in args])


def _released_fifo(batches, capacity):
    """The released buffer's rows as it keeps them: its first batch twice, each batch concatenated after the rows,
    the oldest rows dropped past capacity."""
    rows = batches[0] + batches[0]
    for batch in batches[1:]:
        rows = rows + batch
    return rows[-capacity:]


def test_released_buffer_draws_positions_of_a_stale_list():
    """ReleasedReplayBuffer: the first batch stored twice; a list of N // n · n positions (N the size when it is
    drawn) serves batch after batch while later adds change the rows it names (the released loader's iterator)."""
    from fastsamp.experiments.offpolicy_released import ReleasedReplayBuffer
    capacity, n, gen = 12, 4, torch.Generator().manual_seed(0)
    buf = ReleasedReplayBuffer(capacity, 1)
    batches = [[float(v) for v in range(k * 10, k * 10 + n)] for k in range(4)]
    log_r = torch.tensor([0.0, 1.0, 2.0, 3.0])

    def add(k):
        buf.add(torch.tensor(batches[k])[:, None], log_r)
    add(0)
    assert len(buf) == 8  # twice
    add(1)
    x, _ = buf.sample(n, gen)  # a list of 12 positions: three batches of the rows [b0, b0, b1]
    positions = buf.positions.clone()
    assert positions.numel() == 12 and set(x[:, 0].tolist()) <= set(batches[0] + batches[1])
    add(2)  # full: the first copy of b0 dropped, b2 appended; the list's positions now name [b0, b1, b2]
    for k in (1, 2):
        x, _ = buf.sample(n, gen)
        fifo = _released_fifo(batches[:3], capacity)
        assert x[:, 0].tolist() == [fifo[p] for p in positions[k * n:(k + 1) * n].tolist()]
    add(3)
    x, _ = buf.sample(n, gen)  # the list used up: a new one over the current rows, b3 among them
    assert not torch.equal(buf.positions, positions) and buf.used == n
    fifo = _released_fifo(batches, capacity)
    assert x[:, 0].tolist() == [fifo[p] for p in buf.positions[:n].tolist()]
    drawn = torch.cat([buf.sample(n, gen)[0][:, 0] for _ in range(2)]).tolist()
    assert set(drawn) | set(x[:, 0].tolist()) <= set(fifo)


def test_released_buffer_drops_the_last_partial_batch_and_resumes_its_list():
    from fastsamp.experiments.offpolicy_released import ReleasedReplayBuffer
    gen = torch.Generator().manual_seed(1)
    buf = ReleasedReplayBuffer(100, 2)
    with pytest.raises(RuntimeError, match="empty"):
        buf.sample(4)
    with pytest.raises(ValueError, match="n must be >= 1"):
        buf.sample(0)
    buf.add(torch.randn(3, 2), torch.randn(3))  # 6 states: one batch of 4, the last 2 dropped
    buf.sample(4, gen)
    assert buf.positions.numel() == 4 and buf.used == 4
    buf.add(torch.randn(3, 2), torch.randn(3))  # 9 states: the used-up list is replaced by one of 8 positions
    buf.sample(4, gen)
    assert buf.positions.numel() == 8 and buf.used == 4
    copy = ReleasedReplayBuffer(100, 2)
    copy.load_state_dict(buf.state_dict())  # the list and its use travel with the state
    state, draws = gen.get_state(), []
    for b in (buf, copy):
        gen.set_state(state)
        draws.append(b.sample(4, gen)[0])  # the list's second batch, no new draw
        assert b.used == 8
    assert torch.equal(draws[0], draws[1]) and torch.equal(buf.positions, copy.positions)
    small = ReleasedReplayBuffer(100, 2)
    small.add(torch.randn(1, 2), torch.zeros(1))  # 2 states
    with pytest.raises(RuntimeError, match="partial batch"):
        small.sample(4)


def test_train_command_with_the_released_buffer(tmp_path, capsys):
    checks = _checks()
    with pytest.raises(ValueError, match="--released-buffer"):
        checks.main(["train", "--target", "manywell", "--method", "tb", "--released-buffer", "--iterations", "1"])
    checks.main(["train", "--target", "manywell", "--method", "tb+expl+lp+ls", "--released-buffer", "--iterations",
                 "4", "--repeats", "1", "--save", str(tmp_path)])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["model"].endswith("released buffer") and math.isfinite(out["ours_delta_log_Z"]["mean"])
    saved = checks.load_model(str(tmp_path / "manywell_tb+expl+lp+ls_seed0_released_buffer.pt"), "manywell", "")
    assert float(saved.net.log_Z.detach()) == pytest.approx(out["log_Z_learned"])
    assert checks.training.ReplayBuffer is checks.ReplayBuffer
