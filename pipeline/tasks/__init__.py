"""The task interface: what a task module tells the shared stages (pipeline/explainer/explain.py).

A task module (act_patch, input_ablation, ...) builds its own labels with its own rules, and
registers a `Task` that says how to read them: its (question, answer, optional vector) examples
with a row key and a cluster key, the explainer variants it is scored with, the rows it trains
on, its baselines, its counts and its report figures. This module imports no other pipeline
module, so a task's label stages do not depend on the training or generation code.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from pipeline.lazy import lazy_import

torch = lazy_import("torch")  # loaded on first use: parsing the workflow does not import torch

# Task modules register themselves on import; the registry lists where each one lives.
BUILT_IN = {"act_patch": "pipeline.tasks.act_patch.task", "input_ablation": "pipeline.tasks.input_ablation",
            "features": "pipeline.tasks.features.task", "circuits": "pipeline.tasks.circuits"}
# Tasks from outside the package (config `task_modules`) reach the processes the jobs start through the environment.
ADDED_ENV = "EXPLAIN_TASK_MODULES"
TASK_MODULES = BUILT_IN | json.loads(os.environ.get(ADDED_ENV) or "{}")


def add_task_modules(modules: dict[str, str]) -> None:
    """Tasks defined outside this package (config `task_modules`: task name -> an importable module that registers
    it), for this process and the processes it starts."""
    for name, module in modules.items():
        if name in BUILT_IN:
            raise ValueError(f"task_modules.{name}: '{name}' is a built-in task ({BUILT_IN[name]}); give another name")
        if importlib.util.find_spec(module.split(".")[0]) is None:
            raise ValueError(f"task_modules.{name}: no module {module} on the Python path (PYTHONPATH)")
        TASK_MODULES[name] = module
    added = {name: module for name, module in TASK_MODULES.items() if name not in BUILT_IN}
    if added:
        os.environ[ADDED_ENV] = json.dumps(added)


@dataclass
class Examples:
    """Label rows of one split as the explainer sees them."""

    frame: pd.DataFrame  # the label rows, as the task reads them
    questions: list[str]
    answers: list[str]
    vectors: torch.Tensor | None  # one per row, or None for a text-only task
    row_keys: list[str]  # stable id of each row
    clusters: list[str]  # rows that share a cluster (a pair, a question) are resampled together
    labels: np.ndarray | None  # the changed/unchanged truth of each row (None where the task has no verdict)
    columns: dict[str, list] = field(default_factory=dict)  # carried into the predictions table

    def subset(self, index) -> "Examples":
        index = np.asarray(index, dtype=np.int64)
        pick = lambda values: [values[i] for i in index]  # noqa: E731
        return Examples(self.frame.iloc[index].reset_index(drop=True), pick(self.questions), pick(self.answers),
                        self.vectors[torch.from_numpy(index)] if self.vectors is not None else None,
                        pick(self.row_keys), pick(self.clusters),
                        self.labels[index] if self.labels is not None else None,
                        {name: pick(values) for name, values in self.columns.items()})

    def concat(self, other: "Examples") -> "Examples":
        """These rows, then `other`'s (the same columns; both with vectors or both without)."""
        vectors = None if self.vectors is None else torch.cat([self.vectors, other.vectors])
        labels = None if self.labels is None else np.concatenate([self.labels, other.labels])
        return Examples(pd.concat([self.frame, other.frame], ignore_index=True), self.questions + other.questions,
                        self.answers + other.answers, vectors, self.row_keys + other.row_keys,
                        self.clusters + other.clusters, labels,
                        {name: values + other.columns[name] for name, values in self.columns.items()})


@dataclass(frozen=True)
class Stage:
    """A stage: the function it calls ("module:function") and the settings its result depends on, `takes`: a section
    model (all of its place in config.yaml), a field of one (`Model.key("name")`) or a per-job key ("models.{model}":
    the job's wildcards fill it). Its cache key is those settings less the fields marked `execution`
    (pipeline/stages.py); `task`: whose overrides of the shared sections apply; `modules`: what it loads by name."""
    entry: str
    takes: tuple = ()
    task: str | None = None
    modules: tuple[str, ...] = ()

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(item if isinstance(item, str) else item.at for item in self.takes)


@dataclass(frozen=True)
class Task:
    name: str
    variants: tuple[str, ...]  # explainer variants the generate rule writes; "finetuned" first
    format_instruction: str  # appended to the untrained explainer's questions (zero-shot)
    label_paths: Callable[[str, str], dict[str, str]]  # (target, split) -> label artifact paths
    examples: Callable[[dict[str, str], str], Examples]  # (label paths, target dir) -> examples
    # (scored rows, train paths, test paths, target dir) -> (baseline prediction frames, their descriptions)
    baselines: Callable[[pd.DataFrame, dict[str, str], dict[str, str], str], tuple[dict, dict]]
    count_paths: Callable[[str], dict[str, str]] = lambda target: {}  # extra artifacts whose counts are reported
    # (examples, the task's config section, training seed, target dir) -> the rows training sees
    training_rows: Callable[[Examples, dict, int, str], Examples] = lambda examples, settings, seed, target_dir: examples
    variant_vectors: Callable[[str, Examples, int], torch.Tensor | None] = lambda v, e, seed: e.vectors
    training_keys: tuple = ()  # the task's own settings training depends on (as Stage.takes names them)
    figures: tuple[str, ...] = ("metrics.png", "confusion.png", "loss.png")  # the report's files per run
    # Variants the task answers itself, not with the explainer: variant -> fn(examples, generation_cfg,
    # explainer_cfg, explainer_dir, target_dir) -> predictions table (row_key, cluster, prediction, reference, ...).
    custom_variants: dict[str, Callable] = field(default_factory=dict)
    # (frames by variant and baseline, bootstrap samples, seed, settings=the task's section, inputs=score_inputs)
    # -> {"metrics", "comparisons", ...}; None: the change-prediction metrics of pipeline/explainer/metrics.py.
    score_frames: Callable[..., dict] | None = None
    score_keys: tuple = ()  # the task's own settings its scores depend on (as Stage.takes names them)
    # (target, the task's settings) -> extra input files of the score rule (a simulator model, ...)
    score_inputs: Callable[[str, object], dict[str, str]] = lambda target, section: {}
    # Evaluation sets besides the test split (features: the out-of-distribution sets), each answered by every
    # variant (rule {task}_generate_{set}) and scored by the task: all it can have, and those a config section runs.
    eval_set_names: tuple[str, ...] = ()
    eval_sets: Callable[[object], tuple[str, ...]] = lambda section: ()
    # (split, metric) of the results file's finetuned metrics that the self-versus-other matrix compares
    headline: tuple[str, str] = ("overall", "is_changed_f1")
    # The scored rows' columns the structure prior's cell is made of: verdict_vs_prior is also broken down by them
    prior_cell: tuple[str, ...] = ()
    paper_suffix: str = " "  # what ends the paper's string template of this task's questions (prompt_format: paper)
    # target key -> the folder the shared stages read as the target (its manifest.json gives hidden_size and
    # source); None: the language model resources/models/{target}
    target_dir: Callable[[str], str] | None = None
    # The task's own stages (its label rules, figures, diagnostics): stage name -> Stage; the rules' params: code_of,
    # settings_of.
    stages: dict[str, "Stage"] = field(default_factory=dict)
    # Scoring that is heavy (judge API calls, a simulator LM): its score job goes to the cluster like the GPU stages;
    # otherwise it is a localrule that runs beside Snakemake.
    heavy_score: bool = False
    # (the task's settings, the names of the rules about to run) -> None, or an error naming the setting of an
    # external server (an LM judge's) that those rules will call and that does not answer: checked before any job.
    check_servers: Callable[[object, set[str]], None] = lambda section, rules: None
    # The task's section of config.yaml (a pipeline.settings.Section, declared with the task); None: it has none.
    settings: type | None = None
    # The field's baselines this task can have (BASELINE_VARIANTS: in-context needs questions an untrained explainer
    # can answer; the frozen-explainer ones need a vector to map).
    baseline_variants: tuple[str, ...] = ()


# The field's baselines: variants a run adds where its task section lists them (`baselines`), scored beside the
# fine-tuned explainer with paired differences. in_context_k: the untrained explainer with k solved examples of the
# training split in its prompt (each with its vector at its own placeholder); map_only: the explainer frozen and only
# the vector's map trained (from the fitted maps), same rows and steps; affine: the maps frozen too, only a scale and a
# shift of the placeholder's embedding trained (d + 1 parameters; arXiv 2602.10352).
IN_CONTEXT = {"in_context_4": 4, "in_context_8": 8}
FROZEN_BASELINES = {"map_only": "map", "affine": "affine"}  # variant -> training.method of its own training job
BASELINE_VARIANTS = (*IN_CONTEXT, *FROZEN_BASELINES)


def baselines_of(spec: "Task", section) -> tuple[str, ...]:
    """The baseline variants a task's settings (its section, typed) ask for, each checked against what the task can
    have."""
    asked = tuple(getattr(section, "baselines", None) or ())
    wrong = [b for b in asked if b not in spec.baseline_variants]
    if wrong:
        raise ValueError(f"{spec.name}.baselines: {wrong} are not baselines of this task (it can have "
                         f"{list(spec.baseline_variants) or 'none'})")
    return asked


_TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    _TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    if name not in TASK_MODULES:
        raise ValueError(f"unknown task '{name}'; tasks: {sorted(TASK_MODULES)}")
    importlib.import_module(TASK_MODULES[name])
    if name not in _TASKS:
        raise ValueError(f"task module {TASK_MODULES[name]} registers no task named '{name}' (pipeline.tasks.register)")
    return _TASKS[name]


def all_variants() -> tuple[str, ...]:
    return tuple(sorted({v for name in TASK_MODULES for v in get_task(name).variants} | set(BASELINE_VARIANTS)))
