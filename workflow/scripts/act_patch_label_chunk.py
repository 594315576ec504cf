"""Snakemake script: activation-patching labels and intervention vectors of one chunk of pairs."""
from pipeline.tasks.act_patch.labels import build_label_chunk
from pipeline.tasks.act_patch.settings import ActPatchConfig
from pipeline.settings import section_of
from pipeline.runtime import stage, stage_settings

with stage(snakemake.log[0], snakemake.threads):
    run, prov = stage_settings(snakemake.params, snakemake.config, snakemake.rule)
    build_label_chunk(section_of(run, ActPatchConfig), snakemake.input.pairs, snakemake.input.target,
                      snakemake.wildcards.split, int(snakemake.wildcards.chunk), snakemake.output.table,
                      snakemake.output.vectors, prov)
