"""MALA proposals and their MH acceptance: score-based (trapezoidal line integral) or exact-energy."""
from __future__ import annotations

import torch

from . import _checks, _dispatch
from .sde import _run_into, written


def mala_propose(x, score, step_size, *, noise=None, seed=None, offset=0, chain_offset=0, out=None, backend="auto"):
    """x' = x + ε score + √(2ε) ξ, with ε a float or one step size per chain (B,); ξ drawn for the global
    chains chain_offset + b. `out` (B, D) receives x' (e.g. the first B rows of a batch that also holds the
    trapezoid points, `line_points(..., out=)`: one score call, no concatenation)."""
    x = _checks.state("x", x)
    score = _checks.like("score", score, x)
    eps = _checks.step_size(step_size, x)
    noise, seed, offset = _checks.noise_or_seed(noise, seed, offset, x)
    chain_offset = _checks.chain_offset(chain_offset, x.shape[0], x.device)
    out = _checks.output(out, x, x=x, score=score, step_size=eps, noise=noise)
    fn = _dispatch.route(backend, "mala_propose", x, score, eps, noise)
    return _run_into(fn, out, x, score, eps, noise, seed, offset, chain_offset)


def line_points(x, x_prop, n, *, out=None, backend="auto"):
    """The n − 1 interior points x + (i/n)(x' − x), i = 1..n−1, as one (n−1, B, D) tensor,
    so that any score model scores them in one batched call. `out` (n−1, B, D) receives them."""
    x = _checks.state("x", x)
    x_prop = _checks.like("x_prop", x_prop, x)
    n = line_points_count(n, x)
    out = points_out(out, x, x_prop, n)
    return _run_into(_dispatch.route(backend, "line_points", x, x_prop), out, x, x_prop, n)


def points_out(out, x, x_prop, n):
    """`line_points`' check of `out`: None, or a contiguous (n − 1, B, D) tensor like x that overlaps neither x
    nor x_prop (not even exactly: plane 1 would lie past the input; the overlap is not checked where addresses cannot
    be read: `_checks.addresses_readable`)."""
    out = _checks.output(out, x.expand(n - 1, *x.shape))
    if out is None or not _checks.addresses_readable():
        return out
    for name, t in (("x", x), ("x_prop", x_prop)):
        if _checks.overlap(out, t) != "none":
            raise ValueError(f"out overlaps {name}: the points cannot be written over their inputs")
    return out


def line_points_count(n, x):
    """`line_points`' check of n for the states x (B, D): an int >= 1 whose (n − 1, B, D) points can be indexed."""
    n = _checks.integer("n", n, minimum=1)
    if (n - 1) * x.numel() >= 2**62:
        raise ValueError(f"n is too large: the (n-1, B, D) = ({n - 1}, {x.shape[0]}, {x.shape[1]}) points")
    return n


def mh_uniform(u, seed, offset, chain_offset, x):
    """(u or None, seed, offset, chain_offset) of an MH accept: exactly one of the uniforms `u` (B,) and
    `seed` (then the kernel draws u = ops.uniform(seed, offset, B, chain_offset=chain_offset))."""
    if (u is None) == (seed is None):
        raise ValueError("give exactly one of u (the (B,) uniforms) and seed (u drawn in the kernel from "
                         f"(seed, offset, chain_offset)), got {'both' if u is not None else 'neither'}")
    if u is not None:  # offset and chain_offset unused, but checked (when not the defaults) as with noise given
        if not (type(offset) is int and offset == 0 and type(chain_offset) is int and chain_offset == 0):
            _checks.seed_offset(0, offset, device=x.device)
            _checks.chain_offset(chain_offset, x.shape[0], x.device)
        return _checks.uniforms("u", u, x), 0, 0, 0
    return ((None,) + _checks.seed_offset(seed, offset, device=x.device)
            + (_checks.chain_offset(chain_offset, x.shape[0], x.device),))


def score_mh_accept(x, x_prop, score, score_prop, step_size, u=None, *, interior_scores=None, seed=None, offset=0,
                    chain_offset=0, x_out=None, score_out=None, backend="auto"):
    """MH test of a MALA move for a model known only through its score.

    ΔlogP ≈ (1/n)[½ s(x)·d + Σ_i s(x + (i/n)d)·d + ½ s(x')·d] (trapezoid, d = x' − x,
    n = 1 + number of interior score sets), log α = ΔlogP + log q(x|x') − log q(x'|x)
    with log q(x'|x) = −|x' − x − ε s(x)|²/(4ε); accept iff log u < log α (NaN rejects).
    score_prop: s(x') (B, D), with the interior score sets as `interior_scores` (n−1, B, D) (or none: n = 1);
    or, interior_scores None, the stack (n, B, D) [s(x'), s(interior_1), …], e.g. a model's output on the batch
    [x'; line_points(x, x', n)] viewed as (n, B, D) (read in place: no slicing or copy).
    u: the (B,) uniforms, or (`seed`, `offset`, `chain_offset`): drawn inside the kernel, the same
    bits as `ops.uniform(seed, offset, B, chain_offset=chain_offset)` (no separate RNG op).
    `x_out`, `score_out` (B, D) receive x_new and score_new (e.g. two buffers used in turn across moves); they may
    overlap no input nor each other.

    Returns (x_new, score_new, accepted (B,) bool, log_alpha (B,)).
    """
    x = _checks.state("x", x)
    x_prop = _checks.like("x_prop", x_prop, x)
    score = _checks.like("score", score, x)
    score_prop = score_prop_rows(score_prop, x, interior_scores is not None)
    eps = _checks.step_size(step_size, x)
    u, seed, offset, chain_offset = mh_uniform(u, seed, offset, chain_offset, x)
    if interior_scores is not None:
        interior_scores = _checks.from_dlpack("interior_scores", interior_scores)
        if not isinstance(interior_scores, torch.Tensor) or interior_scores.dim() != 3:
            raise ValueError("interior_scores must be a (n-1, B, D) tensor")
        _checks.integer("interior_scores.shape[0]", interior_scores.shape[0], minimum=0)
        interior_scores = _checks.like("interior_scores", interior_scores, x,
                                       (interior_scores.shape[0],) + tuple(x.shape))
        if interior_scores.shape[0] == 0:
            interior_scores = None
    outs = x_out is not None or score_out is not None
    if outs:
        inputs = {"x": x, "x_prop": x_prop, "score": score, "score_prop": score_prop, "step_size": eps, "u": u,
                  "interior_scores": interior_scores}
        x_out = accept_out("x_out", x_out, x, **inputs)
        score_out = accept_out("score_out", score_out, x, x_out=x_out, **inputs)
    fn = _dispatch.route(backend, "score_mh_accept", x, x_prop, score, score_prop, eps, u, interior_scores)
    result = fn(x, x_prop, score, score_prop, eps, u, interior_scores, seed, offset, chain_offset, x_out=x_out,
                score_out=score_out)
    if outs:
        written(fn, x_out, score_out)
    return result


def accept_out(name, out, x, /, **inputs):
    """`score_mh_accept`'s check of x_out / score_out: None, or a contiguous tensor like x (no neg bit; with grad
    mode on, not requiring grad: the kernels write it without autograd) sharing no memory with `inputs` (None
    allowed; the neg bit is not checked under tracing, which cannot read it, nor the overlap where addresses cannot be
    read, `_checks.addresses_readable`: the op is functional there and its result copied in afterwards)."""
    if out is None:
        return None
    out = _checks.writable(name, out)
    if not out.is_contiguous() or (not torch.compiler.is_compiling() and (out.is_neg() or out.is_conj())):
        raise ValueError(f"{name} must be a contiguous tensor without a neg / conj bit")
    _checks.like(name, out, x)
    if torch.is_grad_enabled() and out.requires_grad:
        raise ValueError(f"{name} requires grad: in-place writes are not differentiable; pass a tensor that does not "
                         f"require grad, or run under torch.no_grad()")
    if not _checks.addresses_readable():
        return out
    for other, t in inputs.items():
        if _checks.overlap(out, t) != "none":
            raise ValueError(f"{name} overlaps {other}: the accept's outputs cannot be written over its inputs or "
                             f"each other")
    return out


def score_prop_rows(score_prop, x, with_interior: bool):
    """`score_mh_accept`'s check of score_prop: like x (B, D), or, without interior scores given apart
    (`with_interior` False), an (n, B, D) stack [s(x'), the n − 1 interior score sets] (n >= 1), returned as the
    backend's (n·B, D) rows (a view of the contiguous stack)."""
    score_prop = _checks.from_dlpack("score_prop", score_prop)
    if not isinstance(score_prop, torch.Tensor) or score_prop.dim() != 3:
        return _checks.like("score_prop", score_prop, x)
    if with_interior:
        raise ValueError("score_prop is an (n, B, D) stack and interior_scores is given: give the interior score "
                         "sets once, as score_prop (B, D) with interior_scores (n-1, B, D), or as the stack alone")
    n = _checks.integer("score_prop.shape[0]", score_prop.shape[0], minimum=1)
    B, D = x.shape
    return _checks.like("score_prop", score_prop, x, (n, B, D)).view(n * B, D)


def energy_mh_accept(x, x_prop, score, score_prop, logp, logp_prop, step_size, u=None, *, seed=None, offset=0,
                     chain_offset=0, backend="auto"):
    """MH test of a MALA move for a model with a log-density (exact energy difference):
    log α = log p(x') − log p(x) + log q(x|x') − log q(x'|x), q as in `score_mh_accept`; accept iff
    log u < log α (NaN rejects). u or (seed, offset, chain_offset) as in `score_mh_accept`.

    Returns (x_new, score_new, logp_new, accepted (B,) bool, log_alpha (B,)).
    Kernels: the reference, C++ and Triton (on CUDA devices "auto" runs the Triton one).
    """
    x = _checks.state("x", x)
    x_prop = _checks.like("x_prop", x_prop, x)
    score = _checks.like("score", score, x)
    score_prop = _checks.like("score_prop", score_prop, x)
    logp = _checks.like("logp", logp, x, (x.shape[0],))
    logp_prop = _checks.like("logp_prop", logp_prop, x, (x.shape[0],))
    eps = _checks.step_size(step_size, x)
    u, seed, offset, chain_offset = mh_uniform(u, seed, offset, chain_offset, x)
    fn = _dispatch.route(backend, "energy_mh_accept", x, x_prop, score, score_prop, logp, logp_prop, eps, u)
    return fn(x, x_prop, score, score_prop, logp, logp_prop, eps, u, seed, offset, chain_offset)
