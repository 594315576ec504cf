"""The self-versus-other matrix: one row per explainer x target pair, and paired differences on the same rows."""

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.report.matrix import build_matrix


def features_pair(folder, name, keys, scores):
    """A features run's finetuned answers and the parts of its results file the matrix reads."""
    predictions = pd.DataFrame({"row_key": keys, "cluster": keys, "prediction": [f"{name} says {k}" for k in keys],
                                "reference": ["ref"] * len(keys)})
    predictions.to_parquet(folder / f"{name}.parquet")
    values = np.asarray(scores, dtype=float)
    result = {"metrics": {"finetuned": {"overall": {"embedding_similarity": {
        "value": float(values.mean()), "ci": [float(values.min()), float(values.max())], "n": len(keys)}}}},
              "per_feature": {"finetuned": {"embedding_similarity": dict(zip(keys, scores))}}}
    (folder / f"{name}.json").write_text(json.dumps(result))
    return str(folder / f"{name}.json"), str(folder / f"{name}.parquet")


def test_matrix_pairs_each_target_explaining_itself_with_each_other_explainer(tmp_path):
    rng = np.random.default_rng(0)
    keys = {"a": [f"a{i}" for i in range(30)], "b": [f"b{i}" for i in range(30)]}
    results, predictions = {}, {}
    for explainer in ("a", "b"):
        for target in ("a", "b"):
            bonus = 0.2 if explainer == target else 0.0  # each model explains itself better, by construction
            scores = list(np.round(rng.uniform(0, 0.5, 30) + bonus, 4))
            results[(explainer, target)], predictions[(explainer, target)] = features_pair(
                tmp_path, f"{explainer}_{target}", keys[target], scores)
    frame = build_matrix("features", ["a", "b"], results, predictions, 200, 0, tmp_path / "m.parquet",
                         tmp_path / "m.png", {"matrix": {"models": ["a", "b"]}})
    assert len(frame) == 4 and set(frame["metric"]) == {"embedding_similarity"}
    for row in frame.itertuples():
        per_row = json.loads(open(results[(row.explainer, row.target)]).read())["per_feature"]["finetuned"]
        assert row.value == pytest.approx(np.mean(list(per_row["embedding_similarity"].values())))
        if row.self:
            assert np.isnan(row.self_minus_this)
            continue
        own = frame[(frame["explainer"] == row.target) & (frame["target"] == row.target)]["value"].iloc[0]
        assert row.self_minus_this == pytest.approx(own - row.value)
        assert row.difference_ci_low < row.self_minus_this < row.difference_ci_high and row.difference_ci_low > 0
    assert pd.read_parquet(tmp_path / "m.parquet").equals(frame) and (tmp_path / "m.png").stat().st_size > 0


def test_matrix_refuses_explainers_that_answered_different_rows(tmp_path):
    results, predictions = {}, {}
    for explainer in ("a", "b"):
        for target in ("a", "b"):
            keys = [f"{target}{i}" for i in range(5 if explainer == target else 4)]
            results[(explainer, target)], predictions[(explainer, target)] = features_pair(
                tmp_path, f"{explainer}_{target}", keys, [0.1] * len(keys))
    with pytest.raises(ValueError, match="answered different test rows"):
        build_matrix("features", ["a", "b"], results, predictions, 50, 0, tmp_path / "m.parquet", tmp_path / "m.png",
                     {})
    assert not (tmp_path / "m.parquet").exists()
