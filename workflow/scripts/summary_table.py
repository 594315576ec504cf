"""Snakemake script: results/summary.parquet, one row per task, explainer, target and variant (also printed)."""
from pipeline.report import write_summary
from pipeline.runtime import stage

with stage(snakemake.log[0], snakemake.threads):
    write_summary(list(snakemake.input), snakemake.output[0])
