"""The features baselines: the nearest training feature's description, the structure prior (the best single
description per layer: the question names only the layer) and two floors that do not depend on the feature."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.lazy import lazy_import
from pipeline.tasks.features.labels import load_features

torch = lazy_import("torch")  # loaded on first use: parsing the workflow does not import torch


def _central(embedded: np.ndarray, rows) -> int:
    """The row (of `rows`) whose description is most similar on average to the others'."""
    similarity = embedded[rows] @ embedded[rows].T
    return int(np.asarray(rows)[int(similarity.mean(axis=1).argmax())])


def layer_prior(train_frame: pd.DataFrame) -> tuple[dict[int, str], str]:
    """Per layer, the training description the judge finds most similar on average to the layer's others: the
    best single answer the question's text (which names only the layer) allows; and the same over all layers
    (the constant description, a floor that does not depend on the feature)."""
    from pipeline.tasks.features.judge import EmbeddingSimilarityJudge

    descriptions = train_frame["description"].astype(str)
    embedded = EmbeddingSimilarityJudge().embed(descriptions.tolist())
    prior = {int(layer): str(descriptions.iloc[_central(embedded, rows)])
             for layer, rows in train_frame.groupby("layer").indices.items()}
    return prior, str(descriptions.iloc[_central(embedded, np.arange(len(descriptions)))])


def derangement(count: int, seed: int) -> np.ndarray:
    """A seeded permutation of range(count) that moves every index (none when count < 2)."""
    order = np.random.default_rng(seed).permutation(count)
    for i in range(count if count > 1 else 0):
        if order[i] == i:  # swapping with the next index fixes neither of the two
            j = (i + 1) % count
            order[i], order[j] = order[j], order[i]
    return order


def baseline_frames(scored: pd.DataFrame, train_paths: dict[str, str], test_paths: dict[str, str],
                    target_dir=None, seed: int = 0) -> tuple[dict, dict]:
    """The structure prior (layer_prior), the description of the training feature whose direction has the
    largest dot product with the query's, over all layers and within the query's layer, and two floors: the
    fine-tuned explainer's descriptions shuffled among the features, and one constant description."""
    train_frame, train_vectors = load_features(train_paths)
    test_frame, test_vectors = load_features(test_paths)
    position = {key: i for i, key in enumerate(test_frame["feature_id"].astype(str))}
    queries = test_vectors[[position[key] for key in scored["row_key"]]]
    similarity = queries @ train_vectors.T
    descriptions = train_frame["description"].astype(str).to_numpy()
    same_layer = torch.tensor(np.asarray(scored["layer"], dtype=np.int64))[:, None] == torch.tensor(
        train_frame["layer"].to_numpy(dtype=np.int64))[None, :]
    frames = {"nearest_neighbor": scored.assign(variant="nearest_neighbor",
                                                prediction=descriptions[similarity.argmax(1).numpy()])}
    within = similarity.masked_fill(~same_layer, float("-inf"))
    frames["nearest_neighbor_layer"] = scored.assign(variant="nearest_neighbor_layer",
                                                     prediction=descriptions[within.argmax(1).numpy()])
    prior, constant = layer_prior(train_frame)
    frames["structure_prior"] = scored.assign(variant="structure_prior",
                                              prediction=[prior.get(int(layer), constant) for layer in scored["layer"]])
    frames["shuffled_descriptions"] = scored.assign(
        variant="shuffled_descriptions", prediction=scored["prediction"].to_numpy()[derangement(len(scored), seed)])
    frames["constant_description"] = scored.assign(variant="constant_description", prediction=constant)
    return frames, {"nearest_neighbor": f"{len(train_frame)} training features, all layers",
                    "nearest_neighbor_layer": f"{len(train_frame)} training features, the query's layer only",
                    "structure_prior": {str(layer): text for layer, text in prior.items()},
                    "shuffled_descriptions": "the fine-tuned explainer's descriptions, each given to another feature "
                                             "(a seeded derangement): a floor",
                    "constant_description": {"text": constant, "what": "the training description closest on "
                                             "average to all others, given to every feature: a floor"}}
