"""Snakemake script: why an explainer reads its act_patch vector or does not (pipeline/tasks/act_patch/diagnostics.py)."""
from pipeline.settings import ExplainerConfig, GenerationConfig, ScoringConfig
from pipeline.tasks.act_patch.diagnostics import diagnose
from pipeline.settings import section_of
from pipeline.runtime import named_inputs, stage, stage_settings

inputs = snakemake.input
with stage(snakemake.log[0], snakemake.threads):
    run, prov = stage_settings(snakemake.params, snakemake.config, snakemake.rule)
    scoring = section_of(run, ScoringConfig)
    diagnose("act_patch", named_inputs(inputs, exclude=("explainer", "target", "trained", "alignment")),
             inputs.explainer, inputs.target, inputs.trained, section_of(run, GenerationConfig),
             section_of(run, ExplainerConfig), snakemake.output[0], prov, inputs.get("alignment"),
             scoring.bootstrap_samples, scoring.seed)
