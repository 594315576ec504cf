"""Snakemake script: each live feature's top-activating and random contexts, and every feature's firing stats."""
from pipeline.settings import section_of
from pipeline.runtime import stage, stage_settings
from pipeline.tasks.features.exemplars import build_exemplars
from pipeline.tasks.features.settings import FeaturesConfig

inputs, outputs = snakemake.input, snakemake.output
with stage(snakemake.log[0], snakemake.threads):
    run, prov = stage_settings(snakemake.params, snakemake.config, snakemake.rule)
    build_exemplars(inputs.target, inputs.sae, inputs.corpus, section_of(run, FeaturesConfig),
                    outputs.exemplars, outputs.stats, prov)
