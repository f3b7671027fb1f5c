"""torch.jit.trace of a user's step with fastsamp's public ops: the trace records the registered ops
(`torch.ops.fastsamp.<op>`: the tracer sees dispatcher calls only, so the public ops take them while tracing,
`_library.observed`), and the traced function, saved and loaded, gives eager's bits on new inputs. A compiled backend
named explicitly calls its kernel directly, which the tracer cannot see: refused, naming the op (before, the trace
silently returned the kernel's output buffer unwritten)."""
import pytest
import torch

from fastsamp import VP, backends, ops

D, K = 3, 4


def step(x, means, u):
    """A mixture score, a MALA proposal into a batch with line_points(out=), the score-MH test with given uniforms,
    and a reverse SDE step."""
    log_w, var = torch.zeros(K), torch.ones(K)
    s, _ = ops.gmm_score(x, means, log_w, var)
    batch = torch.empty(3, *x.shape)
    x_prop = ops.mala_propose(x, s, 0.1, seed=5, offset=1, out=batch[0])
    ops.line_points(x, x_prop, 3, out=batch[1:])
    scores = ops.gmm_score(batch.reshape(-1, D), means, log_w, var)[0].reshape(3, -1, D)
    x_new, s_new, accepted, _ = ops.score_mh_accept(x, x_prop, s, scores[0], 0.1, u, interior_scores=scores[1:])
    x_next = ops.reverse_sde_step(x_new, s_new, t=0.5, h=0.01, schedule=VP(), seed=5, offset=2)
    return x_next, accepted


def _inputs(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(37, D, generator=g), torch.randn(K, D, generator=g), torch.rand(37, generator=g)


def test_trace_records_the_ops_and_reruns_them(tmp_path):
    traced = torch.jit.trace(step, _inputs(0), check_trace=False)
    kinds = {n.kind() for n in traced.graph.nodes()}
    assert {"fastsamp::gmm_score", "fastsamp::mala_propose", "fastsamp::line_points", "fastsamp::score_mh_accept",
            "fastsamp::sde_step"} <= kinds, kinds
    torch.jit.save(traced, str(tmp_path / "step.pt"))
    loaded = torch.jit.load(str(tmp_path / "step.pt"))
    for program in (traced, loaded):
        for seed in (1, 2):  # inputs the trace never saw
            for got, expect in zip(program(*_inputs(seed)), step(*_inputs(seed)), strict=True):
                torch.testing.assert_close(got, expect, rtol=0, atol=0)


def test_trace_of_the_draws():
    """ops.normal / ops.uniform traced: the reference's aten ops (the registered op's Device argument is not
    traceable), the uniforms' bits and the normals' to the rounding of Box–Muller, on the traced seed and offset."""
    def draws(x):
        return x + ops.normal(5, 3, 37, D, dtype=x.dtype), ops.uniform(5, 3, 37, dtype=x.dtype)

    traced = torch.jit.trace(draws, (torch.zeros(37, D),), check_trace=False)
    x = torch.randn(37, D)
    normal, uniform = traced(x)
    torch.testing.assert_close(uniform, ops.uniform(5, 3, 37, dtype=x.dtype), rtol=0, atol=0)
    torch.testing.assert_close(normal, x + ops.normal(5, 3, 37, D, dtype=x.dtype, backend="torch"), rtol=0, atol=0)
    torch.testing.assert_close(normal, draws(x)[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_trace_refuses_a_direct_kernel(backend):
    if not backends.is_available(backend):
        pytest.skip(f"backend {backend!r} unavailable")
    x = torch.randn(5, D)

    def direct(x):
        return ops.mala_propose(x, x, 0.1, seed=1, backend=backend)

    with pytest.raises(ValueError, match="mala_propose on backend .* torch.jit.trace cannot record"):
        torch.jit.trace(direct, (x,))

    def direct_normal(x):
        return x + ops.normal(1, 0, 5, D, dtype=x.dtype, backend=backend)

    with pytest.raises(ValueError, match="normal on backend .* torch.jit.trace cannot record"):
        torch.jit.trace(direct_normal, (x,))


def test_trace_with_the_reference_backend():
    """backend='torch' is aten ops: traced as they are."""
    def ref(x):
        return ops.mala_propose(x, x, 0.1, seed=1, backend="torch")

    x = torch.randn(5, D)
    traced = torch.jit.trace(ref, (x,), check_trace=False)
    y = torch.randn(5, D)
    torch.testing.assert_close(traced(y), ref(y), rtol=0, atol=0)
