"""Snakemake script: each live feature's top-activating and random contexts, and every feature's firing stats."""
from pipeline.tasks.features.exemplars import build_exemplars
from pipeline.runtime import stage, stage_settings

inputs, outputs = snakemake.input, snakemake.output
with stage(snakemake.log[0], snakemake.threads):
    run, prov = stage_settings(snakemake.params, snakemake.config, snakemake.rule)
    sae = run["features"]["sae"]
    build_exemplars(inputs.target, inputs.sae, inputs.corpus, run["features"]["exemplars"] | {
        "context": sae["context"], "always_on_fraction": sae["always_on_fraction"]}, sae["layers"],
        outputs.exemplars, outputs.stats, prov)
