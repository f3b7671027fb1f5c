"""CUDA graphs (GPU only; skipped visibly elsewhere): benchmarks/cuda_graph_level.py's level (MALA moves with the
score-MH trapezoid, one network call per move, then a reverse-SDE step) with a network score, its seed and offset
one-element int64 device tensors, captured once and replayed after `offset += n_moves + 1`, draws fresh noise at
each replay and equals the eager level run with the int offsets, and the script itself on a bare --device cuda
(tests/test_cuda_graph_level.py checks the level and the replay checker on the CPU)."""
import json

import pytest
import torch
from conftest import load_benchmark, skip_unless_available

import fastsamp
from fastsamp import ops

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs: no GPU on this machine")

SEED = 2**63 + 7  # held by the tensor as SEED - 2**64
cgl = load_benchmark("cuda_graph_level.py", "cuda_graph_level")


@pytest.mark.parametrize("backend", ["auto", "triton"])  # mala_propose, line_points: no CUDA C++ kernel
def test_replayed_graph_draws_from_the_offset_tensor(backend):
    if backend != "auto":
        skip_unless_available(backend)
    torch.manual_seed(0)
    net = cgl.user_score(4, 64).cuda()
    x = torch.randn(2048, 4, device="cuda")
    kw = dict(n_moves=2, n_trapezoid=2, backend=backend)
    seed = torch.tensor(SEED - 2**64, device="cuda")
    offset = torch.tensor(10, device="cuda")
    with fastsamp.validation(False), torch.no_grad():
        graph, outs = cgl.capture(lambda x_in: cgl.level(net, x_in, seed=seed, offset=offset, **kw), x)
        checks = cgl.replay_checks(graph, outs, offset, lambda off: cgl.level(net, x, seed=SEED, offset=off, **kw),
                                   10, kw["n_moves"] + 1)
    assert checks["passed"], checks


def test_cuda_graph_level_script_on_a_bare_cuda_device(tmp_path):
    """What gpu_run.sh runs (--device cuda, no index), small: every row captured, timed and checked."""
    out = tmp_path / "level.json"
    rc = cgl.main(["--device", "cuda", "--chains", "256", "--moves", "2", "--levels", "2", "--repeats", "1",
                   "--json", str(out)])
    report = json.loads(out.read_text())
    assert rc == 0 and report["passed"] and report["complete"], report
    for r in report["results"]:
        assert r["graph_ms"] > 0 and r["checks"]["passed"] and "graph_error" not in r, r


@pytest.mark.parametrize("backend", ["auto", "triton", "cuda"])
def test_replayed_whole_move_kernel_reads_the_offset_tensor(backend):
    """gmm_mala draws move m from offset + m, with offset read inside the kernel."""
    if backend != "auto":
        skip_unless_available(backend)
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(1024, 8, device="cuda", generator=g)
    means, lw = torch.randn(5, 8, device="cuda", generator=g), torch.zeros(5, device="cuda")
    var = torch.ones(5, device="cuda")
    offset = torch.tensor(0, device="cuda")
    kw = dict(step_size=0.1, n_steps=4, seed=3, backend=backend)
    with fastsamp.validation(False):
        ops.gmm_mala(x, means, lw, var, offset=offset, **kw)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out, _ = ops.gmm_mala(x, means, lw, var, offset=offset, **kw)
        for start in (2**63 - 2, 5):  # the first crosses 2**63 (int64's sign) within the 4 moves
            offset.fill_(start)
            graph.replay()
            torch.testing.assert_close(out, ops.gmm_mala(x, means, lw, var, offset=start, **kw)[0], rtol=0, atol=0)
