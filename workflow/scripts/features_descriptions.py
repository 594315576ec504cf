"""Snakemake script: reference descriptions and decoder directions of the features, split train/test by feature."""
from pipeline.models import read_manifest
from pipeline.settings import section_of
from pipeline.runtime import stage, stage_settings
from pipeline.tasks.features.descriptions import build_descriptions, paper_descriptions
from pipeline.tasks.features.settings import FeaturesConfig

inputs, outputs = snakemake.input, snakemake.output
with stage(snakemake.log[0], snakemake.threads):
    run, prov = stage_settings(snakemake.params, snakemake.config, snakemake.rule)
    features = section_of(run, FeaturesConfig)
    width, out = read_manifest(inputs.target)["hidden_size"], dict(outputs.items())
    if features.source == "paper":
        paper_descriptions(features.paper_dir or "features.paper_dir is unset", width, out, prov)
    else:
        build_descriptions(inputs.exemplars, inputs.stats, inputs.sae, inputs.quality, features.descriptions, width,
                           out, prov)
