"""Snakemake script: the local English corpus (Shakespeare, Milton, fact sentences) as passages, split train/eval."""
from pipeline.settings import section_of
from pipeline.runtime import stage, stage_settings
from pipeline.tasks.features.corpus import build_corpus
from pipeline.tasks.features.settings import FeaturesConfig

with stage(snakemake.log[0], snakemake.threads):
    run, prov = stage_settings(snakemake.params, snakemake.config, snakemake.rule)
    corpus = section_of(run, FeaturesConfig).corpus
    build_corpus(corpus.sources, corpus.sdist, corpus.eval_fraction, corpus.seed, snakemake.output[0], prov)
