# Wildcard constraints and input functions shared by the rule files.
from pathlib import Path

from pipeline import stages
from pipeline.act_patch import VARIANTS
from pipeline.input_ablation import VARIANTS as INPUT_ABLATION_VARIANTS


wildcard_constraints:
    model="[A-Za-z0-9]+",
    explainer="[A-Za-z0-9]+",
    target="[A-Za-z0-9]+",
    split="train|test",
    task="act_patch|input_ablation",
    variant="|".join(sorted(set(VARIANTS) | set(INPUT_ABLATION_VARIANTS))),


def settings_of(stage):
    """The settings a stage's result depends on (pipeline/stages.py declares which): its rule's params."""
    return stages.settings(config, stage)


def code_of(stage):
    """A hash of the pipeline code the stage runs, so changed code reruns exactly what it affects."""
    return stages.code_hash(stage)


def model_settings(wildcards):
    return stages.settings(config, "prepare_model", model=known_model(wildcards.model))


def known_model(key):
    if key not in config["models"]:
        raise ValueError(f"unknown model key '{key}': config.yaml defines {sorted(config['models'])}")
    return key


def model_sources(wildcards):
    """No file inputs; checks a local model folder exists before any job starts."""
    spec = config["models"][known_model(wildcards.model)]
    path = spec.get("path", "")
    local = Path(path).is_absolute() or path.startswith((".", "~"))
    if spec["source"] == "hf" and local and not Path(path).expanduser().is_dir():
        raise ValueError(f"models.{wildcards.model}.path: local folder {path} does not exist")
    return []


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
        "train_labels": f"work/act_patch/labels/{wildcards.target}/train.parquet",
        "train_vectors": f"work/act_patch/labels/{wildcards.target}/train.vectors.safetensors",
        "labels": f"work/act_patch/labels/{wildcards.target}/test.parquet",
        "vectors": f"work/act_patch/labels/{wildcards.target}/test.vectors.safetensors",
        "facts": f"work/act_patch/facts/{wildcards.target}.parquet",
        "trained": f"work/act_patch/explainers/{run}",
        "explainer": f"resources/models/{wildcards.explainer}",
        "target": f"resources/models/{wildcards.target}",
    }
