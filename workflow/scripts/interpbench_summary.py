"""Snakemake script: patching's circuit recovery across InterpBench cases, as a table and a figure."""
from pipeline.interpbench.discovery import write_summary
from pipeline.runtime import stage, stage_settings

with stage(snakemake.log[0], snakemake.threads):
    _, prov = stage_settings(snakemake.params, snakemake.config, snakemake.rule)
    write_summary(list(snakemake.input.results), snakemake.output.table, snakemake.output.figure, prov,
                  snakemake.input.get("explainer"))
