"""Snakemake script: activation-patching labels (Parquet) and intervention vectors (safetensors)."""
from pipeline.act_patch import build_labels
from pipeline.config import ActPatchConfig
from pipeline.runtime import stage

with stage(snakemake.log[0], snakemake.threads):
    build_labels(ActPatchConfig.from_dict(snakemake.params.act_patch), snakemake.input.facts, snakemake.input.target,
                 snakemake.wildcards.split, snakemake.output.table, snakemake.output.vectors)
