"""Snakemake script: answers of one explainer variant (finetuned, untrained) on the input_ablation test split."""
from pipeline import input_ablation
from pipeline.config import ExplainerConfig, GenerationConfig
from pipeline.runtime import stage, stage_settings

inputs = snakemake.input
with stage(snakemake.log[0], snakemake.threads):
    run, prov = stage_settings(snakemake.params, snakemake.config, snakemake.rule)
    input_ablation.generate(snakemake.wildcards.variant, GenerationConfig.from_dict(run["generation"]),
                            ExplainerConfig.from_dict(run["explainer"]), inputs.labels, inputs.explainer,
                            inputs.get("trained"), snakemake.output[0], prov, inputs.target)
