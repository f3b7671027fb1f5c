"""Gaussian-mixture ops: the analytic score (exact diffusion marginals) and the
fused whole-move MALA and HMC kernels."""
from __future__ import annotations

from . import _checks, _dispatch


def gmm_score(x, means, log_weights, variances, *, alpha=1.0, sigma2=0.0, backend="auto"):
    """Score and log-density of p(x) = Σ_k π_k N(x; α μ_k, (α² v_k + σ²) I).

    `log_weights` (K,) need not be normalised: π = softmax(log_weights).
    With ℓ_k = log π_k + log N(x; α μ_k, s_k I), s_k = α² v_k + σ²:
    logp = logsumexp_k ℓ_k and score = Σ_k softmax(ℓ)_k (α μ_k − x)/s_k.
    The diffusion marginal at time t of the data mixture is alpha=α_t, sigma2=σ_t².

    Returns (score (B, D), logp (B,)).
    """
    x = _checks.state("x", x)
    means, log_weights, variances, alpha, sigma2 = _checks.mixture(x, means, log_weights, variances,
                                                                   alpha, sigma2)
    fn = _dispatch.route(backend, "gmm_score", x, means, log_weights, variances)
    return fn(x, means, log_weights, variances, alpha, sigma2)


def _whole_move_args(x, means, log_weights, variances, alpha, sigma2, step_size, n_steps, seed, offset, chain_offset,
                     mh, leapfrog=False):
    """Validated arguments shared by the whole-move mixture kernels; mh as its integer code."""
    x = _checks.state("x", x)
    means, log_weights, variances, alpha, sigma2 = _checks.mixture(x, means, log_weights, variances,
                                                                   alpha, sigma2)
    eps, n_steps, seed, offset, chain_offset = _checks.whole_moves(x, step_size, n_steps, seed, offset, chain_offset,
                                                                   leapfrog=leapfrog)
    mh = _checks.mh_code(mh)
    return x, means, log_weights, variances, alpha, sigma2, eps, n_steps, seed, offset, chain_offset, mh


def gmm_mala(x, means, log_weights, variances, *, step_size, n_steps, n_trapezoid=1, alpha=1.0,
             sigma2=0.0, seed=0, offset=0, chain_offset=0, mh="score", backend="auto"):
    """`n_steps` MALA moves on the mixture of `gmm_score`, fused in one kernel.

    Move m draws ξ and u from Philox (seed, offset + m), chain b as the global chain chain_offset + b:
    x' = x + ε s(x) + √(2ε) ξ,
    log α = ΔlogP + log q(x|x') − log q(x'|x), accept iff log u < log α, where ΔlogP is
    the trapezoidal line integral of the score with `n_trapezoid` sub-intervals
    (mh="score"), the exact log-density difference (mh="energy"), or no MH at all
    (mh="none": the unadjusted Langevin algorithm). The chain state and its score stay
    in registers across moves: a move costs `n_trapezoid` score evaluations.

    Returns (x after n_steps moves (B, D), per-chain acceptance rate (B,)).
    """
    x, means, log_weights, variances, alpha, sigma2, eps, n_steps, seed, offset, chain_offset, mode = _whole_move_args(
        x, means, log_weights, variances, alpha, sigma2, step_size, n_steps, seed, offset, chain_offset, mh)
    n_trapezoid = _checks.integer("n_trapezoid", n_trapezoid, minimum=1)
    fn = _dispatch.route(backend, "gmm_mala", x, means, log_weights, variances, eps)
    return fn(x, means, log_weights, variances, eps, n_steps, n_trapezoid, alpha, sigma2, seed, offset, chain_offset,
              mode)


def gmm_hmc(x, means, log_weights, variances, *, step_size, n_steps, n_leapfrog=1, alpha=1.0,
            sigma2=0.0, seed=0, offset=0, chain_offset=0, mh="score", damping=0.0, backend="auto"):
    """`n_steps` HMC moves on the mixture of `gmm_score`, fused in one kernel.

    The momentum p starts at 0 and is carried across moves. Move m draws ξ and u from
    Philox (seed, offset + m), refreshes p0 = damping·p + √(1 − damping²) ξ (damping 0:
    plain HMC, 0 < damping < 1: the partial refresh of underdamped HMC), then runs
    `n_leapfrog` leapfrog steps p½ = p + (ε/2) s, x' = x + ε p½, p = p½ + (ε/2) s(x')
    from (x, p0). log α = ΔlogP − ½|p_L|² + ½|p0|², accept iff log u < log α, where ΔlogP
    is the trapezoid of the score along the leapfrog path, Σ ½ (s + s')·(x' − x)
    (mh="score", no extra score calls), the exact log-density difference (mh="energy"),
    or no MH at all (mh="none"). On acceptance x and p take the proposal values; on
    rejection x stays and the momentum flips, p = −p0 (which keeps partial refresh exact).
    A move costs `n_leapfrog` score evaluations.

    Returns (x after n_steps moves (B, D), per-chain acceptance rate (B,)).
    """
    x, means, log_weights, variances, alpha, sigma2, eps, n_steps, seed, offset, chain_offset, mode = _whole_move_args(
        x, means, log_weights, variances, alpha, sigma2, step_size, n_steps, seed, offset, chain_offset, mh, True)
    n_leapfrog = _checks.integer("n_leapfrog", n_leapfrog, minimum=1)
    damping = _checks.damping(damping)
    fn = _dispatch.route(backend, "gmm_hmc", x, means, log_weights, variances, eps)
    return fn(x, means, log_weights, variances, eps, n_steps, n_leapfrog, alpha, sigma2, seed, offset, chain_offset,
              mode, damping)
