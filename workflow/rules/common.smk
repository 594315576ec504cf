# Wildcard constraints and input functions shared by the rule files.
from pathlib import Path

from pipeline.act_patch import VARIANTS


wildcard_constraints:
    model="[A-Za-z0-9]+",
    explainer="[A-Za-z0-9]+",
    target="[A-Za-z0-9]+",
    split="train|test",
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
