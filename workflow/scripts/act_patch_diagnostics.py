"""Snakemake script: why an explainer reads its act_patch vector or does not (pipeline/tasks/act_patch_diagnostics.py)."""
from pipeline.config import ExplainerConfig, GenerationConfig, ScoringConfig
from pipeline.tasks.act_patch_diagnostics import diagnose
from pipeline.runtime import named_inputs, stage, stage_settings

inputs = snakemake.input
with stage(snakemake.log[0], snakemake.threads):
    run, prov = stage_settings(snakemake.params, snakemake.config, snakemake.rule)
    scoring = ScoringConfig.from_dict(run["scoring"])
    diagnose("act_patch", named_inputs(inputs, exclude=("explainer", "target", "trained", "alignment")),
             inputs.explainer, inputs.target, inputs.trained, GenerationConfig.from_dict(run["generation"]),
             ExplainerConfig.from_dict(run["explainer"]), snakemake.output[0], prov, inputs.get("alignment"),
             scoring.bootstrap_samples, scoring.seed)
