"""Snakemake script: answers of one explainer variant (finetuned, untrained, no_vector, shuffled_vector) on the test split."""
from pipeline import act_patch
from pipeline.config import ExplainerConfig, GenerationConfig
from pipeline.runtime import stage, stage_settings

inputs = snakemake.input
with stage(snakemake.log[0], snakemake.threads):
    run, prov = stage_settings(snakemake.params, snakemake.config, snakemake.rule)
    act_patch.generate(snakemake.wildcards.variant, GenerationConfig.from_dict(run["generation"]),
                       ExplainerConfig.from_dict(run["explainer"]), inputs.labels, inputs.vectors, inputs.explainer,
                       inputs.target, inputs.get("trained"), snakemake.output[0], prov)
