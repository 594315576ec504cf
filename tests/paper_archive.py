"""The paper's released feature archive (SAE_feature_explanations_*) in its layout, small: decoder directions,
described features of both splits, and exemplar sequences as its ExemplarsWrapper reads them."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def write_directions(root: Path, layer: int, matrix: np.ndarray) -> None:
    (root / "features").mkdir(parents=True, exist_ok=True)
    with open(root / "features" / f"layer_{layer}.pkl", "wb") as handle:
        pickle.dump(matrix, handle)


def write_explanations(root: Path, splits: dict[str, list], listed: bool = False) -> None:
    """{split: [((layer, feature), {chosen_label, ...}), ...]}; `listed`: also {split}_layer_feature_idxs.pkl."""
    (root / "explanations").mkdir(parents=True, exist_ok=True)
    for split, items in splits.items():
        with open(root / "explanations" / f"{split}_explanations.pkl", "wb") as handle:
            pickle.dump(items, handle)
        if listed:
            with open(root / "explanations" / f"{split}_layer_feature_idxs.pkl", "wb") as handle:
                pickle.dump([key for key, _ in items], handle)


def write_exemplars(root: Path, layer: int, acts: np.ndarray, ids: np.ndarray, folder: str = "train") -> None:
    """{folder}/layer{L}/max_seq_acts.npy and max_seq_ids.npy: [rows, sequences, tokens]."""
    base = root / folder / f"layer{layer}"
    base.mkdir(parents=True, exist_ok=True)
    np.save(base / "max_seq_acts.npy", acts.astype(np.float32))
    np.save(base / "max_seq_ids.npy", ids.astype(np.int64))


def tiny_archive(root: Path, width: int, vocabulary: int, layer: int = 1, features: int = 12, tokens: int = 10,
                 sequences: int = 4, seed: int = 0) -> Path:
    """An archive over a whole (random) SAE of `features` directions at one layer: the first two thirds of the
    features are training ones, the rest test; each feature fires on the token id (feature + 100) wherever it
    occurs, its sequences left-padded by 2 with the paper's pad id (`vocabulary`)."""
    rng = np.random.default_rng(seed)
    write_directions(root, layer, rng.normal(size=(width, features)).astype(np.float32))
    items = [((layer, f), {"chosen_label": f"the token number {f}", "all_labels": [f"the token number {f}"],
                           "all_label_scores": {f"the token number {f}": 0.5}}) for f in range(features)]
    cut = features * 2 // 3
    write_explanations(root, {"train": items[:cut], "test": items[cut:]})
    for folder in ("train", "random_train"):
        ids = rng.integers(200, 1000, size=(features, sequences, tokens))
        acts = np.zeros(ids.shape)
        if folder == "train":
            for f in range(features):
                ids[f, :, 5] = f + 100
                acts[f, :, 5] = 1.0 + rng.random(sequences)
        ids[:, :, :2] = vocabulary
        write_exemplars(root, layer, acts, ids, folder)
    return root
