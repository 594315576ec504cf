"""Snakemake script: one row per configured InterpBench case (skipped ones say what they need)."""
from pipeline.interpbench.cases import summarize
from pipeline.runtime import stage, stage_settings

with stage(snakemake.log[0], snakemake.threads):
    _, prov = stage_settings(snakemake.params, snakemake.config, snakemake.rule)
    summarize(list(snakemake.input.stats), dict(snakemake.params.skipped), snakemake.output[0], prov)
