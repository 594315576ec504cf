"""Snakemake script: answers of one explainer variant (finetuned, untrained, the task's controls) on the test split."""
from pipeline.explainer import explain
from pipeline.config import ExplainerConfig, GenerationConfig
from pipeline.runtime import named_inputs, stage, stage_settings

params, inputs = snakemake.params, snakemake.input
with stage(snakemake.log[0], snakemake.threads):
    run, prov = stage_settings(params, snakemake.config, snakemake.rule)
    explain.generate(params.task, snakemake.wildcards.variant, GenerationConfig.from_dict(run["generation"]),
                     ExplainerConfig.from_dict(run["explainer"]),
                     named_inputs(inputs, exclude=("explainer", "target", "trained", "alignment")), inputs.explainer,
                     inputs.target, inputs.get("trained"), snakemake.output[0], prov, inputs.get("alignment"))
