"""Snakemake script: the features run's judge scores, training loss and a page of test features side by side."""
from pipeline.tasks.features.figures import features_figures
from pipeline.runtime import stage

inputs, outputs = snakemake.input, snakemake.output
with stage(snakemake.log[0], snakemake.threads):
    features_figures(inputs.result, f"{inputs.trained}/training_log.json", outputs.metrics, outputs.loss,
                     outputs.examples)
