"""Snakemake script: one InterpBench case compiled, trained by SIIT and written in the released layout."""
from pipeline.interpbench.cases import build_case
from pipeline.settings import InterpbenchConfig, section_of
from pipeline.runtime import stage, stage_settings

with stage(snakemake.log[0], snakemake.threads):
    run, prov = stage_settings(snakemake.params, snakemake.config, snakemake.rule)
    build_case(snakemake.wildcards.case, snakemake.input.metadata, section_of(run, InterpbenchConfig).build,
               snakemake.output.case, snakemake.output.stats, prov)
