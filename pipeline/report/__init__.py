"""The summary table and the Markdown results tables across results files (and `python -m pipeline.report`).

The summary table has one row per (task, explainer, target, variant) with every metric, its interval, and exact
match on the rows whose output changed; the results tables render every figure of results and seeds files with its
interval, commit and date. Each run's figures are the explainer's (pipeline/explainer/figures.py); a task's own figures
are its own (pipeline.tasks.act_patch.figures.py, pipeline/tasks/features/figures.py).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.artifacts import atomic_path, provenance, read_json, write_table


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
    each seed's figure, and * where every seed's own interval excludes 0 (pipeline/report/seeds.py)."""
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
        texts = {name: parts["overall"] for name, parts in result["metrics"].items()
                 if "distinct_descriptions" in (parts.get("overall") or {})}
        if texts:  # the features task: does the description change with the vector?
            out += ["Distinct descriptions over the test features (the share that differ from the fine-tuned "
                    "explainer's, feature by feature): " + "; ".join(
                        f"{name} {o['distinct_descriptions']} of {o['n']}"
                        + (f" ({o['differs_from_finetuned']:.0%} differ)" if "differs_from_finetuned" in o else "")
                        for name, o in texts.items()) + ".", ""]
        verdicts = result.get("verdict_vs_prior") or {}
        if verdicts:
            out += ["Verdicts against the structure prior's: " + "; ".join(
                f"{name} agrees on {v['agreement']:.1%} of {v['rows']} rows, differs on {v['disagreements']} "
                f"(right on {v['variant_right']}, the prior on {v['prior_right']})" + (
                    f", misses {v['variant_missed_changes']} changes and calls {v['variant_false_changes']} that did "
                    f"not happen (the prior {v['prior_missed_changes']} and {v['prior_false_changes']})"
                    if "variant_missed_changes" in v else "")
                for name, v in verdicts.items() if v["agreement"] is not None) + ".", ""]
            cells = {cell: c for cell, c in (verdicts.get("finetuned") or {}).get("by_cell", {}).items()
                     if c["variant_missed_changes"] or c["variant_false_changes"] or c["disagreements"]}
            if cells:
                out += ["The fine-tuned verdict's errors by the prior's cell (missed changes / changes called that did "
                        "not happen; the prior's in brackets): " + "; ".join(
                            f"{cell} ({c['rows']} rows, {c['changed_share']:.0%} changed): {c['variant_missed_changes']}"
                            f" / {c['variant_false_changes']} [{c['prior_missed_changes']} / {c['prior_false_changes']}]"
                            for cell, c in cells.items()) + ".", ""]
    return "\n".join(out) + "\n"


def write_results_tables(result_paths: list[str], out_path) -> None:
    with atomic_path(out_path) as tmp:
        Path(tmp).write_text(results_tables(result_paths))
