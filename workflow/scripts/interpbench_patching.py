"""Snakemake script: one InterpBench case's components and edges patched and scored against its known circuit."""
from pipeline.interpbench.discovery import InterpBenchPatchingConfig, discover
from pipeline.runtime import stage, stage_settings

with stage(snakemake.log[0], snakemake.threads):
    run, prov = stage_settings(snakemake.params, snakemake.config, snakemake.rule)
    discover(snakemake.wildcards.case, snakemake.input.case, snakemake.input.metadata,
             InterpBenchPatchingConfig.from_dict(run["interpbench"]["patching"]), snakemake.output[0], prov)
