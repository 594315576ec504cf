"""The features a run describes, as the descriptions stage writes them: where they are and how they are read."""

from __future__ import annotations

import pandas as pd

from pipeline.artifacts import ArtifactError, check_same_run, read_table, read_tensors
from pipeline.lazy import lazy_import
from pipeline.tasks.features.ood import SETS as OOD_SETS
from pipeline.tasks.features.ood import set_paths

torch = lazy_import("torch")  # loaded on first use: parsing the workflow does not import torch


def label_paths(target: str, split: str) -> dict[str, str]:
    """The features of a split ("train", "test") or of an out-of-distribution set (pipeline/tasks/features/ood.py)."""
    if split in OOD_SETS:
        return {k: v for k, v in set_paths(target, split).items() if k != "exemplars"}
    return {"labels": f"work/features/descriptions/{target}/{split}.parquet",
            "vectors": f"work/features/descriptions/{target}/{split}.vectors.safetensors"}


def load_features(paths: dict[str, str]) -> tuple[pd.DataFrame, torch.Tensor]:
    frame = read_table(paths["labels"], required=["row_id", "feature_id", "layer", "feature", "description"])
    check_same_run(paths["labels"], paths["vectors"])
    vectors = read_tensors(paths["vectors"]).get("vector")
    if vectors is None or len(vectors) != len(frame):
        raise ArtifactError(f"{paths['vectors']}: expected a 'vector' tensor with one row per feature of "
                            f"{paths['labels']} ({len(frame)})")
    return frame, vectors.float()
