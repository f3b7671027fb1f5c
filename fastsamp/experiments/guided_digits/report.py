"""Outputs of the guided-digits table: the markdown table and the labelled PNG grid."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import digits
from .experiment import METRICS

HEADERS = {"accuracy": "top-1 acc ↑", "confident": "p(y|x)>0.5 ↑", "frechet": "Fréchet ↓"}


def _cell(row, k):
    sd = row.get(k + "_sd")
    return f"{row[k]:.3f}" if sd is None else f"{row[k]:.3f} ± {sd:.3f}"


def markdown_table(result) -> str:
    """Methods × metrics (mean ± sd over the replicates), step-size rule, acceptance, score evaluations per
    sample and wall time, with the real-data floor as the first row."""
    s = result["settings"]
    lines = [f"Classifier-guided digits, p_t(x)·p_t(y|x)^λ, λ = {s['lambda']:g}, {s['n_levels']} DDPM levels "
             f"(linear β 1e-4 → 0.02); {s['n_seeds']} replicates × {10 * s['n_per_class']} samples "
             f"({s['n_per_class']} per class); mean ± sd over replicates; held-out classifier metrics.",
             "",
             "| method | model | " + " | ".join(HEADERS[k] for k in METRICS)
             + " | ε_t = a·β_t^b | accept | evals/sample | wall s |",
             "|---|---|" + "---|" * (len(METRICS) + 4)]
    floor = result["floor"]
    lines.append("| real digits (floor) | prior split | " + " | ".join(_cell(floor, k) for k in METRICS) + " | | | | |")
    for r in result["methods"]:
        step = f"{r['a']:.3g}·β^{r['b']:.2f}" if "a" in r else "—"
        acc = "—" if r.get("accept") is None else f"{r['accept']:.2f}"
        evals = f"{r['score_evals_per_sample']:.0f}"
        if r.get("hybrid_mh"):
            evals += f" ({r['classifier_evals'] / r['score_evals'] * r['score_evals_per_sample']:.0f} clf)"
        lines.append(f"| {r['name']} | {r['model']} | " + " | ".join(_cell(r, k) for k in METRICS)
                     + f" | {step} | {acc} | {evals} | {r['wall_s']:.0f} |")
    lines += ["",
              "Floor: real digits of the prior split with the same counts per class, measured the same way (one draw "
              "per replicate); differences smaller than the spread of the floor and of the rows are unresolved. "
              "Fréchet: held-out classifier features of each replicate vs the test split. LA-10 is the paper's "
              "name (10 trapezoid points) = fastsamp n_trapezoid 9; score-HMC has one extra trapezoid point per "
              "leapfrog segment; HMC/U-HMC: mass β_t² I, damping 0.9, 3 leapfrog steps. \"paper's MH\": the "
              "classifier term enters the MH test unscaled (λ_mh = 1) while the proposal uses λ (the paper's "
              "code; for score-LA-10 the hybrid test with λ_mh = 1); step size as the λ_mh = λ row (score: the LA-10 "
              "row). \"hybrid MH\" (score-LA-10): the trapezoid (10 points) on the network's score plus the exact "
              "classifier term λ_mh·Δlog p(y|x), instead of the trapezoid of the whole guided score. \"paper's "
              "rejection (no flip)\": HMC whose rejected chains keep the refreshed momentum (the paper's code; "
              "fastsamp flips it, which keeps the partial refresh exact); step size as the HMC row. \"batch-summed "
              "proposal ratio\" (energy-LA, score-LA-10): the paper's image MALA, whose proposal log-ratio "
              "log q(x|x′) − log q(x′|x) is summed over the run's whole batch (every replicate's chains; \"one batch "
              "per replicate\": over each replicate's chains alone, so the replicates are independent) and "
              "added to every chain's Δlog π (score: its trapezoid; no MH kernel of its own chain); step size as "
              "the LA (energy) or LA-10 (score) row. "
              "evals/sample: guided-target evaluations (network + "
              "classifier value and gradient) per sample; the hybrid rows evaluate the network alone at the interior "
              "points, so their classifier evaluations are given apart (clf)."]
    return "\n".join(lines) + "\n"


def save_labelled_grid(samples, labels, result, path, per_class=1, dpi=110):
    """One row per method (labelled with method, model and its metrics) and a first row of real digits;
    columns are the classes 0–9 (`per_class` samples each, from the first replicate)."""
    from matplotlib.figure import Figure

    x_real, y_real = digits.load_digits_data("prior")
    rows = [("real digits (prior split)", x_real, y_real, None)]
    by_label = {r["label"]: r for r in result["methods"]}
    for label, px in samples.items():
        rows.append((label, px, labels, by_label[label]))
    n_cols = digits.N_CLASSES * per_class
    row_h, top, bottom = 0.55, 0.85, 0.1  # inches: a row, the title and class labels, the margin below
    height = row_h * len(rows) + top + bottom
    label_w, grid_w = 4.2, 0.42 * n_cols  # inches: the row labels (the longest names: 4.0 at 7 pt), the digits
    width = label_w + grid_w + 0.15
    fig = Figure(figsize=(width, height))
    for i, (label, px, y, r) in enumerate(rows):
        ax = fig.add_axes([label_w / width, (height - top - (i + 1) * row_h) / height, grid_w / width,
                           0.9 * row_h / height])
        tiles = []
        for c in range(digits.N_CLASSES):
            idx = torch.nonzero(y == c)[:, 0][:per_class]
            for j in range(per_class):
                tile = px[idx[j]] if j < len(idx) else torch.full((64,), float("nan"))
                tiles += [np.pad(1 - tile.clamp(0, 1).reshape(8, 8).numpy(), 1, constant_values=1.0)]
        ax.imshow(np.concatenate(tiles, 1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        text = label if r is None else (f"{label}\nacc {r['accuracy']:.2f} · "
                                        f"p>0.5 {r['confident']:.2f} · FD {r['frechet']:.1f}")
        ax.set_ylabel(text, rotation=0, ha="right", va="center", fontsize=7)
        if i == 0:
            ax.set_xticks([(10 * per_class) * c + 5 * per_class - 0.5 for c in range(digits.N_CLASSES)])
            ax.set_xticklabels([f"y = {c}" for c in range(digits.N_CLASSES)], fontsize=7)
            ax.xaxis.set_ticks_position("top")
    s = result["settings"]
    fig.suptitle(f"p_t(x)·p_t(y|x)^{s['lambda']:g}, {s['n_levels']} DDPM levels; columns: class y. Rows: method "
                 f"(model); held-out classifier top-1 acc, rate of p(y|x) > 0.5, FD of its features to the test "
                 f"split (mean of {s['n_seeds']} replicates)", fontsize=7, wrap=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
