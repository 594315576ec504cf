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
from types import MappingProxyType
from typing import Mapping

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


ROLE_SEP = "__"  # a rule's named input `role__key`: a file of a group (a split's labels, the in-context pool, ...)


def with_role(role: str, paths: Mapping[str, str]) -> dict[str, str]:
    """`paths` named for a rule's `input:` as files of `role` (read back by `of_role`)."""
    clash = [key for key in paths if ROLE_SEP in key]
    if clash or ROLE_SEP in role:
        raise ValueError(f"inputs {role}: {clash or [role]}: a name may not contain '{ROLE_SEP}'")
    return {f"{role}{ROLE_SEP}{key}": path for key, path in paths.items()}


def of_role(inputs: Mapping, role: str) -> dict[str, str]:
    """The files of `role` among a job's named inputs, by key."""
    head = f"{role}{ROLE_SEP}"
    return {name[len(head):]: str(path) for name, path in inputs.items()
            if name.startswith(head) and isinstance(path, (str, os.PathLike))}


@dataclass
class ScoreInputs:
    """The score job's input files by role: `train` and `test` (each split's label artifacts, kind -> path), `counts`
    (artifacts whose recorded counts the results report), `own` (the task's own scoring inputs: Task.score_inputs)
    and `evals` (evaluation set -> variant -> its predictions). A Snakemake rule takes flat named inputs: `named()`
    makes the names and `of()` reads them back, so the rule and the stage cannot disagree about them."""

    train: dict[str, str] = field(default_factory=dict)
    test: dict[str, str] = field(default_factory=dict)
    counts: dict[str, str] = field(default_factory=dict)
    own: dict[str, str] = field(default_factory=dict)
    evals: dict[str, dict[str, str]] = field(default_factory=dict)

    ROLES = ("train", "test", "counts", "own")

    def named(self) -> dict[str, str]:
        """Flat input names (`role__key`; an evaluation set's predictions `evals_{set}__{variant}`)."""
        named = {}
        for role in self.ROLES:
            named |= with_role(role, getattr(self, role))
        for name, paths in self.evals.items():
            named |= with_role(f"evals_{name}", paths)
        return named

    @classmethod
    def of(cls, inputs: Mapping) -> "ScoreInputs":
        """The roles of a job's named inputs (those `named()` named; others are left out)."""
        heads = {name.partition(ROLE_SEP)[0] for name in inputs if ROLE_SEP in name}
        evals = {head.removeprefix("evals_"): of_role(inputs, head) for head in heads if head.startswith("evals_")}
        return cls(**{role: of_role(inputs, role) for role in cls.ROLES}, evals=evals)


class Task:
    """A task as the shared train, generate and score stages see it. A task module subclasses this, sets the class
    attributes that differ from these defaults, overrides the methods it needs (label_paths and examples always) and
    registers an instance: `TASK = register(MyTask())` (tests/toy_task/task.py is a small one)."""

    name: str = ""
    variants: tuple[str, ...] = ()  # explainer variants the generate rule writes; "finetuned" first
    format_instruction: str = ""  # appended to the untrained explainer's questions (zero-shot)
    settings: type | None = None  # the task's section of config.yaml (a pipeline.settings.Section); None: none
    # The task's own stages (its label rules, figures, diagnostics): stage name -> Stage (the rules' params: code_of,
    # settings_of).
    stages: Mapping[str, "Stage"] = MappingProxyType({})
    training_keys: tuple = ()  # the task's own settings training depends on (as Stage.takes names them)
    score_keys: tuple = ()  # the task's own settings its scores depend on (as Stage.takes names them)
    figures: tuple[str, ...] = ("metrics.png", "confusion.png", "loss.png")  # the report's files per run
    # (split, metric) of the results file's finetuned metrics that the self-versus-other matrix compares
    headline: tuple[str, str] = ("overall", "is_changed_f1")
    # The scored rows' columns the structure prior's cell is made of: verdict_vs_prior is also broken down by them
    prior_cell: tuple[str, ...] = ()
    paper_suffix: str = " "  # what ends the paper's string template of this task's questions (prompt_format: paper)
    # Heavy scoring (judge API calls, a simulator LM): its score job goes to the cluster like the GPU stages;
    # otherwise it is a localrule that runs beside Snakemake.
    heavy_score: bool = False
    # Evaluation sets besides the test split (features: the out-of-distribution sets), each answered by every variant
    # (rule {task}_generate_{set}) and scored by the task; `eval_sets` says which a config section runs.
    eval_set_names: tuple[str, ...] = ()
    # The field's baselines this task can have (BASELINE_VARIANTS: in-context needs questions an untrained explainer
    # can answer; the frozen-explainer ones need a vector to map).
    baseline_variants: tuple[str, ...] = ()
    # Variants the task answers itself, not with the explainer (features: SelfIE); see `answer`.
    own_variants: tuple[str, ...] = ()

    def label_paths(self, target: str, split: str) -> dict[str, str]:
        """The label artifacts of one split (or evaluation set) of a target: kind -> path."""
        raise NotImplementedError(f"task {self.name}: label_paths")

    def examples(self, paths: dict[str, str], target_dir: str | None) -> Examples:
        """The label rows of `paths` as the explainer sees them; `target_dir`: the target's folder."""
        raise NotImplementedError(f"task {self.name}: examples")

    def training_rows(self, examples: Examples, section, seed: int, target_dir: str | None) -> Examples:
        """The rows training sees, given the task's config section (typed; the fields of `training_keys` as the run
        sets them) and the training seed."""
        return examples

    def variant_vectors(self, variant: str, examples: Examples, seed: int) -> "torch.Tensor | None":
        """The vectors a variant reads (the controls: none, another row's)."""
        return examples.vectors

    def answer(self, variant: str, examples: Examples, generation_cfg, explainer_cfg, explainer_dir: str,
               target_dir: str) -> pd.DataFrame:
        """One of `own_variants`' predictions table (row_key, cluster, prediction, reference, ...)."""
        raise NotImplementedError(f"task {self.name} answers no variant itself ({variant})")

    def baselines(self, scored: pd.DataFrame, train: dict[str, str], test: dict[str, str],
                  target_dir: str | None) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
        """Predictions of the task's non-explainer baselines on the scored rows (the structure prior, ...), and a
        description of each."""
        return {}, {}

    @property
    def scores_own(self) -> bool:
        """Whether the task scores its variants itself (score_frames overridden); otherwise the score stage uses the
        shared change-prediction metrics (pipeline/explainer/metrics.py), broken down by `prior_cell`."""
        return type(self).score_frames is not Task.score_frames

    def score_frames(self, frames: dict[str, pd.DataFrame], samples: int, seed: int, section,
                     inputs: ScoreInputs) -> dict:
        """The task's own scores of every variant's and baseline's predictions (`frames`): metrics with intervals
        and paired comparisons; `section`: its config section, typed (the fields of `score_keys` as the run sets
        them); `inputs`: the score job's files by role."""
        raise NotImplementedError(f"task {self.name} has no scorer of its own (scores_own is false)")

    def score_inputs(self, target: str, section) -> dict[str, str]:
        """Extra input files of the score rule (ScoreInputs.own: a simulator model, ...), given the task's section."""
        return {}

    def count_paths(self, target: str) -> dict[str, str]:
        """Artifacts whose recorded counts the results report."""
        return {}

    def eval_sets(self, section) -> tuple[str, ...]:
        """The evaluation sets (of eval_set_names) a config section runs."""
        return ()

    def target_dir(self, target: str) -> str | None:
        """The folder the shared stages read as the target (its manifest.json gives hidden_size and source); None:
        the language model resources/models/{target}."""
        return None

    def check_servers(self, section, rules: set[str]) -> None:
        """Raise, naming the setting, if an external server (an LM judge) that `rules` will call does not answer:
        checked before any job."""


# The field's baselines: variants a run adds where its task section lists them (`baselines`), scored beside the
# fine-tuned explainer with paired differences. in_context_k: the untrained explainer with k solved examples of the
# training split in its prompt (each with its vector at its own placeholder); map_only: the explainer frozen and only
# the vector's map trained (from the fitted maps), same rows and steps; affine: the maps frozen too, only a scale and a
# shift of the placeholder's embedding trained (d + 1 parameters; arXiv 2602.10352).
IN_CONTEXT = {"in_context_4": 4, "in_context_8": 8}
CONTEXT = "context"  # the role of an in-context baseline's inputs: the training split's labels, its solved examples
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
    if not isinstance(task, Task) or not task.name:
        raise TypeError(f"register: expected an instance of a pipeline.tasks.Task subclass with a name, got {task!r}")
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
