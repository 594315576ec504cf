"""Snakemake script: one run's metrics beside its baselines, confusion matrices and training loss curve."""
from pipeline.explainer.figures import run_figures
from pipeline.runtime import stage

inputs, outputs = snakemake.input, snakemake.output
with stage(snakemake.log[0], snakemake.threads):
    run_figures(inputs.result, list(inputs.predictions), f"{inputs.trained}/training_log.json", outputs.metrics,
                outputs.confusion, outputs.loss)
