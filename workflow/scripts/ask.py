"""Snakemake script: a user's questions (asks/{name}.csv or .parquet) put to a run's explainer."""
from pathlib import Path

from pipeline.ask import ask_file
from pipeline.runtime import stage

with stage(snakemake.log[0], snakemake.threads):
    run = Path(snakemake.input.predictions).parent.name  # {explainer}_{target}, as the run's folders name it
    ask_file(snakemake.wildcards.task, run, snakemake.input.questions, snakemake.output[0])
