"""C++ CPU backend: thin glue from the backend signatures of
docs/backend-contract.md to the `fastsamp._C.cpu_<op>` kernels.

Inputs arrive validated and contiguous (the public ops in `fastsamp.ops` see to
that, and the registered ops `torch.ops.fastsamp.<op>` refuse others: `_library._checker`);
outputs are allocated here with `torch.empty` on x's device in x's dtype.
The glue of every op is generated from its C order in the op table
(`fastsamp/ops/_table.py`: `_table.glue_source(op, "cpu")` shows the source), the policy and
score-network ops' (lists of layer pointers) included.
"""
from __future__ import annotations

import torch

from fastsamp import _C  # noqa: F401  (this and the _abi helpers: names the generated glue calls)

from ..ops import _table
from ._abi import dtype_code as _dt  # noqa: F401
from ._abi import ptr as _p  # noqa: F401
from ._abi import u64 as _u64  # noqa: F401


def _threads(n_threads=0) -> int:
    """The threads of a kernel call: n_threads, or torch's intra-op count (torch.set_num_threads /
    OMP_NUM_THREADS) when it is 0 (the policy ops' default, so that torch.compile never traces
    torch.get_num_threads()). Small calls run on the calling thread alone (csrc/cpu/runtime.h)."""
    return int(n_threads) or torch.get_num_threads()


_GENERATED = _table.install_glue(globals(), "cpu", "cpp")
__all__ = _GENERATED
