"""A toy task defined outside the package, to show what adding a task takes (docs/adding-a-task.md): is the first
coordinate of a random vector in the target's width positive? The labels come from its own rule (toy.smk); training,
generation and scoring are the shared stages, with the change-prediction scores."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from pydantic import Field

from pipeline.artifacts import check_same_run, provenance, read_table, read_tensors, write_table, write_tensors
from pipeline.models import read_manifest
from pipeline.explainer.prompts import FORMAT_INSTRUCTION, VECTOR, change_answer
from pipeline.settings import Section, located
from pipeline.tasks import Examples, Stage, Task, register

QUESTION = "If the first coordinate of " + VECTOR + " is positive, the output changes. How would it change?"


@located("toy")
class ToyConfig(Section):
    """toy: is the first coordinate of a random vector positive? (a task added from outside the package)"""
    train_rows: int = Field(48, ge=1, description="random vectors of the training split")
    test_rows: int = Field(16, ge=1, description="random vectors of the test split")
    seed: int = Field(0, description="the training split's vectors; the test split's are seed + 1")


def build_labels(target_dir: str, cfg: ToyConfig, split: str, table_path: str, vectors_path: str,
                 settings: dict) -> None:
    """The split's random vectors in the target's width and whether each one's first coordinate is positive."""
    rows, seed = (cfg.train_rows, cfg.seed) if split == "train" else (cfg.test_rows, cfg.seed + 1)
    width = read_manifest(target_dir)["hidden_size"]
    vectors = torch.randn(rows, width, generator=torch.Generator().manual_seed(seed))
    frame = pd.DataFrame({"row_id": np.arange(rows), "positive": (vectors[:, 0] > 0).numpy()})
    prov = provenance(settings)  # one run id: the table and its vectors go together
    write_tensors({"vectors": vectors}, vectors_path, prov)
    write_table(frame, table_path, prov)


def label_paths(target: str, split: str) -> dict[str, str]:
    return {"labels": f"work/toy/labels/{target}/{split}.parquet",
            "vectors": f"work/toy/labels/{target}/{split}.vectors.safetensors"}


def examples(paths: dict[str, str], target_dir=None) -> Examples:
    check_same_run(paths["labels"], paths["vectors"])
    frame = read_table(paths["labels"], required=("row_id", "positive"))
    vectors = read_tensors(paths["vectors"])["vectors"].float()
    keys = [f"toy{row}" for row in frame["row_id"]]
    answers = [change_answer(bool(p), "positive" if p else "negative") for p in frame["positive"]]
    return Examples(frame, [QUESTION] * len(frame), answers, vectors, keys, keys,
                    frame["positive"].to_numpy(dtype=bool))


def variant_vectors(variant: str, rows: Examples, seed: int):
    return torch.zeros_like(rows.vectors) if variant == "no_vector" else rows.vectors


class Toy(Task):
    """A vector that is positive or negative; the explainer says which."""

    name, variants, format_instruction, settings = "toy", ("finetuned", "untrained", "no_vector"), FORMAT_INSTRUCTION, ToyConfig
    stages = {"toy_labels": Stage("tests.toy_task.task:build_labels", (ToyConfig,))}

    label_paths = staticmethod(label_paths)
    examples = staticmethod(examples)
    variant_vectors = staticmethod(variant_vectors)


TASK = register(Toy())
