"""Snakemake script: metrics of every variant and baseline into results/act_patch/{explainer}_{target}.json."""
from pipeline import act_patch
from pipeline.config import ScoringConfig
from pipeline.runtime import stage, stage_settings

inputs, wildcards = snakemake.input, snakemake.wildcards
with stage(snakemake.log[0], snakemake.threads):
    run, prov = stage_settings(snakemake.params, snakemake.config, snakemake.rule)
    labels = {"train": inputs.train_labels, "train_vectors": inputs.train_vectors, "test": inputs.labels,
              "test_vectors": inputs.vectors}
    act_patch.score(ScoringConfig.from_dict(run["scoring"]), dict(zip(act_patch.VARIANTS, inputs.predictions)),
                    labels, inputs.facts, inputs.trained, inputs.explainer, inputs.target, snakemake.output[0],
                    {"explainer": wildcards.explainer, "target": wildcards.target}, prov)
