"""Snakemake script: fine-tune the simulator on the target's training features (descriptions, activations)."""
from pipeline.settings import section_of
from pipeline.runtime import stage, stage_settings
from pipeline.tasks.features.settings import FeaturesConfig
from pipeline.tasks.features.simulator_training import train_simulator

inputs = snakemake.input
with stage(snakemake.log[0], snakemake.threads):
    run, prov = stage_settings(snakemake.params, snakemake.config, snakemake.rule)
    train_simulator(inputs.base, inputs.labels, inputs.exemplars, section_of(run, FeaturesConfig),
                    snakemake.output[0], prov)
