"""Snakemake script: the training budget as a curve (results/act_patch/{explainer}_{target}.budget.json, figure)."""
from pipeline.report.budget import write_budget
from pipeline.runtime import stage, stage_settings

with stage(snakemake.log[0], snakemake.threads):
    _, prov = stage_settings(snakemake.params, snakemake.config, snakemake.rule)
    write_budget(snakemake.params.points, snakemake.output.result, snakemake.output.figure, prov)
