"""Snakemake script: results/tables.md, the Markdown tables of every results file (commit, date, intervals)."""
from pipeline.report import write_results_tables
from pipeline.runtime import stage

with stage(snakemake.log[0], snakemake.threads):
    write_results_tables(list(snakemake.input), snakemake.output[0])
