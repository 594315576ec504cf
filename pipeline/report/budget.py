"""The training budget as a curve: does more training move the explainer's verdict off the structure prior, and does
a model explain itself better than another model explains it at some budget?

`act_patch.budget` names a grid of training rows x epochs, the seeds of every point and the points that decide (with
more seeds), and the other explainers of the same target. Each point is its own cached run (the run of the training
section's own rows and epochs is the run itself or its seeded runs). `aggregate_budget` gathers them into
results/act_patch/{explainer}_{target}.budget.json and a figure: per explainer and point, each measure across its
seeds as pipeline/report/seeds.py combines them (the mean, with an interval that holds training and test-pair
variance); and per point, self minus each other explainer on changed-row exact match, a paired bootstrap on the same
test rows per seed (pipeline/report/matrix.py's), combined across the seeds both ran.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.artifacts import ArtifactError, provenance, pyplot, read_json, save_figure, write_json
from pipeline.report.seeds import combine

# name -> (section, variant or comparison, split, metric) of a results file
MEASURES = {
    "changed_em_minus_shuffled": ("comparisons", "finetuned - shuffled_vector", "is_different=True", "exact_match"),
    "counterfactual_em_minus_shuffled": ("comparisons", "finetuned - shuffled_vector", "counterfactual_answer",
                                         "exact_match"),
    "f1_minus_prior": ("comparisons", "finetuned - structure_prior", "overall", "is_changed_f1"),
    "changed_em": ("metrics", "finetuned", "is_different=True", "exact_match"),
    "changed_em_shuffled": ("metrics", "shuffled_vector", "is_different=True", "exact_match"),
    "changed_em_no_vector": ("metrics", "no_vector", "is_different=True", "exact_match"),
    "counterfactual_em": ("metrics", "finetuned", "counterfactual_answer", "exact_match"),
    "counterfactual_em_shuffled": ("metrics", "shuffled_vector", "counterfactual_answer", "exact_match"),
    "f1": ("metrics", "finetuned", "overall", "is_changed_f1"),
    "f1_prior": ("metrics", "structure_prior", "overall", "is_changed_f1"),
    "f1_untrained": ("metrics", "untrained", "overall", "is_changed_f1"),
}


def grid(budget) -> list[tuple[int | None, int, int]]:
    """(rows, epochs, seed) of every run of a budget (act_patch.budget, typed): every point of rows x epochs with its
    `seeds`, and the `decide` points with their seeds too."""
    runs = {(rows, epochs, seed) for rows in budget.rows for epochs in budget.epochs for seed in budget.seeds}
    runs |= {(rows, epochs, seed) for rows, epochs in budget.decide.points for seed in budget.decide.seeds}
    return sorted(runs, key=lambda r: (r[0] is None, r[0] or 0, r[1], r[2]))


def _leaf(result: dict, measure: str, path) -> dict | None:
    section, name, split, metric = MEASURES[measure]
    leaf = result.get(section, {}).get(name, {}).get(split, {}).get(metric)
    if leaf is None:
        return None
    if not isinstance(leaf, dict):
        raise ArtifactError(f"{path}: {section}.{name}.{split}.{metric} is not a figure")
    return leaf


def point_key(rows: int | None, epochs: int) -> str:
    return f"rows={'all' if rows is None else rows} epochs={epochs}"


def aggregate_budget(points: list[dict], out_json, out_figure, settings: dict, samples: int = 1000,
                     seed: int = 0) -> dict:
    """`points`: one entry per run (explainer, rows, epochs, seed, result, predictions), the first explainer's the
    self pair's; the others explain the same target."""
    from pipeline.report.matrix import self_minus_other

    if not points:
        raise ArtifactError("act_patch.budget names no point (rows x epochs)")
    own = points[0]["explainer"]
    results = {}
    for point in points:
        result = read_json(point["result"])
        results[(point["explainer"], point["rows"], point["epochs"], point["seed"])] = result
        examples = result.get("training", {}).get("examples")
        point["trained_rows"], point["steps"] = examples, result.get("training", {}).get("steps")
        point["precision"] = result.get("training", {}).get("precision", "fp32")
    keys = sorted({(p["rows"], p["epochs"]) for p in points}, key=lambda k: (k[0] is None, k[0] or 0, k[1]))
    explainers = list(dict.fromkeys(p["explainer"] for p in points))
    out: dict[str, Any] = {"task": "act_patch", "explainer": own, "target": read_json(points[0]["result"]).get("target"),
                           "others": explainers[1:], "measures": {k: list(v) for k, v in MEASURES.items()},
                           "interval": "mean +- sqrt((t_.975,n-1 * sd/sqrt(n))^2 + (1.96 * mean bootstrap se)^2)",
                           "points": []}
    for rows, epochs in keys:
        entry: dict[str, Any] = {"rows": rows, "epochs": epochs, "explainers": {}}
        for explainer in explainers:
            runs = [p for p in points if (p["explainer"], p["rows"], p["epochs"]) == (explainer, rows, epochs)]
            figures = {}
            for measure in MEASURES:
                leaves = [_leaf(results[(explainer, rows, epochs, p["seed"])], measure, p["result"]) for p in runs]
                if all(leaf is not None for leaf in leaves):
                    figures[measure] = combine(leaves)
            entry["explainers"][explainer] = {
                "seeds": [p["seed"] for p in runs], "trained_rows": runs[0]["trained_rows"],
                "steps": runs[0]["steps"], "precision": sorted({p["precision"] for p in runs}),
                "results": [p["result"] for p in runs], "figures": figures}
        for other in explainers[1:]:
            seeds = sorted({p["seed"] for p in points if (p["explainer"], p["rows"], p["epochs"]) == (own, rows, epochs)}
                           & {p["seed"] for p in points if (p["explainer"], p["rows"], p["epochs"]) ==
                              (other, rows, epochs)})
            by = {(p["explainer"], p["seed"]): p for p in points if (p["rows"], p["epochs"]) == (rows, epochs)}
            leaves = [self_minus_other("act_patch", (by[(own, s)]["result"], by[(own, s)]["predictions"]),
                                       (by[(other, s)]["result"], by[(other, s)]["predictions"]), samples, seed)
                      for s in seeds]
            entry.setdefault("self_minus_other", {})[other] = combine(leaves) | {"seeds": seeds} if leaves else None
        out["points"].append(entry)
    out["provenance"] = provenance(settings)
    write_json(out, out_json)
    budget_figure(out, out_figure)
    return out


def budget_figure(budget: dict, out_path) -> None:
    """Four panels against the examples seen (rows trained x epochs): changed-row exact match, exact match on the
    counterfactual-answer rows, is_changed F1 (each explainer's, with the controls and the prior as lines), and
    self minus each other explainer; 95% intervals as bars."""
    plt = pyplot()
    own = budget["explainer"]
    panels = (("changed-row exact match", ("changed_em", "changed_em_shuffled", "changed_em_no_vector")),
              ("counterfactual-answer rows, exact match", ("counterfactual_em", "counterfactual_em_shuffled")),
              ("is_changed F1", ("f1", "f1_prior", "f1_untrained")))
    figure, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    styles = {"changed_em": "-o", "counterfactual_em": "-o", "f1": "-o", "changed_em_shuffled": ":",
              "counterfactual_em_shuffled": ":", "changed_em_no_vector": "--", "f1_prior": "--", "f1_untrained": ":"}
    labels = {"changed_em_shuffled": "shuffled vector", "counterfactual_em_shuffled": "shuffled vector",
              "changed_em_no_vector": "no vector", "f1_prior": "structure prior", "f1_untrained": "untrained"}

    def seen(point, explainer):
        info = point["explainers"][explainer]
        return (info["trained_rows"] or 0) * point["epochs"]

    explainers = [own, *budget["others"]]
    for axis, (title, measures) in zip(axes, panels):
        for index, explainer in enumerate(explainers):
            color = f"C{index}"
            for measure in measures:
                if measure not in measures[:1] and index > 0:
                    continue  # the controls once, as the self pair's
                xs, ys, errs = [], [], []
                for point in budget["points"]:
                    figure_of = point["explainers"].get(explainer, {}).get("figures", {}).get(measure)
                    if figure_of and figure_of.get("mean") is not None:
                        xs.append(seen(point, explainer))
                        ys.append(figure_of["mean"])
                        low, high = figure_of["ci"]
                        errs.append((figure_of["mean"] - low, high - figure_of["mean"]))
                if not xs:
                    continue
                order = sorted(range(len(xs)), key=xs.__getitem__)
                name = f"{explainer}" if measure == measures[0] else f"{labels[measure]} ({explainer})"
                axis.errorbar([xs[i] for i in order], [ys[i] for i in order],
                              yerr=[[errs[i][0] for i in order], [errs[i][1] for i in order]], fmt=styles[measure],
                              color=color if measure == measures[0] else "grey", capsize=3, label=name, alpha=0.9)
        axis.set_title(title)
        axis.set_xlabel("examples seen (rows x epochs)")
        axis.legend(fontsize=7)
    axis = axes[3]
    for index, other in enumerate(budget["others"]):
        xs, ys, errs = [], [], []
        for point in budget["points"]:
            difference = (point.get("self_minus_other") or {}).get(other)
            if difference and difference.get("mean") is not None:
                xs.append(seen(point, own))
                ys.append(difference["mean"])
                errs.append((difference["mean"] - difference["ci"][0], difference["ci"][1] - difference["mean"]))
        if xs:
            order = sorted(range(len(xs)), key=xs.__getitem__)
            axis.errorbar([xs[i] for i in order], [ys[i] for i in order],
                          yerr=[[errs[i][0] for i in order], [errs[i][1] for i in order]], fmt="-o",
                          color=f"C{index + 1}", capsize=3, label=f"{own} minus {other}")
    axis.axhline(0, color="black", linewidth=0.8)
    axis.set_title("self minus other, changed-row exact match")
    axis.set_xlabel("examples seen (rows x epochs)")
    if budget["others"]:
        axis.legend(fontsize=7)
    else:  # act_patch.budget.others is empty: nothing to set against
        axis.text(0.5, 0.5, "no other explainer\n(act_patch.budget.others)", ha="center", va="center",
                  transform=axis.transAxes)
    figure.suptitle(f"act_patch: {own} explains {budget['target']} against the training budget")
    save_figure(figure, out_path)


def write_budget(points: list[dict], out_json, out_figure, settings: dict) -> dict:
    """The rule's entry: scoring's bootstrap settings from `settings`."""
    from pipeline.settings import ScoringConfig, section_of

    scoring = section_of(settings, ScoringConfig)
    return aggregate_budget([dict(p) for p in points], Path(out_json), Path(out_figure), settings,
                            scoring.bootstrap_samples, scoring.seed)
