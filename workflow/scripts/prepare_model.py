"""Snakemake script: write resources/models/{model}/ (converted, random, or a manifest of an HF source)."""
from pipeline.models import prepare_model
from pipeline.runtime import stage

with stage(snakemake.log[0], snakemake.threads):
    prepare_model(snakemake.wildcards.model, dict(snakemake.params.settings["models"]), snakemake.output[0])
