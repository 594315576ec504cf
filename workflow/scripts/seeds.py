"""Snakemake script: a run's results over the seeds of training.seeds, with intervals holding training variance."""
from pipeline.runtime import named_inputs, stage, stage_settings
from pipeline.report.seeds import aggregate

with stage(snakemake.log[0], snakemake.threads):
    _, prov = stage_settings(snakemake.params, snakemake.config, "seeds")
    paths = {int(name.removeprefix("seed_")): path for name, path in named_inputs(snakemake.input, prefix="").items()}
    aggregate(paths, snakemake.output[0], prov)
