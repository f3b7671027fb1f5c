"""What the models of `fastsamp.models` and `fastsamp.mlp_models` share: a call with grad mode off (a model's
score or log-density), the value and gradient of a per-row function (an energy's score) and the plain-value form
of a schedule (saving)."""
from __future__ import annotations

import torch

from .schedules import VE, VP

_set_grad_enabled = torch._C._set_grad_enabled  # what torch.no_grad() calls on entry and exit


def no_grad_call(fn, *args):
    """fn(*args) with grad mode off: torch.no_grad()'s effect, set directly (its context object costs about as
    much as a small network's call); grad mode is restored on return and on an exception."""
    was = torch.is_grad_enabled()
    _set_grad_enabled(False)
    try:
        return fn(*args)
    finally:
        _set_grad_enabled(was)


def value_and_grad(fn, x):
    """(f(x), ∇f(x)) for f with one value per row, (B,), by one backward pass of Σ_b f(x_b); works
    under torch.no_grad and torch.inference_mode (x is copied out of inference mode). A constant f
    (no graph to x) has gradient 0."""
    with torch.inference_mode(False), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        f = fn(xg)
        if not f.requires_grad:
            return f.detach(), torch.zeros_like(xg)
        (g,) = torch.autograd.grad(f.sum(), xg)
    return f.detach(), g.detach()


SCHEDULE_KINDS = {"VP": VP, "VE": VE}


def schedule_config(schedule) -> dict:
    """A VP/VE schedule as plain values."""
    kind = type(schedule).__name__
    if SCHEDULE_KINDS.get(kind) is not type(schedule):
        raise TypeError(f"only VP and VE schedules can be saved, got {kind}")
    return {"kind": kind, **{f: getattr(schedule, f) for f in schedule.__dataclass_fields__}}


def schedule_from_config(config):
    config = dict(config)
    return SCHEDULE_KINDS[config.pop("kind")](**config)
