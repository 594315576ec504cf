"""Snakemake script: one InterpBench case's components and edges patched and scored against its known circuit."""
from pipeline.interpbench.discovery import discover
from pipeline.settings import InterpbenchConfig, section_of
from pipeline.runtime import stage, stage_settings

with stage(snakemake.log[0], snakemake.threads):
    run, prov = stage_settings(snakemake.params, snakemake.config, snakemake.rule)
    discover(snakemake.wildcards.case, snakemake.input.case, snakemake.input.metadata,
             section_of(run, InterpbenchConfig).patching, snakemake.output[0], prov)
