"""benchmarks/cuda_graph_level.py on the CPU: its level (the one tests/test_cuda_graphs.py captures on a GPU) is sane,
equals the reference backend's and is reproducible from (seed, offset); its replay checker passes the level run
with int64 tensor seed and offset advanced between calls (what a replayed graph reads) and fails a stand-in that
repeats its noise; a bare --device cuda resolves to the current CUDA device's index; capture's failures name their
phase; the script's --device cpu path writes eager times and no graph numbers, each row as soon as it is measured."""
import contextlib
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
    return cgl.user_score(8, 32), torch.randn(256, 8)


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
    outs = [None, None]

    def rerun(offset):  # stands in for graph.replay(): the level reading the tensors' current values
        outs[:] = cgl.level(net, x, seed=seed_t, offset=offset, **KW)

    def eager(offset):
        return cgl.level(net, x, seed=SEED, offset=offset, **KW)

    with fastsamp.validation(False), torch.no_grad():
        fresh = cgl.replay_checks(SimpleNamespace(replay=lambda: rerun(offset_t)), outs, offset_t, eager, 40,
                                  PER_LEVEL)
        assert int(offset_t) == 40 + 3 * PER_LEVEL
        stuck = cgl.replay_checks(SimpleNamespace(replay=lambda: rerun(40)), outs, torch.tensor(40), eager, 40,
                                  PER_LEVEL)
    assert fresh["passed"] and all(fresh["consecutive_replays_differ"])
    assert all(r["within_tolerance"] and r["accept_rate_within_tolerance"] for r in fresh["replay_vs_eager"])
    assert not stuck["passed"] and not any(stuck["consecutive_replays_differ"])
    assert [r["within_tolerance"] for r in stuck["replay_vs_eager"]] == [True, False, False]
    assert stuck["replay_vs_eager"][0]["accept_rate_within_tolerance"]


def test_replay_checks_fail_a_replay_whose_accept_rates_differ(net_x):
    """x right but the accept rate output wrong (the rate buffer not rewritten by the replay): the checks fail."""
    net, x = net_x
    offset_t = torch.tensor(40)
    outs = [None, None]

    def eager(offset):
        return cgl.level(net, x, seed=SEED, offset=offset, **KW)

    def replay():
        outs[0] = eager(int(offset_t))[0]
        outs[1] = torch.zeros(x.shape[0])

    with fastsamp.validation(False), torch.no_grad():
        checks = cgl.replay_checks(SimpleNamespace(replay=replay), outs, offset_t, eager, 40, PER_LEVEL)
    assert all(r["within_tolerance"] for r in checks["replay_vs_eager"])
    assert not any(r["accept_rate_within_tolerance"] for r in checks["replay_vs_eager"]) and not checks["passed"]


def test_device_resolution_gives_a_bare_cuda_the_current_index(monkeypatch):
    """torch.cuda.set_device refuses a device without an index: a bare --device cuda (what gpu_run.sh passes) takes
    the current CUDA device's."""
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert cgl.resolve_device("cuda") == torch.device("cuda", 3)
    assert cgl.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert cgl.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="cpu or cuda"):
        cgl.resolve_device("meta")


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
    assert report["complete"]


class FakeStream:
    def wait_stream(self, other):
        pass


@pytest.mark.parametrize("failing_call, phase", [(1, "warm-up"), (2, "warm-up"), (3, "capture"), (None, None)])
def test_capture_names_the_phase_that_failed(monkeypatch, failing_call, phase):
    """capture's two warm-up calls and its captured call (CUDA's streams and graphs stubbed out on the CPU): an error
    in call k is a CaptureError of its phase, caused by the error raised."""
    for name, fake in [("Stream", FakeStream), ("current_stream", FakeStream), ("CUDAGraph", object),
                       ("stream", lambda s: contextlib.nullcontext()), ("graph", lambda g: contextlib.nullcontext())]:
        monkeypatch.setattr(torch.cuda, name, fake)
    calls = []

    def run(x):
        calls.append(x)
        if len(calls) == failing_call:
            raise ValueError("bad level")
        return (x + 1,)

    if phase is None:
        _, outs = cgl.capture(run, torch.zeros(2))
        assert len(calls) == 3 and torch.equal(outs[0], torch.ones(2))
        return
    with pytest.raises(cgl.CaptureError, match=f"^{phase} failed: ValueError: bad level") as err:
        cgl.capture(run, torch.zeros(2))
    assert err.value.phase == phase and isinstance(err.value.__cause__, ValueError)


class StopAfterFirstRow(Exception):
    pass


def test_script_writes_each_row_as_soon_as_it_is_measured(tmp_path, monkeypatch):
    """A run cut after its first chain count (a timeout; here the second count raises) leaves that row in the JSON,
    marked incomplete."""
    out, measure, threads = tmp_path / "level.json", cgl.measure, torch.get_num_threads()

    def first_only(net, n_chains, a, device):
        if n_chains != 64:
            raise StopAfterFirstRow
        return measure(net, n_chains, a, device)

    monkeypatch.setattr(cgl, "measure", first_only)
    try:
        with pytest.raises(StopAfterFirstRow):
            cgl.main(["--device", "cpu", "--chains", "64", "128", "--moves", "2", "--levels", "2", "--repeats", "1",
                      "--json", str(out)])
    finally:
        torch.set_num_threads(threads)
    report = json.loads(out.read_text())
    assert [r["chains"] for r in report["results"]] == [64] and not report["complete"] and report["passed"]
