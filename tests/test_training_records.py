"""What saved samplers and checkpoints record about where they were trained: the LGCP point pattern (a run
resumes and a sampler reloads only on its own), and which machine trained which iterations (TrainLog.segments,
and the off-policy table's time per iteration kept apart per processor class)."""
import json

import numpy as np
import pytest
import torch
from conftest import load_benchmark

from fastsamp import datasets, profiling
from fastsamp.experiments import offpolicy
from fastsamp.samplers.diffusion import DiffusionSampler, TrainConfig, train, training
from fastsamp.targets import LGCP, get_target

TINY = dict(batch_size=16, hidden=16, n_steps=5)


def _train(ckpt, until):
    sampler, cfg = offpolicy.build("25gmm", "tb", seed=1, iterations=6, **TINY)
    return train(sampler, cfg, progress=False, checkpoint=ckpt, checkpoint_every=2, until=until)


def test_segments_record_the_machine_of_each_stretch_of_training(tmp_path, monkeypatch):
    """A run stopped at 3 and resumed to 6 on another machine has two segments, [0, 3) here and [3, 6) there, with
    CPU times that add up to the log's; a call that trains nothing adds none; a checkpoint written before segments
    were recorded resumes with its iterations as one stretch on an unrecorded machine (None)."""
    ckpt = str(tmp_path / "run.ckpt")
    here, there = profiling.machine("cpu"), "Other CPU (family 1 model 1, AVX2)"
    first = _train(ckpt, 3)
    assert [(s["first"], s["last"], s["machine"], s["device"]) for s in first.segments] == [(0, 3, here, "cpu")]
    assert first.segments[0]["cpu_seconds"] == pytest.approx(first.cpu_seconds)
    assert _train(ckpt, 3).segments == first.segments  # nothing left to train before 3
    state = torch.load(ckpt, weights_only=False)
    monkeypatch.setattr(training, "machine", lambda device: there)
    log = _train(ckpt, 6)
    assert [(s["first"], s["last"], s["machine"]) for s in log.segments] == [(0, 3, here), (3, 6, there)]
    # (the call that trained nothing added its fraction of a millisecond to the totals, not to a segment)
    assert sum(s["cpu_seconds"] for s in log.segments) == pytest.approx(log.cpu_seconds, abs=1e-3)
    assert all(s["seconds"] > 0 for s in log.segments)
    del state["segments"]  # as written before segments were recorded
    old = str(tmp_path / "old.ckpt")
    torch.save(state, old)
    log = _train(old, 6)
    assert [(s["first"], s["last"], s["machine"]) for s in log.segments] == [(0, 3, None), (3, 6, there)]
    assert (log.segments[0]["seconds"], log.segments[0]["cpu_seconds"]) == (state["seconds"], state["cpu_seconds"])


def test_machine_names_the_gpu_on_cuda_and_the_cpu_with_its_vector_isa(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    assert profiling.machine("cuda:0") == "NVIDIA H200"
    name = profiling.machine("cpu")
    assert name == profiling.cpu_model() and name.endswith(("AVX-512)", "AVX2)", "no AVX2)"))


def test_table_keeps_the_time_per_iteration_of_each_processor_class_apart(tmp_path, capsys):
    """ms / iteration: runs without segments (all trained on AVX-512 CPUs) and segments on an unrecorded machine
    count as AVX-512, unlabelled and first; another class is averaged over the runs that have it and named. Seed 0:
    20 ms (no segments); seed 1: [0, 6) unrecorded at 40 ms, [6, 10) on AVX2 at 50 ms; seed 2: AVX-512 at 30 ms
    and AVX2 at 70 ms: "30 · 60 (AVX2)"; a GPU's segment is timed by its wall seconds (seed 1: 8 ms)."""
    bench = load_benchmark("offpolicy.py", "bench_offpolicy")
    metrics = dict(delta_log_Z=0.5, delta_log_Z_rw=0.2, w2=19.8, w2_exact=23.9, elbo=-0.5, log_Z=-0.2, n=2000)
    avx2, avx512 = "AMD EPYC (family 25 model 1, AVX2)", "AMD EPYC 9B14 (family 25 model 17, AVX-512)"
    segments = {1: [(0, 6, None, 0.24), (6, 10, avx2, 0.2), (10, 15, "NVIDIA H200", 0.02)],
                2: [(0, 5, avx512, 0.15), (5, 10, avx2, 0.35)]}
    for seed in range(3):
        res = dict(seed=seed, iterations=10, config=dict(batch_size=300), metrics=metrics, device="cpu",
                   ms_per_iteration=20.0)
        if seed in segments:
            # (an unrecorded stretch, from a checkpoint that predates segments, has no device either)
            res["segments"] = [dict(first=a, last=b, machine=m, cpu_seconds=c, seconds=2 * c)
                               | ({"device": "cuda:0" if m.startswith("NVIDIA") else "cpu"} if m else {})
                               for a, b, m, c in segments[seed]]
        json.dump(res, open(tmp_path / f"funnel_pis_seed{seed}.json", "w"))
    bench.main(["report", "--targets", "funnel", "--methods", "pis", "--iterations", "10", "--seeds", "0", "1", "2",
                "--out", str(tmp_path)])
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| funnel")][0]
    assert "| 30 · 60 (AVX2) · 8 (NVIDIA H200) |" in row


# ------------------------------------------------------------------------------------------------
# The LGCP point pattern in saved samplers and checkpoints
# ------------------------------------------------------------------------------------------------
def _lgcp_sampler(points, grid=40):
    return DiffusionSampler(LGCP(points=points, grid=grid), n_steps=4, hidden=8, n_harmonics=4)


def test_saved_lgcp_sampler_reloads_on_its_point_pattern(tmp_path, monkeypatch):
    """A saved LGCP sampler records its point pattern and grid and load() rebuilds the target on them, not on what
    points="auto" takes here; a pattern that is unavailable, or user-given points, are clear errors.
    Saved samplers of the other targets and LGCP files from before the fields load as before (40×40)."""
    path = str(tmp_path / "s.pt")
    _lgcp_sampler("synthetic").save(path)
    assert torch.load(path)["config"]["points"] == "synthetic"
    assert DiffusionSampler.load(path).target.points_source == "synthetic"  # even where the pines are installed
    saved = torch.load(path)
    del saved["config"]["points"], saved["config"]["grid"]  # saved before the fields were recorded: the defaults
    torch.save(saved, path)
    target = DiffusionSampler.load(path).target
    assert target.points_source == LGCP.default_points() and target.grid == 40

    _lgcp_sampler("synthetic", grid=3).save(path)
    assert torch.load(path)["config"]["grid"] == 3
    target = DiffusionSampler.load(path).target
    assert target.grid == 3 and torch.equal(target.counts, LGCP(points="synthetic", grid=3).counts)

    DiffusionSampler(get_target("25gmm"), n_steps=4, hidden=8, n_harmonics=4).save(path)
    config = torch.load(path)["config"]
    assert "points" not in config and "grid" not in config and DiffusionSampler.load(path).target.name == "25gmm"

    _lgcp_sampler(np.array([[0.2, 0.3]]), grid=2).save(path)
    with pytest.raises(ValueError, match="user-given lgcp points: pass target="):
        DiffusionSampler.load(path)
    assert DiffusionSampler.load(path, target=LGCP(np.array([[0.2, 0.3]]), grid=2)).target.points_source == "user"

    sampler = _lgcp_sampler("synthetic", grid=2)
    sampler.target.points_source = "finpines"  # as saved where the pines are installed
    sampler.save(path)
    monkeypatch.delenv(datasets.SPATSTAT_DATA_ENV, raising=False)
    monkeypatch.setattr(datasets, "spatstat_data_dirs", lambda: [str(tmp_path / "nowhere")])
    with pytest.raises(FileNotFoundError, match="trained on the finpines lgcp point pattern.*apt-get install"):
        DiffusionSampler.load(path)


def test_checkpoint_resumes_only_on_its_point_pattern(tmp_path):
    """An LGCP checkpoint records the point pattern (target_points) and refuses to resume on another;
    checkpoints without the field (other targets; LGCP before it was recorded) resume as before."""
    ckpt = str(tmp_path / "run.ckpt")
    cfg = TrainConfig(iterations=3, batch_size=4)
    train(_lgcp_sampler("synthetic", grid=4), cfg, progress=False, checkpoint=ckpt, until=1)
    assert torch.load(ckpt, weights_only=False)["target_points"] == "synthetic"
    user = np.array([[0.1, 0.1], [0.6, 0.9]])
    with pytest.raises(ValueError, match="written on the synthetic lgcp point pattern.*uses the user one"):
        train(_lgcp_sampler(user, grid=4), cfg, progress=False, checkpoint=ckpt, until=2)
    assert train(_lgcp_sampler("synthetic", grid=4), cfg, progress=False, checkpoint=ckpt,
                 until=2).resumed_from == [1]
    state = torch.load(ckpt, weights_only=False)
    del state["target_points"]  # the format written before the field existed
    torch.save(state, ckpt)
    assert train(_lgcp_sampler(user, grid=4), cfg, progress=False, checkpoint=ckpt).resumed_from == [1, 2]

    other = str(tmp_path / "gmm.ckpt")
    gmm = dict(n_steps=4, hidden=8, n_harmonics=4)
    train(DiffusionSampler(get_target("25gmm"), **gmm), cfg, progress=False, checkpoint=other, until=1)
    assert "target_points" not in torch.load(other, weights_only=False)
    assert train(DiffusionSampler(get_target("25gmm"), **gmm), cfg, progress=False,
                 checkpoint=other).resumed_from == [1]
