"""benchmarks/cuda_graph_level.py on the CPU: its level (the one tests/test_cuda_graphs.py captures on a GPU) is sane,
equals the reference backend's and is reproducible from (seed, offset); its replay checker passes the level run
with int64 tensor seed and offset advanced between calls (what a replayed graph reads) and fails a stand-in that
repeats its noise; the script's --device cpu path writes eager times and no graph numbers."""
import json
from types import SimpleNamespace

import pytest
import torch
from conftest import load_benchmark

import fastsamp

cgl = load_benchmark("cuda_graph_level.py", "cuda_graph_level")
KW = dict(n_moves=3, n_trapezoid=2)
PER_LEVEL = KW["n_moves"] + 1  # offsets one level draws
SEED = 2**63 + 5  # held by a tensor as SEED - 2**64


@pytest.fixture
def net_x():
    torch.manual_seed(0)
    return cgl.UserScore(8, 32), torch.randn(256, 8)


def test_level_is_sane_equals_the_reference_and_repeats_at_its_offset(net_x):
    net, x = net_x
    with fastsamp.validation(False), torch.no_grad():
        x1, rate = cgl.level(net, x, seed=SEED, offset=40, **KW)
        again, rate_again = cgl.level(net, x, seed=SEED, offset=40, **KW)
        other, _ = cgl.level(net, x, seed=SEED, offset=40 + PER_LEVEL, **KW)
        ref, rate_ref = cgl.level(net, x, seed=SEED, offset=40, backend="torch", **KW)
    assert torch.isfinite(x1).all() and 0 < rate.mean() < 1
    accepted = rate * KW["n_moves"]  # accepted moves of each chain
    assert torch.equal(accepted, accepted.round()) and 0 <= accepted.min() and accepted.max() <= KW["n_moves"]
    assert torch.equal(x1, again) and torch.equal(rate, rate_again)
    assert not torch.equal(x1, other) and not torch.equal(x1, x)
    torch.testing.assert_close(x1, ref)
    assert torch.equal(rate, rate_ref)


def test_replay_checks_pass_the_tensor_offset_level_and_fail_repeated_noise(net_x):
    net, x = net_x
    seed_t, offset_t = torch.tensor(SEED - 2**64), torch.tensor(40)
    outs = [None]

    def rerun(offset):  # stands in for graph.replay(): the level reading the tensors' current values
        outs[0] = cgl.level(net, x, seed=seed_t, offset=offset, **KW)[0]

    def eager(offset):
        return cgl.level(net, x, seed=SEED, offset=offset, **KW)

    with fastsamp.validation(False), torch.no_grad():
        fresh = cgl.replay_checks(SimpleNamespace(replay=lambda: rerun(offset_t)), outs, offset_t, eager, 40,
                                  PER_LEVEL)
        assert int(offset_t) == 40 + 3 * PER_LEVEL
        stuck = cgl.replay_checks(SimpleNamespace(replay=lambda: rerun(40)), outs, torch.tensor(40), eager, 40,
                                  PER_LEVEL)
    assert fresh["passed"] and all(fresh["consecutive_replays_differ"])
    assert all(r["within_tolerance"] for r in fresh["replay_vs_eager"])
    assert not stuck["passed"] and not any(stuck["consecutive_replays_differ"])
    assert [r["within_tolerance"] for r in stuck["replay_vs_eager"]] == [True, False, False]


def test_script_on_the_cpu_writes_eager_times_and_no_graph_numbers(tmp_path):
    out = tmp_path / "level.json"
    threads = torch.get_num_threads()
    try:
        rc = cgl.main(["--device", "cpu", "--chains", "64", "128", "--moves", "2", "--levels", "2", "--repeats", "1",
                       "--json", str(out)])
    finally:
        torch.set_num_threads(threads)
    report = json.loads(out.read_text())
    assert rc == 0 and report["passed"] and report["device"] == "cpu"
    assert [r["chains"] for r in report["results"]] == [64, 128]
    for r in report["results"]:
        assert r["eager_ms"] > 0 and r["finite"] and 0 < r["accept_rate"] < 1
        assert "graph_ms" not in r and "checks" not in r
