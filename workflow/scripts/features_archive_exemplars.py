"""Snakemake script: the paper's archive's exemplar sequences of its described features, as an exemplars table."""
from pipeline.settings import section_of
from pipeline.runtime import stage, stage_settings
from pipeline.tasks.features.exemplars import archive_exemplars
from pipeline.tasks.features.settings import FeaturesConfig

inputs, outputs = snakemake.input, snakemake.output
with stage(snakemake.log[0], snakemake.threads):
    run, prov = stage_settings(snakemake.params, snakemake.config, snakemake.rule)
    features = section_of(run, FeaturesConfig)
    archive_exemplars(features.paper_dir or "features.paper_dir is unset", inputs.target,
                      {"train": inputs.train, "test": inputs.test}, features, outputs.exemplars, prov)
