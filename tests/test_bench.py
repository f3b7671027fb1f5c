"""`fastsamp bench`: the PyTorch baselines compute the reference, and the report's ratios."""
import pytest
import torch

from fastsamp.experiments import bench
from fastsamp.ops import reference as ref


def _mixture_args(B=64, D=3, K=4):
    g = torch.Generator().manual_seed(1)
    x, means = torch.randn(B, D, generator=g), 2 * torch.randn(K, D, generator=g)
    lw, var = torch.randn(K, generator=g), 0.5 + torch.rand(K, generator=g)
    return x, means, lw, var, torch.full((B,), 0.1)


def test_whole_move_baselines_are_the_reference_loops():
    """One move called n_steps times (the step torch.compile compiles) is the reference's loop."""
    x, means, lw, var, eps = _mixture_args()

    def draw(m):
        return torch.randn_like(x), torch.rand_like(eps)
    for op, args in (("gmm_mala", (x, means, lw, var, eps, 4, 3, 0.9, 0.2, 0, 0, 0, 0)),
                     ("gmm_hmc", (x, means, lw, var, eps, 4, 2, 0.9, 0.2, 0, 0, 0, 0, 0.5))):
        torch.manual_seed(3)
        got = bench.baseline(op)(*args)
        torch.manual_seed(3)
        want = getattr(ref, op)(*args, draw=draw)
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_report_gives_ratios_against_the_best_pytorch():
    report = bench.run("cpu", ["gmm_score[compact]"], compile_reference=False, min_time=0.01)
    (row,) = report["results"]
    assert row["best_pytorch"] == "eager" and row["flops_exp"] > row["flops"]
    for r in row["backends"].values():
        assert r["speedup_vs_best_pytorch"] == r["speedup_vs_eager"] and r["frac_gemm_exp"] > r["frac_gemm"]
    assert "x best PyTorch" in bench.format_table(report)


def test_cpu_time_needs_one_thread(one_thread):
    report = bench.run("cpu", ["gmm_score[compact]"], compile_reference=False, min_time=0.01, cpu_time=True)
    assert report["info"]["clock"] == "thread CPU time"
    torch.set_num_threads(2)
    with pytest.raises(ValueError, match="one thread"):
        bench.run("cpu", ["gmm_score[compact]"], cpu_time=True)
