"""Snakemake script: fine-tune the simulator on the target's training features (descriptions, activations)."""
from pipeline.runtime import stage, stage_settings
from pipeline.tasks.features.simulator import train_simulator

inputs = snakemake.input
with stage(snakemake.log[0], snakemake.threads):
    run, prov = stage_settings(snakemake.params, snakemake.config, snakemake.rule)
    simulator = run["features"]["simulator"]
    train_simulator(inputs.base, inputs.labels, inputs.exemplars, simulator["training"] | {
        k: simulator[k] for k in ("top", "random", "tokens_before")} | {
        "describe_every": run["features"]["descriptions"]["describe_every"]}, snakemake.output[0], prov)
