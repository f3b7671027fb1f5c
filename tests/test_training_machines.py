"""Which machine trained which iterations: TrainLog.segments across checkpoints, and the off-policy
table's time per iteration kept apart per processor class."""
import json

import pytest
import torch
from conftest import load_benchmark

from fastsamp import profiling
from fastsamp.experiments import offpolicy
from fastsamp.samplers.diffusion import train

TINY = dict(batch_size=16, hidden=16, n_steps=5)


def _train(ckpt, until):
    sampler, cfg = offpolicy.build("25gmm", "tb", seed=1, iterations=6, **TINY)
    return train(sampler, cfg, progress=False, checkpoint=ckpt, checkpoint_every=2, until=until)


def test_segments_record_the_machine_of_each_stretch_of_training(tmp_path):
    """A run stopped at 3 and resumed to 6 has two segments, [0, 3) and [3, 6), each on this machine, with CPU
    times that add up to the log's; a call that trains nothing adds none; a checkpoint written before segments
    were recorded resumes with its iterations as one stretch on an unrecorded machine (None)."""
    ckpt = str(tmp_path / "run.ckpt")
    here = profiling.machine("cpu")
    first = _train(ckpt, 3)
    assert [(s["first"], s["last"], s["machine"]) for s in first.segments] == [(0, 3, here)]
    assert first.segments[0]["cpu_seconds"] == pytest.approx(first.cpu_seconds)
    assert _train(ckpt, 3).segments == first.segments  # nothing left to train before 3
    state = torch.load(ckpt, weights_only=False)
    log = _train(ckpt, 6)
    assert [(s["first"], s["last"], s["machine"]) for s in log.segments] == [(0, 3, here), (3, 6, here)]
    # (the call that trained nothing added its fraction of a millisecond to the totals, not to a segment)
    assert sum(s["cpu_seconds"] for s in log.segments) == pytest.approx(log.cpu_seconds, abs=1e-3)
    assert all(s["seconds"] > 0 for s in log.segments)
    del state["segments"]  # as written before segments were recorded
    old = str(tmp_path / "old.ckpt")
    torch.save(state, old)
    log = _train(old, 6)
    assert [(s["first"], s["last"], s["machine"]) for s in log.segments] == [(0, 3, None), (3, 6, here)]
    assert log.segments[0]["cpu_seconds"] == state["cpu_seconds"]


def test_machine_names_the_cpu_and_its_vector_isa():
    assert profiling.machine("cpu") == profiling.cpu_model()
    assert profiling.cpu_model().endswith(("AVX-512)", "AVX2)", "no AVX2)")) or "(" not in profiling.cpu_model()


def test_table_keeps_the_time_per_iteration_of_each_processor_class_apart(tmp_path, capsys):
    """ms / iteration: runs without segments (all trained on AVX-512 CPUs) and segments on an unrecorded machine
    count as AVX-512, unlabelled and first; another class is averaged over the runs that have it and named. Seed 0:
    20 ms (no segments); seed 1: [0, 6) unrecorded at 40 ms, [6, 10) on AVX2 at 50 ms; seed 2: AVX-512 at 30 ms
    and AVX2 at 70 ms: "30 · 60 (AVX2)"."""
    bench = load_benchmark("offpolicy.py", "bench_offpolicy")
    metrics = dict(delta_log_Z=0.5, delta_log_Z_rw=0.2, w2=19.8, w2_exact=23.9, elbo=-0.5, log_Z=-0.2, n=2000)
    avx2, avx512 = "AMD EPYC (family 25 model 1, AVX2)", "AMD EPYC 9B14 (family 25 model 17, AVX-512)"
    segments = {1: [(0, 6, None, 0.24), (6, 10, avx2, 0.2)], 2: [(0, 5, avx512, 0.15), (5, 10, avx2, 0.35)]}
    for seed in range(3):
        res = dict(seed=seed, iterations=10, config=dict(batch_size=300), metrics=metrics, device="cpu",
                   ms_per_iteration=20.0)
        if seed in segments:
            res["segments"] = [dict(first=a, last=b, machine=m, cpu_seconds=c, seconds=2 * c)
                               for a, b, m, c in segments[seed]]
        json.dump(res, open(tmp_path / f"funnel_pis_seed{seed}.json", "w"))
    bench.main(["report", "--targets", "funnel", "--methods", "pis", "--iterations", "10", "--seeds", "0", "1", "2",
                "--out", str(tmp_path)])
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| funnel")][0]
    assert "| 30 · 60 (AVX2) |" in row
