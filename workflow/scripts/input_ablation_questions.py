"""Snakemake script: the multiple-choice question table (countryinfo or MMLU), split by entity."""
from pipeline.mcq import build_questions
from pipeline.runtime import stage

with stage(snakemake.log[0], snakemake.threads):
    build_questions(**snakemake.params.questions, out_path=snakemake.output[0])
