"""Snakemake script: the multiple-choice question table (countryinfo or MMLU), split by entity."""
from pipeline.tasks.questions import build_questions
from pipeline.runtime import stage, stage_settings

with stage(snakemake.log[0], snakemake.threads):
    run, prov = stage_settings(snakemake.params, snakemake.config, snakemake.rule)
    build_questions(**run["input_ablation"], out_path=snakemake.output[0], settings=prov)
