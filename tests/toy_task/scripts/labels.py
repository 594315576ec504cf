"""Snakemake script: the toy task's labels of one split."""
from pipeline.runtime import stage
from pipeline.settings import section_of
from tests.toy_task.task import ToyConfig, build_labels

snakemake = globals()["snakemake"]  # the job's object, given by Snakemake's script directive

with stage(snakemake.log[0], snakemake.threads):
    build_labels(snakemake.input.target, section_of(snakemake.params.settings, ToyConfig), snakemake.wildcards.split,
                 snakemake.output.table, snakemake.output.vectors,
                 snakemake.params.settings | {"code": snakemake.params.code})
