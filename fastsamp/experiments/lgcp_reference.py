"""A reference log Z for the LGCP target (`fastsamp.targets.LGCP`, log_Z = None): the Laplace approximation at
the MAP and annealed importance sampling (AIS) from that Laplace Gaussian, in plain torch float64; and saved
models against it (`model_report`, `benchmarks/offpolicy_checks.py lgcp`).

Target: the LGCP's own log R and ∇ log R (`LGCP.log_prob`, `LGCP.score`, on float64 states: its parameters are
float64, cast to the input's dtype) and −∇² log R(x) = H(x) = P + diag(a e^x) (`LGCP.hessian`; P = K⁻¹ the prior
precision, a the cell area; positive definite: log-concave).
Laplace: Newton x ← x + H(x)⁻¹ ∇ log R(x) to the MAP x*, H = H(x*) = L Lᵀ (Cholesky),
    log Z_Laplace = log R(x*) + (D/2) log 2π − ½ log det H.
AIS: q = N(x*, H⁻¹), whitened x = x* + L⁻ᵀ z (z ~ N(0, I) under q), f(x) = log R(x) − log q(x), geometric path
    π_β ∝ q^{1−β} R^β = q e^{βf},  0 = β_0 < β_1 < … < β_K = 1 (linear);
each chain: z_0 ~ N(0, I), log w = Σ_k (β_k − β_{k−1}) f(x_{k−1}), then at β_k one (or more) exact MALA steps in z
(log π_β(z) = −½|z|² + β f(z) + const, ∇_z = −z + β (L⁻¹ ∇ log R(x) + z); a fixed step size, since π_β is close to
N(0, I) in z). log Ẑ = log mean_i e^{log w_i}; its standard error by the delta method,
    se ≈ sd(w) / (√N mean(w)) = √((N/ESS − 1)/N),  ESS = (Σ w)² / Σ w²,
and by a bootstrap over the chains. The final states with the self-normalised weights w_i/Σw give the posterior's
moments (mean, sd per coordinate).
"""
from __future__ import annotations

import json
import math
import os
import statistics

import torch

from fastsamp.experiments.sampler_checks import compare_grads, draws, fused_and_eager, quantiles
from fastsamp.metrics import log_z_estimates

_LOG_2PI = math.log(2 * math.pi)


def laplace(target, tol=1e-10, max_iterations=100):
    """Newton from x = μ₀ to the MAP of an LGCP target: {map, chol (of H), log_Z, log_r_map, newton_iterations};
    raises if the step is not below `tol` after `max_iterations` (no line search: log R is concave, Newton converges
    from μ₀ here)."""
    x = torch.full((target.dim,), target.mu0, dtype=torch.float64)
    it, size = 0, math.inf
    while size >= tol and it < max_iterations:
        step = torch.linalg.solve(target.hessian(x), target.score(x))
        x, size, it = x + step, float(step.abs().max()), it + 1
    if not size < tol:
        raise RuntimeError(f"Newton did not converge: step {size:.3g} after {it} iterations")
    chol = torch.linalg.cholesky(target.hessian(x))
    log_r = float(target.log_prob(x))
    half_log_det = float(torch.log(torch.diagonal(chol)).sum())
    return {"map": x, "chol": chol, "log_r_map": log_r, "newton_iterations": it,
            "log_Z": log_r + 0.5 * target.dim * _LOG_2PI - half_log_det}


def log_mean_exp_se(log_w, n_boot=1000, seed=0):
    """log mean e^{log w} and the ESS (`fastsamp.metrics.log_z_estimates`: non-finite weights count as 0), with its
    delta-method and (n_boot > 0) bootstrap standard errors; `ess` is a count here, not a fraction."""
    m = log_z_estimates(log_w)
    N, est, ess = m["n"], m["log_Z"], m["ess"] * m["n"]
    boot = None
    if n_boot:
        idx = torch.randint(N, (n_boot, N), generator=torch.Generator().manual_seed(seed))
        boot = float((torch.logsumexp(log_w[idx], 1) - math.log(N)).std())
    return {"log_Z": est, "se_delta": math.sqrt(max(N / ess - 1.0, 0.0) / N), "se_bootstrap": boot, "ess": ess,
            "n": N}


def ais(target, lap, n_chains=256, n_temps=200, step_size=0.1, n_mala=1, seed=0):
    """AIS from N(x*, H⁻¹) to an LGCP target's R (module docstring): {log_w (N,), x (N, D) final states,
    acceptance, f0 (N,): log R − log q_L at the z_0 ~ q_L, the terms of the Laplace Gaussian's ELBO}."""
    g = torch.Generator().manual_seed(seed)
    chol, m = lap["chol"], lap["map"]
    inv_lt = torch.linalg.solve_triangular(chol, torch.eye(target.dim, dtype=torch.float64), upper=False).T  # L⁻ᵀ
    log_q_const = -0.5 * target.dim * _LOG_2PI + float(torch.log(torch.diagonal(chol)).sum())

    def evaluate(z):
        """f(x) and ∇_z f of whitened states z (B, D): x = x* + L⁻ᵀ z, ∇_z f = L⁻¹ ∇ log R(x) + z."""
        x = m + z @ inv_lt.T
        return target.log_prob(x) - (log_q_const - 0.5 * (z * z).sum(1)), target.score(x) @ inv_lt + z

    z = torch.randn(n_chains, target.dim, generator=g, dtype=torch.float64)
    f, grad_f = evaluate(z)
    f0, log_w = f, torch.zeros(n_chains, dtype=torch.float64)
    betas = torch.linspace(0.0, 1.0, n_temps + 1, dtype=torch.float64).tolist()
    accepted, root = 0.0, math.sqrt(2 * step_size)
    for b_prev, beta in zip(betas[:-1], betas[1:]):
        log_w += (beta - b_prev) * f
        for _ in range(n_mala):
            grad = beta * grad_f - z
            z_new = z + step_size * grad + root * torch.randn(z.shape, generator=g, dtype=torch.float64)
            f_new, grad_f_new = evaluate(z_new)
            grad_new = beta * grad_f_new - z_new
            log_alpha = (beta * (f_new - f) - 0.5 * ((z_new * z_new).sum(1) - (z * z).sum(1))
                         - ((z - z_new - step_size * grad_new) ** 2).sum(1) / (4 * step_size)
                         + ((z_new - z - step_size * grad) ** 2).sum(1) / (4 * step_size))
            acc = torch.log(torch.rand(n_chains, generator=g, dtype=torch.float64)) < log_alpha
            z = torch.where(acc[:, None], z_new, z)
            f = torch.where(acc, f_new, f)
            grad_f = torch.where(acc[:, None], grad_f_new, grad_f)
            accepted += float(acc.double().mean())
    return {"log_w": log_w, "x": m + z @ inv_lt.T, "acceptance": accepted / (n_temps * n_mala), "f0": f0}


def weighted_moments(x, log_w):
    """Self-normalised mean and sd per coordinate of states x (N, D) with log weights (N,)."""
    w = torch.softmax(log_w, 0)[:, None]
    mean = (w * x).sum(0)
    return mean, ((w * (x - mean) ** 2).sum(0)).sqrt()


def reference(target, n_chains=256, temps=(200, 800), seeds=(0, 1), step_size=0.1, n_mala=1):
    """Laplace log Z and AIS (every K in `temps` × every seed) of an LGCP target: a JSON-ready dict, the Laplace
    fit and the posterior's moments {"ais": the weighted moments of the largest K's particles, seeds pooled,
    "laplace": (x*, sd of N(x*, H⁻¹))}. `pooled`: each K's seeds pooled; `laplace_elbo`: the mean of
    log R − log q_L over the z_0 of every seed (draws of the Laplace Gaussian q_L), with its se;
    `ais_sd_over_laplace_sd` (quantiles) and `ais_mean_minus_map_rms` compare the two moments."""
    lap = laplace(target)
    runs, by_k, f0 = [], {}, []
    for K in temps:
        for s in seeds:
            r = ais(target, lap, n_chains, K, step_size, n_mala, seed=s)
            runs.append({"n_temps": K, "seed": s, "acceptance": r["acceptance"], **log_mean_exp_se(r["log_w"]),
                         "log_w_sd": float(r["log_w"].std())})
            by_k.setdefault(K, []).append((r["x"], r["log_w"]))
            f0 += [r["f0"]] if K == temps[0] else []  # z_0 depends on the seed only
    pooled_k = [{"n_temps": K, **log_mean_exp_se(torch.cat([lw for _, lw in p]))} for K, p in by_k.items()]
    pooled, f0 = next(p for p in pooled_k if p["n_temps"] == max(temps)), torch.cat(f0)
    x, log_w = (torch.cat(t) for t in zip(*by_k[max(temps)]))
    out = {"laplace_log_Z": lap["log_Z"], "log_r_map": lap["log_r_map"], "newton_iterations": lap["newton_iterations"],
           "dim": target.dim, "n_chains": n_chains, "step_size": step_size, "mala_steps_per_temperature": n_mala,
           "schedule": "linear beta", "runs": runs, "reference_log_Z": pooled["log_Z"],
           "reference_se": max(pooled["se_delta"], pooled["se_bootstrap"]), "reference_ess": pooled["ess"],
           "reference_from": f"AIS, K = {max(temps)}, seeds {list(seeds)} pooled ({log_w.shape[0]} chains)",
           "pooled": pooled_k, "laplace_elbo": float(f0.mean()), "laplace_elbo_se": float(f0.std()) / f0.numel() ** 0.5}
    sd_laplace = torch.cholesky_inverse(lap["chol"]).diagonal().sqrt()
    moments = {"ais": weighted_moments(x, log_w), "laplace": (lap["map"], sd_laplace)}
    out["ais_sd_over_laplace_sd"] = quantiles(moments["ais"][1] / sd_laplace)
    out["ais_mean_minus_map_rms"] = float(((moments["ais"][0] - lap["map"]) ** 2).mean().sqrt())
    return out, lap, moments


def kl_lower_bound(x, target, lap, log_Z):
    """A lower bound on KL(q ‖ π) of a sampler q from its samples x (N, D, float64), with π = R/Z, Z = e^{log_Z}.
    In u = Lᵀ(x − x*) the Laplace Gaussian q_L is N(0, I), a product, so KL(q ‖ q_L) ≥ Σ_i KL(q_i ‖ N(0, 1)) ≥
    Σ_i ½(v_i + m_i² − 1 − log v_i) (marginals' mean m_i, variance v_i; a Gaussian has the most entropy for its
    variance), and KL(q ‖ π) = KL(q ‖ q_L) − E_q[log R − log q_L] + log Z. log Z − ELBO (a path KL) is ≥ KL(q ‖ π).
    A statistical estimate of the bound: the mean term's Monte Carlo se is std/√N; the plug-in m_i, v_i bias the
    marginal part by ≈ +Σ_i v_i / 2N."""
    u = (x - lap["map"]) @ lap["chol"]
    m, v = u.mean(0), u.var(0)
    log_q_l = -0.5 * (u * u).sum(1) - 0.5 * target.dim * _LOG_2PI + float(torch.log(torch.diagonal(lap["chol"])).sum())
    gap_terms = target.log_prob(x) - log_q_l
    gap = float(gap_terms.mean())
    marginal = float(0.5 * (v + m * m - 1 - v.log()).sum())
    return {"whitened_var_median": float(v.median()), "marginal_kl_to_laplace": marginal,
            "mean_part": float(0.5 * (m * m).sum()), "e_log_r_minus_log_q_laplace": gap,
            "e_log_r_minus_log_q_laplace_se": float(gap_terms.std()) / x.shape[0] ** 0.5,
            "kl_to_target_lower_bound": marginal - gap + log_Z}


def check_model(sampler, path, target):
    """Raise unless the saved model at `path` samples the LGCP `target` (the same counts: grid and point pattern)."""
    model = sampler.target
    if getattr(model, "name", None) != "lgcp" or not torch.equal(model.counts.double().cpu(),
                                                                 target.counts.double().cpu()):
        raise ValueError(f"{path}: the model's LGCP (its grid or point pattern) is not the reference's: {model!r}, "
                         f"reference {target!r}")


def model_report(sampler, path, target, ref, lap, moments, repeats, batch):
    """A saved LGCP model (`check_model`: of `target`) against the reference log Z `ref` (its Laplace
    fit `lap`): Δ = ref − ELBO and ref − log Ẑ^RW (means over `repeats` evaluations of 2000 samples, seeds 1 ..),
    its sample mean's and sd's errors per coordinate against each of `moments` ({name: (mean, sd)}),
    `kl_lower_bound` of its samples, the terminal TB loss of its JSON (path .pt → .json, if any), and the fused and
    eager TB loss and gradient on one batch of `batch` trajectories."""
    check_model(sampler, path, target)
    ds = draws(sampler, range(1, repeats + 1))
    x = torch.cat([d for d, _ in ds]).double()
    elbo, rw = (statistics.mean(log_z_estimates(lw)[k] for _, lw in ds) for k in ("elbo", "log_Z"))
    out = {"model": os.path.basename(path), "evaluations": repeats, "elbo": elbo, "log_Z_rw": rw,
           "delta_elbo": ref - elbo, "delta_log_Z_rw": ref - rw, "log_w_sd": float(torch.stack(
               [lw for _, lw in ds]).std()), "log_Z_learned": float(sampler.net.log_Z.detach()), "final_loss": None}
    for name, (mean, sd) in moments.items():
        out[f"vs_{name}"] = {"mean_error_rms": float(((x.mean(0) - mean) ** 2).mean().sqrt()),
                             "mean_error_max": float((x.mean(0) - mean).abs().max()),
                             "mean_error_in_sd_rms": float((((x.mean(0) - mean) / sd) ** 2).mean().sqrt()),
                             "sd_ratio": quantiles(x.std(0) / sd)}
    out["kl_bound"] = kl_lower_bound(x, target, lap, ref)
    if os.path.exists(js := os.path.splitext(path)[0] + ".json"):
        with open(js) as f:
            out["final_loss"] = json.load(f)["final_loss"]
    _, g = fused_and_eager(sampler, "tb", batch, seed=1)
    out["tb_fused_vs_eager"] = {"batch": batch, "loss": [g["fused"][1], g["eager"][1]],
                                "states_max_abs_diff": float((g["fused"][0] - g["eager"][0]).abs().max()),
                                **{f"grad_{k}": v for k, v in compare_grads(g["fused"][2], g["eager"][2]).items()}}
    return out
