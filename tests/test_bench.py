"""`fastsamp bench`: the PyTorch baselines compute the reference, and the report's ratios."""
import time

import pytest
import torch
from conftest import load_benchmark, skip_unless_available

from fastsamp import ops
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


def test_matmul_form_baselines_compute_the_reference():
    """The mixture baselines' matrix-product form of the score (what a user writing for speed writes) is the
    reference's score and log-density up to rounding, and so are the whole-move baselines built on it (float64, the
    same draws)."""
    x, means, lw, var, eps = (t.double() for t in _mixture_args())
    for alpha, sigma2 in ((1.0, 0.0), (0.7, 0.3)):
        for got, want in zip(bench.gmm_score_by_matmul(x, means, lw, var, alpha, sigma2),
                             ref.gmm_score(x, means, lw, var, alpha, sigma2)):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for op, args in (("gmm_mala", (x, means, lw, var, eps, 4, 3, 0.9, 0.2, 0, 0, 0, 0)),
                     ("gmm_hmc", (x, means, lw, var, eps, 4, 2, 0.9, 0.2, 0, 0, 0, 0, 0.5))):
        torch.manual_seed(3)
        got = bench.baseline(op, score=bench.gmm_score_by_matmul)(*args)
        torch.manual_seed(3)
        want = bench.baseline(op)(*args)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert list(bench.baselines("gmm_mala")) == ["eager", "eager (B,K,D)", "torch.compile", "torch.compile (B,K,D)"]
    assert list(bench.baselines("sde_step", compiled=False)) == ["eager"]


def test_accept_benchmarks_read_distinct_score_arrays():
    """The accept ops' cases pass s(x') as an array of its own (one tensor passed twice is read once from cache,
    which a real call cannot do), and their byte counts are the arrays the op reads and writes."""
    cases = bench._cases(torch.device("cpu"), torch.float32)
    B, D = 1 << 20, 16
    for op, n_rows, n_chain in (("score_mh_accept", 8, 3), ("energy_mh_accept", 6, 6)):
        args, nbytes = cases[op][:2]
        assert args[2].data_ptr() != args[3].data_ptr() and not torch.equal(args[2], args[3])
        assert nbytes == 4 * (n_rows * B * D + n_chain * B) + B


def test_report_gives_ratios_against_the_best_pytorch():
    report = bench.run("cpu", ["gmm_score[compact]"], compile_reference=False, min_time=0.01)
    (row,) = report["results"]
    ms = {name: r["ms"] for name, r in row["backends"].items()}
    assert {"eager", "eager (B,K,D)"} <= set(ms) and row["flops_exp"] > row["flops"]
    best = min(ms["eager"], ms["eager (B,K,D)"])
    assert ms[row["best_pytorch"]] == best
    for r in row["backends"].values():
        assert r["speedup_vs_best_pytorch"] == best / r["ms"] and r["speedup_vs_eager"] == ms["eager"] / r["ms"]
        assert r["frac_gemm_exp"] > r["frac_gemm"]
    assert "x best PyTorch" in bench.format_table(report)


def test_wide_d_cases_are_built_and_named():
    """The wide-D mixture cases: case_names() lists them (and `--ops gmm_score` selects them), with their D."""
    assert set(bench.WIDE_CASES) <= set(bench.case_names()) and not bench.unknown_ops(["gmm_score[separated/D=50]"])
    report = bench.run("cpu", ["gmm_score[separated/D=17]"], compile_reference=False, min_time=0.01)
    (row,) = report["results"]
    assert row["op"] == "gmm_score[separated/D=17]" and row["flops"] == 5 * bench.WIDE_B * bench.WIDE_K * 17
    assert "cpp" in row["backends"] and "ms" in row["backends"]["cpp"]


def test_cpu_time_needs_one_thread(one_thread):
    report = bench.run("cpu", ["gmm_score[compact]"], compile_reference=False, min_time=0.01, cpu_time=True)
    assert report["info"]["clock"] == "thread CPU time"
    torch.set_num_threads(2)
    with pytest.raises(ValueError, match="one thread"):
        bench.run("cpu", ["gmm_score[compact]"], cpu_time=True)


def _mlp_product_bench():
    mp = load_benchmark("mlp_product.py", "mlp_product")
    g = torch.Generator().manual_seed(4)
    x = torch.randn(257, 2, generator=g, dtype=torch.float64)
    xi, u = torch.randn(257, 2, generator=g, dtype=torch.float64), torch.rand(257, generator=g, dtype=torch.float64)
    return mp, x, xi, u


@pytest.mark.parametrize("n_trapezoid", [1, 3])
def test_mlp_product_compiled_score_step_is_the_samplers_move(n_trapezoid):
    """benchmarks/mlp_product.py's torch.compile baseline for score networks (run here eager: the function
    torch.compile compiles) is the samplers' move: score-MALA with the trapezoid test equals ops.score_mh_accept on
    the same proposal noise, scores and uniforms."""
    mp, x, xi, u = _mlp_product_bench()
    eps, t = 0.05, 0.5
    model = mp.product(16, torch.device("cpu"))
    for m in model.models:
        m.double()
    step, init = mp.compiled_score_step(model, n_trapezoid, t)
    with torch.no_grad():
        x0, s0 = init(x)
        got = step(x0, s0, xi, u.log(), eps)
        x_prop = x0 + eps * s0 + (2 * eps) ** 0.5 * xi
        interior = [model.score(x0 + k / n_trapezoid * (x_prop - x0), t) for k in range(1, n_trapezoid)]
        want = ops.score_mh_accept(x0, x_prop, s0, model.score(x_prop, t), eps, u,
                                   interior_scores=torch.stack(interior) if interior else None, backend="torch")
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=1e-12)
    assert 0 < int(want[2].sum()) < 257  # both outcomes occur


def test_mlp_product_compiled_energy_step_is_the_samplers_move():
    """The energy networks' baseline: energy-MALA with the exact energy test equals ops.energy_mh_accept."""
    mp, x, xi, u = _mlp_product_bench()
    eps, t = 0.05, 0.5
    model = mp.product(16, torch.device("cpu"), "energy")
    for m in model.models:
        m.double()
    step, init = mp.compiled_energy_step(model, t)
    x0, g0, e0 = init(x)
    got = step(x0, g0, e0, xi, u.log(), eps)
    x_prop = x0 - eps * g0 + (2 * eps) ** 0.5 * xi
    s_prop, logp_prop = model.score_and_log_prob(x_prop, t)
    want = ops.energy_mh_accept(x0, x_prop, -g0, s_prop, -e0, logp_prop, eps, u, backend="torch")
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(-got[1], want[1], rtol=0, atol=1e-12)
    torch.testing.assert_close(-got[2], want[2], rtol=0, atol=1e-12)
    assert 0 < int(want[3].sum()) < 257


class _Net(torch.nn.Module):
    """A network whose forward takes 10 ticks of the fake clock `now`."""

    def __init__(self, now):
        super().__init__()
        self.now = now

    def forward(self, x, t):
        self.now[0] += 10
        return x + t


def test_timing_network_split_counts_the_forward_time_and_restores_it():
    """benchmarks/_timing.py's network_split on a fake clock: a run of k forwards (10 ticks each) and one tick of
    other work per call gives total 11 k, inside 10 k and k calls, with 2 k + 1 syncs (around each call and at the
    run's end); the class's forward is back afterwards, also when the run raises."""
    tm = load_benchmark("_timing.py", "bench_timing")
    now, syncs, k = [0], [], 5
    net = _Net(now)

    def run():
        for _ in range(k):
            now[0] += 1
            net(torch.zeros(2), 1.0)

    total, inside, calls = tm.network_split(net, run, lambda: now[0], lambda: syncs.append(now[0]))
    assert (total, inside, calls) == (11 * k, 10 * k, k)
    assert len(syncs) == 2 * k + 1 and syncs[-1] == 11 * k
    assert "forward" not in vars(net) and net.forward.__func__ is _Net.forward

    def fail():
        net(torch.zeros(2), 1.0)
        raise RuntimeError("run failed")
    with pytest.raises(RuntimeError, match="run failed"):
        tm.network_split(net, fail, lambda: now[0], lambda: None)
    assert "forward" not in vars(net) and net.forward.__func__ is _Net.forward


def test_timing_timed_and_device_sync():
    """timed: `repeats` calls, non-negative medians and the last call's result; device_sync: a no-op on the CPU, a
    function (not called here) for a GPU."""
    tm = load_benchmark("_timing.py", "bench_timing")
    calls = []
    wall, cpu, out = tm.timed(lambda: calls.append(None) or len(calls), 3)
    assert len(calls) == 3 and out == 3 and wall >= 0 and cpu >= 0
    assert tm.device_sync("cpu")() is None and callable(tm.device_sync("cuda"))
    assert tm.CLOCKS.keys() == tm.CLOCKS_NS.keys()


def test_replay_buffer_baseline_draws_by_the_same_ranks(capsys):
    """benchmarks/replay_buffer.py: the argsort baseline and the ranked buffer give every slot the same
    probability (distinct log R: the same ranks), and the script runs."""
    rb = load_benchmark("replay_buffer.py", "replay_buffer_bench")
    buf = rb.ReplayBuffer(40, 1)
    buf.add(torch.arange(60.0)[:, None], torch.randperm(60, generator=torch.Generator().manual_seed(0)).float())
    n = 40_000
    ranked = torch.bincount(buf.sample(n, torch.Generator().manual_seed(1))[0][:, 0].long(), minlength=60)
    by_argsort = torch.bincount(rb.sample_by_argsort(buf, n, torch.Generator().manual_seed(2))[0][:, 0].long(),
                                minlength=60)
    p = torch.zeros(60, dtype=torch.float64)
    p[buf.x[buf.order, 0].long()] = 1.0 / (0.01 * 40 + torch.arange(40, dtype=torch.float64))
    p /= p.sum()
    for counts in (ranked, by_argsort):  # within 5 binomial std of every slot's probability
        assert torch.all((counts - n * p).abs() <= 5 * (n * p * (1 - p)).sqrt() + 1)
    rb.main(["--capacity", "50", "--dim", "1", "3", "--batch", "7", "--rounds", "2"])
    assert capsys.readouterr().out.count("\n| ") == 3


@pytest.mark.parametrize("n_trapezoid,backend", [(1, "auto"), (3, "auto"), (3, "torch")])
def test_ops_loop_is_annealed_mcmcs_generic_path(n_trapezoid, backend):
    """benchmarks/generic_vs_hand.py's ops loop (annealed MALA + score-MH over the public ops, a user's network) draws
    the same noise as annealed_mcmc's generic path and makes the same calls: the chains are equal bit for bit and so
    is the acceptance, for an odd chain count, the trapezoid with and without interior points, on the compiled
    backend ("auto") and the reference."""
    gvh = load_benchmark("generic_vs_hand.py", "generic_vs_hand_bench")
    from _user_mlp import UserMLP
    net = UserMLP(3, 16, minus_x=True, init_seed=0)
    x, rate = gvh.ops_loop(net, 37, n_levels=4, n_moves=3, step_size=1.5, n_trapezoid=n_trapezoid, seed=5,
                           backend=backend)
    y, stats = gvh.annealed_mcmc(net, 37, n_levels=4, corrector="mala", mh="score", n_corrector_steps=3,
                                 n_trapezoid=n_trapezoid, step_size=1.5, seed=5, fused=False, backend=backend)
    assert torch.equal(x, y) and torch.isfinite(x).all()
    assert 0.1 < float(rate.mean()) < 0.95
    # one accepted move in 37 chains x 12 moves is 1 / 444 of the rate; the float32 mean's rounding is ~1e-7
    assert abs(float(rate.mean()) - sum(stats.accept_rate) / 4) < 1e-6


def test_hand_loop_compiled_is_the_hand_loop():
    """benchmarks/generic_vs_hand.py's compiled hand loop (move and predictor under torch.compile, the network
    compiled) computes the eager hand loop's chains from the same draws (to float32 rounding: Inductor fuses the
    arithmetic), and its graphs serve every level: once a float has changed between calls (torch.compile then makes it
    a graph input), a run at other times t and step sizes compiles nothing new."""
    from torch._dynamo.utils import counters
    gvh = load_benchmark("generic_vs_hand.py", "generic_vs_hand_bench")
    from _user_mlp import UserMLP
    net = UserMLP(3, 16, minus_x=True, init_seed=0)
    kw = dict(n_levels=4, n_moves=3, n_trapezoid=3, seed=5)
    x, rate = gvh.hand_loop(net, 37, step_size=1.5, **kw)
    cnet = torch.compile(net)
    y, rate_c = gvh.hand_loop(cnet, 37, step_size=1.5, compiled=True, **kw)
    torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-5)
    assert torch.equal(rate_c, rate) and 0.1 < float(rate.mean()) < 0.95
    gvh.hand_loop(cnet, 37, step_size=0.7, compiled=True, **kw)  # eps = step_size on VP: first change here
    graphs = counters["stats"]["unique_graphs"]
    gvh.hand_loop(cnet, 37, step_size=0.3, t_min=0.05, compiled=True, **kw)
    assert counters["stats"]["unique_graphs"] == graphs


def test_vmap_ops_columns_compute_the_same_outputs():
    """benchmarks/vmap_ops.py times vmap, the per-slice map and the hand fold of the same row-wise calls: the three
    give the same bits on every case (what its run asserts before timing)."""
    vmap_ops = load_benchmark("vmap_ops.py", "vmap_ops")
    for name, (f, args) in vmap_ops.cases(B=5, D=3, V=2).items():
        cols = vmap_ops.columns(f, args)
        for k, fn in cols.items():
            torch.testing.assert_close(fn(), cols["map"](), rtol=0, atol=0, msg=f"{name}: {k}")
        times = vmap_ops.measure(cols, repeats=1, calls=1, clock=time.process_time, sync=lambda: None)
        assert set(times) == {"vmap", "map", "fold"}


def test_fused_mlp_benchmark_times_the_same_network():
    """benchmarks/fused_mlp.py's sampler sides: the user's network and its copy with the Sequential in FusedMLP give
    the same scores (to float32 rounding) from the same weights, and the interleaved timer times every side."""
    fused_mlp = load_benchmark("fused_mlp.py", "fused_mlp")
    torch.manual_seed(0)
    user = fused_mlp.UserMLP(3, 16)
    fused = fused_mlp.with_fused_mlp(user)
    assert isinstance(fused.net, fused_mlp.FusedMLP) and fused.net.net[0].weight is not user.net[0].weight
    x = torch.randn(37, 3)
    with torch.no_grad():
        torch.testing.assert_close(fused(x, 0.3), user(x, 0.3), rtol=1e-5, atol=1e-5)
    times = fused_mlp.interleaved({"a": lambda: None, "b": lambda: None}, 3, time.process_time, lambda: None)
    assert set(times) == {"a", "b"}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_mh_lanes_times_the_kernel_the_backend_calls(dtype):
    """benchmarks/mh_lanes.py's "kernel" column replays the `_C` call that its backend function makes: the replay
    writes what the public op returns for the same inputs, at row-lane widths (D = 2, 8), the row form's D = 16, with
    and without interior score sets, the uniforms given and drawn, and 37 chains (a partial lane block)."""
    skip_unless_available("cpp")
    mh_lanes = load_benchmark("mh_lanes.py", "mh_lanes")
    B = 37
    for D in (2, 8, 16):
        for m in (0, 2):
            for drawn in (False, True):
                call, _, (x, xp, s, stack, eps, u) = mh_lanes.case(B, D, m, drawn, mh_lanes.DTYPES[dtype])
                kernel, outputs = mh_lanes.kernel_alone(call)
                kernel()
                draw = {"seed": 7, "offset": 3} if drawn else {}
                want = ops.score_mh_accept(x, xp, s, stack.view(m + 1, B, D), eps, u, **draw, backend="cpp")
                assert 0 < int(want[2].sum()) < B, (dtype, D, m, drawn)  # some accepted, some rejected
                for got, w in zip(outputs, want):
                    assert torch.equal(got, w), (dtype, D, m, drawn)
    rows = mh_lanes.main(["--B", "37", "--D", "1", "8", "--m", "1", "--dtype", dtype, "--calls", "1",
                          "--repeats", "1"])
    assert [(r["D"], r["u"]) for r in rows] == [(1, "given"), (1, "drawn"), (8, "given"), (8, "drawn")]
    assert all(r["kernel_us"] > 0 and r["with_glue_us"] > 0 for r in rows)
