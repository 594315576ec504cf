"""Snakemake script: a split's activation-patching labels (Parquet) and vectors (safetensors), gathered from chunks."""
from pipeline.act_patch import gather_labels
from pipeline.runtime import stage, stage_settings

with stage(snakemake.log[0], snakemake.threads):
    run, prov = stage_settings(snakemake.params, snakemake.config, snakemake.rule)
    gather_labels(snakemake.input.pairs, snakemake.input.tables, snakemake.input.vectors, snakemake.wildcards.split,
                  snakemake.output.table, snakemake.output.vectors, prov)
