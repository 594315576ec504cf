"""Each run's figures for the Snakemake report (PNG, written atomically): its metrics beside its baselines and
controls with 95% cluster-bootstrap intervals, changed/unchanged confusion matrices, and the training loss curve."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.artifacts import pyplot, read_json, read_table, save_figure
from pipeline.explainer.metrics import METRICS
from pipeline.explainer.prompts import parse_answer


def metrics_figure(result_path, out_path) -> None:
    plt = pyplot()
    result = read_json(result_path)
    variants = list(result["metrics"])
    figure, axis = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(variants)
    for i, variant in enumerate(variants):
        overall = result["metrics"][variant]["overall"]
        values = np.array([overall[m]["value"] for m in METRICS])
        intervals = np.array([overall[m]["ci"] or [v, v] for m, v in zip(METRICS, values)])
        errors = np.clip(np.stack([values - intervals[:, 0], intervals[:, 1] - values]), 0, None)
        axis.bar(np.arange(len(METRICS)) + (i - (len(variants) - 1) / 2) * width, values, width, yerr=errors,
                 capsize=3, label=f"{variant} (n={overall['n']})")
    axis.set_xticks(range(len(METRICS)), [m.replace("_", " ") for m in METRICS])
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("score (95% cluster-bootstrap interval)")
    axis.set_title(f"{result['task']}: {result['explainer']} explains {result['target']}")
    axis.legend(fontsize=8)
    save_figure(figure, out_path)


def confusion(frame: pd.DataFrame) -> np.ndarray:
    """Rows: truth changed / unchanged; columns: said changed / unchanged / no verdict."""
    verdicts = [parse_answer(p).changed for p in frame["prediction"]]
    matrix = np.zeros((2, 3), dtype=int)
    for truth, said in zip(frame["is_different"].astype(bool), verdicts):
        matrix[0 if truth else 1, {True: 0, False: 1, None: 2}[said]] += 1
    return matrix


def confusion_figure(prediction_paths: list[str], out_path, title: str) -> None:
    plt = pyplot()
    figure, axes = plt.subplots(1, len(prediction_paths), figsize=(3.6 * len(prediction_paths), 3.2), squeeze=False)
    for axis, path in zip(axes[0], prediction_paths):
        frame = read_table(path, required=["prediction", "is_different"])
        matrix = confusion(frame)
        axis.imshow(matrix, cmap="Blues")
        for (row, col), value in np.ndenumerate(matrix):
            axis.text(col, row, str(value), ha="center", va="center")
        axis.set_xticks(range(3), ["said\nchanged", "said\nunchanged", "no\nverdict"])
        axis.set_yticks(range(2), ["changed", "unchanged"])
        axis.set_title(Path(path).stem)
    figure.suptitle(title)
    save_figure(figure, out_path)


def loss_figure(training_log_path, out_path, title: str) -> None:
    plt = pyplot()
    log = read_json(training_log_path)
    steps = [e["step"] for e in log["losses"]]
    losses = [e["loss"] for e in log["losses"]]
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot(steps, losses, lw=1, alpha=0.5, label="step loss")
    if len(losses) >= 5:
        window = max(2, len(losses) // 20)
        axis.plot(steps[window - 1:], np.convolve(losses, np.ones(window) / window, mode="valid"), lw=2,
                  label=f"mean of {window} steps")
    axis.set_xlabel("step")
    axis.set_ylabel("answer-token loss")
    axis.set_yscale("log")
    axis.set_title(title)
    axis.legend()
    save_figure(figure, out_path)


def run_figures(result_path, prediction_paths: list[str], training_log_path, metrics_png, confusion_png,
                loss_png) -> None:
    result = read_json(result_path)
    title = f"{result['task']}: {result['explainer']} explains {result['target']}"
    metrics_figure(result_path, metrics_png)
    confusion_figure(prediction_paths, confusion_png, title)
    loss_figure(training_log_path, loss_png, title)
