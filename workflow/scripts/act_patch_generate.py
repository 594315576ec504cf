"""Snakemake script: answers of one explainer variant (finetuned, untrained, no_vector) on the test split."""
from pipeline import act_patch
from pipeline.config import ExplainerConfig, GenerationConfig
from pipeline.runtime import stage

params = snakemake.params
with stage(snakemake.log[0], snakemake.threads):
    act_patch.generate(snakemake.wildcards.variant, GenerationConfig.from_dict(params.generation),
                       ExplainerConfig.from_dict(params.explainer), snakemake.input.labels, snakemake.input.vectors,
                       snakemake.input.explainer, snakemake.input.target, snakemake.input.get("trained"),
                       snakemake.output[0], {"generation": params.generation, "explainer": params.explainer})
