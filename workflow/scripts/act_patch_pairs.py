"""Snakemake script: the act_patch pairs of a split, rendered and clean-checked (Parquet)."""
from pipeline.tasks.act_patch.pairs import choose_pairs
from pipeline.settings import FactsConfig
from pipeline.tasks.act_patch.settings import ActPatchConfig
from pipeline.settings import section_of
from pipeline.runtime import stage, stage_settings

with stage(snakemake.log[0], snakemake.threads):
    run, prov = stage_settings(snakemake.params, snakemake.config, snakemake.rule)
    choose_pairs(section_of(run, ActPatchConfig), snakemake.input.facts, snakemake.input.target,
                 snakemake.wildcards.split, snakemake.output[0], prov, section_of(run, FactsConfig).keep_only_correct)
