"""Snakemake script: CounterFact-style facts of one target, with its answers and the kept subset."""
from pipeline.settings import FactsConfig
from pipeline.tasks.act_patch.settings import ActPatchConfig
from pipeline.tasks.facts import build_facts
from pipeline.settings import section_of
from pipeline.runtime import stage, stage_settings

with stage(snakemake.log[0], snakemake.threads):
    run, prov = stage_settings(snakemake.params, snakemake.config, snakemake.rule)
    act_patch = section_of(run, ActPatchConfig)
    build_facts(section_of(run, FactsConfig), act_patch.prompt, snakemake.input.target, snakemake.output[0],
                act_patch.batch_size, prov, act_patch.precision)
