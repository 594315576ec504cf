"""Snakemake script: the multiple-choice question table (countryinfo or MMLU), split by entity."""
from pipeline.tasks.input_ablation_settings import InputAblationConfig
from pipeline.tasks.questions import build_questions
from pipeline.settings import section_of
from pipeline.runtime import stage, stage_settings

with stage(snakemake.log[0], snakemake.threads):
    run, prov = stage_settings(snakemake.params, snakemake.config, snakemake.rule)
    build_questions(section_of(run, InputAblationConfig), snakemake.output[0], prov)
