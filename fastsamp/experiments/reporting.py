"""Results of the experiments: strict JSON files (non-finite numbers as null, with the thread count)
and per-seed summaries (mean ± sample standard deviation)."""
from __future__ import annotations

import json
import math

import torch

from ..samplers.diffusion import atomic_write


def json_safe(obj):
    """obj with non-finite floats as None (JSON has no NaN or Infinity), tensors and NumPy scalars as
    Python numbers or lists, tuples as lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return json_safe(obj.tolist())
    if type(obj).__module__ == "numpy":
        return json_safe(obj.tolist())
    return obj


def write_json(path: str, result) -> None:
    """Write a result (a dict, or a list as {"rows": ...}) as strict JSON with the thread count
    torch.get_num_threads(), atomically (`atomic_write`: a run killed while writing leaves the old file);
    missing directories are created."""
    result = result if isinstance(result, dict) else {"rows": result}
    text = json.dumps(json_safe({"threads": torch.get_num_threads(), **result}), indent=2, allow_nan=False)
    atomic_write(path, lambda f: f.write(text.encode()))


def mean_sd(mean: float, sd: float | None, spec: str = ".3f") -> str:
    """'mean±sd', or just the mean when there is no spread (one seed: sd None)."""
    return f"{mean:{spec}}" if sd is None else f"{mean:{spec}}±{sd:{spec}}"


def summarise_seeds(per_seed: list[dict]) -> dict:
    """Per-key mean and, with more than one seed, sample standard deviation (`key_sd`; None for one seed)."""
    row = {}
    for k in per_seed[0]:
        vals = torch.tensor([r[k] for r in per_seed], dtype=torch.float64)
        row[k] = float(vals.mean())
        row[k + "_sd"] = float(vals.std()) if len(per_seed) > 1 else None
    return row
