"""Snakemake script: a user's questions (asks/{name}.csv or .parquet) put to a trained explainer."""
from pipeline.ask import ask_file
from pipeline.runtime import stage

with stage(snakemake.log[0], snakemake.threads):
    ask_file(snakemake.wildcards.task, snakemake.input.trained, snakemake.input.questions, snakemake.output[0])
