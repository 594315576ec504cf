# Train language models to explain their own computations (Li et al., arXiv 2511.08579).
# Thin entry point: configuration, its schema check, the rule files, and the default target.
from pipeline.config import typed_settings, validate_config, with_base_config


configfile: "config.yaml"


# config.yaml is always the base: files given with --configfile (and --config values) only override it.
config.update(with_base_config(config, f"{workflow.basedir}/config.yaml", dict(workflow.config_settings.config)))
validate_config(config, source="config.yaml (with any --configfile/--config overrides)", base=workflow.basedir)
SETTINGS = typed_settings(config)  # the same settings, typed (pipeline/settings.py): what the input functions read


include: "workflow/rules/common.smk"
# The stages every task shares: models, the alignment, training, generation, scoring, the report, the matrix and
# asking a trained explainer about a file of questions.
include: "workflow/rules/models.smk"
include: "workflow/rules/alignment.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/generate.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/matrix.smk"
include: "workflow/rules/ask.smk"
# Each task's own rules (labels, its figures), and InterpBench's cases, which the circuits task reads.
include: "workflow/rules/act_patch.smk"
include: "workflow/rules/input_ablation.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/interpbench.smk"
include: "workflow/rules/circuits.smk"


for task_rules in SETTINGS.task_rules:  # tasks from outside pipeline/: relative to this folder

    include: task_rules


onstart:
    before_the_first_job(workflow.dag.needrun_jobs())


rule all:
    input:
        all_results(),
        all_figures(),
        "results/summary.parquet",
        "results/tables.md",
