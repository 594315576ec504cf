"""The paper's metrics for change-prediction tasks, each with a standard error.

- exact_match: normalised prediction equals the reference, counted only for valid-format outputs;
- content_match: the text inside <<<...>>> equals the reference's;
- is_changed_f1 / is_unchanged_f1: F1 of the changed (resp. unchanged) verdict; an off-format
  output's verdict is read from its wording ("... remain unchanged ..."), and one with no
  verdict counts as neither;
- valid_format: share of outputs in one of the two answer forms.
Means carry the binomial standard error; F1 scores a seeded bootstrap standard error.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.prompts import normalize, parse_answer


def f1(truth: np.ndarray, predicted: np.ndarray) -> float | None:
    positives = truth.sum() + predicted.sum()
    if positives == 0:
        return None
    return float(2 * (truth & predicted).sum() / positives)


def _mean(values: np.ndarray) -> dict:
    p = float(values.mean()) if len(values) else float("nan")
    return {"value": p, "se": float(np.sqrt(p * (1 - p) / len(values))) if len(values) else None}


def _f1_with_se(truth: np.ndarray, predicted: np.ndarray, samples: int, rng: np.random.Generator) -> dict:
    value = f1(truth, predicted)
    if value is None:
        return {"value": None, "se": None}
    draws = rng.integers(0, len(truth), size=(samples, len(truth)))
    boot = [f1(truth[d], predicted[d]) for d in draws]
    boot = np.array([b for b in boot if b is not None])
    return {"value": value, "se": float(boot.std(ddof=1)) if len(boot) > 1 else None}


def change_metrics(predictions: list[str], references: list[str], changed: np.ndarray, samples: int = 1000,
                   seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    parsed = [parse_answer(p) for p in predictions]
    reference = [parse_answer(r) for r in references]
    valid = np.array([p.valid for p in parsed])
    exact = np.array([p.valid and normalize(a) == normalize(b) for p, a, b in zip(parsed, predictions, references)])
    content = np.array([p.content is not None and normalize(p.content) == normalize(r.content)
                        for p, r in zip(parsed, reference)])
    said_changed = np.array([p.changed is True for p in parsed])
    said_unchanged = np.array([p.changed is False for p in parsed])
    changed = np.asarray(changed, dtype=bool)
    return {
        "n": int(len(predictions)),
        "exact_match": _mean(exact),
        "content_match": _mean(content),
        "is_changed_f1": _f1_with_se(changed, said_changed, samples, rng),
        "is_unchanged_f1": _f1_with_se(~changed, said_unchanged, samples, rng),
        "valid_format": _mean(valid),
    }


def change_metrics_by_label(frame: pd.DataFrame, samples: int, seed: int) -> dict:
    """Metrics overall and split by whether the reference says the output changed."""
    result = {"overall": change_metrics(frame["prediction"].tolist(), frame["reference"].tolist(),
                                        frame["is_different"].to_numpy(), samples, seed)}
    for flag in (True, False):
        part = frame[frame["is_different"] == flag]
        if len(part):
            result[f"is_different={flag}"] = change_metrics(part["prediction"].tolist(), part["reference"].tolist(),
                                                            part["is_different"].to_numpy(), samples, seed)
    return result


def run_summary(scoring_cfg, prediction_paths: dict[str, str], trained_dir, explainer_dir, target_dir) -> dict:
    """The parts every results file shares: the training log's summary and the provenance of the scores."""
    import json
    from pathlib import Path

    from pipeline.artifacts import provenance, read_provenance
    from pipeline.models import read_manifest

    training_log = json.loads((Path(trained_dir) / "training_log.json").read_text())
    losses = training_log["losses"]
    return {
        "training": {k: v for k, v in training_log.items() if k != "losses"}
                    | {"final_loss": losses[-1]["loss"] if losses else None},
        "provenance": provenance({"scoring": scoring_cfg.__dict__},
                                 {"explainer": read_manifest(explainer_dir)["source"],
                                  "target": read_manifest(target_dir)["source"]})
                      | {"upstream_config_hashes": {v: read_provenance(p).get("config_hash")
                                                    for v, p in prediction_paths.items()}},
    }
