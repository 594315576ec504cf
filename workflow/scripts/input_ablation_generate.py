"""Snakemake script: answers of one explainer variant (finetuned, untrained) on the input_ablation test split."""
from pipeline import input_ablation
from pipeline.config import ExplainerConfig, GenerationConfig
from pipeline.runtime import stage

params = snakemake.params
with stage(snakemake.log[0], snakemake.threads):
    input_ablation.generate(snakemake.wildcards.variant, GenerationConfig.from_dict(params.generation),
                            ExplainerConfig.from_dict(params.explainer), snakemake.input.labels,
                            snakemake.input.explainer, snakemake.input.get("trained"), snakemake.output[0],
                            {"generation": params.generation, "explainer": params.explainer}, snakemake.input.target)
