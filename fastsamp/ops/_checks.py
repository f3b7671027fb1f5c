"""Input validation shared by the public ops: clear exceptions naming the argument.

Two kinds of check:
* structure: types, shapes, dtypes, devices, integer counts, seeds and offsets, aliasing of `out`, and
  the HMC damping's range. They read only metadata and Python scalars on the host and always run (they keep
  the kernels' memory accesses safe; a damping of 1 would silently stop the momentum refresh).
* values: finite / positive / in-range floating values, of float arguments and of tensor contents
  (step sizes, mixture parameters). A tensor's contents cost a device sync (`.tolist()`) and
  break a `torch.compile` graph, so these run only while `validating()`: validation switched on
  (`set_validation`, the environment variable FASTSAMP_VALIDATE, default on) and not tracing.
  With them off a bad value gives NaN/inf in the chains it reaches, as the kernels compute it.

Tensor arguments may also be given in any array library that speaks DLPack: a NumPy array, or any
object with `__dlpack__` (JAX, CuPy, ...), is taken zero-copy as a torch tensor on the same memory
(`from_dlpack`) before the checks; the ops return torch tensors.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import os

import numpy as np
import torch

from . import _ieee

FLOAT_DTYPES = (torch.float32, torch.float64)
MAX_COUNT = 2**31 - 1  # counts and sizes reach the kernels as C int / int32
U64_MAX = 2**64 - 1    # seeds and offsets are 64-bit
_ENV_VALUES = {"1": True, "true": True, "on": True, "yes": True, "0": False, "false": False, "off": False, "no": False}


def _validation_from_env() -> bool:
    """FASTSAMP_VALIDATE: 1/true/on/yes (the default when unset or empty) or 0/false/off/no."""
    raw = os.environ.get("FASTSAMP_VALIDATE", "").strip()
    if not raw:
        return True
    if raw.lower() not in _ENV_VALUES:
        raise ValueError(f"FASTSAMP_VALIDATE must be one of 1/0, true/false, on/off, yes/no, got {raw!r}")
    return _ENV_VALUES[raw.lower()]


_validate = _validation_from_env()


def set_validation(enabled: bool) -> None:
    """Switch the value checks of every fastsamp op on or off, process-wide (as
    `torch.distributions.Distribution.set_default_validate_args`). Structure checks always run."""
    global _validate
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
    _validate = enabled


def validation_enabled() -> bool:
    """Whether the value checks are switched on (they are skipped anyway while torch.compile traces)."""
    return _validate


@contextlib.contextmanager
def validation(enabled: bool):
    """`with fastsamp.validation(False): ...` runs the block with the value checks switched to
    `enabled`, then restores the previous setting."""
    previous = _validate
    set_validation(enabled)
    try:
        yield
    finally:
        set_validation(previous)


def validating() -> bool:
    """Whether value checks run now: switched on and not under torch.compile tracing."""
    return _validate and not torch.compiler.is_compiling()


def resolved(t: torch.Tensor) -> torch.Tensor:
    """t with any conj / neg-bit view materialised, made contiguous: the memory kernels read.
    (Eager fast path: t itself when there is nothing to do; dynamo cannot trace is_neg / is_conj.)"""
    if not torch.compiler.is_compiling() and t.is_contiguous() and not t.is_neg() and not t.is_conj():
        return t
    return t.resolve_conj().resolve_neg().contiguous()


def from_dlpack(name: str, v):
    """v as a torch tensor on the same memory (zero-copy) when it is a NumPy array or has `__dlpack__`;
    anything else (a torch tensor among them) unchanged, for the checks that follow."""
    if isinstance(v, torch.Tensor):
        return v
    if isinstance(v, np.ndarray):
        convert = torch.from_numpy  # clear errors for reversed views and foreign byte order
    elif hasattr(v, "__dlpack__"):
        strides = getattr(v, "strides", None)
        if strides is not None and any(s < 0 for s in strides):  # torch 2.13's from_dlpack aborts the process
            raise ValueError(f"{name} has negative strides (a reversed view), which a torch tensor cannot share: "
                             f"pass a copy")
        convert = torch.from_dlpack
    else:
        return v
    try:
        return convert(v)
    except (BufferError, RuntimeError, TypeError, ValueError) as e:
        raise TypeError(f"{name}: a {type(v).__name__} that torch cannot share zero-copy ({e}); pass a torch.Tensor "
                        f"or a copy in native byte order with non-negative strides") from e


def as_tensor(name: str, v) -> torch.Tensor:
    """v as a torch tensor (`from_dlpack`), or a TypeError naming it."""
    t = from_dlpack(name, v)
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(v).__name__}")
    return t


def state(name: str, x) -> torch.Tensor:
    """A (B, D) float32/float64 tensor with 1 <= B, D <= MAX_COUNT, resolved and contiguous (from a
    DLPack array zero-copy: `from_dlpack`)."""
    if not isinstance(x, torch.Tensor):
        x = as_tensor(name, x)
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {x.dtype}")
    try:
        shape = x.shape
    except RuntimeError as e:  # a nested tensor
        raise not_dense(name, x, e) from None
    if len(shape) != 2:
        raise ValueError(f"{name} must have shape (B, D), got {tuple(shape)}")
    B, D = shape
    if B == 0 or D == 0:
        raise ValueError(f"{name} must have B >= 1 chains and D >= 1 dims, got shape {tuple(shape)}")
    if B > MAX_COUNT or D > MAX_COUNT or B * D >= 2**62:
        raise ValueError(f"{name} is too large: shape {tuple(shape)} (B and D must be <= {MAX_COUNT})")
    try:
        return resolved(x)
    except RuntimeError as e:
        raise not_dense(name, x, e) from None


def not_dense(name: str, t: torch.Tensor, error: RuntimeError) -> Exception:
    """The exception for t failing a shape read or `resolved` with `error`: a TypeError naming t if it is not a dense
    (strided) tensor (the checks read no layout on the way, two attribute reads per tensor: a nested tensor fails the
    shape read, a sparse one `resolved`'s contiguity test), else `error`."""
    if t.is_nested:
        return TypeError(f"{name} must be a dense (strided) tensor, got a nested tensor")
    if t.layout is not torch.strided:
        return TypeError(f"{name} must be a dense (strided) tensor, got layout {t.layout}")
    return error


AUTOCAST_DTYPES = (torch.float16, torch.bfloat16)


def autocast_promoted(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """t cast up to x's dtype where torch.autocast made it: a float16 / bfloat16 tensor (a network's output) while
    autocast is on for x's device type, as autocast's type promotion does for a plain torch op taking both (a
    hand-written `x + ε * score`); else t itself (outside autocast a dtype mismatch stays an error)."""
    if t.dtype in AUTOCAST_DTYPES and torch.is_autocast_enabled(x.device.type):
        return t.to(x.dtype)
    return t


def like(name: str, t, x: torch.Tensor, shape=None, *, x_name: str = "x") -> torch.Tensor:
    """A tensor with x's dtype and device and the given shape (default x's), resolved and contiguous; under
    torch.autocast a half-precision t is cast up to x's dtype (`autocast_promoted`)."""
    shape = tuple(x.shape) if shape is None else tuple(shape)
    if not isinstance(t, torch.Tensor):
        t = as_tensor(name, t)
    if t.dtype != x.dtype:
        t = autocast_promoted(t, x)
        if t.dtype != x.dtype:
            raise TypeError(f"{name} must have dtype {x.dtype} like {x_name}, got {t.dtype}")
    if t.device != x.device:
        raise ValueError(f"{name} must be on {x.device} like {x_name}, got {t.device}")
    try:
        same = t.shape == shape
    except RuntimeError as e:  # a nested tensor
        raise not_dense(name, t, e) from None
    if not same:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    try:
        return resolved(t)
    except RuntimeError as e:
        raise not_dense(name, t, e) from None


def all_like(tensors, shapes, x: torch.Tensor) -> bool:
    """Whether `like` would return every tensor unchanged against x: a torch.Tensor of its shape (`shapes`, in turn)
    with x's dtype and device, already `resolved` (contiguous, no neg / conj bit). The eager fast path of a list of
    `like` checks, whose error names then need not be built (about half a `like`'s cost per tensor); False while
    tracing, where `like` is the path traced."""
    if torch.compiler.is_compiling():
        return False
    dtype, device = x.dtype, x.device
    for t, shape in zip(tensors, shapes):
        try:
            if not (isinstance(t, torch.Tensor) and t.dtype == dtype and t.device == device and t.shape == shape
                    and t.is_contiguous() and not t.is_neg() and not t.is_conj()):
                return False
        except RuntimeError:  # a sparse or nested tensor: `like` names it
            return False
    return True


def arg_error(op: str, name: str, t, want, spec, dtype=None, device=None, like=None, where="") -> Exception:
    """The exception for argument `name` = t of registered op `op` that failed its generated check
    (`_codegen.check_source`): want the shape (None: only its ndim, the dims not read yet), spec its dims' names,
    `where` the statements reading them; a list of tensors: its first bad element (want: their shapes, or None).
    ValueError, TypeError for a dtype, as `like`'s."""
    if isinstance(t, (list, tuple)):
        k = next(k for k, u in enumerate(t) if u.dtype != dtype or not u.is_contiguous()
                 or (device is not None and u.device != device) or (want and tuple(u.shape) != tuple(want[k])))
        name, t = f"{name}[{k}]", t[k]
        if want and tuple(t.shape) != tuple(want[k]):
            return ValueError(f"{op}: {name} must have shape {tuple(want[k])}, got {tuple(t.shape)} (the list's "
                              f"shapes: {spec}, dims: {where})")
    elif want is None:
        n = len([d for d in spec.strip("()").split(",") if d.strip()])
        return ValueError(f"{op}: {name} must have {n} dims {spec}, got shape {tuple(t.shape)}")
    elif tuple(t.shape) != tuple(want):
        return ValueError(f"{op}: {name} must have shape {tuple(want)} {spec}, got {tuple(t.shape)}"
                          + (f" (dims: {where})" if where else ""))
    of = f" like {like}" if like else ""
    if t.dtype != dtype:
        return TypeError(f"{op}: {name} must have dtype {dtype}{of}, got {t.dtype}")
    if device is not None and t.device != device:
        return ValueError(f"{op}: {name} must be on {device}{of}, got {t.device}")
    return ValueError(f"{op}: {name} must be contiguous (the kernels read dense rows), got strides {t.stride()} for "
                      f"shape {tuple(t.shape)}: pass {name}.contiguous()")


def _bytes(t: torch.Tensor) -> tuple[int, int]:
    start = t.data_ptr()
    return start, start + t.numel() * t.element_size()


def overlap(out: torch.Tensor, t) -> str:
    """How tensor t's memory meets out's (both contiguous): "none" (t None or empty too), "same" (the same bytes: the
    same element at every position, an in-place update), or "partial". By addresses, not by storage: two tensors
    taken zero-copy from one array (NumPy, DLPack) hold different torch storages on the same memory."""
    if t is None or t.numel() == 0 or out.numel() == 0 or not (has_values(t) and has_values(out)):
        return "none"  # (a 'meta' tensor has no memory: its data_ptr() is 0)
    lo, hi = _bytes(out)
    t_lo, t_hi = _bytes(t)
    if t_hi <= lo or hi <= t_lo:
        return "none"
    return "same" if (t_lo, t_hi, t.element_size()) == (lo, hi, out.element_size()) else "partial"


def writable(name: str, out) -> torch.Tensor:
    """An output argument as a tensor the op may write: a tensor, or a writable NumPy / DLPack array taken zero-copy;
    not an inference tensor outside inference mode (torch's in-place ops refuse to write one there)."""
    if isinstance(out, np.ndarray) and not out.flags.writeable:
        raise ValueError(f"{name} is a read-only NumPy array")
    if not isinstance(out, torch.Tensor):
        out = as_tensor(name, out)
    if not torch.compiler.is_compiling() and out.is_inference() and not torch.is_inference_mode_enabled():
        raise ValueError(f"{name} is an inference tensor (made under torch.inference_mode): it cannot be written "
                         f"outside inference mode; pass a tensor made outside it, or call the op under inference_mode")
    return out


def output(out, x: torch.Tensor, /, **inputs):
    """None, or a contiguous tensor like x that receives a result (`writable`).

    `out` may be exactly one of the (contiguous) `inputs` (an in-place update: the kernels read
    element i before writing it) but may not overlap one partially (`overlap`), e.g. x shifted by a row.
    With grad mode on it must not require grad: the compiled kernels write it without autograd.
    The overlap check reads memory addresses: skipped where they cannot be read (`addresses_readable`), and needed
    no more there: the op runs functional and its result is copied into `out` afterwards, so no kernel reads memory
    it has already written.
    """
    if out is None:
        return None
    out = writable("out", out)
    if not out.is_contiguous():
        raise ValueError("out must be a contiguous tensor")
    like("out", out, x)
    if torch.is_grad_enabled() and out.requires_grad:
        raise ValueError("out requires grad: in-place writes are not differentiable (like torch's in-place ops "
                         "on leaves); pass a tensor that does not require grad, or run under torch.no_grad()")
    if not addresses_readable():
        return out
    for name, t in inputs.items():
        if overlap(out, t) == "partial":
            raise ValueError(f"out partially overlaps {name}: it may be {name} itself (in place) but not "
                             f"a shifted or sliced view of its memory")
    return out


def in_dtype(name: str, v: float, dtype: torch.dtype, *, positive=False) -> float:
    """Check that the python float v stays finite (and > 0 if `positive`) once rounded to `dtype`
    (a value check: skipped when not `validating()`)."""
    if not validating():
        return v
    r = _ieee.rounded(v, dtype)
    dt = str(dtype).removeprefix("torch.")
    if not math.isfinite(r):
        raise ValueError(f"{name} = {v} overflows {dt} (largest finite value {torch.finfo(dtype).max:.4g})")
    if positive and r < torch.finfo(dtype).tiny:
        why = "rounds to 0" if r <= 0 else "a subnormal value, which the compiled kernels flush to 0"
        raise ValueError(f"{name} must be > 0 in {dt}, got {v} ({why}; the smallest normal {dt} is "
                         f"{torch.finfo(dtype).tiny:.4g})")
    return v


def coefficients(dtype: torch.dtype, cause: str, **values: float) -> None:
    """Kernel coefficients computed from the arguments (in float64) must be finite in `dtype`
    (a value check)."""
    if not validating():
        return
    for name, v in values.items():
        if not math.isfinite(v) or not math.isfinite(_ieee.rounded(v, dtype)):
            raise ValueError(f"the kernel coefficient {name} = {v} is not finite in {dtype}: {cause} too large "
                             f"or too small")


def finite_float(name: str, v, *, positive=False, nonnegative=False, dtype=None) -> float:
    """A python float; a value check makes it finite (and > 0 / >= 0 as asked), and with
    `dtype` also finite (and > 0 if `positive`) once rounded to that dtype."""
    if type(v) is not float:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
        try:
            v = float(v)
        except OverflowError:  # an int past float64's range
            digits = str(v)
            raise ValueError(f"{name} must be finite, got {digits[:12]}... ({len(digits)} digits: past float64's "
                             f"range)") from None
    if not validating():
        return v
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if positive and v <= 0:
        raise ValueError(f"{name} must be > 0, got {v}")
    if nonnegative and v < 0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    if dtype is not None:
        in_dtype(name, v, dtype, positive=positive)
    return v


def float_dtype(name: str, dtype) -> torch.dtype:
    """float32 or float64, the dtypes of the compiled kernels."""
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {dtype!r}")
    return dtype


def device(v) -> torch.device:
    """torch.device(v) for a device the kernels run on here: cpu, or cuda[:N] with a GPU that torch sees
    (ValueError otherwise, also for unknown names)."""
    try:
        dev = torch.device(v)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {v!r}") from e
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {v!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(v)!r} but CUDA is not available to torch {torch.__version__} here (no CUDA "
                         f"GPU: torch.cuda.is_available() is False); use device='cpu'")
    return dev


def threads(n_threads) -> int:
    """The thread count of a compiled kernel call: an int in [1, MAX_COUNT], or 0 for None: torch's intra-op
    thread count, read by the kernel's glue at the call (torch.compile cannot trace torch.get_num_threads())."""
    return 0 if n_threads is None else integer("n_threads", n_threads, minimum=1)


def integer(name: str, v, *, minimum: int, maximum: int = MAX_COUNT) -> int:
    """An int in [minimum, maximum]; counts default to at most MAX_COUNT (a C int). (Under torch.jit.trace a size
    read off a traced tensor is a 0-d int64 tensor: taken as its value, as the trace fixes the shapes.)"""
    if isinstance(v, torch.Tensor) and v.dim() == 0 and v.dtype == torch.int64 and torch._C._get_tracing_state():
        v = int(v)
    if type(v) is not int and (isinstance(v, bool) or not isinstance(v, numbers.Integral)):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    if v > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {v}")
    return int(v)


def step_size(v, x: torch.Tensor, name: str = "step_size", *, halved: bool = False) -> torch.Tensor:
    """A positive finite float or (B,) tensor -> (B,) tensor in x's dtype and device, > 0 and finite
    after the conversion (1e-50 is 0 in float32; the values are checked when `validating()`). `halved`: the kernels
    take ε/2 too (a leapfrog's half step), which must not be subnormal either (ε >= 2 · the smallest normal)."""
    B = x.shape[0]
    if not isinstance(v, torch.Tensor):
        v = from_dlpack(name, v)
    if isinstance(v, torch.Tensor):
        if not v.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {v.dtype}")
        if v.device != x.device:
            raise ValueError(f"{name} must be on {x.device} like x, got {v.device}")
        if v.dim() == 0:
            v = v.expand(B)
        if tuple(v.shape) != (B,):
            raise ValueError(f"{name} must be a float or have shape ({B},) (one per chain), got {tuple(v.shape)}")
        v = resolved(v if v.dtype == x.dtype else v.to(x.dtype))
        if validating() and has_values(v) and not _all_positive_finite(level0(v), 2 if halved else 1):
            raise ValueError(f"{name} must be finite and > 0 for every chain (in {x.dtype}, not subnormal"
                             f"{', nor its half step' if halved else ''}: the compiled kernels flush subnormal values "
                             f"to 0)")
        return v
    v = finite_float(name, v, positive=True, dtype=x.dtype)
    if halved:
        in_dtype(f"{name} / 2 (the leapfrog's half step)", v / 2, x.dtype, positive=True)
    return torch.full((B,), v, dtype=x.dtype, device=x.device)


is_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
"""Whether a tensor is one of torch.func's wrappers (a transform's batched or grad-tracking tensor)."""
_unwrapped = torch._C._functorch.get_unwrapped
_functorch_level = torch._C._functorch.maybe_current_level


def addresses_readable() -> bool:
    """Whether an overlap check can read tensors' memory addresses: in eager, not while torch.compile traces nor under
    torch.func's transforms (their wrapped tensors have no memory of their own). Where it cannot, the op runs
    functional and its result is copied into `out` afterwards (`_library.Entry.graph`): nothing to check."""
    return not torch.compiler.is_compiling() and _functorch_level() is None


def level0(t: torch.Tensor) -> torch.Tensor:
    """t's tensor under all of torch.func's wrappers: the one regular autograd sees, and the one a value check reads
    (under vmap it holds every slice, whose values a batched tensor does not give out)."""
    while is_wrapped(t):
        t = _unwrapped(t)
    return t


def has_values(t: torch.Tensor) -> bool:
    """Whether t's contents can be read for a value check (a tensor on the 'meta' device has none: the PyTorch
    reference computes only its shapes, as torch's ops do)."""
    return t.device.type != "meta"


def _all_positive_finite(v: torch.Tensor, tinies: int = 1) -> bool:
    """0 < v < inf for every element of a non-empty v, none below `tinies` times the smallest normal (the compiled
    kernels flush subnormal values to 0; min and max propagate NaN); one host sync."""
    lo, hi = torch.stack(torch.aminmax(v)).tolist()
    return lo >= tinies * torch.finfo(v.dtype).tiny and hi < math.inf


def uniforms(name: str, u, x: torch.Tensor) -> torch.Tensor:
    return like(name, u, x, (x.shape[0],))


def _u64_tensor(name: str, v: torch.Tensor, device) -> torch.Tensor:
    """A seed / offset / chain offset given as a tensor: one int64 element (0-d or 1 element) on `device`,
    read inside the kernel (CUDA graphs replay it with its current value). An int64 holds a u64 in two's
    complement: v < 0 stands for v + 2**64, as in the op table's schema encoding."""
    if v.dtype != torch.int64:
        raise TypeError(f"{name} must be an int or an int64 tensor, got a {v.dtype} tensor")
    if v.numel() != 1:
        raise ValueError(f"{name} as a tensor must have one element, got shape {tuple(v.shape)}")
    if device is not None:
        device = torch.device(device)
        if v.device.type != device.type or (device.index is not None and v.device.index != device.index):
            raise ValueError(f"{name} must be on {device} like the op's tensors, got {v.device}")
    return v


def seed_offset(seed, offset, n_draws: int = 1, device=None):
    """(seed, offset) as ints in [0, 2**64) or one-element int64 tensors on `device` (two's complement, read in
    the kernel; their draws wrap modulo 2**64) (seed None: drawn from torch's generator); the int draws
    offset .. offset + n_draws − 1 must not wrap past 2**64."""
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    seed = _u64_tensor("seed", seed, device) if isinstance(seed, torch.Tensor) else integer(
        "seed", seed, minimum=0, maximum=U64_MAX)
    if isinstance(offset, torch.Tensor):
        return seed, _u64_tensor("offset", offset, device)
    offset = integer("offset", offset, minimum=0, maximum=U64_MAX)
    if offset + n_draws - 1 > U64_MAX:
        raise ValueError(f"offset + n_steps - 1 must be < 2**64 (move m draws offset + m), got offset={offset}, "
                         f"n_steps={n_draws}")
    return seed, offset


def whole_moves(x: torch.Tensor, step, n_steps, seed, offset, first_chain, *, leapfrog=False) -> tuple:
    """The constants of a run of n_steps whole moves from the (checked) state x, as the fused move kernels take
    them: (step sizes (B,) in x's dtype, n_steps >= 1, seed, offset, chain offset); move m draws Philox
    (seed, offset + m) for global chains first_chain + b, so offset + n_steps − 1 must not wrap. `leapfrog`: HMC
    moves, whose half steps ε/2 must be normal too."""
    eps = step_size(step, x, halved=leapfrog)
    n_steps = integer("n_steps", n_steps, minimum=1)
    seed, offset = seed_offset(seed, offset, n_steps, x.device)
    return eps, n_steps, seed, offset, chain_offset(first_chain, x.shape[0], x.device)


MH_CODES = {"score": 0, "energy": 1, "none": 2}  # the fused move kernels' `mh` argument


def mh_code(mh, allowed=MH_CODES, why: str = "") -> int:
    """The kernel code of the MH rule `mh` among `allowed` (a sub-dict of MH_CODES); `why` explains a missing rule."""
    if not isinstance(mh, str) or mh not in allowed:
        raise ValueError(f"mh must be one of {tuple(allowed)}{why}, got {mh!r}")
    return allowed[mh]


def damping(v) -> float:
    """The momentum damping γ of partial-refresh HMC (p ← γ p + √(1 − γ²) ξ), in [0, 1). Checked whatever the
    validation switch, like the counts (a Python scalar, once per call: no cost): γ = 1 never refreshes the momentum
    (deterministic, non-ergodic chains that show no NaN) and the fused CPU kernels reject it themselves."""
    v = finite_float("damping", v)
    if not 0.0 <= v < 1.0:  # also NaN
        raise ValueError(f"damping must be in [0.0, 1.0), got {v}")
    return v


def noise_or_seed(noise, seed, offset, x: torch.Tensor):
    """(noise tensor or None, seed, offset); a seed is drawn from torch's generator if neither is given."""
    if noise is not None:
        if seed is not None:
            raise ValueError("give either noise or seed, not both")
        return like("noise", noise, x), 0, seed_offset(0, offset, device=x.device)[1]
    return (None,) + seed_offset(seed, offset, device=x.device)


def chain_offset(v, B: int, device=None):
    """The global index of the first of B local chains: an int >= 0 with v + B <= 2**32
    (the chain index is one 32-bit word of the Philox counter), or a one-element int64 tensor on `device`
    (its value is checked on the CPU while `validating()`; on a GPU it is not read on the host)."""
    if isinstance(v, torch.Tensor):
        v = _u64_tensor("chain_offset", v, device)
        if validating() and v.device.type == "cpu":
            bad = [c for c in level0(v).reshape(-1).tolist() if not 0 <= c <= 2**32 - B]  # every vmapped slice's
            if bad:
                raise ValueError(f"chain_offset must be >= 0 with chain_offset + B <= 2**32, got chain_offset = "
                                 f"{bad[0]}, B = {B}")
        return v
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"chain_offset must be an int, got {type(v).__name__}")
    if v < 0 or v + B > 2**32:
        raise ValueError(f"chain_offset must be >= 0 with chain_offset + B <= 2**32, got chain_offset = {v}, B = {B}")
    return int(v)


def mixture(x: torch.Tensor, means, log_weights, variances, alpha, sigma2):
    """Validated mixture parameters (means (K, D), log_weights (K,), variances (K,) like x); their values
    are checked (`_mixture_values`) when `validating()`."""
    if not isinstance(means, torch.Tensor):
        means = as_tensor("means", means)
    if means.dim() != 2:
        raise ValueError(f"means must be a (K, D) tensor, got shape {tuple(means.shape)}")
    K = means.shape[0]
    if K == 0:
        raise ValueError("means must have K >= 1 components")
    if K > MAX_COUNT:
        raise ValueError(f"means has too many components: K = {K} > {MAX_COUNT}")
    means = like("means", means, x, (K, x.shape[1]))
    log_weights = like("log_weights", log_weights, x, (K,))
    variances = like("variances", variances, x, (K,))
    alpha = finite_float("alpha", alpha, dtype=x.dtype)
    sigma2 = finite_float("sigma2", sigma2, nonnegative=True, dtype=x.dtype)
    if validating() and has_values(means):
        _mixture_values(level0(means), level0(log_weights), level0(variances), alpha, sigma2)
    return means, log_weights, variances, alpha, sigma2


def _mixture_values(means, log_weights, variances, alpha, sigma2) -> None:
    """means finite, variances finite and > 0, s_k = alpha² v_k + sigma2 finite and > 0 in their dtype,
    log_weights < inf, not NaN and not all -inf; one host sync.

    From extremes (min and max propagate NaN): the log-weights are valid iff their maximum is
    finite, and s, nondecreasing in v_k (rounding is monotone), is finite and > 0 everywhere iff it
    is at the smallest and the largest variance. s is evaluated there on the host with torch's
    arithmetic for `alpha * alpha * variances + sigma2` (the scalar rounded to the dtype, then one
    rounding per operation): a float32 product or sum computed in double and rounded once to
    float32 is the correctly rounded float32 result."""
    m_lo, m_hi, v_lo, v_hi, lw_max = torch.stack(
        [*torch.aminmax(means), *torch.aminmax(variances), log_weights.max()]).tolist()
    dtype = means.dtype
    a2, s2 = _ieee.rounded(alpha * alpha, dtype), _ieee.rounded(sigma2, dtype)
    s_lo, s_hi = (_ieee.rounded(_ieee.rounded(a2 * v, dtype) + s2, dtype) for v in (v_lo, v_hi))
    if not (math.isfinite(m_lo) and math.isfinite(m_hi)):
        raise ValueError("means must be finite")
    if not (v_lo > 0 and v_hi < math.inf):
        raise ValueError("variances must be finite and > 0")
    if not (s_lo >= torch.finfo(dtype).tiny and s_hi < math.inf):
        raise ValueError(f"alpha**2 * variances + sigma2 must be finite and > 0 in {means.dtype} for every component, "
                         f"not subnormal (alpha={alpha}, sigma2={sigma2}): a degenerate mixture")
    if not math.isfinite(lw_max):
        raise ValueError("log_weights must be < inf, not NaN, and not all -inf")
