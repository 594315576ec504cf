"""Snakemake script: a split's activation-patching labels (Parquet) and vectors (safetensors), gathered from chunks
or imported from the released table act_patch.released_labels names for this target."""
from pipeline.settings import section_of
from pipeline.tasks.act_patch.labels import gather_labels, import_released_labels
from pipeline.tasks.act_patch.settings import ActPatchConfig
from pipeline.runtime import stage, stage_settings

with stage(snakemake.log[0], snakemake.threads):
    run, prov = stage_settings(snakemake.params, snakemake.config, snakemake.rule)
    out, split = snakemake.output, snakemake.wildcards.split
    source = (section_of(run, ActPatchConfig).released_labels or {}).get(snakemake.wildcards.target)
    if source:
        import_released_labels(source, split, snakemake.input.target, out.table, out.vectors, prov)
    else:
        gather_labels(snakemake.input.pairs, snakemake.input.tables, snakemake.input.vectors, split, out.table,
                      out.vectors, prov)
