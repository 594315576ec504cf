"""The Snakemake workflow on the tiny model in a temporary folder: results, caching, and bad input."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from chat_server import ChatServer, rating
from workflow_runs import REPO, SNAKEMAKE, copy_tree, modes_unlike, override, planned_jobs, snakemake

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_act_patch_run, prepared_models):
    """A copy of the session's finished tiny run, which the tests below rescore, rerun and extend."""
    workdir = copy_tree(tiny_act_patch_run, tmp_path_factory.mktemp("workflow"))
    return prepared_models.into(workdir, "tinyb")


def test_results_file_holds_metrics_controls_baselines_counts_provenance(finished_run):
    result = json.loads((finished_run / "results/act_patch/tiny_tiny.json").read_text())
    variants = {"finetuned", "untrained", "no_vector", "shuffled_vector", "structure_prior", "majority_class"}
    assert set(result["metrics"]) == variants
    assert set(result["comparisons"]) == {f"finetuned - {v}" for v in variants - {"finetuned"}}
    overall = result["metrics"]["finetuned"]["overall"]
    for name in ("exact_match", "content_match", "is_changed_f1", "is_unchanged_f1", "valid_format"):
        assert set(overall[name]) == {"value", "ci", "se"}
    assert overall["n"] == 8 and 1 <= overall["clusters"] <= 3  # rows of the 3 test pairs
    for variant in variants:  # every variant and baseline is scored on the same rows
        assert result["metrics"][variant]["overall"]["n"] == 8
    assert {entry["key"] for entry in result["baselines"]["structure_prior"]} >= {"all (majority class)"}
    assert result["counts"]["facts"]["facts_total"] == 80 and result["counts"]["labels_test"]["pairs"] == 3
    assert result["provenance"]["models"]["target"]["source"] == "random"
    assert len(result["provenance"]["config_hash"]) == 16


def test_every_stage_table_opens_in_pandas_and_datasets(finished_run):
    import datasets

    tables = sorted((finished_run / "work").rglob("*.parquet"))
    # facts, two pair tables, three label chunks, two label splits, four prediction variants, the alignment's quality
    assert len(tables) == 13
    for path in tables:
        assert len(pd.read_parquet(path)) > 0
        assert datasets.load_dataset("parquet", data_files=str(path), split="train").num_rows > 0
    labels = pd.read_parquet(finished_run / "work/act_patch/labels/tiny/test.parquet")
    assert {"layer", "input_tokens", "patch_position", "is_different", "token_type", "layer_hashable"} <= set(labels)


def test_second_run_does_nothing(finished_run):
    assert planned_jobs(snakemake(finished_run, "-n", "results/act_patch/tiny_tiny.json")) == {}


def test_scoring_change_reruns_only_scoring(finished_run, tmp_path):
    changed = override(tmp_path, "scoring.yaml", {"scoring": {"bootstrap_samples": 60, "seed": 1}})
    plan = planned_jobs(snakemake(finished_run, "-n", "results/act_patch/tiny_tiny.json", configfiles=[changed]))
    assert plan == {"act_patch_score": 1}
    run = snakemake(finished_run, "results/act_patch/tiny_tiny.json", configfiles=[changed])
    assert run.returncode == 0 and "1 of 1 steps (100%) done" in run.stderr + run.stdout
    assert json.loads((finished_run / "results/act_patch/tiny_tiny.json").read_text())[
        "provenance"]["settings"]["scoring"]["bootstrap_samples"] == 60


def test_window_change_reruns_labels_and_everything_after(finished_run, tmp_path):
    config = yaml.safe_load((REPO / "tests" / "config_tiny.yaml").read_text())
    patch = config["act_patch"]["patch"] | {"window_size": 3}
    changed = override(tmp_path, "window.yaml", {"act_patch": {"patch": patch}})
    plan = planned_jobs(snakemake(finished_run, "-n", "results/act_patch/tiny_tiny.json", configfiles=[changed]))
    # the pairs stay; each chunk is patched again and gathered (tiny: 2 train chunks, 1 test chunk)
    assert plan == {"act_patch_label_chunk": 3, "act_patch_labels": 2, "act_patch_train": 1, "act_patch_generate": 4,
                    "act_patch_score": 1}


def test_execution_settings_rerun_nothing(finished_run, tmp_path):
    config = yaml.safe_load((REPO / "tests" / "config_tiny.yaml").read_text())
    changed = override(tmp_path, "execution.yaml", {
        "act_patch": {"batch_size": 7}, "generation": config["generation"] | {"batch_size": 3},
        "training": config["training"] | {"gpus": 2, "cpu_processes": 2, "checkpoint_every": 5}})
    base = planned_jobs(snakemake(finished_run, "-n", "results/act_patch/tiny_tiny.json"))
    assert base.keys() <= {"act_patch_score"}  # rescored if an earlier test here left other scoring settings behind
    assert planned_jobs(snakemake(finished_run, "-n", "results/act_patch/tiny_tiny.json", configfiles=[changed])) == base


def test_changed_pipeline_code_reruns_what_uses_it(finished_run, tmp_path):
    """A copy of the workflow whose training module differs: training and what reads its output rerun."""
    import shutil

    copy = tmp_path / "repo"
    for part in ("Snakefile", "config.yaml", "workflow", "pipeline", "profiles", "tests/config_tiny.yaml", "envs"):
        (copy / part).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (REPO / part).is_dir() else shutil.copy)(REPO / part, copy / part)

    def plan():
        command = ["timeout", "-k", "10", "300", *SNAKEMAKE, "-s", str(copy / "Snakefile"), "-d", str(finished_run),
                   "--cores", "2", "-n", "results/act_patch/tiny_tiny.json",
                   "--configfile", str(copy / "tests" / "config_tiny.yaml")]
        env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(copy)}
        return planned_jobs(subprocess.run(command, cwd=copy, capture_output=True, text=True, env=env))

    assert plan().keys() <= {"act_patch_score"}  # the same code (scoring may be stale from an earlier test)
    training = copy / "pipeline" / "explainer" / "training.py"
    training.write_text(training.read_text().replace('"""Fine-tune', '"""Reworded: fine-tune', 1) + "\n# a comment\n")
    assert plan().keys() <= {"act_patch_score"}  # a comment or a docstring changes no behaviour: nothing reruns
    with open(training, "a") as handle:
        handle.write("\nCHANGED = 1\n")
    assert plan() == {"act_patch_train": 1, "act_patch_generate": 3, "act_patch_score": 1}  # not untrained


def test_seeds_train_generate_and_score_apart_and_gather_into_one_table(finished_run, tmp_path):
    """training.seeds: each seed its own cached jobs, but training.seed's is the run itself (the same settings: it is
    not trained again) and the untrained explainer's answers, the same in every seed, are that run's; the gathered
    table equals its seeds' results recomputed; the run of training.seed is not touched."""
    from pipeline.report.seeds import combine

    seeds = override(tmp_path, "seeds.yaml", {"training": {"seeds": [0, 1]}})
    target = "results/act_patch/tiny_tiny.seeds.json"
    plan = planned_jobs(snakemake(finished_run, "-n", target, configfiles=[seeds]))
    # The run of training.seed is not trained or generated again; its scoring may be redone (other tests in this module
    # rescore the shared run with other settings).
    assert plan.pop("act_patch_score", 0) <= 1
    assert plan == {"act_patch_train_seeded": 1, "act_patch_generate_seeded": 3, "act_patch_score_seeded": 1,
                    "act_patch_seeds": 1}
    run = snakemake(finished_run, target, configfiles=[seeds])
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    gathered = json.loads((finished_run / target).read_text())
    per_seed = [json.loads((finished_run / path).read_text())
                for path in ("results/act_patch/tiny_tiny.json", "results/act_patch/seeds/1/tiny_tiny.json")]
    assert [r["training"]["seed"] for r in per_seed] == [0, 1]
    assert per_seed[0]["metrics"]["untrained"] == per_seed[1]["metrics"]["untrained"]
    assert not (finished_run / "work/act_patch/seeds/0").exists() and not (finished_run / "results/act_patch/seeds/0").exists()
    for path in (("metrics", "finetuned", "overall", "exact_match"),
                 ("comparisons", "finetuned - shuffled_vector", "is_different=True", "exact_match")):
        leaves = [r for r in per_seed]
        for key in path:
            leaves = [leaf[key] for leaf in leaves]
        assert gathered[path[0]][path[1]][path[2]][path[3]] == json.loads(json.dumps(combine(leaves)))
    # Another seed list reruns only what is new; the main run stays as it is.
    more = override(tmp_path, "more.yaml", {"training": {"seeds": [0, 1, 2]}})
    assert planned_jobs(snakemake(finished_run, "-n", target, configfiles=[more])) == {
        "act_patch_train_seeded": 1, "act_patch_generate_seeded": 3, "act_patch_score_seeded": 1, "act_patch_seeds": 1}
    assert planned_jobs(snakemake(finished_run, "-n", "results/act_patch/tiny_tiny.json", configfiles=[more])).keys() <= {
        "act_patch_score"}


def test_fitted_alignment_reading_rows_and_the_diagnostic_run_end_to_end(finished_run, tmp_path):
    """act_patch's default (explainer.alignment: fitted, with reading rows and loss weights) fits the maps once and
    trains per-layer projections from them; the diagnostic reads the trained explainer; identity needs no maps."""
    targets = ["results/act_patch/tiny_tiny.json", "results/diagnostics/act_patch/tiny_tiny.json"]
    assert planned_jobs(snakemake(finished_run, "-n", *targets)).keys() <= {"act_patch_diagnostics", "act_patch_score"}
    identity = override(tmp_path, "identity.yaml", {"act_patch": {"explainer": {"alignment": "identity"}}})
    assert planned_jobs(snakemake(finished_run, "-n", targets[0], configfiles=[identity])) == {
        "act_patch_train": 1, "act_patch_generate": 4, "act_patch_score": 1}
    run = snakemake(finished_run, *targets)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    quality = pd.read_parquet(finished_run / "work/alignment/tiny_tiny.quality.parquet")
    assert list(quality["layer"]) == [0, 1, 2, 3] and quality["r2"].notna().all()
    meta = json.loads((finished_run / "work/act_patch/explainers/tiny_tiny/explainer.json").read_text())
    assert meta["alignment"] == "fitted"
    diagnostic = json.loads((finished_run / targets[1]).read_text())
    assert {"raw", "input"} <= set(diagnostic["own_token"])
    assert diagnostic["own_token"]["input"] != diagnostic["own_token"]["raw"]  # the trained explainer's maps are used
    movement = diagnostic["projection_movement"]  # the windows start at layers 0 and 2: only their maps train
    assert set(movement) == {"0", "1", "2", "3"} and movement["0"] > 0 and movement["1"] == movement["3"] == 0
    assert "right - shuffled" in diagnostic["answer_logprob"]["all"]
    fitted_with_raw = override(tmp_path, "raw.yaml", {"explainer": {"scale": "raw"}})
    refused = snakemake(finished_run, "-n", targets[0], configfiles=[fitted_with_raw])
    assert refused.returncode != 0 and "act_patch.explainer: alignment 'fitted'" in refused.stdout + refused.stderr


def test_self_versus_other_matrix_pairs_every_explainer_with_every_target(finished_run):
    """tiny (width 64) and tinyb (width 48) each explain themselves and each other; the matrix compares each target
    explaining itself with the other explainer on the same test rows."""
    run = snakemake(finished_run, "results/matrix/act_patch.parquet", "report/matrix/act_patch.png", timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    matrix = pd.read_parquet(finished_run / "results/matrix/act_patch.parquet")
    assert sorted(zip(matrix["explainer"], matrix["target"])) == [("tiny", "tiny"), ("tiny", "tinyb"),
                                                                   ("tinyb", "tiny"), ("tinyb", "tinyb")]
    assert set(matrix["metric"]) == {"exact_match"} and set(matrix["split"]) == {"is_different=True"}
    for row in matrix.itertuples():
        result = json.loads((finished_run / f"results/act_patch/{row.explainer}_{row.target}.json").read_text())
        changed = result["metrics"]["finetuned"].get("is_different=True")
        if changed is None:  # no patch changed this random target's answer: no rows to compare, said as such
            assert row.n == 0 and pd.isna(row.value) and pd.isna(row.self_minus_this)
            continue
        assert row.value == changed["exact_match"]["value"] and row.n == changed["n"]
        own = matrix[(matrix["explainer"] == row.target) & (matrix["target"] == row.target)]["value"].iloc[0]
        if row.self:
            assert pd.isna(row.self_minus_this)
        else:  # the paired difference on the same rows equals the difference of the two headline values
            assert row.self_minus_this == pytest.approx(own - row.value)
    assert (matrix["n"] > 0).any() and (finished_run / "report/matrix/act_patch.png").stat().st_size > 0
    meta = json.loads((finished_run / "work/act_patch/explainers/tiny_tinyb/explainer.json").read_text())
    assert meta["target_width"] == 48 and meta["projection"] == "linear"  # the widths are bridged


def test_paper_run_plans_every_job_and_fails_early_without_weights(tmp_path, monkeypatch):
    plan = planned_jobs(snakemake(tmp_path, "-n", "results/act_patch/llama_llama.json"))
    assert plan == {"prepare_model": 1, "act_patch_facts": 1, "act_patch_pairs": 2, "act_patch_label_chunk": 2 + 1,
                    "act_patch_labels": 2, "alignment": 1, "act_patch_train": 1, "act_patch_generate": 4,
                    "act_patch_score": 1}
    paper = planned_jobs(snakemake(tmp_path, "-n", "results/act_patch/llama_llama.json",
                                   configfiles=[REPO / "config.paper.yaml"]))
    assert paper["act_patch_label_chunk"] == 20 + 2  # 20,000 and 2,000 pairs in chunks of 1,000
    assert "alignment" not in paper  # the paper's raw injection needs no fitted maps
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # an empty cache, whatever this machine holds
    run = snakemake(tmp_path, "results/act_patch/llama_llama.json", timeout=300)
    assert run.returncode != 0
    log = (tmp_path / "logs/prepare_model/llama.log").read_text()
    assert "model 'llama' (meta-llama/Llama-3.1-8B) is not available" in log and "HF_TOKEN" in log
    assert not (tmp_path / "resources/models/llama").exists() and not (tmp_path / "work").exists()


def test_bad_config_and_unknown_model_fail_before_any_job(tmp_path):
    broken = override(tmp_path, "broken.yaml", {"act_patch": {"batch_size": 0}})
    run = snakemake(tmp_path, "-n", configfiles=[broken])
    assert run.returncode != 0 and "act_patch.batch_size: 0 is less than the minimum of 1" in run.stdout + run.stderr
    run = snakemake(tmp_path, "-n", "results/act_patch/nosuch_tiny.json")
    assert run.returncode != 0 and "unknown model key 'nosuch'" in run.stdout + run.stderr


def test_cross_model_runs_bridge_the_widths(tmp_path, prepared_models, gemma_dir):
    """SmolLM2 (width 576) explains Gemma 3 270M (width 640) at a reduced size, through maps fitted across the two
    tokenizers. (The other direction, a wider explainer, is the matrix test's tiny explaining tinyb.)"""
    prepared_models.into(tmp_path, "smollm", "gemma")
    small = override(tmp_path, "small.yaml", {
        "facts": {"relations": ["capital"], "max_facts_per_relation": 60, "keep_only_correct": True},
        "act_patch": {"pairs": {"train": 6, "test": 3, "seed": 0}, "training": {"max_examples": 16},
                      "patch": {"token_types": ["last_subject_token", "last_token"], "window_size": 6,
                                "window_stride": 6, "first_layer": 0, "last_layer": None}},
        "training": {"max_examples": 16, "batch_size": 4, "checkpoint_every": 100},
        "generation": {"max_new_tokens": 8, "batch_size": 8, "max_examples": 8, "seed": 0},
    })
    target = "results/act_patch/smollm_gemma.json"
    run = snakemake(tmp_path, target, configfiles=[small], timeout=1500)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "rule prepare_model" not in run.stdout + run.stderr  # the session's prepared models were used
    result = json.loads((tmp_path / target).read_text())
    assert result["metrics"]["finetuned"]["overall"]["n"] > 0
    meta = json.loads((tmp_path / "work/act_patch/explainers/smollm_gemma/explainer.json").read_text())
    assert meta["target_width"] == 640 and meta["projection"] == "linear"
    from safetensors.torch import load_file

    # act_patch reads through per-layer maps fitted across the two tokenizers (tokens matched where they end)
    maps = load_file(str(tmp_path / "work/act_patch/explainers/smollm_gemma/projection.safetensors"))
    weights = {name: tuple(t.shape) for name, t in maps.items() if name.endswith(".weight")}
    assert len(weights) == 18 and set(weights.values()) == {(576, 640)}
    quality = pd.read_parquet(tmp_path / "work/alignment/smollm_gemma.quality.parquet")
    assert len(quality) == 18 and quality["rank_median_before"].isna().all()  # no identity across widths


@pytest.fixture(scope="module")
def input_ablation_run(tmp_path_factory, prepared_models):
    """The tiny explainer on real SmolLM2 labels (a random target never answers with a letter)."""
    workdir = prepared_models.into(tmp_path_factory.mktemp("input_ablation"), "tiny", "smollm")
    result = snakemake(workdir, "results/input_ablation/tiny_smollm.json", timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir


def test_input_ablation_results_hold_variants_majority_class_and_label_counts(input_ablation_run):
    result = json.loads((input_ablation_run / "results/input_ablation/tiny_smollm.json").read_text())
    assert result["task"] == "input_ablation"
    assert set(result["metrics"]) == {"finetuned", "untrained", "structure_prior", "majority_class"}
    test_counts = result["counts"]["labels_test"]
    assert test_counts["changed"] + test_counts["unchanged"] + test_counts["null_label"] == test_counts["questions"]
    scored = result["metrics"]["finetuned"]["overall"]["n"]
    assert scored == min(8, test_counts["changed"] + test_counts["unchanged"])
    assert result["metrics"]["majority_class"]["overall"]["n"] == scored
    labels = pd.read_parquet(input_ablation_run / "work/input_ablation/labels/smollm/test.parquet")
    from pipeline.tasks.input_ablation import LABEL_COLUMNS

    assert set(LABEL_COLUMNS) <= set(labels.columns)
    explainer = json.loads((input_ablation_run / "work/input_ablation/explainers/tiny_smollm/explainer.json").read_text())
    assert explainer["projection"] == "none"  # text only: no vector reaches this explainer


def test_input_ablation_training_override_reruns_training_but_not_labels(input_ablation_run, tmp_path):
    changed = override(tmp_path, "epochs.yaml", {"input_ablation": {"training": {"max_length": 256, "epochs": 2}}})
    plan = planned_jobs(snakemake(input_ablation_run, "-n", "results/input_ablation/tiny_smollm.json",
                                  configfiles=[changed]))
    assert plan == {"input_ablation_train": 1, "input_ablation_generate": 1, "input_ablation_score": 1}
    hint = override(tmp_path, "system.yaml", {"input_ablation": {"system_prompt": "Reply with a letter."}})
    plan = planned_jobs(snakemake(input_ablation_run, "-n", "results/input_ablation/tiny_smollm.json",
                                  configfiles=[hint]))
    assert plan == {"input_ablation_labels": 2, "input_ablation_train": 1, "input_ablation_generate": 2,
                    "input_ablation_score": 1}


def test_an_asked_input_ablation_question_gets_the_labels_letters_and_the_generation_stages_answer(
        input_ablation_run):
    """pipeline.ask on a test question the run labelled and answered: the target's letters with and without the hint
    are the label stage's, the question is worded as the generation stage worded it and the answer is its answer."""
    from pipeline.ask import Asker

    labels = pd.read_parquet(input_ablation_run / "work/input_ablation/labels/smollm/test.parquet")
    predictions = pd.read_parquet(input_ablation_run / "work/input_ablation/predictions/tiny_smollm/finetuned.parquet")
    answered = predictions.set_index("question")["prediction"]
    row = labels[labels["ablation_prompt"].isin(answered.index)].iloc[0]
    asker = Asker.load("input_ablation", "tiny_smollm", input_ablation_run)
    asked = asker.input_ablation(row["question"], list(row["choices"]), row["hint_letter"], row["subject"]).iloc[0]
    assert asked["question"] == row["ablation_prompt"] and asked["answer"] == answered[row["ablation_prompt"]]
    assert (asked["answer_without_hint"], asked["answer_with_hint"]) == (row["zeroshot_prediction"],
                                                                       row["random_hint_prediction"])
    with pytest.raises(ValueError, match="expected the letter of one of 2 choices"):
        asker.input_ablation("Which?", ["one", "two"], "C")


def test_report_figures_summary_and_html_report(finished_run, tmp_path):
    only_act_patch = override(tmp_path, "runs.yaml", {"runs": {"act_patch": ["tiny_tiny"], "input_ablation": [],
                                                               "features": []}})
    plan = planned_jobs(snakemake(finished_run, "-n", "all", configfiles=[only_act_patch]))
    plan.pop("act_patch_score", None)  # rescored when an earlier test here left other scoring settings behind
    assert plan == {"act_patch_patch_effect": 1, "report_figures": 1, "summary_table": 1, "results_tables": 1,
                    "all": 1}
    run = snakemake(finished_run, "all", configfiles=[only_act_patch])
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for figure in ("report/act_patch/patch_effect_tiny.png", "report/act_patch/tiny_tiny/metrics.png",
                   "report/act_patch/tiny_tiny/confusion.png", "report/act_patch/tiny_tiny/loss.png"):
        assert (finished_run / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure
    summary = pd.read_parquet(finished_run / "results/summary.parquet")
    assert set(summary["variant"]) == {"finetuned", "untrained", "no_vector", "shuffled_vector", "structure_prior",
                                       "majority_class"}
    assert (summary["task"] == "act_patch").all()
    assert {"is_changed_f1", "is_changed_f1_ci_low", "is_changed_f1_ci_high", "changed_exact_match"} <= set(summary)
    assert "finetuned" in (finished_run / "logs/summary_table/summary.log").read_text()
    result = json.loads((finished_run / "results/act_patch/tiny_tiny.json").read_text())
    tables = (finished_run / "results/tables.md").read_text()
    f1 = result["metrics"]["finetuned"]["overall"]["is_changed_f1"]
    assert f"commit {result['provenance']['code_version']}" in tables
    assert f"{f1['value']:.3f} [{f1['ci'][0]:.3f}, {f1['ci'][1]:.3f}]" in tables
    report = snakemake(finished_run, "--report", str(finished_run / "report.html"), configfiles=[only_act_patch])
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    assert (finished_run / "report.html").stat().st_size > 10_000


JUDGE_KEY = "sk-test-NEVER-IN-A-FILE-7731"


def judge_or_describe(prompt: str) -> str | int:
    """The describer's prompt gets a phrase naming its first marked token; the judge's a rating."""
    if "Describe what this feature detects" in prompt:
        marked = re.findall(r"<<(.*?)>>", prompt)
        return f"the word {marked[0].strip()}" if marked else "nothing in particular"
    return rating(prompt)


def describer_requests(server: ChatServer) -> int:
    return sum("Describe what this feature detects" in b["body"]["messages"][-1]["content"] for b in server.bodies)


@pytest.fixture(scope="module")
def judge_server():
    with ChatServer(reply=judge_or_describe) as server:
        yield server


@pytest.fixture(scope="module")
def features_run(tmp_path_factory, judge_server, prepared_models):
    """The features task on tiny: SAEs on fact sentences, exemplars, descriptions by the openai describer and
    ratings by the LM judge (both a real local OpenAI-compatible server, the key in the run's `.env`, none in the
    environment), explainer, the offline judge and the simulator."""
    workdir = prepared_models.into(tmp_path_factory.mktemp("features"), "tiny")
    tiny = yaml.safe_load((REPO / "tests" / "config_tiny.yaml").read_text())["features"]
    judge = override(workdir, "judge.yaml", {"features": {
        "judge": tiny["judge"] | {"base_url": judge_server.base_url},
        "descriptions": tiny["descriptions"] | {"describer": "openai", "model": "describer-test",
                                                "base_url": judge_server.base_url}}})
    (workdir / ".env").write_text(f"OPENAI_API_KEY={JUDGE_KEY}\n")
    result = snakemake(workdir, "results/features/tiny_tiny.json", "report/features/tiny_tiny/examples.html",
                       configfiles=[judge], timeout=900, env={"OPENAI_API_KEY": ""})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir, judge


def test_features_results_hold_variants_baselines_and_sae_quality(features_run):
    workdir, _ = features_run
    umask = os.umask(0)
    os.umask(umask)
    for weights in ("work/features/sae/tiny", "work/features/simulator/tiny"):  # safetensors' own files are 0600
        assert list((workdir / weights).rglob("*.safetensors")) and modes_unlike(workdir / weights, umask) == []
    result = json.loads((workdir / "results/features/tiny_tiny.json").read_text())
    assert result["task"] == "features" and result["judge"]["name"] == "embedding_similarity"
    variants = {"finetuned", "untrained", "no_vector", "nearest_neighbor", "nearest_neighbor_layer", "structure_prior",
                "shuffled_descriptions", "constant_description", "selfie_max", "selfie_single_scale"}
    assert set(result["metrics"]) == variants | {"reference"}
    n = result["metrics"]["finetuned"]["overall"]["n"]
    assert n > 0 and all(m["overall"]["n"] == n for m in result["metrics"].values())
    # SelfIE: every scale scored by every scorer (the simulator too), the best per feature and one chosen elsewhere.
    for column in ("embedding_similarity", "lm_judge", "simulator_top"):
        assert set(result["selfie"]["mean_by_scale"][column]) == {"1", "5", "10", "25", "50"}, column
    # Every variant against both floors.
    assert {f"{v} - shuffled_descriptions" for v in variants - {"finetuned", "shuffled_descriptions",
                                                                 "constant_description"}} <= set(result["comparisons"])
    assert [q["layer"] for q in result["counts"]["labels_train"]["sae_quality"]] == [1, 3]
    assert (workdir / "work/features/sae/tiny/layers.1/cfg.json").exists()
    # The default explainer: per-layer projections started from the fitted maps, the directions left uncentred,
    # trained for features.training.epochs (3) over the training features.
    meta = json.loads((workdir / "work/features/explainers/tiny_tiny/explainer.json").read_text())
    assert meta["alignment"] == "fitted" and (workdir / "work/alignment/tiny_tiny.quality.parquet").exists()
    log = json.loads((workdir / "work/features/explainers/tiny_tiny/training_log.json").read_text())
    batch = yaml.safe_load((REPO / "tests" / "config_tiny.yaml").read_text())["training"]["batch_size"]
    assert log["steps"] == math.ceil(3 * log["examples"] / batch)
    page = (workdir / "report/features/tiny_tiny/examples.html").read_text()
    assert "reference" in page and result["examples"][0]["feature_id"] in page
    for table in ("work/features/corpus.parquet", "work/features/exemplars/tiny.parquet",
                  "work/features/descriptions/tiny/test.parquet", "work/features/predictions/tiny_tiny/selfie.parquet"):
        assert len(pd.read_parquet(workdir / table)) > 0, table
    simulator = result["judges"]["simulator"]
    assert simulator["enabled"] and simulator["features"] == min(6, n)
    assert result["metrics"]["finetuned"]["overall"]["simulator_top"]["n"] == simulator["features"]
    # The simulator was fine-tuned for this target (rule features_simulator) and scores in its compact format.
    assert simulator["format"] == "compact" and simulator["model"]["simulator_of"]["source"] == "random"
    assert json.loads((workdir / "work/features/simulator/tiny/simulator.json").read_text())["features"] > 0
    assert set(simulator["ratio_to_reference"]) == set(result["metrics"]) - {"reference"}
    assert simulator["paper_ratio"]["label_scores"].startswith("the reference description's")
    assert set(simulator["paper_ratio"]["ratios"]) == set(result["metrics"]) - {"reference"}
    assert simulator["windows"]["scored_top_ranks"].startswith("those not divisible by 2")
    # Each out-of-distribution set: every variant (SelfIE at the test split's best scale) and the baselines that
    # apply, scored by the simulator against the vectors' own projections.
    for name in ("ood_fw", "ood_diff"):
        ood = result["ood"][name]
        assert ood["vectors"] == 4 and ood["features"] == 4
        assert set(ood["metrics"]) == variants
        assert set(ood["selfie"]["single_scale_chosen"].values()) <= {1, 5, 10, 25, 50}  # chosen on the test split
        assert all(m["overall"]["simulator_top"]["n"] == 4 for m in ood["metrics"].values())
        assert "simulator_top" in ood["comparisons"]["finetuned - no_vector"]["overall"]
        assert len(pd.read_parquet(workdir / f"work/features/predictions/tiny_tiny/{name}/finetuned.parquet")) == 4


def test_lm_judge_scores_through_a_local_server_caches_and_never_writes_the_key(features_run, judge_server):
    workdir, judge = features_run
    result = json.loads((workdir / "results/features/tiny_tiny.json").read_text())
    lm = result["judges"]["lm_judge"]
    assert lm["configured"] and lm["accounting"]["failed"] == 0 and lm["accounting"]["answered"] > 0
    described = describer_requests(judge_server)
    test = pd.read_parquet(workdir / "work/features/descriptions/tiny/test.parquet")
    prompts = {b["body"]["messages"][-1]["content"] for b in judge_server.bodies}
    assert 0 < described == sum("Describe what this feature detects" in p for p in prompts)  # each prompt asked once
    assert described <= len(test) + len(pd.read_parquet(workdir / "work/features/descriptions/tiny/train.parquet"))
    assert set(test["describer"]) == {"openai:describer-test"} and test["description"].str.startswith("the word").all()
    assert lm["accounting"]["requests"] == judge_server.requests - described
    assert set(judge_server.answered.values()) == {1}
    assert all(m["overall"]["lm_judge"]["n"] == m["overall"]["n"] for name, m in result["metrics"].items()
               if name != "reference")
    before = judge_server.requests
    rerun = snakemake(workdir, "results/features/tiny_tiny.json", "--forcerun", "features_score",
                      configfiles=[judge], env={"OPENAI_API_KEY": ""})
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    again = json.loads((workdir / "results/features/tiny_tiny.json").read_text())["judges"]["lm_judge"]["accounting"]
    assert judge_server.requests == before and again["requests"] == 0  # the second run asked nothing
    assert again["cached"] == lm["accounting"]["answered"] + lm["accounting"]["cached"]
    # A judge that fails for good (every request a 500): the job fails, and its log names the call, not the key.
    tiny = yaml.safe_load((REPO / "tests" / "config_tiny.yaml").read_text())["features"]
    failing = override(workdir, "failing.yaml", {"features": {"judge": tiny["judge"] | {
        "base_url": judge_server.base_url, "model": "judge-that-fails", "retries": 1}}})
    judge_server.faults = ["500"] * 400
    try:
        failed = snakemake(workdir, "results/features/tiny_tiny.json", configfiles=[judge, failing],
                           env={"OPENAI_API_KEY": ""})
    finally:
        judge_server.faults = []
    assert failed.returncode != 0  # (the results file is gone with it; the tests below only plan)
    log = (workdir / "logs/features_score/tiny_tiny.log").read_text()
    assert "HTTP 500" in log or "500" in log
    leaks = [str(path) for path in workdir.rglob("*") if path.is_file() and path.name != ".env"
             and JUDGE_KEY.encode() in path.read_bytes()]
    assert leaks == []  # not in logs (the failure's too), artifacts, caches, results or Snakemake's metadata
    assert JUDGE_KEY not in failed.stdout + failed.stderr
    assert all(h.get("authorization") == f"Bearer {JUDGE_KEY}" for h in judge_server.headers)


def test_features_changes_rerun_exactly_the_jobs_they_affect(features_run, tmp_path):
    config = yaml.safe_load((REPO / "tests" / "config_tiny.yaml").read_text())
    changed = override(tmp_path, "describe.yaml", {"features": {"descriptions": config["features"]["descriptions"]
                                                                | {"features_per_layer": 10}}})
    plan = planned_jobs(snakemake(features_run[0], "-n", "results/features/tiny_tiny.json",
                                  configfiles=[features_run[1], changed]))
    # The out-of-distribution vectors do not depend on descriptions, so only the answers of the retrained explainer
    # (fine-tuned, no-vector) are asked again there; the untrained explainer's and SelfIE's are kept.
    assert plan == {"features_descriptions": 1, "features_simulator": 1, "features_train": 1, "features_generate": 4,
                    "features_generate_ood_fw": 2, "features_generate_ood_diff": 2, "features_score": 1}
    steps = override(tmp_path, "simulator.yaml", {"features": {"simulator": config["features"]["simulator"] | {
        "training": config["features"]["simulator"]["training"] | {"steps": 3}}}})
    plan = planned_jobs(snakemake(features_run[0], "-n", "results/features/tiny_tiny.json",
                                  configfiles=[features_run[1], steps]))
    assert plan == {"features_simulator": 1, "features_score": 1}


def test_asking_the_features_explainer_about_a_latent_gives_the_runs_answer_and_scores(features_run):
    """A latent the run described and scored, asked again: the question, the answer and the reference are the
    generation stage's; the simulator's scores of both descriptions are the score stage's; the exemplars are the
    table's top windows with the firing token marked; the SAE's decoder gives the run's own vector. Then a latent the
    run never described (no reference), the command's JSON and the workflow target on a file of latents."""
    import torch

    from pipeline.ask import Asker
    from pipeline.ask.features import decoder_direction, described_latent

    workdir, judge = features_run
    scored_run = snakemake(workdir, "results/features/tiny_tiny.json", configfiles=[judge])  # a test above may have
    assert scored_run.returncode == 0, scored_run.stderr[-3000:]                             # failed its rescoring
    result = json.loads((workdir / "results/features/tiny_tiny.json").read_text())
    scored = result["per_feature"]["finetuned"]["simulator_top"]
    made = pd.read_parquet(workdir / "work/features/predictions/tiny_tiny/finetuned.parquet").set_index("row_key")
    key = sorted(k for k in scored if k in made.index)[0]
    layer, feature = (int(part[1:]) for part in key.split("/"))
    asker = Asker.load("features", "tiny_tiny", workdir)
    asked = asker.features(layer, feature, exemplars=3)
    assert (asked["question"], asked["answer"], asked["reference"]) == tuple(made.loc[key, ["question", "prediction",
                                                                                             "reference"]])
    simulator = asked["simulator"]
    assert simulator["enabled"] and simulator["description"]["top"] == pytest.approx(scored[key], abs=2e-3)
    reference = result["per_feature"]["reference"]["simulator_top"][key]
    assert simulator["reference"]["top"] == pytest.approx(reference, abs=2e-3)
    table = pd.read_parquet(workdir / "work/features/exemplars/tiny.parquet")
    top = table[(table["layer"] == layer) & (table["feature"] == feature) & (table["kind"] == "top")].sort_values("rank")
    assert [e["tokens"] for e in asked["exemplars"]] == [list(t) for t in top["tokens"].head(3)]
    for shown in asked["exemplars"]:
        assert f"[[{shown['firing_token']}]]" in shown["text"]
        assert shown["activation"] == pytest.approx(shown["activations"][shown["firing_index"]], rel=1e-5)
    width = int(json.loads((workdir / "resources/models/tiny/manifest.json").read_text())["hidden_size"])
    _, _, vector = described_latent(workdir, "tiny", key)
    assert torch.allclose(decoder_direction(workdir, "tiny", layer, feature, width), vector, atol=1e-6)

    described = set(made.index) | set(pd.read_parquet(workdir / "work/features/descriptions/tiny/train.parquet")["feature_id"])
    fresh = next(f for f in range(1000) if f"L{layer}/F{f}" not in described)
    other = asker.features(layer, fresh, simulate=False)
    assert other["reference"] is None and other["split"] is None and other["description"]
    fired = set(table.loc[(table["layer"] == layer) & (table["kind"] == "top"), "feature"])
    assert bool(other["exemplars"]) == (fresh in fired)
    with pytest.raises(ValueError, match="layers with SAEs"):
        asker.features(99, 0)
    from safetensors.torch import save_file

    save_file({"direction": vector.contiguous()}, str(workdir / "mine.safetensors"))
    save_file({"direction": (5 * vector).contiguous()}, str(workdir / "mine5.safetensors"))
    mine = asker.features(layer, vector_file=workdir / "mine.safetensors")
    scaled = asker.features(layer, vector_file=workdir / "mine5.safetensors")
    assert mine["answer"] == scaled["answer"] and mine["reference"] is None  # unit-normed as the run's vectors are
    save_file({"direction": torch.zeros(width + 1)}, str(workdir / "wide.safetensors"))
    with pytest.raises(ValueError, match=f"of the target's width {width}"):
        asker.features(layer, vector_file=workdir / "wide.safetensors")

    command = subprocess.run([sys.executable, "-m", "pipeline.ask", "features", "tiny_tiny", "--workdir", str(workdir),
                              "--layer", str(layer), "--feature", str(feature), "--exemplars", "3", "--json"],
                             capture_output=True, text=True, cwd=REPO, env=os.environ | {"PYTHONPATH": str(REPO)})
    assert command.returncode == 0, command.stderr[-2000:]
    assert json.loads(command.stdout)["answer"] == asked["answer"]
    own = subprocess.run([sys.executable, "-m", "pipeline.ask", "features", "tiny_tiny", "--workdir", str(workdir),
                          "--layer", str(layer), "--vector", str(workdir / "mine.safetensors")],
                         capture_output=True, text=True, cwd=REPO, env=os.environ | {"PYTHONPATH": str(REPO)})
    assert own.returncode == 0 and f"explainer: {mine['description']}" in own.stdout, own.stderr[-2000:]
    (workdir / "asks").mkdir(exist_ok=True)
    pd.DataFrame({"layer": [layer, layer], "feature": [feature, fresh]}).to_csv(workdir / "asks/latents.csv", index=False)
    run = snakemake(workdir, "results/ask/features/tiny_tiny/latents.parquet", configfiles=[judge])
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = pd.read_parquet(workdir / "results/ask/features/tiny_tiny/latents.parquet")
    references = [None if pd.isna(r) else r for r in out["reference"]]
    assert out["description"].tolist()[0] == asked["description"] and references == [asked["reference"], None]
    assert out["simulator_top"].iloc[0] == pytest.approx(simulator["description"]["top"], abs=1e-6)


def test_the_features_page_shows_the_commands_description_and_exemplars_in_a_real_browser(features_run, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from browser import page_in_chromium, type_into

    workdir, judge = features_run
    scored_run = snakemake(workdir, "results/features/tiny_tiny.json", configfiles=[judge])
    assert scored_run.returncode == 0, scored_run.stderr[-3000:]
    key = sorted(json.loads((workdir / "results/features/tiny_tiny.json").read_text())["per_feature"]["finetuned"][
        "simulator_top"])[0]
    layer, feature = (int(part[1:]) for part in key.split("/"))
    env = {"HF_HUB_OFFLINE": "1", "PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "HOME": str(tmp_path)}
    command = subprocess.run([sys.executable, "-m", "pipeline.ask", "features", "tiny_tiny", "--workdir", str(workdir),
                              "--layer", str(layer), "--feature", str(feature), "--json"],
                             capture_output=True, text=True, cwd=REPO, env=env)
    assert command.returncode == 0, command.stderr[-2000:]
    expected = json.loads(command.stdout)
    serve = [sys.executable, "-m", "pipeline.ask", "serve", "tiny_tiny", "--task", "features", "--workdir", str(workdir)]
    with page_in_chromium(serve, env, REPO) as browser:
        wait = WebDriverWait(browser, 240)
        type_into(browser, wait, "layer", layer)
        type_into(browser, wait, "feature", feature)
        browser.find_element(By.CSS_SELECTOR, "#ask").click()
        shown = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#description"))
        assert shown.text == expected["description"].strip()
        assert browser.find_element(By.CSS_SELECTOR, "#reference").text == expected["reference"].strip()
        firing = [span.text for span in browser.find_elements(By.CSS_SELECTOR, "#exemplars span.firing")]
        assert [t.strip() for t in firing] == [e["firing_token"].strip() for e in expected["exemplars"]]
        score = browser.find_element(By.CSS_SELECTOR, "#simulator-description").text
        assert score.endswith(f"{expected['simulator']['description']['top']:.3f}")
        browser.save_screenshot(str(tmp_path / "features-page.png"))
        assert (tmp_path / "features-page.png").stat().st_size > 10_000


def test_features_paper_run_plans_from_the_archive_without_saes(tmp_path):
    """The archive's features, descriptions and exemplars, the released simulator (no simulator training), and the
    out-of-distribution sets built from the target; no SAE."""
    plan = planned_jobs(snakemake(tmp_path, "-n", "results/features/llama_llama.json",
                                  configfiles=[REPO / "config.paper.yaml"]))
    assert plan == {"prepare_model": 1, "features_descriptions": 1, "features_archive_exemplars": 1,
                    "features_train": 1, "features_generate": 4, "features_corpus": 1, "act_patch_facts": 1,
                    "features_ood": 1, "features_generate_ood_fw": 4, "features_generate_ood_diff": 4,
                    "features_score": 1}


def test_the_papers_archive_is_scored_by_the_simulator_and_on_the_ood_sets(tmp_path, prepared_models):
    """features.source: paper on a fixture archive in the paper's layout (tiny's width): the simulator, trained on
    the archive's training features' exemplars, scores the test features on the archive's whole sequences (in
    sample, as the paper scores them), and the OOD sets are built from the target and scored."""
    from paper_archive import tiny_archive

    from pipeline.artifacts import read_provenance
    from pipeline.models import load_tokenizer

    prepared_models.into(tmp_path, "tiny")
    archive = tiny_archive(tmp_path / "archive", width=64, vocabulary=len(load_tokenizer(prepared_models.path("tiny"))))
    paper = override(tmp_path, "paper.yaml", {"features": {
        "source": "paper", "paper_dir": str(archive), "exemplars": {"top": 3, "random": 2},
        "simulator": {"top": 3, "random": 2, "tokens_before": None, "max_features": None},
        "ood": {"sets": ["ood_fw"]}}})
    target = "results/features/tiny_tiny.json"
    assert "features_sae" not in planned_jobs(snakemake(tmp_path, "-n", target, configfiles=[paper]))
    run = snakemake(tmp_path, target, configfiles=[paper], timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    counts = read_provenance(tmp_path / "work/features/exemplars/tiny.archive.parquet")["counts"]
    assert counts["features"] == 12 and counts["without_exemplars"] == {"train": 0, "test": 0}
    simulator = json.loads((tmp_path / target).read_text())["judges"]["simulator"]
    assert simulator["enabled"] and simulator["features"] == 4
    assert simulator["windows"]["scored_top_ranks"] == "all" and simulator["windows"]["tokens_before"] is None
    reference = json.loads((tmp_path / target).read_text())["metrics"]["reference"]["overall"]["simulator_top"]
    assert reference["n"] == 4 and 0 <= reference["value"] <= 1
    assert "label_scores" in simulator["paper_ratio"] and simulator["paper_ratio"]["label_scores"].startswith(
        "the archive's")
    ood = json.loads((tmp_path / target).read_text())["ood"]["ood_fw"]
    assert ood["vectors"] > 0 and ood["metrics"]["finetuned"]["overall"]["simulator_top"]["n"] > 0


def test_settings_that_cannot_run_are_refused_before_any_job(tmp_path):
    """Caught at planning, naming the setting: layer injection across models, a missing local simulator checkpoint,
    duplicate SAE layers, an empty model folder left behind, another task's override of the wrong type."""
    cases = [
        ({"explainer": {"inject": "layer"}}, "results/act_patch/tiny_tinyb.json",
         "explainer.inject 'layer' (act_patch): explainer tiny is not target tinyb"),
        ({"features": {"simulator": {"checkpoint": "./no-such-simulator"}}}, "results/features/tiny_tiny.json",
         "features.simulator.checkpoint: local folder ./no-such-simulator does not exist"),
        ({"features": {"sae": {"layers": [1, 1, 3]}}}, "results/features/tiny_tiny.json",
         "features.sae.layers: [1, 1, 3] has non-unique elements"),
        ({"act_patch": {"training": {"learning_rat": 0.1}}}, "results/act_patch/tiny_tiny.json",
         "act_patch.training: Additional properties are not allowed ('learning_rat' was unexpected)"),
    ]
    for settings, target, expected in cases:
        run = snakemake(tmp_path, "-n", target, configfiles=[override(tmp_path, "bad.yaml", settings)])
        assert run.returncode != 0 and expected in run.stdout + run.stderr, (expected, run.stderr[-2000:])
    for target, expected in (("resources/interpbench/ioi", "InterpBench case ioi is listed in interpbench.cases but is "
                                                          "not built here"),
                             ("results/interpbench/999.json", "InterpBench case '999' is not in interpbench.cases")):
        run = snakemake(tmp_path, "-n", target)
        assert run.returncode != 0 and expected in run.stdout + run.stderr, (expected, run.stderr[-2000:])
    (tmp_path / "resources" / "models" / "tiny").mkdir(parents=True)
    run = snakemake(tmp_path, "-n", "results/act_patch/tiny_tiny.json")
    assert run.returncode != 0 and "resources/models/tiny exists but holds no manifest.json" in run.stdout + run.stderr
    assert not (tmp_path / "work").exists()
    (tmp_path / "resources" / "models" / "tiny").rmdir()
    assert snakemake(tmp_path, "resources/models/tiny").returncode == 0  # once prepared, its depth is known
    deep = override(tmp_path, "deep.yaml", {"features": {"sae": {"layers": [1, 9]}}})
    run = snakemake(tmp_path, "-n", "results/features/tiny_tiny.json", configfiles=[deep])
    assert run.returncode != 0 and "features.sae.layers: [9] beyond the last layer of tiny (4 layers: 0..3)" in (
        run.stdout + run.stderr)
