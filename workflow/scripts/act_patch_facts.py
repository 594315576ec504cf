"""Snakemake script: CounterFact-style facts of one target, with its answers and the kept subset."""
from pipeline.config import FactsConfig, PromptConfig
from pipeline.facts import build_facts
from pipeline.runtime import stage

with stage(snakemake.log[0], snakemake.threads):
    build_facts(FactsConfig.from_dict(snakemake.params.facts), PromptConfig.from_dict(snakemake.params.prompt),
                snakemake.input.target, snakemake.output[0], snakemake.params.batch_size)
