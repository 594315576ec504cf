"""Snakemake script: metrics of every variant and baseline into results/{task}/{explainer}_{target}.json."""
from pipeline.explainer.explain import Run, score
from pipeline.runtime import stage

with stage(snakemake.log[0], snakemake.threads):
    score(Run.from_job(snakemake), snakemake.output[0])
