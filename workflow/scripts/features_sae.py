"""Snakemake script: TopK SAEs on the target's residual stream (sparsify's layout) and their quality per layer."""
from pipeline.runtime import stage, stage_settings
from pipeline.tasks.features.sae import sae_quality, train_saes

inputs, outputs = snakemake.input, snakemake.output
with stage(snakemake.log[0], snakemake.threads):
    run, prov = stage_settings(snakemake.params, snakemake.config, snakemake.rule)
    train_saes(inputs.target, inputs.corpus, run["features"]["sae"], outputs.sae, prov)
    sae_quality(inputs.target, outputs.sae, inputs.corpus, run["features"]["sae"], outputs.quality, prov)
