"""Snakemake script: the circuits task's target folder (which InterpBench cases, how wide their vectors are)."""
from pipeline.tasks.circuits import write_target
from pipeline.tasks.circuits_settings import CircuitsConfig
from pipeline.settings import section_of
from pipeline.runtime import stage, stage_settings

with stage(snakemake.log[0], snakemake.threads):
    run, _ = stage_settings(snakemake.params, snakemake.config, snakemake.rule)
    write_target(list(snakemake.params.cases), section_of(run, CircuitsConfig).width, snakemake.output[0])
