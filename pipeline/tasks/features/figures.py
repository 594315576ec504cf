"""The features task's figures: every score's means with intervals (test features and OOD sets), the training loss,
and an HTML page of a dozen test features with every variant's description."""

from __future__ import annotations

import numpy as np

from pipeline.artifacts import atomic_path, pyplot, read_json, save_figure
from pipeline.explainer.figures import loss_figure


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
