"""Backend registry and dispatch: "torch" (reference), "cpp", "triton", "cuda"."""
from __future__ import annotations

import os
import warnings

import torch

BACKENDS = ("torch", "cpp", "triton", "cuda")


_loaded: dict[str, tuple] = {}  # name -> _import(name); a plain dict, which torch.compile reads as a constant
_failed: dict[str, str] = {}  # name -> why it is unavailable; written only when a load fails


def _load(name: str):
    """(module, None) or (None, reason it is unavailable), imported once. `resolve` traces under torch.compile
    with no graph break, the first load included (`_import`). While tracing, the import statements themselves
    (a trace that read `_loaded` would guard on its keys, which the first load changes: a compiled op that is
    its process's first call would compile again on its second call), except for a backend known to be
    unavailable (`_failed`, which a full build never writes): dynamo cannot trace a failing import."""
    if torch.compiler.is_compiling():
        return (None, _failed[name]) if name in _failed else _import(name)
    if name not in _loaded:
        _loaded[name] = _import(name)
        if _loaded[name][0] is None:
            _failed[name] = _loaded[name][1]
    return _loaded[name]


def _import(name: str):
    """The backend's module, by import statements: torch.compile runs an import statement while it traces (the
    first op call of a process may be inside a compiled function), whereas it breaks the graph at
    importlib.import_module."""
    try:
        if name == "torch":
            from fastsamp.ops import reference as module
        elif name == "triton":
            from fastsamp import kernels as module
        else:
            from fastsamp import _C
            if name == "cuda" and not _C.has_cuda:
                return None, "fastsamp._C was built without CUDA kernels (nvcc not found at build time)"
            if name == "cpp":
                from fastsamp.backends import cpp as module
            else:
                from fastsamp.backends import cuda as module
    except ImportError as e:  # extension not built, triton not installed
        reason = f"{type(e).__name__}: {e}"
        if name == "cpp":  # backend="auto" then runs the reference on the CPU: say so once, not silently
            warnings.warn(f"fastsamp's C++ extension is unavailable ({reason}); CPU ops with backend='auto' run the "
                          "PyTorch reference, many times slower. Build it with `pip install -e .`.",
                          RuntimeWarning, stacklevel=3)
        return None, reason
    return module, None


def is_available(name: str) -> bool:
    return _load(name)[0] is not None


def availability() -> dict[str, str]:
    """Backend name -> "available" or the reason it is not."""
    return {name: "available" if _load(name)[0] else _load(name)[1] for name in BACKENDS}


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve(backend: str, op: str, device):
    """The function implementing `op` on `backend` for tensors on `device`."""
    if backend not in ("auto",) + BACKENDS:
        raise ValueError(f"backend must be one of {('auto',) + BACKENDS}, got {backend!r}")
    kind = device.type
    if backend == "auto":
        order = {"cpu": ("cpp",), "cuda": ("cuda", "triton")}.get(kind, ())
        for name in order:
            module = _load(name)[0]
            if module is not None and hasattr(module, op):
                return getattr(module, op)
        return getattr(_load("torch")[0], op)
    if backend == "cpp" and kind != "cpu":
        raise ValueError(f"backend='cpp' needs CPU tensors, got device {device}")
    if backend == "cuda" and kind != "cuda":
        raise ValueError(f"backend='cuda' needs CUDA tensors, got device {device}")
    if backend == "triton" and kind != "cuda" and not (kind == "cpu" and triton_interpreted()):
        raise ValueError(f"backend='triton' needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), "
                         f"got device {device}")
    module, reason = _load(backend)
    if module is None:
        raise RuntimeError(f"backend {backend!r} is not available: {reason}")
    if not hasattr(module, op):
        raise ValueError(f"op {op!r} has no {backend!r} kernel")
    return getattr(module, op)
