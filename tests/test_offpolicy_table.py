"""The resumable off-policy table: a run stopped and resumed from its checkpoint equals an
uninterrupted run bit for bit (one thread, same seeds), the table script runs end to end on tiny
sizes (skipping finished runs, resuming unfinished ones), and device selection fails clearly."""
import json
import math
import os
import shutil
import statistics

import pytest
import torch
from conftest import load_benchmark

from fastsamp import metrics
from fastsamp.experiments import offpolicy
from fastsamp.experiments.offpolicy_eval import equal_count_reference
from fastsamp.samplers.diffusion import DiffusionSampler, TrainingDiverged, TrainLog, local_search, train
from fastsamp.samplers.diffusion.training import exploration_std
from fastsamp.targets import get_target

TINY = dict(batch_size=32, hidden=16, n_steps=10)
LS_TINY = dict(ls_every=4, ls_steps=20, ls_burn_in=10, buffer_size=100)


pytestmark = pytest.mark.usefixtures("one_thread")  # the resume tests compare bitwise


def _trained(method, iterations, *, checkpoint=None, until=None, checkpoint_every=0, **kw):
    sampler, cfg = offpolicy.build("25gmm", method, seed=3, iterations=iterations, **TINY, **kw)
    log = train(sampler, cfg, progress=False, checkpoint=checkpoint, checkpoint_every=checkpoint_every, until=until)
    return sampler, log


@pytest.mark.parametrize("method,stop,kw", [("tb+expl", 6, {}), ("tb+expl+ls", 7, LS_TINY)])
def test_stopped_and_resumed_run_equals_an_uninterrupted_run(tmp_path, method, stop, kw):
    """TB with exploration (decayed over 5000 iterations: the resumed half still explores) and TB with
    local search + both replay buffers (the stop falls between a forward and a buffer iteration,
    before a local search): k iterations, a checkpoint, a fresh process state resuming to 2k, and an
    uninterrupted run to 2k end with bitwise identical parameters, optimizer moments and losses."""
    ckpt = str(tmp_path / "run.ckpt")
    first, log1 = _trained(method, 2 * stop, checkpoint=ckpt, checkpoint_every=2, until=stop, **kw)
    assert len(log1.loss) == stop and os.path.exists(ckpt)
    if kw:  # both buffers resume full, the replay buffer wrapped (head 28: 4 batches of 32 in 100 slots)
        buffers = torch.load(ckpt, weights_only=False)["buffers"]
        assert [(b["size"], b["head"]) for b in buffers.values()] == [(100, 28), (100, 0)]
    torch.manual_seed(12345)  # the resumed run must not depend on the global RNG it starts with
    resumed, log2 = _trained(method, 2 * stop, checkpoint=ckpt, **kw)
    straight, log3 = _trained(method, 2 * stop, **kw)
    assert log2.resumed_from == [stop] and len(log2.loss) == 2 * stop
    assert log2.loss == log3.loss
    assert log2.loss[:stop] == log1.loss
    a, b = resumed.state_dict(), straight.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the run moved: a resume that silently restarted or skipped iterations would differ above
    assert not torch.equal(first.state_dict()["net.log_Z"], b["net.log_Z"])
    assert log2.cpu_seconds >= log1.cpu_seconds > 0


@pytest.mark.parametrize("method,explore", [("tb+expl", 0.2), ("vargrad+expl", 0.2), ("tb+expl+lp", 0.2),
                                            ("tb+expl+ls", 0.1), ("tb+expl+lp+ls", 0.1), ("vargrad+expl+lp+ls", 0.1)])
def test_presets_follow_the_released_commands(method, explore):
    """gfn-diffusion's README commands: --exploration_factor 0.2 (0.1 with --local_search) with
    --exploration_wd, a linear decay to 0 over the first 5000 iterations whatever the run length; local
    search with --ld_step 0.1 --ld_schedule, 200 moves, burn-in 100, every 100 iterations, two
    600,000-state rank-prioritised buffers (rank_weight 0.01)."""
    _, cfg = offpolicy.build("25gmm", method, **TINY)
    assert cfg.explore == explore and cfg.explore_decay == 5000
    stds = [exploration_std(cfg, it) for it in (0, 2500, 5000, 12500)]
    assert stds == pytest.approx([explore, explore / 2, 0.0, 0.0])
    if cfg.local_search:
        assert (cfg.ls_step_size, cfg.ls_steps, cfg.ls_burn_in, cfg.ls_every, cfg.buffer_size, cfg.rank_weight) == (
            0.1, 200, 100, 100, 600_000, 0.01)


def test_local_search_adapts_the_step_before_every_move_and_keeps_accepted_proposals():
    """As langevin_dynamics with --ld_schedule: ±1% before every move after the first (nothing accepted:
    ε·0.99^29 after 30 moves; everything accepted: ε·1.01^29), and the kept states are the accepted
    proposals of the moves after burn-in (moves 11..29: 19 per chain)."""
    target = get_target("25gmm")
    x0 = target.sample(64, torch.Generator().manual_seed(0))
    found, _, eps = local_search(target, x0, n_steps=30, burn_in=10, step_size=1e3, seed=0)
    assert eps == pytest.approx(1e3 * 0.99 ** 29) and found.shape == (0, 2)
    found, log_r, eps = local_search(target, x0, n_steps=30, burn_in=10, step_size=1e-8, seed=0)
    assert eps == pytest.approx(1e-8 * 1.01 ** 29) and found.shape == (64 * 19, 2)
    torch.testing.assert_close(log_r, target.log_prob(found))


def test_loss_curve_is_the_mean_min_and_max_per_window():
    """⌈7 / 3⌉ = 3 iterations per window, the last one shorter; NaN min and max in a window with a NaN loss."""
    c = TrainLog(loss=[3.0, 1.0, 2.0, 6.0, 4.0, 5.0, 0.5]).loss_curve(windows=3)
    assert c == {"every": 3, "iterations": [3, 6, 7], "mean": [2.0, 5.0, 0.5], "min": [1.0, 4.0, 0.5],
                 "max": [3.0, 6.0, 0.5]}
    assert TrainLog(loss=[1.0, 2.0]).loss_curve()["every"] == 1 and TrainLog().loss_curve()["mean"] == []
    nan = math.nan  # a NaN first, in the middle and last in a window: its mean, min and max are NaN
    c = TrainLog(loss=[nan, 1.0, 2.0, 3.0, nan, 4.0, 5.0, 6.0, nan, 7.0, 8.0, 9.0]).loss_curve(windows=4)
    for key, last in (("mean", 8.0), ("min", 7.0), ("max", 9.0)):
        assert all(math.isnan(v) for v in c[key][:3]) and c[key][3] == last, key


def test_a_metric_that_finished_runs_lack_is_not_pending(tmp_path, capsys):
    """LGCP has no W2 (no exact samples): with its runs finished the W2 cells read "–", not "planned" or "running"
    (the five committed LGCP TB runs, reported from a copy)."""
    results = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "results", "offpolicy_full")
    for seed in range(5):
        shutil.copy(os.path.join(results, f"lgcp_tb_seed{seed}.json"), tmp_path)
    _bench().main(["report", "--brief", "--targets", "lgcp", "--methods", "tb", "--out", str(tmp_path)])
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| lgcp | tb |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "5/5" and cells[4].startswith("ELBO ") and cells[8] == "–", cells
    assert "planned" not in row and "running" not in row


def test_checkpoint_of_another_configuration_is_refused(tmp_path):
    ckpt = str(tmp_path / "run.ckpt")
    _trained("tb", 4, checkpoint=ckpt, until=2)
    with pytest.raises(ValueError, match="another TrainConfig"):
        _trained("tb", 4, checkpoint=ckpt, lr_policy=1e-2)


def _bench():
    return load_benchmark("offpolicy.py", "bench_offpolicy")


def _two_tb_runs(out: str, iterations: int, eval_samples: int):
    """Two finished tiny 25GMM TB runs (seeds 0, 1) in `out`, without repeated evaluations, the second one's saved
    model removed: (the benchmark module, the table's arguments, the two runs' JSON paths)."""
    bench = _bench()
    argv = ["--iterations", str(iterations), "--seeds", "0", "1", "--targets", "25gmm", "--methods", "tb",
            "--batch-size", "16", "--out", out]
    bench.main(["table", *argv, "--eval-samples", str(eval_samples), "--repeats", "0"])
    os.remove(os.path.join(out, "25gmm_tb_seed1.pt"))
    return bench, argv, [os.path.join(out, f"25gmm_tb_seed{s}.json") for s in (0, 1)]


def test_table_script_runs_skips_finished_and_resumes(tmp_path, capsys):
    """Two runs of 6 iterations: one interrupted after 3 (its checkpoint on disk), then the table:
    it reports 3/12 iterations, resumes that run, runs the other, writes both JSONs and the table; a
    rerun does nothing and says 2/2 runs done."""
    bench = _bench()
    out = str(tmp_path)
    argv = ["--iterations", "6", "--seeds", "0", "--targets", "25gmm", "--methods", "tb", "tb+expl+ls",
            "--batch-size", "16", "--eval-samples", "64", "--out", out]
    sampler, cfg = offpolicy.build("25gmm", "tb+expl+ls", seed=0, iterations=6, batch_size=16)
    train(sampler, cfg, progress=False, checkpoint=offpolicy.checkpoint_path(out, "25gmm", "tb+expl+ls", 0), until=3)
    bench.main(["table", *argv, "--checkpoint-every", "2"])
    text = capsys.readouterr().out
    assert "table: 0/2 runs done, 3/12 iterations done" in text and "2 runs to do" in text
    assert "table: 2/2 runs done, 12/12 iterations done" in text
    assert "25gmm tb+expl+ls seed 0: 4/6 iterations" in text  # a line per checkpoint
    results = {m: json.load(open(os.path.join(out, f"25gmm_{m}_seed0.json"))) for m in ("tb", "tb+expl+ls")}
    assert results["tb+expl+ls"]["resumed_from"] == [3] and results["tb"]["resumed_from"] == []
    curve = results["tb+expl+ls"]["loss_curve"]  # resumed at 3: the curve still starts at iteration 0
    assert curve["every"] == 1 and curve["iterations"] == [1, 2, 3, 4, 5, 6] and curve["mean"] == curve["min"]
    for res in results.values():
        assert res["iterations"] == 6 and res["metrics"]["n"] == 64 and res["ms_per_iteration"] > 0
        assert res["device"] == "cpu" and res["config"]["batch_size"] == 16
    assert not os.listdir(os.path.join(out, "checkpoints"))  # finished runs leave no checkpoint
    printed = text[text.index("| target |"):]  # the table of the runs asked for
    assert "| 25gmm | tb+expl+lp+ls" not in printed and "| 25gmm | tb | 1/1 | 6 |" in printed
    assert "1.176±0.109" in printed  # the published TB row sits next to ours
    table = open(os.path.join(out, "table.md")).read()  # the whole plan, 5 seeds
    assert "| 25gmm | tb | 1/5 | 6 |" in table and "1.176±0.109" in table
    mtime = os.path.getmtime(os.path.join(out, "25gmm_tb_seed0.json"))
    bench.main(["table", *argv])
    text = capsys.readouterr().out
    assert "table: 2/2 runs done, 12/12 iterations done (100.0%); 0 runs to do" in text
    bench.main(["curve", os.path.join(out, "25gmm_tb+expl+ls_seed0.json")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "25gmm tb+expl+ls seed 0, 6 iterations: loss over windows of 1 iteration"
    assert lines[1].split() == ["last", "iteration", "mean", "min", "max"]
    assert len(lines) == 8 and lines[-1].split()[0] == "6" and float(lines[-1].split()[1]) == pytest.approx(
        curve["mean"][-1], rel=1e-3)
    old = dict(results["tb"], final_loss=1.5)
    del old["loss_curve"]  # a JSON written before runs recorded their curve
    with open(tmp_path / "old.json", "w") as f:
        json.dump(old, f)
    with open(tmp_path / "timing.json", "w") as f:
        json.dump({"threads": 1, "results": {}}, f)
    missing = str(tmp_path / "missing.json")
    bench.main(["curve", missing, str(tmp_path / "timing.json"), str(tmp_path / "old.json")])
    lines = capsys.readouterr().out.splitlines()  # files that are not run JSONs are named, the others still printed
    assert lines[0].startswith(f"{missing}: not a run JSON (FileNotFoundError")
    assert lines[1] == f"{tmp_path / 'timing.json'}: not a run JSON (KeyError: 'target')"
    assert lines[2].startswith("25gmm tb seed 0, 6 iterations: no loss curve")
    assert os.path.getmtime(os.path.join(out, "25gmm_tb_seed0.json")) == mtime
    with pytest.raises(ValueError, match="use another out directory"):  # never mixes protocols in one folder
        bench.main(["table", *argv[:1], "7", *argv[2:]])


def test_table_scores_each_run_as_soon_as_it_finishes(tmp_path, monkeypatch):
    """`table --repeats K` gives a finished run its K evaluations before the next run starts: a table stopped in
    its second run (here: that run raises) leaves the first one scored."""
    bench, real = _bench(), offpolicy._run_planned

    def stopped_in_the_second(job):
        if job[0].seed == 1:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(offpolicy, "_run_planned", stopped_in_the_second)
    with pytest.raises(KeyboardInterrupt):
        bench.main(["table", "--iterations", "4", "--seeds", "0", "1", "--targets", "25gmm", "--methods", "tb",
                    "--batch-size", "16", "--eval-samples", "32", "--repeats", "2", "--out", str(tmp_path)])
    res = json.load(open(os.path.join(tmp_path, "25gmm_tb_seed0.json")))
    assert len(res["evaluations"]["seeds"]) == 2 and len(res["evaluations"]["values"]["elbo"]) == 2
    assert not os.path.exists(os.path.join(tmp_path, "25gmm_tb_seed1.json"))


def test_progress_counts_a_run_that_finishes_while_it_is_read(tmp_path, monkeypatch):
    """`run_table` reads the table's progress while its workers run: a run whose JSON appears and whose checkpoint
    goes between the reads counts as finished, and a checkpoint removed between a look and its load reads as none
    (it raised FileNotFoundError in `run_table`'s process: the likely end of one `offpolicy.py table --jobs 2` in a
    loaded test run, tests/test_memory.py)."""
    out = str(tmp_path)
    plan = offpolicy.plan_table(["25gmm"], ["tb"], [0], iterations=4)
    ckpt = offpolicy.checkpoint_path(out, "25gmm", "tb", 0)
    sampler, cfg = offpolicy.build("25gmm", "tb", seed=0, iterations=4, batch_size=16)
    train(sampler, cfg, progress=False, checkpoint=ckpt, until=2)
    assert offpolicy.table_progress(plan, out)["iterations_done"] == 2
    read = offpolicy.read_checkpoint_iteration

    def read_then_finish(path):  # the worker finishes the run right after its checkpoint is read
        it = read(path)
        with open(offpolicy.run_stem(out, "25gmm", "tb", 0) + ".json", "w") as f:
            json.dump({"iterations": 4, "config": {"batch_size": 16}}, f)
        os.remove(path)
        return it

    monkeypatch.setattr(offpolicy, "read_checkpoint_iteration", read_then_finish)
    assert offpolicy.table_progress(plan, out) == {"runs_done": 1, "runs_planned": 1, "iterations_done": 4,
                                                   "iterations_planned": 4}
    monkeypatch.setattr(os.path, "exists", lambda path: True)  # it was there a moment ago
    assert read(ckpt) == 0


def test_table_refuses_lgcp_runs_on_another_point_pattern(tmp_path, monkeypatch):
    """`table` adds LGCP runs on the pattern LGCP.default_points gives here; finished LGCP runs on the
    other one (lgcp_points in their JSON; none: synthetic, from before the pines) are an error. The
    data lookup is made only where the folder holds finished LGCP runs."""
    bench = _bench()
    args = type("A", (), dict(out=str(tmp_path), batch_size=None))
    lgcp = offpolicy.plan_table(["lgcp"], ["tb"], [0, 1], iterations=4)
    gmm = offpolicy.plan_table(["25gmm"], ["tb"], [0], iterations=4)

    def lookup_fails():
        raise AssertionError("LGCP.default_points called without finished LGCP runs")
    monkeypatch.setattr(bench.LGCP, "default_points", staticmethod(lookup_fails))
    bench._check_lgcp_points(lgcp + gmm, args)  # no finished run: nothing to mix
    for seed, points in ((0, {"lgcp_points": "synthetic"}), (1, {})):
        with open(offpolicy.run_stem(args.out, "lgcp", "tb", seed) + ".json", "w") as f:
            json.dump({"iterations": 4, "config": {"batch_size": 16}, **points}, f)
    bench._check_lgcp_points(gmm, args)
    monkeypatch.setattr(bench.LGCP, "default_points", staticmethod(lambda: "synthetic"))
    bench._check_lgcp_points(lgcp, args)
    monkeypatch.setattr(bench.LGCP, "default_points", staticmethod(lambda: "finpines"))
    with pytest.raises(ValueError, match="holds LGCP runs on the synthetic point pattern.*use the finpines one"):
        bench._check_lgcp_points(lgcp, args)


def test_full_plan_is_seed_major_and_covers_the_table():
    bench = _bench()
    args = type("A", (), dict(targets=None, methods=None, seeds=[0, 1], fraction=1.0, iterations=None))
    plan = bench.make_plan(args)
    assert len(plan) == 2 * (3 * 11 + 2 * 2)
    assert {r.seed for r in plan[:37]} == {0} and plan[0].method == "tb+expl+lp+ls"
    iters = {(r.target, r.method): r.iterations for r in plan}
    assert iters[("funnel", "pis")] == 25000 and iters[("manywell", "tb+expl+lp+ls")] == 10000
    assert ("lgcp", "tb") in iters and ("40gmm", "tb+expl+lp+ls") in iters
    filtered = type("A", (), dict(targets=["funnel"], methods=["tb"], seeds=[7], fraction=1.0, iterations=None))
    assert [(r.target, r.method, r.seed) for r in bench.make_plan(filtered)] == [("funnel", "tb", 7)]
    whole = bench.make_plan(filtered, whole=True)  # every cell, the paper's seeds and the one asked for
    assert len(whole) == 6 * 37 and sorted({r.seed for r in whole}) == [0, 1, 2, 3, 4, 7]


def test_table_md_is_the_whole_plan_whatever_subset_ran(tmp_path, capsys):
    """`table` of one cell, then `table` of another and `report` of a third (tiny runs): each prints the
    runs it was asked for, and table.md always holds all 37 cells of the plan, both finished runs in
    theirs; `report --brief` prints and leaves table.md alone."""
    bench = _bench()
    out = str(tmp_path)
    tiny = ["--iterations", "2", "--batch-size", "8", "--eval-samples", "32", "--out", out]
    bench.main(["table", "--targets", "25gmm", "--methods", "tb", "--seeds", "0", *tiny])
    bench.main(["table", "--targets", "funnel", "--methods", "pis", "--seeds", "1", *tiny])
    bench.main(["report", "--targets", "manywell", "--methods", "subtb", "--seeds", "0", *tiny])
    printed = capsys.readouterr().out.split("| target |")
    assert len(printed) == 4 and "| manywell | subtb | 0/1 | 2 | planned |" in printed[3]
    assert "| 25gmm | tb |" not in printed[3] and "| funnel | pis | 1/1 | 2 |" in printed[2]
    table = open(os.path.join(out, "table.md")).read()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| target")]
    assert len(rows) == 3 * 11 + 2 * 2 and len({tuple(r.split(" | ")[:2]) for r in rows}) == len(rows)
    assert "| 25gmm | tb | 1/5 | 2 |" in table and "| funnel | pis | 1/5 | 2 |" in table
    assert "| lgcp | tb+expl+lp+ls | 0/5 | 2 | planned |" in table
    assert "table: 2/185 runs done, 4/370 iterations done" in table and "seeds [0, 1, 2, 3, 4]" in table
    bench.main(["report", "--brief", "--targets", "25gmm", "--methods", "tb", "--seeds", "0", *tiny])
    assert open(os.path.join(out, "table.md")).read() == table


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without a GPU")
def test_cuda_without_a_gpu_fails_clearly(capsys):
    from fastsamp.cli import main
    with pytest.raises(ValueError, match="no CUDA GPU"):
        offpolicy.build("25gmm", "tb", device="cuda")
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--device", "cuda", "--iterations", "1"])
    message = f"{exit_.value.code} {capsys.readouterr().err}"
    assert "no CUDA GPU" in message and "cuda" in message


def test_device_argument():
    with pytest.raises(ValueError, match="device must be"):
        offpolicy.resolve_device("tpu")
    sampler, _ = offpolicy.build("funnel", "tb", device="cpu", **TINY)
    assert sampler.device == torch.device("cpu")
    x, log_w = sampler.sample(5)
    assert x.device.type == "cpu" and x.shape == (5, 10) and log_w.shape == (5,)


def test_equal_count_reference_has_the_papers_80_draws_per_mode():
    """The 25GMM reference set of the released code at publication: n // 25 draws per mode, no
    multinomial noise in the mode counts (an exact i.i.d. sample has it)."""
    target = get_target("25gmm")
    ref = equal_count_reference(target, 2000, torch.Generator().manual_seed(0))
    assert ref.shape == (2000, 2)
    assert torch.equal(metrics.nearest_mode_weights(ref, target.means) * 25, torch.ones(25, dtype=torch.float64))
    iid = metrics.nearest_mode_weights(target.sample(2000, torch.Generator().manual_seed(0)), target.means)
    assert iid.sum() == pytest.approx(1.0) and not torch.equal(iid * 25, torch.ones(25, dtype=torch.float64))


@pytest.mark.parametrize("target_name", ["25gmm", "manywell", "funnel"])
def test_evaluate_adds_diagnostics_on_the_samples_of_w2(target_name):
    """The diagnostics are computed on the very samples W2 was (same seed): the mode weights of
    sampler.sample(n, seed) and of evaluate agree, and W2 is sampler.evaluate's, unchanged."""
    sampler, _ = offpolicy.build(target_name, "tb", **TINY)
    target = sampler.target
    m = offpolicy.evaluate(sampler, target, n=100, seed=7)
    exact = target.sample(100, torch.Generator().manual_seed(7))
    assert m["w2"] == sampler.evaluate(100, seed=7, exact_samples=exact)["w2"]
    assert m["w2_exact"] > 0
    if target_name == "25gmm":
        x, _ = sampler.sample(100, seed=7)
        assert m["mode_weights"] == (metrics.nearest_mode_weights(x, target.means) * 25).tolist()
        assert sum(m["mode_weights"]) == pytest.approx(25) and 1 <= m["modes_hit"] <= 25
        assert m["mode_weight_min"] <= 1 <= m["mode_weight_max"]
        assert m["w2_equal_counts"] > 0 and m["w2_exact_equal_counts"] > 0
    if target_name == "manywell":
        assert 0 <= m["right_well_fraction"] <= 1 and 0.75 < m["right_well_fraction_exact"] < 0.95  # exact 0.844
    if target_name == "funnel":
        assert "mode_weights" not in m and "right_well_fraction" not in m


def test_reevaluate_recomputes_finished_runs_from_their_models(tmp_path, capsys):
    """A finished run whose JSON predates the diagnostics gets them from its saved model, with its
    old metrics reproduced bit for bit, and loses its repeated evaluations, made without them (logged), which
    `evaluate` then recomputes, the same; a reevaluation that adds nothing keeps them. A run without a model is
    reported and left alone."""
    bench, argv, paths = _two_tb_runs(str(tmp_path), 4, 64)
    full = json.load(open(paths[0]))
    for path in paths:  # as written before the diagnostics existed
        res = json.load(open(path))
        res["metrics"] = {k: v for k, v in res["metrics"].items() if k in (
            "log_Z", "elbo", "ess", "n", "n_finite", "log_Z_learned", "w2", "eubo", "log_Z_true", "delta_log_Z",
            "delta_log_Z_rw")}
        json.dump(res, open(path, "w"))
    bench.main(["evaluate", *argv, "--repeats", "2"])
    evaluations = json.load(open(paths[0]))["evaluations"]
    before = json.load(open(paths[1]))
    capsys.readouterr()
    bench.main(["reevaluate", *argv])
    text = capsys.readouterr().out
    assert "25gmm tb seed 0: metrics reproduced" in text and "seed 1: no saved model" in text
    assert "its 2 repeated evaluations dropped" in text
    res = json.load(open(paths[0]))
    assert res["metrics"] == full["metrics"] and res["reevaluation"]["changed"] == {}
    assert "w2_equal_counts" in res["reevaluation"]["added"] and "evaluations" not in res
    assert json.load(open(paths[1])) == before
    bench.main(["evaluate", *argv, "--repeats", "2"])
    assert json.load(open(paths[0]))["evaluations"]["values"] == evaluations["values"]
    capsys.readouterr()
    bench.main(["reevaluate", *argv])  # nothing changed or added: the evaluations stay
    assert "dropped" not in capsys.readouterr().out
    assert json.load(open(paths[0]))["evaluations"]["values"] == evaluations["values"]
    bench.main(["report", *argv, "--eval-samples", "64"])
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 25gmm | tb |")][0]
    assert "(80/mode:" not in row  # seed 1 lacks the reference-set W2: no mean over one seed of two


def test_repeated_evaluations_are_deterministic_stored_and_score_the_table(tmp_path, capsys):
    """`evaluate --repeats K` gives each finished run with a saved model K evaluations of that model with fresh
    seeds (evaluation_seeds: deterministic from the run's seed), stored with their mean and sd; more repeats
    later add only the missing ones, bit for bit the same first ones. `report` scores a run by that mean
    (mean ± std over seeds of the per-model means) and keeps the one evaluation at the end of training in its
    own column; a run without a model is scored by its one evaluation and named under "seeds done"."""
    bench, argv, path = _two_tb_runs(str(tmp_path), 3, 48)
    assert "evaluations" not in json.load(open(path[0]))
    seed1 = json.load(open(path[1]))
    capsys.readouterr()
    bench.main(["evaluate", *argv, "--repeats", "3"])
    assert "25gmm tb seed 1: no saved model, scored by its one evaluation" in capsys.readouterr().out
    assert json.load(open(path[1])) == seed1
    res = json.load(open(path[0]))
    ev = res["evaluations"]
    assert ev["seeds"] == offpolicy.evaluation_seeds(0, 3) == [1_010_000, 2_010_000, 3_010_000] and ev["n"] == 48
    sampler = DiffusionSampler.load(str(tmp_path / "25gmm_tb_seed0.pt"))
    again = offpolicy.evaluate(sampler, sampler.target, n=48, seed=ev["seeds"][1])
    assert {k: v[1] for k, v in ev["values"].items()} == offpolicy._scalars(again)
    assert "mode_weights" not in ev["values"] and len(set(ev["values"]["w2"])) == 3  # fresh samples each time
    assert res["metrics"]["w2"] not in ev["values"]["w2"]
    for k, v in ev["values"].items():
        assert len(v) == 3 and ev["mean"][k] == statistics.mean(v) and ev["sd"][k] == statistics.stdev(v)
    bench.main(["evaluate", *argv, "--repeats", "5"])
    more = json.load(open(path[0]))["evaluations"]
    assert more["seeds"] == offpolicy.evaluation_seeds(0, 5)
    assert all(more["values"][k][:3] == v for k, v in ev["values"].items())
    mtime = os.path.getmtime(path[0])
    bench.main(["evaluate", *argv, "--repeats", "4"])  # has them already: untouched
    assert os.path.getmtime(path[0]) == mtime
    capsys.readouterr()
    bench.main(["report", *argv, "--brief"])
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 25gmm | tb |")][0].split(" | ")
    seed0 = json.load(open(path[0]))
    assert row[2] == "2/2 (seed 1: one evaluation)"
    scores = [seed0["evaluations"]["mean"]["delta_log_Z"], seed1["metrics"]["delta_log_Z"]]
    assert row[4] == bench._stats(scores)  # mean ± std over seeds of the per-model scores
    one = [bench._stats([d["metrics"][k] for d in (seed0, seed1)]) for k in ("delta_log_Z", "delta_log_Z_rw")]
    assert row[11].startswith(f"{one[0]} / {one[1]} / ") and row[4] != one[0]


def test_outside_flags_compare_the_mean_of_the_evaluations(tmp_path, capsys):
    """Funnel PIS: one low evaluation (0.511 / 0.160) of a model whose evaluations average 0.529 / 0.257 is
    outside the published 0.534 ± 0.008 / 0.262 ± 0.008; the model's score, that mean, is not."""
    bench = _bench()
    metrics_ = dict(delta_log_Z=0.511, delta_log_Z_rw=0.160, w2=19.8, w2_exact=23.9, elbo=-0.511, log_Z=-0.160, n=2000)
    mean = dict(metrics_, delta_log_Z=0.529, delta_log_Z_rw=0.257)
    res = dict(seed=0, iterations=10, config=dict(batch_size=300), metrics=metrics_, ms_per_iteration=27.0,
               evaluations=dict(n=2000, seeds=[1, 2], mean=mean))
    json.dump(res, open(tmp_path / "funnel_pis_seed0.json", "w"))
    argv = ["report", "--targets", "funnel", "--methods", "pis", "--iterations", "10", "--seeds", "0",
            "--out", str(tmp_path)]
    bench.main(argv)
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| funnel")][0]
    assert "| 1/1 | 10 | 0.529 | 0.534±0.008 | 0.257 | 0.262±0.008 |" in row
    assert "| 0.511 / 0.160 / 19.800 |" in row and row.endswith("| – |")
    del res["evaluations"]  # a JSON from before the repeated evaluations: its one evaluation, flagged
    json.dump(res, open(tmp_path / "funnel_pis_seed0.json", "w"))
    bench.main(argv)
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| funnel")][0]
    assert "| 1/1 (seed 0: one evaluation) | 10 | 0.511 |" in row and row.endswith("| delta_log_Z, delta_log_Z_rw |")


def test_timing_segments_default_to_one_local_search_period():
    """`timing`'s paths run interleaved segments of train() resumed from checkpoints; a preset with local search
    gets segments of one search period (ls_every) by default, 3 of them."""
    per, clock, segment = offpolicy.time_paths("25gmm", "tb+expl+ls", ["fused", "eager"], iterations=None,
                                               segment=None, warmup=1, device="cpu", **TINY, **LS_TINY)
    assert segment == LS_TINY["ls_every"] and clock == "process CPU"
    assert [len(v) for v in per.values()] == [3, 3] and all(t > 0 for v in per.values() for t in v)


def test_timing_measures_fused_and_eager_per_cell_and_the_report_shows_it(tmp_path, capsys):
    bench = _bench()
    out = str(tmp_path)
    argv = ["--targets", "25gmm", "--methods", "tb", "tb+expl+ls", "--out", out]
    # `fastsamp train --time`'s and `timing`'s measurement: 2 interleaved segments of 1 iteration per path
    res = offpolicy.time_fused_vs_eager("25gmm", "tb+expl+ls", iterations=2, segment=1, warmup=1, **TINY, **LS_TINY)
    assert len(res["rounds_ms"]["eager"]) == 2 and res["speedup"] == res["eager_ms"] / res["fused_ms"]
    assert res["clock"] == "process CPU"
    torch.set_num_threads(2)  # waiting threads count as CPU time: wall time then (the fixture restores 1)
    wall = offpolicy.time_fused_vs_eager("25gmm", "tb", iterations=1, warmup=1, **TINY)
    assert wall["clock"] == "wall" and wall["iterations_per_round"] == 1  # the segment is at most --iterations
    torch.set_num_threads(1)
    json.dump({"threads": 1, "device": "cpu", "results": {"25gmm/tb+expl+ls": dict(res, fused_ms=1.0)}},
              open(os.path.join(out, "timing_cpu_1thread.json"), "w"))
    # times only the missing cell: 2 interleaved segments of 1 iteration per path, the compiled DriftNet too
    bench.main(["timing", *argv, "--iterations", "2", "--segment", "1", "--warmup", "1", "--compile",
                "--batch-size", "32"])
    timed = json.load(open(os.path.join(out, "timing_cpu_1thread.json")))["results"]
    assert timed["25gmm/tb+expl+ls"]["fused_ms"] == 1.0 and timed["25gmm/tb"]["eager_ms"] > 0
    cell = timed["25gmm/tb"]
    assert {k: len(v) for k, v in cell["rounds_ms"].items()} == {"fused": 2, "eager": 2, "compile": 2}
    assert cell["best_pytorch_over_fused"] == min(cell["eager_ms"], cell["compile_ms"]) / cell["fused_ms"]
    assert cell["speedup"] == cell["eager_ms"] / cell["fused_ms"] and cell["clock"] == "process CPU"
    capsys.readouterr()
    bench.main(["report", *argv])
    text = capsys.readouterr().out
    assert f"1 / {timed['25gmm/tb+expl+ls']['eager_ms']:.0f} (" in text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_training_evaluation_and_timing(tmp_path):
    """Item 1 of issue 13 on a lent GPU: a preset with Langevin drift and local search trains on the
    GPU (per-step path with the fused em_step_logprob) with checkpoints, is evaluated with
    every diagnostic, its model loads on the CPU, and `timing` takes wall time there."""
    res = offpolicy.run("25gmm", "tb+expl+lp+ls", iterations=6, out_dir=str(tmp_path), progress=False,
                        eval_samples=100, device="cuda", checkpoint_every=2, **TINY, **LS_TINY)
    assert res["device"].startswith("cuda") and math.isfinite(res["metrics"]["w2_equal_counts"])
    x, _ = DiffusionSampler.load(res["model_path"], map_location="cpu").sample(8)  # a GPU model loads anywhere
    assert x.device.type == "cpu" and bool(torch.isfinite(x).all())
    timed = offpolicy.time_fused_vs_eager("25gmm", "tb", iterations=2, segment=1, warmup=1, device="cuda", **TINY)
    assert timed["clock"] == "wall" and timed["fused_ms"] > 0 and len(timed["rounds_ms"]["fused"]) == 2


def test_report_says_when_the_papers_w2_is_below_what_exact_samples_score(tmp_path, capsys):
    """Manywell TB + Expl. + LP + LS: the published 5.33 ± 0.03 lies below the W2 of exact samples
    (5.42 at 2000 samples); the 'outside' column says so instead of calling our W2 merely worse."""
    bench = _bench()
    for seed, (w2, exact) in enumerate([(5.587, 5.428), (5.547, 5.389)]):
        m = dict(delta_log_Z=4.3, delta_log_Z_rw=0.2, w2=w2, w2_exact=exact, elbo=160.4, log_Z=164.5, n=2000)
        res = dict(iterations=10, config=dict(batch_size=300), metrics=m, ms_per_iteration=100.0)
        json.dump(res, open(tmp_path / f"manywell_tb+expl+lp+ls_seed{seed}.json", "w"))
    bench.main(["report", "--targets", "manywell", "--methods", "tb+expl+lp+ls", "--iterations", "10", "--seeds", "0",
                "1", "--out", str(tmp_path)])
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| manywell")][0]
    assert "| 5.567±0.028 | 5.33±0.03 | 5.409±0.028 |" in row
    assert row.endswith("| w2 (the paper's is below exact samples') |")


def _nan_loss_at(monkeypatch, call):
    """DiffusionSampler.loss returning NaN at its `call`-th call (0-based), from then on."""
    real, calls = DiffusionSampler.loss, [0]

    def loss(self, *args, **kw):
        value = real(self, *args, **kw)
        calls[0] += 1
        return value * float("nan") if calls[0] > call else value
    monkeypatch.setattr(DiffusionSampler, "loss", loss)


def test_a_non_finite_loss_stops_training_before_its_step(tmp_path, monkeypatch):
    """The first non-finite loss (iteration 5) stops train() before its optimizer step: the parameters are those after
    iteration 4 (the uninterrupted run's), finite, the log holds the 5 finite losses, the checkpoint of iteration 4
    stays; a checkpoint that would save non-finite parameters is not written."""
    straight, log = _trained("tb", 5)
    _nan_loss_at(monkeypatch, 5)
    ckpt = str(tmp_path / "run.ckpt")
    sampler, cfg = offpolicy.build("25gmm", "tb", seed=3, iterations=10, **TINY)
    with pytest.raises(TrainingDiverged, match="training diverged at iteration 5: the loss is nan") as e:
        train(sampler, cfg, progress=False, checkpoint=ckpt, checkpoint_every=2)
    assert e.value.iteration == 5 and e.value.log.loss == log.loss
    for k, v in sampler.state_dict().items():
        assert torch.equal(v, straight.state_dict()[k]), k
    assert torch.load(ckpt, weights_only=False)["iteration"] == 4
    from fastsamp.samplers.diffusion import training

    def finite_loss_nan_gradient(self, *args, **kw):  # sqrt(z − z) = 0, its derivative 0 · inf = NaN
        return torch.sqrt(self.net.log_Z - self.net.log_Z) + 1.0
    monkeypatch.setattr(DiffusionSampler, "loss", finite_loss_nan_gradient)
    with pytest.raises(TrainingDiverged, match="iteration 4: the parameters are non-finite after its step"):
        train(sampler, cfg, progress=False, checkpoint=ckpt, checkpoint_every=1)  # resumes at 4, would save at 5
    assert torch.load(ckpt, weights_only=False)["iteration"] == 4
    grads = [torch.ones(3), torch.full((2,), 3e38)]
    params = [torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)]
    for p, g in zip(params, grads):
        p.grad = g
    assert training._gradient_sum(params) == pytest.approx(3 + 6e38)  # large float32 gradients: finite in float64
    params[0].grad[1] = float("inf")
    assert not math.isfinite(training._gradient_sum(params))


def test_table_records_a_diverged_run_and_keeps_its_checkpoint(tmp_path, monkeypatch, capsys):
    """A run that diverges: its JSON says where (no metrics, no model), its last checkpoint is kept as
    .diverged.ckpt, the table counts it as done (a rerun skips it: the same seed diverges again) and the report
    names it instead of scoring it."""
    bench, out = _bench(), str(tmp_path)
    _nan_loss_at(monkeypatch, 5)
    argv = ["--iterations", "8", "--seeds", "0", "--targets", "25gmm", "--methods", "tb", "--batch-size", "16",
            "--eval-samples", "64", "--out", out]
    bench.main(["table", *argv, "--checkpoint-every", "2"])
    text = capsys.readouterr().out
    assert "25gmm tb seed 0: DIVERGED at iteration 5 (the loss is nan)" in text
    assert "table: 1/1 runs done" in text
    res = json.load(open(os.path.join(out, "25gmm_tb_seed0.json")))
    kept = os.path.join(out, "checkpoints", "25gmm_tb_seed0.diverged.ckpt")
    assert res["diverged"] == {"iteration": 5, "what": "the loss is nan", "checkpoint": kept}
    assert res["metrics"] == {} and len(res["loss_curve"]["iterations"]) == 5
    assert not os.path.exists(os.path.join(out, "25gmm_tb_seed0.pt"))
    assert os.listdir(os.path.join(out, "checkpoints")) == ["25gmm_tb_seed0.diverged.ckpt"]
    assert torch.load(kept, weights_only=False)["iteration"] == 4
    bench.main(["table", *argv])
    assert "0 runs to do" in capsys.readouterr().out
    bench.main(["report", "--brief", *argv])
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| 25gmm | tb |"))
    assert "| 1/1 (seed 0 diverged at iteration 5) | 8 | diverged |" in row
    from fastsamp.cli import main as cli
    code = cli(["train", "--target", "25gmm", "--method", "tb", "--iterations", "8", "--batch-size", "16",
                "--eval-samples", "64", "--no-progress"])
    # the loss stays NaN from the 5th call on: this run diverges at once
    assert code == 1 and "training diverged at iteration 0 (the loss is nan)" in capsys.readouterr().err
