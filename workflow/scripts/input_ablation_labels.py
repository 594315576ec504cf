"""Snakemake script: the target's answers with and without the hint, in the published column layout (or the released
table input_ablation.released_labels names for this target)."""
from pipeline.tasks.input_ablation_settings import InputAblationConfig
from pipeline.tasks.input_ablation import build_labels, import_released_labels
from pipeline.settings import section_of
from pipeline.runtime import stage, stage_settings

with stage(snakemake.log[0], snakemake.threads):
    run, prov = stage_settings(snakemake.params, snakemake.config, snakemake.rule)
    cfg = section_of(run, InputAblationConfig)
    source = (cfg.released_labels or {}).get(snakemake.wildcards.target)
    if source:
        import_released_labels(source, snakemake.wildcards.split, snakemake.output[0], prov)
    else:
        build_labels(cfg, snakemake.input.questions,
                     snakemake.input.target, snakemake.wildcards.split, snakemake.output[0], prov)
