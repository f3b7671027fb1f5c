"""fastsamp.profiling: the samplers' phase ranges, the wall-time breakdown (score model, fastsamp ops,
overhead) and the Chrome trace; `fastsamp sample --profile --trace`. Tiny runs."""
import json
import math

import pytest
import torch

import fastsamp
from fastsamp import profiling
from fastsamp.cli import main
from fastsamp.samplers import annealed_mcmc


class TinyScore(torch.nn.Module):
    """A small network score f(x, t) in D = 2 (the user's own model)."""

    dim = 2

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.SiLU(), torch.nn.Linear(16, 2))

    def forward(self, x, t):
        return -x + 0.1 * self.net(torch.cat([x, torch.full_like(x[:, :1], t)], 1))


def run_tiny():
    return annealed_mcmc(TinyScore(), 64, n_levels=4, corrector="mala", n_corrector_steps=2, n_trapezoid=2,
                         step_size=0.05, seed=0)


def test_breakdown_of_a_tiny_run(tmp_path):
    trace = tmp_path / "trace.json"
    with profiling.breakdown(trace=trace) as b:
        x, stats = run_tiny()
    assert x.shape == (64, 2) and torch.isfinite(x).all()
    shares = b.shares
    assert set(shares) == {"score_model", "ops", "overhead"}
    assert math.isclose(sum(shares.values()), 1.0, abs_tol=1e-12)
    assert all(0.0 <= v <= 1.0 for v in shares.values())
    assert shares["score_model"] > 0 and b.score_model_s > 0 and b.wall_s > 0
    assert {"predictor", "corrector", "score_model"} <= set(b.phases)
    # the ranges are in the profiler's own events, under their stable names
    with open(trace) as f:
        names = {e.get("name") for e in json.load(f)["traceEvents"]}
    assert {"fastsamp.predictor", "fastsamp.corrector", "fastsamp.score_model", profiling.ROOT} <= names
    text = str(b)
    assert "score model" in text and "overhead" in text
    json.dumps(b.as_dict(), allow_nan=False)


def test_profile_helper_returns_the_result_and_prints(capsys):
    (x, stats), b = fastsamp.profile(run_tiny)
    assert x.shape == (64, 2) and stats.n_score_evals > 0
    assert "score model" in capsys.readouterr().out
    assert b.phases["score_model"] == pytest.approx(b.score_model_s)


def test_ranges_are_a_shared_no_op_without_a_profiler():
    """record_function costs microseconds even with no profiler: the phases skip it then."""
    assert profiling.phase("corrector") is profiling.phase("predictor")
    with torch.profiler.profile():
        assert isinstance(profiling.phase("corrector"), torch.profiler.record_function)


def test_registered_ops_are_classified_as_ops():
    """Events of the fastsamp:: namespace (ops registered with the dispatcher) count as ops outside the
    model ranges and as model time inside them (synthetic events: the split does not depend on which
    ops this build registers)."""
    rows = [_Event("fastsamp.profile", 0, 100), _Event("fastsamp.score_model", 10, 20),
            _Event("fastsamp::gmm_score", 12, 5), _Event("fastsamp.corrector", 40, 50),
            _Event("fastsamp::mala_propose", 45, 10), _Event("aten::add", 60, 5)]
    b = profiling.Breakdown()
    profiling._fill(b, rows, n_other=8)
    assert (b.wall_s, b.score_model_s, b.ops_s) == pytest.approx((100e-9, 20e-9, 10e-9))
    assert b.ops == pytest.approx({"mala_propose": 10e-9})
    other = {name: sec for name, sec, _ in b.other}
    assert other["aten::add"] == pytest.approx(5e-9)
    assert other["fastsamp.corrector: outside torch ops"] == pytest.approx(35e-9)


class _Event:
    """The fields of a kineto event that the breakdown reads."""

    def __init__(self, name, start, duration):
        self._name, self._start, self._duration = name, start, duration

    def name(self):
        return self._name

    def start_ns(self):
        return self._start

    def duration_ns(self):
        return self._duration

    def start_thread_id(self):
        return 1

    def device_type(self):
        return torch.autograd.DeviceType.CPU


def test_sample_verb_profile_and_trace(tmp_path, capsys):
    trace, out = tmp_path / "t.json", tmp_path / "s.json"
    assert main(["sample", "--chains", "64", "--levels", "3", "--moves", "1", "--profile", "--trace", str(trace),
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "score model" in text and "fastsamp ops" in text and "overhead" in text
    with open(trace) as f:
        assert "traceEvents" in json.load(f)
    with open(out) as f:
        shares = json.load(f)["profile"]["shares"]
    assert math.isclose(sum(shares.values()), 1.0, abs_tol=1e-12) and shares["score_model"] > 0


def test_sample_verb_trace_needs_profile(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["sample", "--trace", str(tmp_path / "t.json")])
    assert e.value.code == 2 and "--trace needs --profile" in capsys.readouterr().err


def test_diffusion_sampler_network_is_model_time():
    from fastsamp.samplers.diffusion import DiffusionSampler
    from fastsamp.targets import get_target
    sampler = DiffusionSampler(get_target("25gmm"), sigma=2.0, n_steps=4, fused=False, hidden=16, n_harmonics=4)
    with profiling.breakdown() as b:
        sampler.forward_trajectories(32)
    assert b.phases["policy"] > 0 and b.score_model_s >= b.phases["policy"]


def test_an_op_writing_into_out_counts_as_an_op():
    """A public op given `out=` (importance_sde's guided step, a user's in-place reverse step) runs the backend
    function outside the dispatcher: it still appears as a fastsamp:: op in the breakdown."""
    from fastsamp import ops
    from fastsamp.schedules import VP
    x, s = torch.randn(64, 2), torch.randn(64, 2)
    with profiling.breakdown() as b:
        y = ops.reverse_sde_step(x, s, t=0.5, h=0.01, schedule=VP(), seed=0, out=x)
    assert y is x and b.ops.get("sde_step", 0) > 0
