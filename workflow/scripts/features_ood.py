"""Snakemake script: the out-of-distribution vectors (ood_fw, ood_diff) with their projection exemplars."""
from pipeline.tasks.features.ood import build_ood
from pipeline.runtime import stage, stage_settings

inputs, outputs = snakemake.input, snakemake.output
with stage(snakemake.log[0], snakemake.threads):
    run, prov = stage_settings(snakemake.params, snakemake.config, snakemake.rule)
    features = run["features"]
    sets = {name: {kind: outputs[f"{name}_{kind}"] for kind in ("labels", "vectors", "exemplars")}
            for name in features["ood"]["sets"]}
    build_ood(inputs.target, inputs.corpus, inputs.get("facts"), features["ood"] | {
        "context": features["sae"]["context"], "window_before": features["exemplars"]["window_before"],
        "window_after": features["exemplars"]["window_after"]}, features["sae"]["layers"], sets, prov)
