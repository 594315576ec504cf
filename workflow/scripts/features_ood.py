"""Snakemake script: the out-of-distribution vectors (ood_fw, ood_diff) with their projection exemplars."""
from pipeline.settings import section_of
from pipeline.runtime import stage, stage_settings
from pipeline.tasks.features.ood import build_ood
from pipeline.tasks.features.settings import FeaturesConfig

inputs, outputs = snakemake.input, snakemake.output
with stage(snakemake.log[0], snakemake.threads):
    run, prov = stage_settings(snakemake.params, snakemake.config, snakemake.rule)
    features = section_of(run, FeaturesConfig)
    sets = {name: {kind: outputs[f"{name}_{kind}"] for kind in ("labels", "vectors", "exemplars")}
            for name in features.ood.sets}
    build_ood(inputs.target, inputs.corpus, inputs.get("facts"), features, sets, prov)
