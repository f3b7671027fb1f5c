"""HMC pieces for score-only models: leapfrog with the trapezoid of the score
accumulated along the leapfrog path (no extra score calls), the HMC accept,
and the partial momentum refresh of U-HMC.

A trajectory of L steps from (x₀, p₀, s₀):
    x₁, p½ = leapfrog(x₀, p₀, s₀, ε);  s₁ = score(x₁)
    p₁, Δ = leapfrog_finish(x₀, x₁, p½, s₀, s₁, ε, 0);  ... repeat L times ...
    hmc_accept(x₀, x_L, s₀, s_L, p₀, p_L, Δ, u)
"""
from __future__ import annotations

from . import _checks, _dispatch
from .mh import mh_uniform


def leapfrog(x, p, score, step_size, *, backend="auto"):
    """Half kick and drift: p½ = p + (ε/2) s(x), x_next = x + ε p½. Returns (x_next, p½)."""
    x = _checks.state("x", x)
    p = _checks.like("p", p, x)
    score = _checks.like("score", score, x)
    eps = _checks.step_size(step_size, x, halved=True)
    return _dispatch.route(backend, "leapfrog", x, p, score, eps)(x, p, score, eps)


def leapfrog_finish(x, x_next, p_half, score, score_next, step_size, delta_logp, *, backend="auto"):
    """Second half kick p_next = p½ + (ε/2) s(x_next) and one trapezoid segment
    ΔlogP += ½ (s(x) + s(x_next))·(x_next − x). Returns (p_next, ΔlogP)."""
    x = _checks.state("x", x)
    x_next = _checks.like("x_next", x_next, x)
    p_half = _checks.like("p_half", p_half, x)
    score = _checks.like("score", score, x)
    score_next = _checks.like("score_next", score_next, x)
    eps = _checks.step_size(step_size, x, halved=True)
    delta_logp = _checks.like("delta_logp", delta_logp, x, (x.shape[0],))
    fn = _dispatch.route(backend, "leapfrog_finish", x, x_next, p_half, score, score_next, eps, delta_logp)
    return fn(x, x_next, p_half, score, score_next, eps, delta_logp)


def hmc_accept(x, x_prop, score, score_prop, p, p_prop, delta_logp, u=None, *, seed=None, offset=0, chain_offset=0,
               backend="auto"):
    """log α = ΔlogP − ½|p'|² + ½|p|²; accept iff log u < log α. u: the (B,) uniforms, or drawn inside
    the kernel from (`seed`, `offset`, `chain_offset`) as `ops.uniform` draws them.
    Returns (x_new, score_new, accepted, log_alpha)."""
    x = _checks.state("x", x)
    x_prop = _checks.like("x_prop", x_prop, x)
    score = _checks.like("score", score, x)
    score_prop = _checks.like("score_prop", score_prop, x)
    p = _checks.like("p", p, x)
    p_prop = _checks.like("p_prop", p_prop, x)
    delta_logp = _checks.like("delta_logp", delta_logp, x, (x.shape[0],))
    u, seed, offset, chain_offset = mh_uniform(u, seed, offset, chain_offset, x)
    fn = _dispatch.route(backend, "hmc_accept", x, x_prop, score, score_prop, p, p_prop, delta_logp, u)
    return fn(x, x_prop, score, score_prop, p, p_prop, delta_logp, u, seed, offset, chain_offset)


def momentum_refresh(p, damping=0.0, *, noise=None, seed=None, offset=0, chain_offset=0, backend="auto"):
    """p' = damping·p + √(1 − damping²) ξ: damping 0 is a full refresh (HMC), 0 < damping < 1
    the partial refresh of underdamped (U-)HMC."""
    p = _checks.state("p", p)
    damping = _checks.damping(damping)
    noise, seed, offset = _checks.noise_or_seed(noise, seed, offset, p)
    chain_offset = _checks.chain_offset(chain_offset, p.shape[0], p.device)
    fn = _dispatch.route(backend, "momentum_refresh", p, noise)
    return fn(p, damping, noise, seed, offset, chain_offset)
