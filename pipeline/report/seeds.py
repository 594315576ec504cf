"""One run per training seed, gathered: every figure of the results files as a mean across seeds with its spread.

At this model size one training run is one draw: the seeds of `training.seeds` are trained, generated and scored
apart (results/{task}/seeds/{seed}/{run}.json, each on the same test rows), and `aggregate` writes
results/{task}/{run}.seeds.json. For every metric (`value`) and every paired difference against a control or a
baseline (`difference`) found in the seeds' results it holds each seed's figure, the mean, the standard deviation
and range across seeds, and a 95% interval around the mean that holds both sources of variance:

    half-width = sqrt((t_{0.975, n-1} * sd / sqrt(n))^2 + (1.96 * se_test)^2)

where sd is the spread across seeds (training variance: the test rows are the same for every seed) and se_test is
the mean of the seeds' cluster-bootstrap standard errors (test-pair variance, common to all seeds). With one seed
only the second term is left. `every_seed_excludes_zero` says whether each seed's own interval lies on one side of 0,
on the same side as the mean.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pipeline.artifacts import ArtifactError, provenance, read_json, write_json
from pipeline.stages import put_at

SECTIONS = ("metrics", "comparisons")


def _leaves(tree: Any, path: tuple = ()) -> dict[tuple, dict]:
    """path -> leaf of every figure ({"value"|"difference", "ci", "se"}) in a results file's section."""
    if isinstance(tree, dict):
        if "value" in tree or "difference" in tree:
            return {path: tree}
        found = {}
        for key, value in tree.items():
            found |= _leaves(value, path + (key,))
        return found
    return {}


def t_quantile(df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def combine(leaves: list[dict]) -> dict:
    """One figure across seeds: per-seed values, mean, spread, and the interval holding both variances."""
    key = "value" if "value" in leaves[0] else "difference"
    values = [leaf[key] for leaf in leaves]
    if any(v is None for v in values):
        return {"values": values, "mean": None}
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    ses = [leaf.get("se") for leaf in leaves if leaf.get("se") is not None]
    se_test = sum(ses) / len(ses) if ses else 0.0
    training = t_quantile(n - 1) * sd / math.sqrt(n) if n > 1 else 0.0
    half = math.sqrt(training ** 2 + (1.96 * se_test) ** 2)
    out = {"values": values, "mean": mean, "sd": sd, "min": min(values), "max": max(values), "se_test": se_test,
           "ci": [mean - half, mean + half]}
    cis = [leaf.get("ci") for leaf in leaves]
    if key == "difference" and all(ci is not None for ci in cis):
        side = 1 if mean >= 0 else -1
        out["every_seed_excludes_zero"] = all((ci[0] > 0) if side > 0 else (ci[1] < 0) for ci in cis)
    return out


def aggregate(result_paths: dict[int, str | Path], out_path: str | Path, settings: dict | None = None) -> dict:
    """Gather the seeds' results files of one run into `out_path` (see the module docstring)."""
    if not result_paths:
        raise ArtifactError("no seeds to gather: training.seeds is empty")
    results = {seed: read_json(path) for seed, path in sorted(result_paths.items())}
    first = next(iter(results.values()))
    for seed, result in results.items():
        if (result.get("task"), result.get("explainer"), result.get("target")) != (
                first.get("task"), first.get("explainer"), first.get("target")):
            raise ArtifactError(f"{result_paths[seed]}: another run than {result_paths[next(iter(results))]}")
    out: dict[str, Any] = {"task": first.get("task"), "explainer": first.get("explainer"),
                           "target": first.get("target"), "seeds": list(results),
                           "interval": "mean +- sqrt((t_.975,n-1 * sd/sqrt(n))^2 + (1.96 * mean bootstrap se)^2)",
                           "per_seed": {str(seed): {"path": str(result_paths[seed]),
                                                    "training": result.get("training", {}),
                                                    "code_version": result.get("provenance", {}).get("code_version")}
                                        for seed, result in results.items()}}
    for section in SECTIONS:
        per_seed = {seed: _leaves(result.get(section, {})) for seed, result in results.items()}
        common = set.intersection(*(set(leaves) for leaves in per_seed.values()))
        tree: dict = {}
        for path in sorted(common, key=str):
            put_at(tree, path, combine([per_seed[seed][path] for seed in results]))
        out[section] = tree
    out["provenance"] = provenance(settings or {})
    write_json(out, out_path)
    return out
