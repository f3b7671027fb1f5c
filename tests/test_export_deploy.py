"""A user's exported step with fastsamp ops, deployed: `torch.export.save` / `load` and an AOTInductor package
(`torch._inductor.aoti_compile_and_package` / `aoti_load_package`), each loaded in a fresh process that imports
fastsamp (the import registers the `fastsamp::` ops the artefacts call). The loaded programs give eager's bits, and
with the Philox offset as a graph input (a one-element int64 tensor) each call draws the noise of its offset."""
import subprocess
import sys

import pytest
import torch
from torch.export import Dim

from fastsamp import ops

D = 3


class MALAStep(torch.nn.Module):
    """One MALA move with score-based MH around a small score network; the offset an int64 tensor input."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(D, 16), torch.nn.SiLU(), torch.nn.Linear(16, D))

    def forward(self, x, offset):
        score = self.net(x)
        x_prop = ops.mala_propose(x, score, 0.05, seed=7, offset=offset)
        pts = ops.line_points(x, x_prop, 3)
        s = self.net(torch.cat([x_prop[None], pts]).reshape(-1, D)).reshape(3, -1, D)
        return ops.score_mh_accept(x, x_prop, score, s[0], 0.05, seed=7, offset=offset, interior_scores=s[1:])[:3]


def _device(name):
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA: no GPU on this machine")
    return torch.device(name)


_LOAD = """
import sys, torch, fastsamp
kind, artefact, io = sys.argv[1:]
program = torch.export.load(artefact).module() if kind == "export" else torch._inductor.aoti_load_package(artefact)
inputs = torch.load(io)["inputs"]
with torch.no_grad():  # as exported (export records no grad mode set outside the module)
    outputs = [[t.cpu() for t in program(x, offset)] for x, offset in inputs]
torch.save(outputs, io + ".out")
"""


def _deployed_outputs(kind, artefact, inputs, tmp_path):
    """The artefact's outputs on `inputs` [(x, offset), ...], loaded and run in a fresh process."""
    io = str(tmp_path / "io.pt")
    torch.save({"inputs": inputs}, io)
    done = subprocess.run([sys.executable, "-c", _LOAD, kind, str(artefact), io], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(io + ".out")


def _step_and_inputs(device, more_chains=False):
    """The step and [(x, offset), ...] at three offsets (and, with more_chains, a larger batch), eager's outputs."""
    torch.manual_seed(0)
    step = MALAStep().to(device)
    x = torch.randn(37, D, device=device)  # B not a multiple of a block
    inputs = [(x, torch.tensor([k], dtype=torch.int64, device=device)) for k in (1, 2, 1000)]
    if more_chains:
        inputs.append((torch.randn(130, D, device=device), inputs[0][1]))
    with torch.no_grad():
        expect = [[t.cpu() for t in step(*args)] for args in inputs]
    # the offsets draw different noise (the test below could not see a baked-in offset otherwise)
    assert not torch.equal(expect[0][0], expect[1][0]) and not torch.equal(expect[1][0], expect[2][0])
    return step, inputs, expect


def _same_bits(got, expect):
    for got_call, expect_call in zip(got, expect, strict=True):
        for g, e in zip(got_call, expect_call, strict=True):
            torch.testing.assert_close(g, e, rtol=0, atol=0)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_saved_export_runs_in_a_fresh_process(device, tmp_path):
    """Exported with a dynamic batch size (the kernels count chains in C ints: B at most 2**31 - 1, the bound
    torch.export asks for), run on 37 and 130 chains."""
    step, inputs, expect = _step_and_inputs(_device(device), more_chains=True)
    with torch.no_grad():
        exported = torch.export.export(step, inputs[0], dynamic_shapes=({0: Dim("B", max=2**31 - 1)}, None))
    targets = {str(n.target) for m in exported.graph_module.modules() if isinstance(m, torch.fx.GraphModule)
               for n in m.graph.nodes}
    assert {"fastsamp.mala_propose.default", "fastsamp.score_mh_accept.default"} <= targets, targets
    torch.export.save(exported, tmp_path / "step.pt2")
    _same_bits(_deployed_outputs("export", tmp_path / "step.pt2", inputs, tmp_path), expect)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_aoti_package_runs_in_a_fresh_process(device, tmp_path):
    """AOTInductor compiles the network's aten ops into C++ (CUDA) and calls the fastsamp ops through the dispatcher
    (their registered kernels); the package loads where fastsamp is imported."""
    from torch._inductor import aoti_compile_and_package
    step, inputs, expect = _step_and_inputs(_device(device))
    with torch.no_grad():
        exported = torch.export.export(step, inputs[0])
    package = aoti_compile_and_package(exported, package_path=str(tmp_path / "step_aoti.pt2"))
    got = _deployed_outputs("aoti", package, inputs, tmp_path)
    for got_call, expect_call in zip(got, expect, strict=True):  # the network compiled by Inductor: its rounding
        x, score, accepted = got_call
        assert (accepted != expect_call[2]).sum() <= 1  # a chain at the acceptance threshold may flip
        keep = accepted == expect_call[2]
        torch.testing.assert_close(x[keep], expect_call[0][keep], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(score[keep], expect_call[1][keep], rtol=1e-5, atol=1e-6)
