"""CUDA graphs (GPU only; skipped visibly elsewhere): a corrector level with a network score, its seed and
offset one-element int64 device tensors, captured once and replayed after `offset += n`, draws fresh noise
at each replay and equals the eager level run with the int offsets."""
import pytest
import torch
from conftest import skip_unless_available

import fastsamp
from fastsamp import VP, ops

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs: no GPU on this machine")

SEED = 2**63 + 7  # held by the tensor as SEED - 2**64


def _level(net, x, seed, offset, backend):
    """MALA corrector (score-MH test on the trapezoid with one interior point) then a reverse-SDE predictor
    step, the noise of move k from (seed, offset + k)."""
    s = net(x)
    x_prop = ops.mala_propose(x, s, 0.05, seed=seed, offset=offset, backend=backend)
    pts = ops.line_points(x, x_prop, 2, backend=backend)
    s_all = net(torch.cat([x_prop[None], pts]).reshape(-1, x.shape[1])).reshape(2, *x.shape)
    x, *_ = ops.score_mh_accept(x, x_prop, s, s_all[0], 0.05, interior_scores=s_all[1:], seed=seed, offset=offset,
                                backend=backend)
    return ops.reverse_sde_step(x, net(x), t=0.5, h=0.01, schedule=VP(), seed=seed, offset=offset + 1,
                                backend=backend)


@pytest.mark.parametrize("backend", ["auto", "triton"])  # mala_propose, line_points: no CUDA C++ kernel
def test_replayed_graph_draws_from_the_offset_tensor(backend):
    if backend != "auto":
        skip_unless_available(backend)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.SiLU(), torch.nn.Linear(64, 4)).cuda()
    x = torch.randn(2048, 4, device="cuda")
    seed = torch.tensor(SEED - 2**64, device="cuda")
    offset = torch.tensor(10, device="cuda")
    with fastsamp.validation(False), torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                _level(net, x, seed, offset, backend)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = _level(net, x, seed, offset, backend)
        replays = []
        for k in range(3):
            graph.replay()
            torch.cuda.synchronize()
            replays.append(out.clone())
            expect = _level(net, x, SEED, 10 + 2 * k, backend)
            torch.testing.assert_close(replays[-1], expect)
            offset += 2
    assert not torch.equal(replays[0], replays[1]) and not torch.equal(replays[1], replays[2])


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
