"""Snakemake script: metrics of every variant and baseline into results/{task}/{explainer}_{target}.json."""
from pipeline import tasks
from pipeline.explainer import explain
from pipeline.config import ScoringConfig
from pipeline.runtime import named_inputs, stage, stage_settings

params, inputs, wildcards = snakemake.params, snakemake.input, snakemake.wildcards
with stage(snakemake.log[0], snakemake.threads):
    run, prov = stage_settings(params, snakemake.config, snakemake.rule)
    spec = tasks.get_task(params.task)
    explain.score(params.task, ScoringConfig.from_dict(run["scoring"]), dict(zip(spec.variants, inputs.predictions)),
                  named_inputs(inputs, prefix="train_"), named_inputs(inputs, prefix="test_"),
                  named_inputs(inputs, prefix="count_"), inputs.get("trained"), inputs.explainer, inputs.target,
                  snakemake.output[0], {"explainer": wildcards.explainer, "target": wildcards.target}, prov,
                  run.get(params.task, {}), named_inputs(inputs, prefix="extra_"))
