"""The model protocol that every sampler takes, checked once at the start of a run.

A model is any object with

* ``dim``: the dimension D of a state;
* ``score(x, t) -> (B, D)``: ∇ log p_t(x) for states x (B, D) at a time t (a python float);
* ``schedule`` (annealing samplers only): a `fastsamp.schedules.VP` or `VE` giving α_t, σ_t²;

and optionally

* ``log_prob(x, t) -> (B,)``: log p_t(x) up to a constant (needed by ``mh="energy"``), with
  ``score_and_log_prob(x, t)`` where one evaluation gives both, and ``has_energy`` where
  whether log_prob exists is decided per instance (a product of factors);
* ``with_backend(backend) -> model``: the same model computing with that backend of the
  fastsamp ops (the samplers pass their ``backend=``);
* ``fused_corrector() -> callable | None``: a whole-move kernel for the corrector moves, or None
  (`GaussianMixture`: ``ops.gmm_mala`` / ``ops.gmm_hmc``; `ScoreMLP` and `Product`s of ScoreMLPs and a
  mixture: ``ops.mlp_mala`` / ``ops.mlp_hmc``); the samplers run it instead of the generic moves when
  ``fused=True``.

A plain ``nn.Module`` or callable ``f(x, t)`` is accepted too: it is wrapped as a
`fastsamp.models.ScoreModel` with the default VP schedule, its ``dim`` taken from a ``dim``
attribute or, for ``mcmc``, from the chains. A network whose floating parameters are not in the
chains' dtype is refused at the start, unless it sets ``casts_input = True`` (it converts its
input itself, as `ScoreMLP` does).
"""
from __future__ import annotations

import torch

from .ops._checks import autocast_promoted, resolved
from .profiling import phase
from .schedules import VE, VP

SCHEDULES = (VP, VE)


def model_name(model) -> str:
    return type(model).__name__


def has_energy(model) -> bool:
    """Whether `model` has a log-density: its `has_energy` flag, else whether it has a log_prob."""
    flag = getattr(model, "has_energy", None)
    return bool(flag) if flag is not None else callable(getattr(model, "log_prob", None))


def with_backend(model, backend: str):
    """The model computing with `backend` where it runs fastsamp ops (`with_backend` hook), else itself."""
    hook = getattr(model, "with_backend", None)
    return model if hook is None else hook(backend)


def fused_corrector(model):
    """The model's whole-move corrector kernel (`fused_corrector` hook), or None."""
    hook = getattr(model, "fused_corrector", None)
    return None if hook is None else hook()


def _not_a_model(model, what):
    return TypeError(f"model must be a score model (an object with dim, schedule and score(x, t), such as "
                     f"GaussianMixture, Product, ScoreModel, EnergyModel or ScoreMLP, or a callable / nn.Module "
                     f"f(x, t)), got {model_name(model)}: {what}")


def resolve_model(model, *, needs_schedule=True, dim=None, dtype=None):
    """The checked model a sampler runs: `model` itself when it follows the protocol, a plain callable
    or nn.Module wrapped as a ScoreModel (VP schedule; `dim` from its `dim` attribute or the given
    one). Raises TypeError naming the model and what it lacks, and, with `dtype`, when one of its
    networks holds parameters of another floating dtype (the run would fail inside a matmul)."""
    from .models import ScoreModel
    if not callable(getattr(model, "score", None)):
        if not callable(model):
            raise _not_a_model(model, "it has no score(x, t) method and is not callable")
        d = getattr(model, "dim", dim)
        if d is None:
            raise TypeError(f"model {model_name(model)} is a plain callable / nn.Module without a `dim`: set "
                            f"model.dim = D, or wrap it as fastsamp.models.ScoreModel(model, dim=D)")
        model = ScoreModel(model, d)
    if getattr(model, "dim", None) is None:
        raise _not_a_model(model, "it has no `dim` (the state dimension D)")
    if needs_schedule:
        sched = getattr(model, "schedule", None)
        if sched is None:
            raise _not_a_model(model, "it has no `schedule` (a fastsamp.schedules.VP or VE; annealing needs "
                                      "α_t and σ_t of the noise levels)")
        if not isinstance(sched, SCHEDULES):
            raise TypeError(f"model {model_name(model)}'s schedule must be a fastsamp.schedules.VP or VE, got "
                            f"{model_name(sched)}")
    if dtype is not None:
        check_network_dtype(model, dtype)
    return model


def _networks(model):
    """The nn.Modules a model evaluates as they are: a ScoreModel's or EnergyModel's function, else the
    model itself; not those that cast their input (`casts_input`, e.g. ScoreMLP)."""
    wrapped = [m for m in (getattr(model, "fn", None), getattr(model, "energy", None))
               if isinstance(m, torch.nn.Module)]
    for m in wrapped or ([model] if isinstance(model, torch.nn.Module) else []):
        if not getattr(m, "casts_input", False):
            yield m


def check_network_dtype(model, dtype):
    for net in _networks(model):
        dtypes = {p.dtype for p in net.parameters() if p.is_floating_point()}
        if dtypes and dtypes != {dtype}:
            got = ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
            want = str(dtype).removeprefix("torch.")
            raise TypeError(f"model {model_name(model)}: its network {model_name(net)} has {got} parameters but "
                            f"the chains are {want}: pass dtype=torch.{got.split(',')[0]} to the sampler, or "
                            f"convert the network (net.to(torch.{want}))")


class CountingModel:
    """The one call-counting wrapper: the model as the samplers call it. Counts the states evaluated
    (`calls`: rows of x over every score / log_prob call) and checks that each output is the tensor
    the protocol promises (score: x's shape, dtype and device; log_prob: (B,)), naming the model when
    it is not, and returns it contiguous (the memory the compiled kernels read; the output itself when it
    is); an exception raised inside the model gets a note naming it. It follows the protocol
    itself (t defaults to None for targets, which ignore it), so a sampler or a DiffusionSampler can
    run on it and the caller reads `calls` afterwards."""

    def __init__(self, model):
        self.model, self.calls = model, 0
        self.dim = model.dim

    @property
    def has_energy(self):
        return has_energy(self.model)

    @property
    def schedule(self):
        return getattr(self.model, "schedule", None)

    def _call(self, method, x, t):
        self.calls += x.shape[0]
        try:
            with phase("score_model"):
                return getattr(self.model, method)(x, t)
        except Exception as e:
            e.add_note(f"(raised inside model {model_name(self.model)}.{method}(x, t) with x of shape "
                       f"{tuple(x.shape)}, {x.dtype} on {x.device}, t = {t})")
            raise

    def _check(self, method, out, x, shape):
        """out, resolved and contiguous, when it is a tensor of `shape` (a tuple or torch.Size) with x's dtype
        and device (under torch.autocast a half-precision out cast up to x's dtype: `autocast_promoted`)."""
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"model {model_name(self.model)}.{method}(x, t) returned {model_name(out)}, expected "
                            f"a tensor of shape {tuple(shape)}")
        if out.dtype != x.dtype:
            out = autocast_promoted(out, x)
        if out.shape != shape or out.dtype != x.dtype or out.device != x.device:
            raise TypeError(f"model {model_name(self.model)}.{method}(x, t) returned a tensor of shape "
                            f"{tuple(out.shape)}, {out.dtype} on {out.device}; expected shape {tuple(shape)}, "
                            f"{x.dtype} on {x.device} like x (the model's output, not the sampler's input, is wrong)")
        return resolved(out)

    def score(self, x, t=None):
        return self._check("score", self._call("score", x, t), x, x.shape)

    def log_prob(self, x, t=None):
        return self._check("log_prob", self._call("log_prob", x, t), x, (x.shape[0],))

    def score_and_log_prob(self, x, t=None):
        if hasattr(self.model, "score_and_log_prob"):
            s, logp = self._call("score_and_log_prob", x, t)
        else:
            s = self._call("score", x, t)
            logp = self.model.log_prob(x, t)
        return self._check("score", s, x, x.shape), self._check("log_prob", logp, x, (x.shape[0],))
