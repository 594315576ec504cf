"""The training budget as a curve (act_patch.budget) on the tiny models: each point its own cached run, the run of the
training section's own rows and epochs reused, another explainer of the same target at every point, and the gathered
table and figure."""

from __future__ import annotations

import json

import pytest
from workflow_runs import copy_tree, override, planned_jobs, snakemake

pytestmark = pytest.mark.slow
TARGET = "results/act_patch/tiny_tiny.budget.json"


def test_a_budget_plans_each_point_once_and_reuses_the_runs_that_exist(tmp_path, tiny_act_patch_run):
    """Rows x epochs x seeds, the decisive point with a second seed: the point of tests/config_tiny.yaml's own
    training (12 rows, 1 epoch, seed 0) is the finished run, so nothing of it is planned again; the other explainer
    runs at every point."""
    workdir = copy_tree(tiny_act_patch_run, tmp_path / "run")
    budget = override(tmp_path, "budget.yaml", {"act_patch": {"budget": {
        "rows": [12, None], "epochs": [1, 2], "seeds": [0], "decide": {"points": [[12, 2]], "seeds": [0, 1]},
        "others": ["tinyb"]}}})
    plan = planned_jobs(snakemake(workdir, "-n", TARGET, configfiles=[budget]))
    # tiny: (12, 2) s0, s1; (all, 1), (all, 2) -> 4 new runs; tinyb: its own run and the same 4
    assert plan["act_patch_train_budget"] == 8 and plan["act_patch_train"] == 1  # tinyb's run at (12, 1)
    assert plan["act_patch_score_budget"] == 8 and plan["act_patch_budget"] == 1
    assert "act_patch_labels" not in plan  # the labels are the finished run's


def test_a_two_point_budget_runs_and_gathers_self_against_other(tmp_path, tiny_act_patch_run, prepared_models):
    workdir = prepared_models.into(copy_tree(tiny_act_patch_run, tmp_path / "run"), "tinyb")
    budget = override(tmp_path, "budget.yaml", {"act_patch": {"budget": {
        "rows": [12], "epochs": [1, 2], "seeds": [0], "decide": {"points": [], "seeds": []}, "others": ["tinyb"]}}})
    run = snakemake(workdir, TARGET, configfiles=[budget], timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads((workdir / TARGET).read_text())
    assert [(p["rows"], p["epochs"]) for p in result["points"]] == [(12, 1), (12, 2)]
    first, second = result["points"]
    own = first["explainers"]["tiny"]
    assert own["results"] == ["results/act_patch/tiny_tiny.json"] and own["precision"] == ["fp32"]
    assert second["explainers"]["tiny"]["results"] == ["results/act_patch/budget/r12_e2/s0/tiny_tiny.json"]
    assert second["explainers"]["tiny"]["steps"] == 2 * own["steps"]
    for point in result["points"]:
        for explainer in ("tiny", "tinyb"):
            figures = point["explainers"][explainer]["figures"]
            assert {"f1_minus_prior", "f1", "f1_prior"} <= set(figures)
            assert figures["f1"]["values"][0] == json.loads((workdir / point["explainers"][explainer]["results"][0])
                                                            .read_text())["metrics"]["finetuned"]["overall"][
                "is_changed_f1"]["value"]
        assert set(point["self_minus_other"]) == {"tinyb"}
    assert (workdir / "report/act_patch/tiny_tiny/budget.png").stat().st_size > 10_000
    assert planned_jobs(snakemake(workdir, "-n", TARGET, configfiles=[budget])) == {}
