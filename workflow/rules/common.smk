# Wildcard constraints and input functions shared by the rule files.
from pathlib import Path

from pipeline.act_patch import VARIANTS
from pipeline.config import deep_merge
from pipeline.input_ablation import VARIANTS as INPUT_ABLATION_VARIANTS

TASK_OVERRIDES = ("training", "generation")
TRAINING_ONLY = ("rebalance_train", "max_train_examples")
QUESTION_KEYS = ("source", "path", "relations", "n_choices", "max_questions_per_relation", "test_fraction", "seed")


wildcard_constraints:
    model="[A-Za-z0-9]+",
    explainer="[A-Za-z0-9]+",
    target="[A-Za-z0-9]+",
    split="train|test",
    task="act_patch|input_ablation",
    variant="|".join(VARIANTS),


def known_model(key):
    if key not in config["models"]:
        raise ValueError(f"unknown model key '{key}': config.yaml defines {sorted(config['models'])}")
    return key


def model_specs(wildcards):
    """The model's own config entry (and its tokenizer's), so editing another model reruns nothing here."""
    spec = config["models"][known_model(wildcards.model)]
    specs = {wildcards.model: spec}
    if spec["source"] == "random":
        specs[spec["tokenizer_from"]] = config["models"][spec["tokenizer_from"]]
    return specs


def model_sources(wildcards):
    """No file inputs; checks a local model folder exists before any job starts."""
    spec = config["models"][known_model(wildcards.model)]
    path = spec.get("path", "")
    if spec["source"] == "hf" and path.startswith(("/", ".", "~")) and not Path(path).expanduser().is_dir():
        raise ValueError(f"models.{wildcards.model}.path: local folder {path} does not exist")
    return []


def task_settings(task):
    """A task's own section without its overrides of shared sections (so those rerun only what uses them)."""
    return {k: v for k, v in config[task].items() if k not in TASK_OVERRIDES}


def label_settings(task):
    """What the target's labels depend on: the task's section without training-only keys."""
    return {k: v for k, v in task_settings(task).items() if k not in TRAINING_ONLY}


def question_settings():
    return {k: config["input_ablation"].get(k) for k in QUESTION_KEYS}


def shared_settings(task, section):
    """A shared section (training, generation) with the task's overrides on top."""
    return deep_merge(config[section], config[task].get(section, {}))


def question_sources(wildcards):
    """The MMLU Parquet file when questions come from MMLU, so a new file reruns the questions."""
    section = config["input_ablation"]
    if section["source"] == "mmlu":
        if not section.get("path"):
            raise ValueError("input_ablation.path: source 'mmlu' needs the path of a cais/mmlu Parquet file")
        return [section["path"]]
    return []


def all_results():
    return [f"results/{task}/{run}.json" for task, runs in config["runs"].items() for run in runs]


def all_figures():
    """Every figure of the report: per run metrics, confusion and loss; per act_patch target the patch effect."""
    figures = [f"report/{task}/{run}/{name}.png" for task, runs in config["runs"].items() for run in runs
               for name in ("metrics", "confusion", "loss")]
    targets = sorted({run.split("_")[1] for run in config["runs"].get("act_patch", [])})
    return figures + [f"report/act_patch/patch_effect_{target}.png" for target in targets]


def run_figure_inputs(wildcards):
    run = f"{known_model(wildcards.explainer)}_{known_model(wildcards.target)}"
    variants = VARIANTS if wildcards.task == "act_patch" else INPUT_ABLATION_VARIANTS
    return {
        "result": f"results/{wildcards.task}/{run}.json",
        "predictions": [f"work/{wildcards.task}/predictions/{run}/{v}.parquet" for v in variants],
        "trained": f"work/{wildcards.task}/explainers/{run}",
    }


def input_ablation_generation_inputs(wildcards):
    inputs = {
        "labels": f"work/input_ablation/labels/{wildcards.target}/test.parquet",
        "explainer": f"resources/models/{known_model(wildcards.explainer)}",
        "target": f"resources/models/{known_model(wildcards.target)}",
    }
    if wildcards.variant != "untrained":
        inputs["trained"] = f"work/input_ablation/explainers/{wildcards.explainer}_{wildcards.target}"
    return inputs


def input_ablation_score_inputs(wildcards):
    run = f"{known_model(wildcards.explainer)}_{known_model(wildcards.target)}"
    return {
        "predictions": [f"work/input_ablation/predictions/{run}/{v}.parquet" for v in INPUT_ABLATION_VARIANTS],
        "train_labels": f"work/input_ablation/labels/{wildcards.target}/train.parquet",
        "test_labels": f"work/input_ablation/labels/{wildcards.target}/test.parquet",
        "trained": f"work/input_ablation/explainers/{run}",
        "explainer": f"resources/models/{wildcards.explainer}",
        "target": f"resources/models/{wildcards.target}",
    }


def generation_inputs(wildcards):
    inputs = {
        "labels": f"work/act_patch/labels/{wildcards.target}/test.parquet",
        "vectors": f"work/act_patch/labels/{wildcards.target}/test.vectors.safetensors",
        "explainer": f"resources/models/{known_model(wildcards.explainer)}",
        "target": f"resources/models/{known_model(wildcards.target)}",
    }
    if wildcards.variant != "untrained":
        inputs["trained"] = f"work/act_patch/explainers/{wildcards.explainer}_{wildcards.target}"
    return inputs


def score_inputs(wildcards):
    run = f"{known_model(wildcards.explainer)}_{known_model(wildcards.target)}"
    return {
        "predictions": [f"work/act_patch/predictions/{run}/{variant}.parquet" for variant in VARIANTS],
        "labels": f"work/act_patch/labels/{wildcards.target}/test.parquet",
        "facts": f"work/act_patch/facts/{wildcards.target}.parquet",
        "trained": f"work/act_patch/explainers/{run}",
        "explainer": f"resources/models/{wildcards.explainer}",
        "target": f"resources/models/{wildcards.target}",
    }
