"""Snakemake script: metrics of every variant into results/act_patch/{explainer}_{target}.json."""
from pipeline import act_patch
from pipeline.config import ScoringConfig
from pipeline.runtime import stage

inputs, wildcards = snakemake.input, snakemake.wildcards
with stage(snakemake.log[0], snakemake.threads):
    act_patch.score(ScoringConfig.from_dict(snakemake.params.scoring),
                    dict(zip(act_patch.VARIANTS, inputs.predictions)), {"test": inputs.labels}, inputs.facts,
                    inputs.trained, inputs.explainer, inputs.target, snakemake.output[0],
                    {"explainer": wildcards.explainer, "target": wildcards.target})
