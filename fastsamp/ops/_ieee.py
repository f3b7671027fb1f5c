"""IEEE 754 results of the host-side scalar math of the ops and their references: √v, log v and a / b of Python
floats as the kernels compute them (NaN for √ or log of a negative or NaN, −inf for log 0, ±inf or NaN for a / 0)
instead of Python's ValueError ('math domain error') or ZeroDivisionError, and a float rounded to float32 as a cast
rounds it (±inf past its range) instead of torch's or struct's overflow error. With the value checks switched off
(`_checks.validating()`) a bad scalar then gives NaN/inf in the chains it reaches on every backend; equal to
`math.sqrt`, `math.log` and `/` wherever those return."""
from __future__ import annotations

import math
import struct

import torch

_FLOAT32 = struct.Struct("f")


def sqrt(v: float) -> float:
    return math.sqrt(v) if v >= 0 else math.nan


def log(v: float) -> float:
    if v > 0:
        return math.log(v)
    return -math.inf if v == 0 else math.nan


def div(a: float, b: float) -> float:
    if b != 0:
        return a / b
    if a == 0 or math.isnan(a):
        return math.nan
    return math.copysign(math.inf, a) * math.copysign(1.0, b)


def rounded(v: float, dtype: torch.dtype) -> float:
    """The python float v rounded to `dtype` (float32: to nearest, ±inf past the largest value); anything but a python
    float (a SymFloat while torch.compile traces) unchanged."""
    if dtype == torch.float64 or type(v) is not float:
        return v
    try:
        return _FLOAT32.unpack(_FLOAT32.pack(v))[0]
    except OverflowError:  # finite, but rounds past float32's largest value
        return math.copysign(math.inf, v)
