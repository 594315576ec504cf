"""Snakemake script: the act_patch pairs of a split, rendered and clean-checked (Parquet)."""
from pipeline.tasks.act_patch import choose_pairs
from pipeline.config import ActPatchConfig
from pipeline.runtime import stage, stage_settings

with stage(snakemake.log[0], snakemake.threads):
    run, prov = stage_settings(snakemake.params, snakemake.config, snakemake.rule)
    choose_pairs(ActPatchConfig.from_dict(run["act_patch"]), snakemake.input.facts, snakemake.input.target,
                 snakemake.wildcards.split, snakemake.output[0], prov, run["facts"]["keep_only_correct"])
