"""Snakemake script: per target layer, the map from the target's states to the explainer's embeddings."""
from pipeline.explainer.alignment import AlignmentConfig, fit_alignment
from pipeline.settings import section_of
from pipeline.runtime import stage, stage_settings

with stage(snakemake.log[0], snakemake.threads):
    run, prov = stage_settings(snakemake.params, snakemake.config, snakemake.rule)
    inputs, output = snakemake.input, snakemake.output
    fit_alignment(section_of(run, AlignmentConfig), inputs.target, inputs.explainer, inputs.text,
                  output.maps, output.quality, prov)
