"""Snakemake script: CounterFact-style facts of one target, with its answers and the kept subset."""
from pipeline.config import FactsConfig, PromptConfig
from pipeline.tasks.facts import build_facts
from pipeline.runtime import stage, stage_settings

with stage(snakemake.log[0], snakemake.threads):
    run, prov = stage_settings(snakemake.params, snakemake.config, snakemake.rule)
    build_facts(FactsConfig.from_dict(run["facts"]), PromptConfig.from_dict(run["act_patch"]["prompt"]),
                snakemake.input.target, snakemake.output[0], run["act_patch"]["batch_size"], prov,
                run["act_patch"].get("precision", "fp32"))
