"""Adding a task is one folder and one rule file: tests/toy_task/ (a task module and its label rule) registered by
configuration only, then trained, generated and scored by the shared rules on the tiny model."""

import json

import pytest
from workflow_runs import override, planned_jobs, snakemake


@pytest.mark.slow
def test_a_task_from_the_test_tree_trains_generates_and_scores_on_tiny(tmp_path, prepared_models):
    prepared_models.into(tmp_path, "tiny")
    toy = override(tmp_path, "toy.yaml", {"task_modules": {"toy": "tests.toy_task.task"},
                                          "task_rules": ["tests/toy_task/toy.smk"]})  # from the Snakefile's folder
    target = "results/toy/tiny_tiny.json"
    assert planned_jobs(snakemake(tmp_path, "-n", target, configfiles=[toy])) == {
        "toy_labels": 2, "toy_train": 1, "toy_generate": 3, "toy_score": 1}
    run = snakemake(tmp_path, target, configfiles=[toy])
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads((tmp_path / target).read_text())
    assert result["task"] == "toy" and set(result["metrics"]) == {"finetuned", "untrained", "no_vector"}
    assert result["metrics"]["finetuned"]["overall"]["n"] == 8  # generation.max_examples of tests/config_tiny.yaml
    assert set(result["comparisons"]) == {"finetuned - untrained", "finetuned - no_vector"}
    # Its label stage is declared with the task (settings and code hash in the rule's params): nothing is left to do.
    assert planned_jobs(snakemake(tmp_path, "-n", target, configfiles=[toy])) == {}
    clash = override(tmp_path, "clash.yaml", {"task_modules": {"features": "tests.toy_task.task"}})
    refused = snakemake(tmp_path, "-n", target, configfiles=[clash])
    said = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "task_modules.features: 'features' is a built-in task" in said
    missing = override(tmp_path, "missing.yaml", {"task_modules": {"toy": "tests.toy_task.task"},
                                                  "task_rules": ["no/such/toy.smk"]})
    refused = snakemake(tmp_path, "-n", target, configfiles=[missing])
    assert refused.returncode != 0 and "task_rules[0]: no rule file no/such/toy.smk" in refused.stdout + refused.stderr
