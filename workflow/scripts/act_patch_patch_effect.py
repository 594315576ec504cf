"""Snakemake script: heat map of the share of next tokens a patch changes, by layer window and token type."""
from pipeline.tasks.act_patch.figures import patch_effect_figure
from pipeline.runtime import stage

with stage(snakemake.log[0], snakemake.threads):
    patch_effect_figure([snakemake.input.train, snakemake.input.test], snakemake.output[0],
                        f"act_patch on {snakemake.wildcards.target}: patch effect")
