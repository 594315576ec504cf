"""Snakemake script: activation-patching labels (Parquet) and intervention vectors (safetensors)."""
from pipeline.act_patch import build_labels
from pipeline.config import ActPatchConfig
from pipeline.runtime import stage, stage_settings

with stage(snakemake.log[0], snakemake.threads):
    run, prov = stage_settings(snakemake.params, snakemake.config, snakemake.rule)
    build_labels(ActPatchConfig.from_dict(run["act_patch"]), snakemake.input.facts, snakemake.input.target,
                 snakemake.wildcards.split, snakemake.output.table, snakemake.output.vectors, prov,
                 run["facts"]["keep_only_correct"])
