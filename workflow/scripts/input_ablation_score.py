"""Snakemake script: metrics of each variant and baseline into results/input_ablation/{explainer}_{target}.json."""
from pipeline import input_ablation
from pipeline.config import ScoringConfig
from pipeline.runtime import stage, stage_settings

inputs, wildcards = snakemake.input, snakemake.wildcards
with stage(snakemake.log[0], snakemake.threads):
    run, prov = stage_settings(snakemake.params, snakemake.config, snakemake.rule)
    input_ablation.score(ScoringConfig.from_dict(run["scoring"]),
                         dict(zip(input_ablation.VARIANTS, inputs.predictions)), inputs.train_labels,
                         inputs.test_labels, inputs.trained, inputs.explainer, inputs.target, snakemake.output[0],
                         {"explainer": wildcards.explainer, "target": wildcards.target}, prov)
