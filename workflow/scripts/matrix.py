"""Snakemake script: the self-versus-other matrix of one task into results/matrix/{task}.parquet and a heat map."""
from pipeline.report.matrix import build_matrix
from pipeline.settings import MatrixConfig, ScoringConfig, section_of
from pipeline.runtime import stage, stage_settings

inputs, wildcards = snakemake.input, snakemake.wildcards
with stage(snakemake.log[0], snakemake.threads):
    run, prov = stage_settings(snakemake.params, snakemake.config, snakemake.rule)
    models, scoring = list(section_of(run, MatrixConfig).models), section_of(run, ScoringConfig)
    pairs = [(e, t) for e in models for t in models]
    build_matrix(wildcards.task, models, {p: inputs[f"result_{p[0]}_{p[1]}"] for p in pairs},
                 {p: inputs[f"pred_{p[0]}_{p[1]}"] for p in pairs}, scoring.bootstrap_samples, scoring.seed,
                 snakemake.output.table, snakemake.output.figure, prov)
