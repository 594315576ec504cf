"""The paper's metrics for change-prediction tasks, with cluster-bootstrap intervals and paired comparisons.

Definitions follow the paper's evaluator (evaluator/causal_exact_match_eval.py of its code):
- valid_format: the output holds "remain unchanged from <<<X>>>" or "change to <<<Y>>>" (`prompts.parse_answer`);
- exact_match: a valid output equals the reference once both are stripped, lower-cased and rid of outer full
  stops, and says the same verdict;
- content_match: a valid output's <<<content>>> equals the reference's (stripped, lower-cased);
- is_changed_f1 / is_unchanged_f1: F1 of the verdict over the valid outputs only (scikit-learn, 0 when undefined).
Rates are over all rows, so an invalid output counts as a miss. Rows are not independent (one pair or question
gives several rows), so each figure carries a 95% percentile bootstrap interval over clusters (all rows of a
cluster are drawn together; `scipy.stats.bootstrap`), and each comparison of two variants on the same rows is a
paired bootstrap of their difference (both scored on the same draw of clusters).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, f1_score

from pipeline.explainer.prompts import paper_normalize, parse_answer

METRICS = ("exact_match", "content_match", "is_changed_f1", "is_unchanged_f1", "valid_format")
RATES = ("exact_match", "content_match", "valid_format")
SPLITS = {"overall": None, "is_different=True": True, "is_different=False": False}
VERDICTS = ("changed", "unchanged", "no verdict")


def score_rows(predictions: list[str], references: list[str], changed) -> pd.DataFrame:
    """Per row: valid, the verdict said, exact and content match (the paper's definitions)."""
    parsed = [parse_answer(p) for p in predictions]
    reference = [parse_answer(r) for r in references]
    bad = [r for r, ref in zip(references, reference) if not ref.valid]
    if bad:
        raise ValueError(f"{len(bad)} reference answer(s) are not in the answer format, e.g. {bad[0]!r}")
    truth = np.asarray(changed, dtype=bool)
    if any(ref.changed != t for ref, t in zip(reference, truth)):
        raise ValueError("reference answers disagree with is_different")
    valid = np.array([p.valid for p in parsed])
    said = np.array([bool(p.changed) for p in parsed])
    return pd.DataFrame({
        "valid": valid,
        "said_changed": said & valid,
        "said_unchanged": ~said & valid,
        "truth": truth,
        "exact_match": [p.valid and p.changed == r.changed and paper_normalize(a) == paper_normalize(b)
                        for p, r, a, b in zip(parsed, reference, predictions, references)],
        "content_match": [p.valid and p.content == r.content for p, r in zip(parsed, reference)],
    })


def _counts(rows: pd.DataFrame, codes: np.ndarray, clusters: int) -> dict[str, np.ndarray]:
    """Per-cluster sufficient statistics of every metric."""
    def per_cluster(mask) -> np.ndarray:
        return np.bincount(codes, weights=np.asarray(mask, dtype=float), minlength=clusters)

    t, c, u = rows["truth"].to_numpy(), rows["said_changed"].to_numpy(), rows["said_unchanged"].to_numpy()
    counts = {"n": per_cluster(np.ones(len(rows))),
              "changed_tp": per_cluster(c & t), "changed_fp": per_cluster(c & ~t), "changed_fn": per_cluster(u & t),
              "unchanged_tp": per_cluster(u & ~t)}
    counts["unchanged_fp"], counts["unchanged_fn"] = counts["changed_fn"], counts["changed_fp"]
    for name in RATES:
        counts[name] = per_cluster(rows[name if name != "valid_format" else "valid"].to_numpy())
    return counts


def _from_counts(counts: dict[str, np.ndarray], metric: str, index=None, axis: int = -1):
    """The metric from (resampled) per-cluster counts; `index` picks clusters (with repeats) along `axis`."""
    def total(name):
        values = counts[name]
        return (values[index] if index is not None else values).sum(axis=axis)

    if metric in RATES:
        n = total("n")
        return np.divide(total(metric), n, out=np.zeros_like(n, dtype=float), where=n > 0)
    side = metric.removeprefix("is_").removesuffix("_f1")
    tp, fp, fn = total(f"{side}_tp"), total(f"{side}_fp"), total(f"{side}_fn")
    denominator = 2 * tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.zeros_like(denominator, dtype=float), where=denominator > 0)


def _bootstrap(statistic, clusters: int, samples: int, seed: int) -> dict:
    """95% percentile interval and standard error of `statistic(index, axis)` over resampled clusters."""
    from scipy.stats import bootstrap

    if clusters < 2:
        return {"ci": None, "se": None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a constant statistic (e.g. always 0) is a valid, degenerate result
        result = bootstrap((np.arange(clusters),), lambda idx, axis=-1: statistic(idx.astype(int), axis),
                           n_resamples=samples, vectorized=True, method="percentile",
                           rng=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return {"ci": [float(low), float(high)], "se": float(result.standard_error)}


def _point(rows: pd.DataFrame, metric: str) -> float:
    if metric in RATES:
        return float(rows[metric if metric != "valid_format" else "valid"].mean())
    valid = rows[rows["valid"]]
    if valid.empty:
        return 0.0
    positive = metric == "is_changed_f1"
    return float(f1_score(valid["truth"], valid["said_changed"], pos_label=positive, zero_division=0))


def confusion(rows: pd.DataFrame) -> list[list[int]]:
    """Rows: truth changed / unchanged; columns: said changed / unchanged / no verdict (invalid output)."""
    truth = np.where(rows["truth"], "changed", "unchanged")
    said = np.where(rows["said_changed"], "changed", np.where(rows["said_unchanged"], "unchanged", "no verdict"))
    return confusion_matrix(truth, said, labels=list(VERDICTS))[:2].tolist()


def _codes(clusters) -> tuple[np.ndarray, int]:
    codes, uniques = pd.factorize(pd.Series(clusters).astype(str))
    return codes, len(uniques)


def metrics_of_rows(rows: pd.DataFrame, clusters, samples: int, seed: int) -> dict:
    codes, count = _codes(clusters)
    counts = _counts(rows, codes, count)
    result = {"n": int(len(rows)), "clusters": count, "confusion": confusion(rows)}
    for metric in METRICS:
        value = _point(rows, metric)
        assert np.isclose(value, _from_counts(counts, metric)), metric  # the bootstrap statistic is the same metric
        result[metric] = {"value": value} | _bootstrap(
            lambda index, axis, m=metric: _from_counts(counts, m, index, axis), count, samples, seed)
    return result


SUBSET_PREFIX = "subset_"  # a boolean column subset_NAME of the predictions adds the split "NAME" (its True rows)


def splits(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Row masks of every split scored: overall, changed, unchanged, and one per `subset_` column of the frame
    (act_patch: `counterfactual_answer`, the changed rows whose new token is the counterfactual's answer)."""
    changed = frame["is_different"].to_numpy().astype(bool)
    masks = {name: np.ones(len(frame), dtype=bool) if flag is None else changed == flag for name, flag in SPLITS.items()}
    for column in frame.columns:
        if str(column).startswith(SUBSET_PREFIX):
            masks[str(column).removeprefix(SUBSET_PREFIX)] = frame[column].to_numpy().astype(bool)
    return masks


def change_metrics(frame: pd.DataFrame, samples: int = 1000, seed: int = 0) -> dict:
    """Metrics overall, on changed / unchanged rows and on each `subset_` split of one variant's predictions.

    `frame` has prediction, reference, is_different and cluster (the pair or question a row comes from)."""
    rows = score_rows(frame["prediction"].tolist(), frame["reference"].tolist(), frame["is_different"])
    result = {}
    for name, part in splits(frame).items():
        if part.any():
            result[name] = metrics_of_rows(rows[part].reset_index(drop=True), frame["cluster"].to_numpy()[part],
                                           samples, seed)
    return result


def paired_differences(first: pd.DataFrame, second: pd.DataFrame, samples: int = 1000, seed: int = 0) -> dict:
    """first - second for every metric, overall and per split, with a paired cluster-bootstrap interval.

    Both frames hold the same rows in the same order (checked by `row_key`)."""
    if not np.array_equal(first["row_key"].to_numpy(), second["row_key"].to_numpy()):
        raise ValueError("paired comparison needs both variants scored on the same rows in the same order")
    rows_a = score_rows(first["prediction"].tolist(), first["reference"].tolist(), first["is_different"])
    rows_b = score_rows(second["prediction"].tolist(), second["reference"].tolist(), second["is_different"])
    result = {}
    for name, part in splits(first).items():
        if not part.any():
            continue
        codes, count = _codes(first["cluster"].to_numpy()[part])
        a = _counts(rows_a[part].reset_index(drop=True), codes, count)
        b = _counts(rows_b[part].reset_index(drop=True), codes, count)
        result[name] = {}
        for metric in METRICS:
            def statistic(index, axis, m=metric):
                return _from_counts(a, m, index, axis) - _from_counts(b, m, index, axis)

            difference = _point(rows_a[part], metric) - _point(rows_b[part], metric)
            result[name][metric] = {"difference": float(difference)} | _bootstrap(statistic, count, samples, seed)
    return result


def mean_with_interval(values, clusters, samples: int, seed: int) -> dict:
    """Mean of per-row scores with a 95% cluster-bootstrap interval and standard error."""
    values = np.asarray(values, dtype=float)
    codes, count = _codes(clusters)
    sums, sizes = np.bincount(codes, values, count), np.bincount(codes, minlength=count).astype(float)
    return {"value": float(values.mean()) if len(values) else None} | _bootstrap(
        lambda index, axis: sums[index].sum(axis=axis) / sizes[index].sum(axis=axis), count, samples, seed)


def paired_mean_difference(first, second, clusters, samples: int, seed: int) -> dict:
    """mean(first) - mean(second) over the same rows, with a paired 95% cluster-bootstrap interval."""
    result = mean_with_interval(np.asarray(first, dtype=float) - np.asarray(second, dtype=float), clusters,
                                samples, seed)
    return {"difference": result.pop("value")} | result


def score_variants(frames: dict[str, pd.DataFrame], samples: int, seed: int, reference: str = "finetuned",
                   prior_cell: tuple[str, ...] = ()) -> dict:
    """Metrics of every variant, the paired difference of `reference` against each other variant, and how each
    variant's verdict relates to the structure prior's (`verdict_vs_prior`, per cell of `prior_cell` too)."""
    metrics = {name: change_metrics(frame, samples, seed) for name, frame in frames.items()}
    comparisons = {f"{reference} - {name}": paired_differences(frames[reference], frame, samples, seed)
                   for name, frame in frames.items() if name != reference}
    return {"metrics": metrics, "comparisons": comparisons} | (
        {"verdict_vs_prior": verdict_vs_prior(frames, cell=prior_cell)} if "structure_prior" in frames else {})


def verdict_vs_prior(frames: dict[str, pd.DataFrame], prior: str = "structure_prior",
                     cell: tuple[str, ...] = ()) -> dict:
    """Per variant, on the rows both answered: the share whose verdict (changed or not) equals the prior's, the
    rows where they differ, and on those how often each is right; the changes each misses and the changes each
    claims that did not happen. A verdict that is the prior's, bar a few rows it gets wrong, is learned from the
    question's text: the vector told it nothing about whether the output changes. With the columns of the prior's
    cell (`cell`, the task's `prior_cell`: act_patch's token type and layer window), the same per cell
    (`by_cell`), so that a reader sees whether the rows that differ sit in cells the prior answers one way or in
    the mixed ones."""
    base = frames[prior].set_index("row_key")
    out = {}
    for name, frame in frames.items():
        if name == prior or "is_different" not in frame:
            continue
        rows = frame.set_index("row_key")
        common = rows.index.intersection(base.index)
        said = np.array([parse_answer(p).changed for p in rows.loc[common, "prediction"]], dtype=object)
        guess = np.array([parse_answer(p).changed for p in base.loc[common, "prediction"]], dtype=object)
        truth = rows.loc[common, "is_different"].astype(bool).to_numpy()
        out[name] = _agreement(said, guess, truth)
        if cell and all(column in rows for column in cell) and len(common):
            keys = [" ".join(_cell_text(v) for v in values) for values in zip(*(rows.loc[common, c] for c in cell))]
            groups: dict[str, list[int]] = {}
            for position, key in enumerate(keys):
                groups.setdefault(key, []).append(position)
            out[name]["by_cell"] = {key: _agreement(said[index], guess[index], truth[index]) | {
                "changed_share": float(truth[index].mean()),
                "prior_says_changed": float(np.mean([g is True for g in guess[index]]))}
                for key, index in sorted(groups.items())}
    return out


def _cell_text(value) -> str:
    """A cell's part as text: a layer window [12, ..., 17] as "L12-17"."""
    if isinstance(value, (list, tuple, np.ndarray)):
        values = [int(v) for v in value]
        return f"L{values[0]}-{values[-1]}" if values else "L-"
    return str(value)


def _agreement(said: np.ndarray, guess: np.ndarray, truth: np.ndarray) -> dict:
    """Agreement of two verdict columns (True, False or None: no verdict) and each one's errors against `truth`:
    missed changes (changed rows not called changed; no verdict counts) and changes called on unchanged rows."""
    differ = said != guess
    out = {"rows": int(len(truth)), "agreement": float(1 - differ.mean()) if len(truth) else None,
           "disagreements": int(differ.sum()), "variant_right": int((said[differ] == truth[differ]).sum()),
           "prior_right": int((guess[differ] == truth[differ]).sum())}
    for who, verdicts in (("variant", said), ("prior", guess)):
        called = np.array([v is True for v in verdicts], dtype=bool)
        out[f"{who}_missed_changes"] = int((~called & truth).sum())
        out[f"{who}_false_changes"] = int((called & ~truth).sum())
    return out


def run_summary(scoring_cfg, prediction_paths: dict[str, str], trained_dir, explainer_dir, target_dir,
                settings: dict) -> dict:
    """The parts every results file shares: the training log's summary and the provenance of the scores."""
    import json
    from pathlib import Path

    from pipeline.artifacts import provenance, read_provenance
    from pipeline.models import read_manifest

    log_path = Path(trained_dir) / "training_log.json" if trained_dir else None
    if log_path is not None and log_path.is_file():
        training_log = json.loads(log_path.read_text())
        losses = training_log["losses"]
        meta_path = Path(trained_dir) / "explainer.json"
        trained = json.loads(meta_path.read_text()).get("provenance", {}).get("settings", {}) if meta_path.exists() else {}
        training = {k: v for k, v in training_log.items() if k != "losses"} | {
            "final_loss": losses[-1]["loss"] if losses else None, "seed": trained.get("training", {}).get("seed")}
    else:  # a released explainer (explainer.checkpoint): not trained here
        training = {"trained_here": False, "released_checkpoint": str(trained_dir) if trained_dir else
                    "a hub id (explainer.checkpoint; not a local file)"}
    return {
        "training": training,
        "provenance": provenance(settings, {"explainer": read_manifest(explainer_dir)["source"],
                                            "target": read_manifest(target_dir)["source"]})
                      | {"upstream_config_hashes": {v: read_provenance(p).get("config_hash")
                                                    for v, p in prediction_paths.items()}},
    }
