"""Self versus other, the paper's central claim: does a model explain itself better than another model explains it?

For one task and the models of `matrix.models`, every explainer x target pair's fine-tuned explainer is scored on
the task's headline metric (the task's `headline`: act_patch, exact match on changed rows; input_ablation,
is_changed F1; features, the offline judge's similarity) with its 95% cluster-bootstrap interval; and, per
target, the target explaining itself minus each other explainer, as a paired bootstrap on the same test rows
(both explainers answered the same questions about the same vectors). One row per pair in
`results/matrix/{task}.parquet`, and a heat map.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.artifacts import ArtifactError, provenance, read_json, read_table, write_table
from pipeline.tasks import get_task


def _headline(result: dict, split: str, metric: str, path) -> dict:
    """The finetuned explainer's headline; a split with no rows (no patch changed a random model's answer) is
    NaN with n = 0, not an error."""
    if "finetuned" not in result.get("metrics", {}):
        raise ArtifactError(f"{path}: no finetuned metrics")
    entry = result["metrics"]["finetuned"].get(split)
    if entry is None or metric not in entry:
        return {"value": np.nan, "ci": None, "n": 0}
    summary = entry[metric]
    return {"value": summary["value"], "ci": summary.get("ci"), "n": int(summary.get("n", entry.get("n", 0)))}


def self_minus_other(task: str, own: tuple, other: tuple, samples: int, seed: int) -> dict:
    """Headline of the target explaining itself minus another explainer on the target's same test rows; `own`
    and `other` are (results path, finetuned predictions path)."""
    from pipeline.explainer.metrics import paired_differences, paired_mean_difference

    split, metric = get_task(task).headline
    first, second = (read_table(p, required=["row_key", "prediction", "reference", "cluster"]) for _, p in (own, other))
    if set(first["row_key"]) != set(second["row_key"]):
        raise ArtifactError(f"{own[1]} and {other[1]}: the two explainers answered different test rows")
    second = second.set_index("row_key").loc[first["row_key"]].reset_index()
    if not get_task(task).scores_own:
        return paired_differences(first, second, samples, seed).get(split, {}).get(
            metric, {"difference": np.nan, "ci": None})
    scores = [read_json(path)["per_feature"]["finetuned"][metric] for path, _ in (own, other)]
    keys = [k for k in first["row_key"] if k in scores[0] and k in scores[1]]
    clusters = first.set_index("row_key").loc[keys, "cluster"].to_numpy()
    return paired_mean_difference([scores[0][k] for k in keys], [scores[1][k] for k in keys], clusters, samples, seed)


def build_matrix(task: str, models: list[str], results: dict[tuple[str, str], str],
                 predictions: dict[tuple[str, str], str], samples: int, seed: int, out_table, out_figure,
                 settings: dict) -> pd.DataFrame:
    """`results` and `predictions` (finetuned) by (explainer, target) for every pair of `models`."""
    split, metric = get_task(task).headline
    rows = []
    for target in models:
        own = (results[(target, target)], predictions[(target, target)])
        for explainer in models:
            path = results[(explainer, target)]
            headline = _headline(read_json(path), split, metric, path)
            row = {"task": task, "explainer": explainer, "target": target, "self": explainer == target,
                   "split": split, "metric": metric, "value": headline["value"], "n": headline["n"],
                   "ci_low": headline["ci"][0] if headline["ci"] else np.nan,
                   "ci_high": headline["ci"][1] if headline["ci"] else np.nan,
                   "self_minus_this": np.nan, "difference_ci_low": np.nan, "difference_ci_high": np.nan}
            if explainer != target:
                difference = self_minus_other(task, own, (path, predictions[(explainer, target)]), samples, seed)
                row |= {"self_minus_this": difference["difference"],
                        "difference_ci_low": difference["ci"][0] if difference["ci"] else np.nan,
                        "difference_ci_high": difference["ci"][1] if difference["ci"] else np.nan}
            rows.append(row)
    frame = pd.DataFrame(rows)
    write_table(frame, out_table, provenance(settings | {"task": task, "models": list(models)}))
    heat_map(frame, out_figure)
    with pd.option_context("display.width", 200, "display.float_format", "{:.3f}".format):
        print(frame.to_string(index=False))
    return frame


def heat_map(frame: pd.DataFrame, out_path) -> None:
    """Explainer (rows) x target (columns): the headline value with its interval in each cell."""
    from pipeline.artifacts import pyplot, save_figure

    plt = pyplot()
    explainers, targets = list(dict.fromkeys(frame["explainer"])), list(dict.fromkeys(frame["target"]))
    grid = frame.pivot(index="explainer", columns="target", values="value").loc[explainers, targets]
    figure, axis = plt.subplots(figsize=(2.2 * len(targets) + 2, 1.6 * len(explainers) + 1.5), layout="constrained")
    image = axis.imshow(grid.to_numpy(dtype=float), cmap="viridis")
    for i, explainer in enumerate(explainers):
        for j, target in enumerate(targets):
            cell = frame[(frame["explainer"] == explainer) & (frame["target"] == target)].iloc[0]
            text = (f"{cell['value']:.3f}\n[{cell['ci_low']:.3f}, {cell['ci_high']:.3f}]" if cell["n"] else
                    "no rows")
            axis.text(j, i, text, ha="center", va="center", color="white" if cell["self"] else "black",
                      fontweight="bold" if cell["self"] else "normal", fontsize=9)
    axis.set_xticks(range(len(targets)), targets)
    axis.set_yticks(range(len(explainers)), explainers)
    axis.set_xlabel("target (whose internals)")
    axis.set_ylabel("explainer")
    task, split, metric = frame["task"].iloc[0], frame["split"].iloc[0], frame["metric"].iloc[0]
    axis.set_title(f"{task}: {metric} ({split}), 95% interval; bold = explains itself")
    figure.colorbar(image, ax=axis)
    save_figure(figure, out_path)
