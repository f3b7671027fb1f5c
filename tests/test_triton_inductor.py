"""torch.compile tracing into fastsamp's Triton kernels (issue 10 item 1: "the Triton kernels through
torch.library.triton_op / wrap_triton, where that lets Inductor trace them").

The registered op gets triton_op's mechanism (`fastsamp/ops/_library._triton_decomposition`, switched by
`_library.set_trace_triton` / FASTSAMP_TRACE_TRITON=1): while AOTAutograd functionalizes a graph, a call on CUDA
tensors whose "auto" kernel is Triton runs its launcher, whose launches become `wrap_triton` graph nodes that
Inductor compiles. That needs CUDA tensors: on the CPU, under TRITON_INTERPRET=1, torch 2.13's wrap_triton returns
the interpreted kernel itself (no traceable wrapper; it would run on fake tensors: "Cannot access data pointer"),
and Inductor compiles user-defined Triton kernels for GPUs only. So on the CPU the op stays one opaque node
(checked here); without a GPU the functionalized trace on fake CUDA tensors is checked (a subprocess with the
Triton kernels not interpreted), and Inductor's compilation runs on a lent GPU (benchmarks/gpu_run.sh; `-k cuda`).
"""
import contextlib
import re

import pytest
import torch

from fastsamp import ops
from fastsamp.ops import _library

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(),
                               reason="Inductor traces user-defined Triton kernels on CUDA tensors only: no GPU here")


@contextlib.contextmanager
def tracing(on):
    """The switch set to `on` inside, restored after (whatever FASTSAMP_TRACE_TRITON had set)."""
    before = _library.TRACE_TRITON
    _library.set_trace_triton(on)
    try:
        yield
    finally:
        _library.set_trace_triton(before)


@pytest.fixture
def trace_triton(dynamo_reset):
    with tracing(True):
        yield


def _step(x, s, eps, offset):
    """Ops whose CUDA kernel is Triton even where the CUDA C++ kernels are built."""
    x_prop = ops.mala_propose(x, s, eps, seed=3, offset=offset)
    return x_prop, ops.line_points(x, x_prop, 3)


def _inputs(device, dtype):
    torch.manual_seed(0)
    x = torch.randn(64, 5, device=device, dtype=dtype)
    return x, torch.randn_like(x), torch.full((64,), 0.05, device=device, dtype=dtype)


def _contents(code):
    """What a failed assertion on Inductor's code shows: the functions it defines and the fastsamp ops it calls."""
    kernels = sorted(set(re.findall(r"def (\w+)\(", code)))
    ops_called = sorted(set(re.findall(r"fastsamp\.(\w+)", code)))
    return f"functions defined in Inductor's code: {kernels}; fastsamp ops called: {ops_called}"


def _compiled_code(*args):
    from torch._inductor.utils import run_and_get_code
    assert torch._dynamo.explain(_step)(*args).graph_break_count == 0
    torch._dynamo.reset()
    out, code = run_and_get_code(torch.compile(_step, fullgraph=True), *args)
    return out, "\n".join(code)


def test_cpu_compile_keeps_the_op_opaque(trace_triton):
    """CPU tensors (the cpp kernel, or Triton interpreted): one opaque node per op, no graph break, eager's values."""
    args = _inputs("cpu", torch.float32) + (2,)
    out, code = _compiled_code(*args)
    assert "fastsamp.mala_propose" in code and "fastsamp.line_points" in code
    torch.testing.assert_close(out, _step(*args), rtol=0, atol=0)


def test_switch_keeps_the_users_cache_tags():
    with tracing(False):
        torch.compiler.config.cache_key_tag, before = "mine", torch.compiler.config.cache_key_tag
        try:
            _library.set_trace_triton(True)
            assert torch.compiler.config.cache_key_tag == "mine,fastsamp-trace-triton" and _library.TRACE_TRITON
            _library.set_trace_triton(True)  # idempotent
            assert torch.compiler.config.cache_key_tag == "mine,fastsamp-trace-triton"
            _library.set_trace_triton(False)
            assert torch.compiler.config.cache_key_tag == "mine" and not _library.TRACE_TRITON
        finally:
            torch.compiler.config.cache_key_tag = before


_CACHE_PROBE = """
import torch
from torch._dynamo.utils import counters
from fastsamp import ops

def step(x, s, eps):
    x_prop = ops.mala_propose(x, s, eps, seed=3, offset=2)
    return x_prop, ops.line_points(x, x_prop, 3)

x = torch.ones(8, 3)
torch.compile(step, fullgraph=True)(x, x, torch.full((8,), 0.1))
print(counters["aot_autograd"]["autograd_cache_hit"])
"""


def test_switch_is_part_of_the_compile_cache_key(tmp_path):
    """torch.compile's on-disk caches (shared by processes) key on the graph, whose nodes are the same fastsamp ops
    with tracing on or off: a graph cached with it off is reused with it off, and not with it on."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k not in ("FASTSAMP_TRACE_TRITON", "TORCH_COMPILE_CACHE_KEY_TAG",
                                                            "TORCHINDUCTOR_FORCE_DISABLE_CACHES",
                                                            "TORCH_COMPILE_FORCE_DISABLE_CACHES")}
    env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path)

    def cache_hits(trace):
        run = subprocess.run([sys.executable, "-c", _CACHE_PROBE], env=dict(env, FASTSAMP_TRACE_TRITON=trace),
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        return int(run.stdout.split()[-1])
    assert [cache_hits("0"), cache_hits("0"), cache_hits("1")] == [0, 1, 0]


_FAKE_CUDA_TRACE = """
import torch
from torch._functorch._aot_autograd.functional_utils import from_fun, to_fun
from torch._subclasses.fake_tensor import FakeTensorMode
from torch._subclasses.functional_tensor import FunctionalTensorMode
from torch.fx.experimental.proxy_tensor import make_fx
import fastsamp
from fastsamp import ops
from fastsamp.ops import _library
_library.set_trace_triton({trace})
fastsamp.set_validation(False)  # as under torch.compile: no value check reads a (fake) tensor

def step(x, s, eps):
    x_prop = ops.mala_propose(x, s, eps, seed=3, offset=2)
    return x_prop, ops.line_points(x, x_prop, 3)

def functional(x, s, eps):  # what AOTAutograd does before Inductor: functionalize, on fake tensors
    with FunctionalTensorMode():
        out = step(*map(to_fun, (x, s, eps)))
    return tuple(map(from_fun, out))

with FakeTensorMode(allow_non_fake_inputs=True):
    x, s, eps = torch.empty(64, 5, device="cuda"), torch.empty(64, 5, device="cuda"), torch.empty(64, device="cuda")
print(make_fx(functional, tracing_mode="fake")(x, s, eps).code)
"""


@pytest.mark.parametrize("trace", [True, False])
def test_fake_cuda_trace_reaches_the_triton_launches(trace):
    """Without a GPU: AOTAutograd's functionalization of a step on fake CUDA tensors, with the Triton kernels
    compiled-mode (TRITON_INTERPRET unset, in a subprocess): switched on, the graph holds the kernels' launches as
    `triton_kernel_wrapper_functional` nodes and no fastsamp op; off, the opaque ops. (Inductor's compilation of
    those nodes needs the GPU test below.)"""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", _FAKE_CUDA_TRACE.format(trace=trace)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    code = run.stdout
    if trace:
        assert code.count("triton_kernel_wrapper_functional(") == 2 and "fastsamp" not in code
        assert "'BLOCK_G'" in code and "'n': 3" in code  # _affine_noise_kernel's and _line_points_kernel's launches
    else:
        assert "fastsamp.mala_propose" in code and "fastsamp.line_points" in code
        assert "triton_kernel_wrapper" not in code


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_compile_traces_into_the_triton_kernels(trace_triton, dtype):
    """No graph break; Inductor's code holds the Triton kernels themselves, not calls of the ops; eager's values
    (up to FMA contraction inside Inductor's compilation)."""
    args = _inputs("cuda", dtype) + (2,)
    out, code = _compiled_code(*args)
    seen = _contents(code)
    assert "_affine_noise_kernel" in code and "_line_points_kernel" in code, seen
    assert "fastsamp.mala_propose" not in code and "fastsamp.line_points" not in code, seen
    torch.testing.assert_close(out, _step(*args))
    out_next, _ = _compiled_code(*args[:3], 3)  # a new offset draws new noise
    assert not torch.equal(out_next[0], out[0])


@needs_gpu
def test_cuda_compile_keeps_the_op_opaque_when_switched_off(dynamo_reset):
    args = _inputs("cuda", torch.float32) + (2,)
    with tracing(False):
        out, code = _compiled_code(*args)
    assert "fastsamp.mala_propose" in code
    torch.testing.assert_close(out, _step(*args), rtol=0, atol=0)
