"""Figures for the Snakemake report and the summary table across results files.

Figures (PNG, written atomically): the share of act_patch outputs that a patch changes over
layer window x token type; each run's metrics beside its baselines and controls with 95% cluster-
bootstrap intervals; changed/unchanged confusion matrices; the training loss curve. The summary
table has one row per (task, explainer, target, variant) with every metric, its interval, and exact
match on the rows whose output changed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.artifacts import atomic_path, provenance, read_json, read_table, write_table
from pipeline.metrics import METRICS
from pipeline.prompts import parse_answer


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display on a cluster node)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, out_path) -> None:
    """Write a figure atomically in the format its suffix names, then close it."""
    with atomic_path(out_path) as tmp:
        figure.savefig(tmp, format=Path(out_path).suffix.lstrip(".") or "png", dpi=120, bbox_inches="tight")
    pyplot().close(figure)


def patch_effect(label_paths: list[str]) -> pd.DataFrame:
    """Share of rows whose next token the patch changed, by token type (rows) and layer window (columns)."""
    frame = pd.concat([read_table(p, required=["layer", "token_type", "is_different"]) for p in label_paths])
    frame["window"] = [f"{int(w[0])}-{int(w[-1])}" if len(w) > 1 else str(int(w[0])) for w in frame["layer"]]
    frame["first"] = [int(w[0]) for w in frame["layer"]]
    table = frame.pivot_table(index="token_type", columns="first", values="is_different", aggfunc="mean")
    table.columns = [frame.loc[frame["first"] == c, "window"].iloc[0] for c in table.columns]
    return table


def patch_effect_figure(label_paths: list[str], out_path, title: str) -> pd.DataFrame:
    plt = pyplot()
    table = patch_effect(label_paths)
    figure, axis = plt.subplots(figsize=(1.1 * len(table.columns) + 3, 0.7 * len(table) + 1.8))
    image = axis.imshow(table.to_numpy(dtype=float), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    axis.set_xticks(range(len(table.columns)), table.columns)
    axis.set_yticks(range(len(table.index)), table.index)
    for (row, col), value in np.ndenumerate(table.to_numpy(dtype=float)):
        axis.text(col, row, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.6 else "black")
    axis.set_xlabel("patched layer window")
    axis.set_title(title)
    figure.colorbar(image, ax=axis, label="share of next tokens changed")
    save_figure(figure, out_path)
    return table


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


def summary(result_paths: list[str]) -> pd.DataFrame:
    """One row per task, explainer, target and variant (fine-tuned, controls, baselines), with intervals; the
    columns are every task's metrics (change metrics, the features task's judge score)."""
    rows = []
    for path in result_paths:
        result = read_json(path)
        for variant, parts in result["metrics"].items():
            overall = parts["overall"]
            row = {"task": result["task"], "explainer": result["explainer"], "target": result["target"],
                   "variant": variant, "n": overall["n"], "clusters": overall["clusters"]}
            columns = [(metric, entry) for metric, entry in overall.items() if isinstance(entry, dict) and "value" in entry]
            if "is_different=True" in parts:
                columns.append(("changed_exact_match", parts["is_different=True"].get("exact_match")))
            for name, entry in columns:
                entry = entry or {"value": None, "ci": None}
                row[name] = entry["value"]
                row[f"{name}_ci_low"], row[f"{name}_ci_high"] = entry["ci"] or (None, None)
            rows.append(row)
    return pd.DataFrame(rows)


def write_summary(result_paths: list[str], out_path) -> pd.DataFrame:
    frame = summary(result_paths)
    write_table(frame, out_path, provenance({"results": sorted(map(str, result_paths))}))
    print_summary(frame)
    return frame


def print_summary(frame: pd.DataFrame) -> None:
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.3f}".format):
        shown = [c for c in frame.columns if c in ("task", "explainer", "target", "variant", "n")
                 or (not c.endswith(("_ci_low", "_ci_high")) and c != "clusters")]
        print(frame[shown].to_string(index=False))


def _cell(entry: dict | None, signed: bool = False) -> str:
    """"0.412 [0.380, 0.445]" from a results file's figure, or a seeds file's mean with its interval and seeds."""
    if not entry:
        return "-"
    value = entry.get("mean", entry.get("value", entry.get("difference")))
    if value is None:
        return "n/a"
    form = "{:+.3f}" if signed else "{:.3f}"
    text = form.format(value)
    if entry.get("ci"):
        text += " [" + ", ".join(form.format(bound) for bound in entry["ci"]) + "]"
    if "values" in entry:  # across seeds: each seed's own figure, and whether every seed's interval excludes 0
        text += " (" + ", ".join(form.format(v) for v in entry["values"]) + ")"
        text += " *" if entry.get("every_seed_excludes_zero") else ""
    return text


def _figures(result: dict, headline: tuple[str, str]) -> list[tuple[str, str]]:
    """The (split, metric) columns of a run's tables: the task's headline, that metric on every other split, then
    every overall metric."""
    split, metric = headline
    finetuned = result["metrics"].get("finetuned") or next(iter(result["metrics"].values()))
    columns = [(split, metric)] + [(s, metric) for s in finetuned if s not in (split, "overall")
                                   and isinstance(finetuned[s], dict) and metric in finetuned[s]]
    overall = finetuned.get("overall", {})
    return columns + [("overall", m) for m, e in overall.items()
                      if isinstance(e, dict) and ("value" in e or "mean" in e) and ("overall", m) not in columns]


def _table(rows: dict, columns: list[tuple[str, str]], signed: bool) -> list[str]:
    head = ["| |"] + [f" {metric} ({split}) |" for split, metric in columns]
    lines = ["".join(head), "|---|" + "---|" * len(columns)]
    for name, parts in rows.items():
        lines.append(f"| {name} |" + "".join(f" {_cell((parts.get(s) or {}).get(m), signed)} |" for s, m in columns))
    return lines


def results_tables(result_paths: list[str]) -> str:
    """Markdown tables of results files (results/{task}/{run}.json) and seeds files ({run}.seeds.json): per run, a
    header naming the commit that wrote it, the date the file was written, the models, the rows and the training;
    every variant's figures with their 95% intervals; and the fine-tuned explainer's paired differences against each
    control and baseline. Seeds files show the mean across seeds, the interval holding training and test variance,
    each seed's figure, and * where every seed's own interval excludes 0 (pipeline/seeds.py)."""
    import datetime

    from pipeline.tasks import get_task

    out = ["<!-- written by the results_tables rule (python -m pipeline.report tables FILE...): do not edit -->", ""]
    for path in result_paths:
        result = read_json(path)
        written = datetime.datetime.fromtimestamp(Path(path).stat().st_mtime, datetime.timezone.utc)
        seeds = result.get("seeds")
        title = f"{result['task']}: {result['explainer']} explains {result['target']}"
        out += [f"### {title}" + (f", seeds {', '.join(map(str, seeds))}" if seeds else ""), "",
                f"`{path}`: commit {result['provenance'].get('code_version', '?')}, written {written:%Y-%m-%d}."]
        finetuned = result["metrics"].get("finetuned", {}).get("overall", {})
        if "n" in finetuned:
            out[-1] += f" {finetuned['n']} test rows in {finetuned.get('clusters', '?')} clusters."
        runs = [entry.get("training") or {} for entry in result.get("per_seed", {}).values()] or [
            result.get("training") or {}]
        if all("steps" in training for training in runs):
            out[-1] += " Training: " + "; ".join(f"seed {t.get('seed')}, {t['steps']} steps on {t.get('examples')} rows"
                                                 for t in runs) + "."
        commits = sorted({entry.get("code_version") for entry in result.get("per_seed", {}).values()} - {None})
        if commits:
            out[-1] += f" The seeds' runs: commit {', '.join(commits)}."
        columns = _figures(result, get_task(result["task"]).headline)
        out += ["", *_table(result["metrics"], columns, signed=False), ""]
        ours = {name: parts for name, parts in result.get("comparisons", {}).items() if name.startswith("finetuned - ")}
        if ours:
            out += [*_table(ours, columns, signed=True), ""]
    return "\n".join(out) + "\n"


def write_results_tables(result_paths: list[str], out_path) -> None:
    with atomic_path(out_path) as tmp:
        Path(tmp).write_text(results_tables(result_paths))


def features_metrics_figure(result: dict, out_path) -> None:
    """Per score (offline judge, LM judge, simulator) on the test features, and the simulator's on each
    out-of-distribution set: every variant's and baseline's mean with its 95% bootstrap interval over features."""
    plt = pyplot()
    panels = [(result["metrics"], score, "test features") for score in
              ("embedding_similarity", "lm_judge", "simulator_top", "simulator_top_random")
              if any(score in m["overall"] for m in result["metrics"].values())]
    panels += [(ood["metrics"], "simulator_top", f"{name} vectors") for name, ood in result.get("ood", {}).items()]
    figure, axes = plt.subplots(len(panels), 1, figsize=(1.1 * len(result["metrics"]) + 2, 4.2 * len(panels)),
                                squeeze=False, layout="constrained")
    for axis, (metrics, score, what) in zip(axes[:, 0], panels):
        names = [n for n, m in metrics.items() if score in m["overall"]]
        values = np.array([metrics[n]["overall"][score]["value"] for n in names])
        intervals = np.array([metrics[n]["overall"][score]["ci"] or [v, v] for n, v in zip(names, values)])
        axis.bar(range(len(names)), values, yerr=np.clip(np.stack([values - intervals[:, 0], intervals[:, 1] - values]),
                                                         0, None), capsize=3, color="tab:blue")
        axis.set_xticks(range(len(names)), [n.replace("_", " ") for n in names], rotation=30, ha="right")
        n = metrics["finetuned"]["overall"][score]["n"]
        axis.set_ylabel(f"{score}\n(95% bootstrap interval)")
        axis.set_title(f"features: {result['explainer']} explains {result['target']}, {score} (n={n} {what})")
    save_figure(figure, out_path)


def features_examples_page(result: dict, out_path) -> None:
    """An HTML table: a dozen random test features, their exemplar, reference and every variant's description."""
    import html

    names = list(result["metrics"])
    head = "".join(f"<th>{html.escape(n.replace('_', ' '))}</th>" for n in names)
    rows = []
    for example in result["examples"]:
        cells = "".join(f"<td>{html.escape(str(example['predictions'].get(n, '')))}</td>" for n in names)
        rows.append(f"<tr><td>{html.escape(example['feature_id'])}</td><td>{html.escape(str(example['context']))}</td>"
                    f"<td><b>{html.escape(example['reference'])}</b></td>{cells}</tr>")
    page = (f"<html><head><meta charset='utf-8'><title>features: {html.escape(result['explainer'])} explains "
            f"{html.escape(result['target'])}</title></head><body><p>Judge: {html.escape(result['judge']['description'])}"
            f"</p><table border='1' cellpadding='4'><tr><th>feature</th><th>strongest exemplar (&lt;&lt;token&gt;&gt;)"
            f"</th><th>reference</th>{head}</tr>{''.join(rows)}</table></body></html>")
    with atomic_path(out_path) as tmp:
        tmp.write_text(page)


def features_figures(result_path, training_log_path, metrics_png, loss_png, examples_html) -> None:
    result = read_json(result_path)
    features_metrics_figure(result, metrics_png)
    loss_figure(training_log_path, loss_png, f"features: {result['explainer']} explains {result['target']}")
    features_examples_page(result, examples_html)


if __name__ == "__main__":
    import sys

    # `python -m pipeline.report [results/summary.parquet]` prints the summary table;
    # `python -m pipeline.report tables FILE...` prints the Markdown tables of results and seeds files.
    if sys.argv[1:2] == ["tables"]:
        print(results_tables(sys.argv[2:]), end="")
    else:
        print_summary(read_table(sys.argv[1] if len(sys.argv) > 1 else "results/summary.parquet"))
