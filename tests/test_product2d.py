"""The 2-D product experiment (`fastsamp product2d`): DDPM schedules against their closed forms, the
targets' exact densities, the networks' protocol, the paper's HMC variants, and a short training +
sampling run in which score-MH Langevin beats the unadjusted one."""
import json
import math
import os

import pytest
import torch

from fastsamp.ddpm import DDPM
from fastsamp.experiments import product2d
from fastsamp.experiments.product2d import networks, sampling, targets
from fastsamp.models import GaussianMixture, Product
from fastsamp.protocol import CountingModel
from fastsamp.samplers.kernels import HMC, ChainState, EnergyMH, PhiloxKey

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: one thread is fastest

def test_ddpm_cosine_matches_closed_form():
    sched = DDPM(100, "cosine", s=0.008)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    closed = torch.tensor([f(i / 100) / f(0) for i in range(1, 101)], dtype=torch.float64)
    unclipped = sched.betas < 0.999
    assert int((~unclipped).sum()) <= 2 and not bool(unclipped[-1])  # only the last steps are clipped
    k = int(unclipped.sum())
    torch.testing.assert_close(sched.alpha_bars[:k], closed[:k], rtol=1e-12, atol=1e-14)
    assert sched.betas[-1] == 0.999


def test_ddpm_linear_and_protocol_times():
    sched = DDPM(50, "linear", beta_start=1e-4, beta_end=0.02)
    betas = torch.tensor([1e-4 + (0.02 - 1e-4) * i / 49 for i in range(50)], dtype=torch.float64)
    torch.testing.assert_close(sched.betas, betas)
    ab = math.prod(1 - b for b in betas.tolist()[:10])
    t = 10 / 50
    assert sched.alpha(t) == pytest.approx(math.sqrt(ab), rel=1e-12)
    assert sched.sigma2(t) == pytest.approx(1 - ab, rel=1e-12)
    assert sched.alpha(t) ** 2 + sched.sigma(t) ** 2 == pytest.approx(1.0)
    tt = torch.tensor([t, 1.0], dtype=torch.float32)
    out = sched.alpha(tt)
    assert out.dtype == torch.float32 and out.shape == (2,)
    assert float(out[0]) == pytest.approx(sched.alpha(t), rel=1e-6)
    assert sched.index(1.0) == 49 and sched.index(0.02) == 0
    with pytest.raises(ValueError, match="grid times"):
        sched.alpha(0.011)
    with pytest.raises(ValueError, match="kind"):
        DDPM(10, "quadratic")
    with pytest.raises(ValueError, match="n_steps"):
        DDPM(0)


@pytest.mark.parametrize("name", ["ring", "bar", "target"])
def test_target_densities_are_normalised(name):
    log_prob = {"ring": targets.ring_log_prob, "bar": targets.bar_log_prob, "target": targets.target_log_prob}[name]
    h = 0.004
    g = torch.arange(-1.2 + h / 2, 1.2, h, dtype=torch.float64)
    xy = torch.cartesian_prod(g, g)
    mass = float(log_prob(xy).exp().sum()) * h * h
    assert mass == pytest.approx(1.0, abs=2e-3)


def test_target_is_the_ring_modes_inside_the_bar():
    x = targets.target_sample(4000, torch.Generator().manual_seed(0))
    assert torch.isfinite(targets.bar_log_prob(x)).all()
    # up to the product's normaliser, log ring + log bar = log target on the target's support
    diff = targets.ring_log_prob(x) + targets.bar_log_prob(x) - targets.target_log_prob(x)
    assert float(diff.max() - diff.min()) < 1e-5
    ring = targets.ring_sample(4000, torch.Generator().manual_seed(1))
    assert float(ring.norm(dim=1).mean()) == pytest.approx(0.5, abs=0.01)


def test_energy_network_score_is_the_gradient_of_its_log_prob():
    torch.manual_seed(0)
    net = networks.build("energy", DDPM(10)).double()
    for p in net.parameters():
        p.data.normal_(0, 0.3)
    x = torch.randn(5, 2, dtype=torch.float64)
    t = 0.3
    s, logp = net.score_and_log_prob(x, t)
    h = 1e-3
    fd = torch.stack([(net.log_prob(x + h * e, t) - net.log_prob(x - h * e, t)) / (2 * h)
                      for e in torch.eye(2, dtype=torch.float64)], 1)
    torch.testing.assert_close(s, fd, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logp, net.log_prob(x, t))


def test_networks_save_and_load(tmp_path):
    for version in ("score", "energy"):
        net = networks.build(version, DDPM(10), hidden=16, n_blocks=1)
        for p in net.parameters():
            p.data.normal_()
        networks.save(net, tmp_path / f"{version}.pt")
        back = networks.load(tmp_path / f"{version}.pt")
        x = torch.randn(4, 2)
        torch.testing.assert_close(back.score(x, 0.5), net.score(x, 0.5))
        assert not any(p.requires_grad for p in back.parameters()) and not back.training
    networks.save(net.double(), tmp_path / "double.pt")  # the saved dtype is kept (built on meta, state assigned)
    back = networks.load(tmp_path / "double.pt", map_location="cpu")
    assert {p.dtype for p in back.parameters()} == {torch.float64} and back.sigmas.dtype == torch.float64
    assert back.schedule.alpha_bars.device.type == "cpu"


def test_one_step_forward_in_chunks_equals_the_per_row_forward():
    """The samplers' path (one step index for every row: one bias row per block; batches over ROWS rows in
    chunks, here more than two) against the training path (a step index per row) on the whole batch as one chunk."""
    torch.manual_seed(0)
    net = networks.ResidualMLP(n_steps=10, hidden=16, n_blocks=2)
    for p in net.parameters():
        p.data.normal_(0, 0.3)
    x, per_row = torch.randn(2 * net.ROWS + 5, 2), torch.full((2 * net.ROWS + 5,), 7)
    with torch.no_grad():
        chunked, chunked_per_row, chunked_one = net(x, 7), net(x, per_row), net(x, torch.tensor([7]))
        net.ROWS = x.shape[0]  # this instance only: the reference is unchunked
        whole = net(x, per_row)
    for out in (chunked, chunked_per_row, chunked_one):
        torch.testing.assert_close(out, whole)


def test_a_0d_tensor_time_is_one_step_for_every_row_over_chunks():
    """t as a 0-d tensor (as a float t) on a batch over ROWS rows: one step index for every row."""
    net = networks.build("energy", DDPM(10), hidden=16, n_blocks=1)
    x, t = torch.randn(net.net.ROWS + 5, 2), torch.tensor(0.5)
    torch.testing.assert_close(net.score(x, t), net.score(x, 0.5))
    torch.testing.assert_close(net.log_prob(x, t), net.log_prob(x, 0.5))


def test_paper_method_names_map_points_to_sub_intervals():
    names = {m.name: m for m in sampling.methods("score")}
    assert [names[f"LA-{m}"].n_trapezoid for m in (3, 5, 10)] == [2, 4, 9]
    assert [names[f"HMC-{m}"].n_trapezoid for m in (3, 5, 10)] == [2, 4, 9]
    assert {m.name for m in sampling.methods("energy")} == {"Reverse", "U-LA", "LA", "U-HMC", "HMC", "HMC paper-rej"}


def _gaussian_hmc(mh):
    model = CountingModel(GaussianMixture(torch.zeros(1, 2, dtype=torch.float64), torch.zeros(1),
                                          torch.tensor([0.5])))
    return HMC(model, 0.0, torch.full((64,), 0.9, dtype=torch.float64), mh, n_leapfrog=3, damping=0.5,
               backend="torch")


def test_straight_line_hmc_is_exact_on_a_gaussian_and_the_paper_rejection_keeps_momentum():
    """On a Gaussian the trapezoid of a linear score is exact: the straight-line score MH equals the
    energy MH; the paper's rejection keeps p₀ where fastsamp's gives −p₀."""
    x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    p = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 3
    key = PhiloxKey(3, 0, 0)
    results = {}
    for name, method in (("line", sampling.Method("HMC-3", "hmc", "score", 3)),
                         ("keep", sampling.Method("HMC-3 paper-rej", "hmc", "score", 3, flip=False))):
        kernel = _gaussian_hmc(sampling.mh_test(method))
        results[name] = kernel.step(kernel.init(x, p), key)
    kernel = _gaussian_hmc(EnergyMH())
    exact_state, exact_info = kernel.step(kernel.init(x, p), key)
    state, info = results["line"]
    torch.testing.assert_close(info.log_alpha, exact_info.log_alpha)
    torch.testing.assert_close(state.x, exact_state.x)
    rejected = ~info.accepted
    assert 0 < int(rejected.sum()) < 64
    kept, _ = results["keep"]
    torch.testing.assert_close(kept.momentum[rejected], -state.momentum[rejected])
    torch.testing.assert_close(kept.momentum[info.accepted], state.momentum[info.accepted])
    assert isinstance(kept, ChainState)


def test_short_training_and_sampling_score_mh_beats_unadjusted():
    """Small networks, 10 DDPM levels, a step (0.1) too large for ULA at the sharp last levels: the
    score-MH Langevin (trapezoid, 3 points) keeps the chains near the target where ULA does not; a
    broken MH test (accept all) would equal ULA (the same noise)."""
    torch.manual_seed(0)
    sched = DDPM(10)
    nets = [networks.train(networks.build("score", sched, hidden=32, n_blocks=2), targets.FACTORS[f][0],
                           steps=80, batch_size=256, lr=3e-3, ema_decay=0.9, seed=i)
            for i, f in enumerate(("ring", "bar"))]
    model = Product(*nets)
    settings = sampling.Settings(n_samples=200, n_steps=5, la_step=0.1)
    ref = targets.target_sample(200, torch.Generator().manual_seed(5))
    from fastsamp.metrics import wasserstein2
    w2 = {}
    for method in (sampling.Method("U-LA", "langevin"), sampling.Method("LA-3", "langevin", "score", 3)):
        x, res = sampling.run_method(model, method, settings, seed=0)
        xf = x[torch.isfinite(x).all(1)]
        w2[method.name] = wasserstein2(xf, ref) if xf.shape[0] == x.shape[0] else math.inf
    assert w2["LA-3"] < 0.6 * w2["U-LA"], w2  # seed 0: about 0.35 against 1.2


def test_cli_runs_resumes_and_reports(tmp_path):
    from fastsamp import cli
    argv = ["product2d", "--out", str(tmp_path), "--retrains", "2", "--steps", "5", "--batch-size", "64",
            "--samples", "40", "--mcmc-steps", "1", "--ddpm-steps", "4", "--versions", "score",
            "--methods", "Reverse", "U-LA", "LA-3"]
    assert cli.main(argv) == 0
    run = json.loads((tmp_path / "runs" / "score-r1.json").read_text())
    assert set(run["methods"]) == {"Reverse", "U-LA", "LA-3"}
    assert run["methods"]["LA-3"]["n_trapezoid"] == 2 and run["methods"]["LA-3"]["points"] == 3
    assert (tmp_path / "product2d.png").stat().st_size > 0
    table = (tmp_path / "report.md").read_text()
    assert "| score | LA-3 |" in table and "floor" in table
    model_file = tmp_path / "models" / "score-ring-r0.pt"
    stamp = model_file.stat().st_mtime_ns
    assert cli.main(argv[:-3] + ["U-HMC"]) == 0  # resumes: models reused, one more method
    assert model_file.stat().st_mtime_ns == stamp
    assert "U-HMC" in json.loads((tmp_path / "runs" / "score-r0.json").read_text())["methods"]
    run0 = json.loads((tmp_path / "runs" / "score-r0.json").read_text())
    assert run0["networks"] == networks.fingerprint([networks.load(model_file)] + [
        networks.load(tmp_path / "models" / "score-bar-r0.pt")])
    # networks lost and trained again: the same seeds on this machine give the same networks, the recorded
    # methods stay as they are and only the new one is sampled
    for f in (tmp_path / "models").glob("score-*-r0.pt"):
        f.unlink()
    assert cli.main(argv[:-3] + ["LA-5"]) == 0
    run = json.loads((tmp_path / "runs" / "score-r0.json").read_text())
    assert run["networks"] == run0["networks"] and {k: run["methods"][k] for k in run0["methods"]} == run0["methods"]
    # recorded with other networks (as when they were trained again on another CPU): every recorded method is
    # sampled again with the new ones, besides the one asked for
    (tmp_path / "runs" / "score-r0.json").write_text(json.dumps(dict(run, networks="0" * 16)))
    (tmp_path / "models" / "score-ring-r0.pt").unlink()
    assert cli.main(argv[:-3] + ["LA-10"]) == 0
    again = json.loads((tmp_path / "runs" / "score-r0.json").read_text())
    assert again["networks"] == run0["networks"]
    assert set(again["methods"]) == {"Reverse", "U-LA", "LA-3", "U-HMC", "LA-5", "LA-10"}
    assert again["methods"]["U-LA"]["wall_time_s"] != run["methods"]["U-LA"]["wall_time_s"]  # sampled again
    with pytest.raises(SystemExit):
        cli.main([a if a != "40" else "50" for a in argv])  # other settings, same OUT
    assert product2d.SUMMARY


@pytest.mark.parametrize("argv, message", [
    (["--ema", "1.5"], "--ema must be in [0, 1)"),
    (["--methods", "LA-4"], "--methods: unknown LA-4"),
    (["--versions", "energy", "--methods", "LA-3"], "--methods: unknown LA-3"),
    (["--report-only"], "holds no results"),
])
def test_cli_argument_errors(tmp_path, capsys, argv, message):
    from fastsamp import cli
    with pytest.raises(SystemExit) as e:
        cli.main(["product2d", "--out", str(tmp_path / "empty"), *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("version, compile", [("score", False), ("energy", False), ("energy", True)])
def test_training_killed_and_resumed_ends_where_an_uninterrupted_run_ends(tmp_path, version, compile):
    """k steps, killed (the data sampler raises at step k), rerun to 2k from the checkpoint == 2k straight:
    identical EMA weights (eager, and compiled against compiled); the checkpoint is removed at the end."""
    k, sample = 6, targets.FACTORS["ring"][0]

    def run(sample_data, checkpoint=None):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(3)
            model = networks.build(version, DDPM(10), hidden=16, n_blocks=1)
        return networks.train(model, sample_data, steps=2 * k, batch_size=32, ema_decay=0.9, seed=7,
                              checkpoint=checkpoint, checkpoint_every=k, compile=compile)

    calls = []

    def killed_at_step_k(n, g):
        calls.append(n)
        if len(calls) > k:
            raise Interrupted
        return sample(n, g)

    checkpoint = str(tmp_path / "net.ckpt.pt")
    with pytest.raises(Interrupted):
        run(killed_at_step_k, checkpoint)
    assert os.path.exists(checkpoint)
    resumed, straight = run(sample, checkpoint), run(sample)
    assert not os.path.exists(checkpoint)
    for (name, a), b in zip(resumed.state_dict().items(), straight.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("version", ["score", "energy"])
def test_compiled_training_loss_and_gradients_match_eager(version):
    """torch.compile'd `eps_loss` (torch.func; the energy version's double backward included) against the
    eager loss of the network: the same value and parameter gradients up to float32 rounding."""
    torch.manual_seed(0)
    model = networks.build(version, DDPM(10), hidden=16, n_blocks=1)
    for p in model.parameters():  # non-zero output layers, so that every gradient is exercised
        p.data.normal_(0, 0.3)
    x_t, i, z = torch.randn(64, 2), torch.randint(0, 10, (64,)), torch.randn(64, 2)
    eager = ((model.eps(x_t, i) - z) ** 2).sum(1).mean()
    grads = torch.autograd.grad(eager, list(model.net.parameters()))
    params = dict(model.net.named_parameters())
    compiled = networks.compiled_eps_loss(model)(params, x_t, i, z)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    for g_c, g_e in zip(torch.autograd.grad(compiled, list(params.values())), grads):
        torch.testing.assert_close(g_c, g_e, rtol=1e-4, atol=1e-5)


def test_claim_check_verdicts():
    """The claim line: holds when score-MH's relative W2 gain matches energy-MH's within the spreads (said to be
    losses when both are), does not hold when it does not, untestable when energy-MH's own gain is inside its
    spread."""
    from fastsamp.experiments.product2d.report import claim_check

    def runs(energy_w2, score_w2):  # per retrain: (unadjusted, MH) W2
        return {"energy": [{"methods": {"U-LA": {"w2": b}, "LA": {"w2": c}}} for b, c in energy_w2],
                "score": [{"methods": {"U-LA": {"w2": b}, "LA-10": {"w2": c}}} for b, c in score_w2]}

    gain = [(1.0, 0.5), (1.0, 0.52), (1.0, 0.48)]  # 50 ± 2 %
    assert "holds" in claim_check(runs(gain, [(1.0, 0.51), (1.0, 0.49), (1.0, 0.5)]))[0]
    loss = [(1.0, 1.3), (1.0, 1.32), (1.0, 1.28)]  # −30 ± 2 %
    line = claim_check(runs(loss, [(1.0, 1.31), (1.0, 1.29), (1.0, 1.33)]))[0]
    assert "as losses" in line and "holds" not in line
    mixed = [(1.0, 0.88), (1.0, 1.06), (1.0, 0.97)]  # +3 ± 9 %: a gain, within the spreads of the −10 ± 5 % loss
    line = claim_check(runs([(1.0, 1.05), (1.0, 1.1), (1.0, 1.15)], mixed))[0]
    assert "different signs" in line and "holds" not in line
    assert "does not hold" in claim_check(runs(gain, [(1.0, 0.95), (1.0, 0.97), (1.0, 0.96)]))[0]
    noisy = [(1.0, 0.9), (1.0, 1.1), (1.0, 0.95)]
    assert "untestable" in claim_check(runs(noisy, gain))[0]
    assert claim_check({"energy": [], "score": []}) == []
