"""Snakemake script: answers of one explainer variant (finetuned, untrained, the task's controls) on the test split."""
from pipeline.explainer.explain import Run, generate
from pipeline.runtime import stage

with stage(snakemake.log[0], snakemake.threads):
    generate(Run.from_job(snakemake), snakemake.wildcards.variant, snakemake.output[0])
