"""What the features scores add up to: per variant and score a mean with its interval, paired differences,
the simulator's ratios to the reference descriptions (the paper's and the ceiling's)."""

from __future__ import annotations

import numpy as np
import pandas as pd

SCORE_COLUMNS = ("embedding_similarity", "lm_judge", "simulator_top", "simulator_top_signed", "simulator_top_random")

FLOORS = ("shuffled_descriptions", "constant_description")  # scores a description gets without its feature


def first_line(text: str) -> str:
    """Generation stops at the first line break (the stop string)."""
    return (text or "").strip().split("\n")[0].strip()


def summarise(aligned: dict[str, pd.DataFrame], samples: int, seed: int) -> tuple[dict, dict]:
    """Per frame and score column: mean with 95% bootstrap interval and standard error over the features that
    have the score; paired differences of the fine-tuned explainer against every other frame."""
    from pipeline.explainer.metrics import mean_with_interval, paired_mean_difference

    metrics, comparisons = {}, {}
    pairs = [("finetuned", name) for name in aligned if name not in ("finetuned", "reference")]
    pairs += [(name, floor) for floor in FLOORS if floor in aligned for name in aligned
              if name not in FLOORS and name != "finetuned"]  # every variant against each floor
    finetuned_texts = aligned["finetuned"]["prediction"].astype(str).to_numpy()
    for name, frame in aligned.items():
        texts = frame["prediction"].astype(str)
        metrics[name] = {"overall": {"n": int(len(frame)), "clusters": int(frame["cluster"].nunique()),
                                     "distinct_descriptions": int(texts.nunique()),
                                     "distinct_share": float(texts.nunique() / max(len(frame), 1))}}
        if name != "finetuned" and len(frame) == len(aligned["finetuned"]):  # how often the text itself differs
            metrics[name]["overall"]["differs_from_finetuned"] = float(
                (texts.to_numpy() != finetuned_texts).mean())
        for column in SCORE_COLUMNS:
            if column not in frame or (name == "reference" and not column.startswith("simulator")):
                continue
            scored = frame[column].notna().to_numpy()
            values = frame[column].to_numpy(dtype=float)[scored]
            if not len(values):
                continue
            summary = mean_with_interval(values, frame["cluster"].to_numpy()[scored], samples, seed)
            summary["n"] = int(scored.sum())
            summary["stderr_mean"] = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else None
            metrics[name]["overall"][column] = summary
    for left, right in pairs:
        entry = comparisons.setdefault(f"{left} - {right}", {"overall": {}})
        for column in SCORE_COLUMNS:
            if column not in metrics[left]["overall"] or column not in metrics[right]["overall"]:
                continue
            a, b = (aligned[left][column].to_numpy(dtype=float), aligned[right][column].to_numpy(dtype=float))
            both = ~np.isnan(a) & ~np.isnan(b)
            entry["overall"][column] = paired_mean_difference(a[both], b[both],
                                                              aligned[left]["cluster"].to_numpy()[both], samples, seed)
    return metrics, comparisons


def per_feature(aligned: dict[str, pd.DataFrame]) -> dict:
    return {name: {column: {key: value for key, value in zip(frame["row_key"], frame[column].round(4))
                            if not np.isnan(value)} for column in SCORE_COLUMNS if column in frame}
            for name, frame in aligned.items()}


def paper_ratios(aligned: dict[str, pd.DataFrame], samples: int, seed: int) -> dict:
    """The paper's `simulator_correlation_ratio`: per feature, its simulator score (|r| on the top exemplars)
    divided by the reference description's score, the score itself where that is 0 or missing; the mean over
    features with its interval. The reference's score is the archive's stored one (`label_score`) where the
    features come with it, else the reference description's own simulator score measured here."""
    from pipeline.explainer.metrics import mean_with_interval

    base = aligned["finetuned"]
    if "label_score" in base and base["label_score"].notna().any():
        label, source = base["label_score"].to_numpy(dtype=float), "the archive's stored label scores (all_label_scores)"
    elif "reference" in aligned and "simulator_top" in aligned["reference"]:
        label, source = aligned["reference"]["simulator_top"].to_numpy(dtype=float), (
            "the reference description's simulator_top on the same exemplars")
    else:
        return {}
    bare = np.isnan(label) | (label == 0)
    divisor = np.where(bare, 1.0, label)  # no label score: the score itself, as the paper's code does
    ratios = {}
    for name, frame in aligned.items():
        if name == "reference" or "simulator_top" not in frame:
            continue
        score = frame["simulator_top"].to_numpy(dtype=float)
        scored = ~np.isnan(score)
        if not scored.any():
            continue
        ratio = (score / divisor)[scored]
        ratios[name] = mean_with_interval(ratio, frame["cluster"].to_numpy()[scored], samples, seed) | {
            "n": int(scored.sum())}
    return {"label_scores": source, "ratios": ratios}


def ceiling_ratios(metrics: dict) -> dict:
    """Each frame's simulator score as a share of the reference descriptions' (the ceiling on this data)."""
    ceiling = metrics.get("reference", {}).get("overall", {})
    ratios = {}
    for name, entry in metrics.items():
        if name == "reference":
            continue
        for column, summary in entry["overall"].items():
            top = ceiling.get(column, {}).get("value") if isinstance(ceiling.get(column), dict) else None
            if column.startswith("simulator") and isinstance(summary, dict) and top:
                ratios.setdefault(name, {})[column] = summary["value"] / top
    return ratios
