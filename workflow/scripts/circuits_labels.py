"""Snakemake script: component-level patches of InterpBench cases as the circuits task's label rows."""
from pipeline.tasks.circuits import build_labels
from pipeline.tasks.circuits_settings import CircuitsConfig
from pipeline.settings import section_of
from pipeline.runtime import stage, stage_settings

with stage(snakemake.log[0], snakemake.threads):
    run, prov = stage_settings(snakemake.params, snakemake.config, snakemake.rule)
    build_labels(snakemake.wildcards.split, list(snakemake.params.cases), list(snakemake.input.cases),
                 snakemake.input.metadata, section_of(run, CircuitsConfig), snakemake.output.labels, snakemake.output.vectors, prov)
