"""IEEE 754 results of the host-side scalar math of the ops and their references: √v, log v and a / b of Python
floats as the kernels compute them (NaN for √ or log of a negative or NaN, −inf for log 0, ±inf or NaN for a / 0)
instead of Python's ValueError ('math domain error') or ZeroDivisionError. With the value checks switched off
(`_checks.validating()`) a bad scalar then gives NaN/inf in the chains it reaches on every backend; equal to
`math.sqrt`, `math.log` and `/` wherever those return."""
from __future__ import annotations

import math


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
