"""Snakemake script: TopK SAEs on the target's residual stream (sparsify's layout) and their quality per layer."""
from pipeline.settings import section_of
from pipeline.runtime import stage, stage_settings
from pipeline.tasks.features.sae import sae_quality, train_saes
from pipeline.tasks.features.settings import FeaturesConfig

inputs, outputs = snakemake.input, snakemake.output
with stage(snakemake.log[0], snakemake.threads):
    run, prov = stage_settings(snakemake.params, snakemake.config, snakemake.rule)
    sae = section_of(run, FeaturesConfig).sae
    train_saes(inputs.target, inputs.corpus, sae, outputs.sae, prov)
    sae_quality(inputs.target, outputs.sae, inputs.corpus, sae, outputs.quality, prov)
