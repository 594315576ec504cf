"""What a user meets when a run fails half-way or its inputs are damaged (docs/reliability.md): no result older than
its settings, files readable as the umask says, external servers checked first, damaged artifacts named."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
import yaml
from workflow_runs import (REPO, copy_tree, modes_unlike, override, planned_jobs, signal_job_when, snakemake,
                           snakemake_command)

pytestmark = pytest.mark.slow
TARGET = "results/act_patch/tiny_tiny.json"


@pytest.fixture
def run_copy(tmp_path, tiny_act_patch_run) -> Path:
    """A copy of the session's finished tiny run that this test may change."""
    return copy_tree(tiny_act_patch_run, tmp_path / "run")


def longer_training(tmp_path: Path, epochs: int) -> Path:
    training = yaml.safe_load((REPO / "tests" / "config_tiny.yaml").read_text())["training"]
    return override(tmp_path, f"epochs{epochs}.yaml", {"training": training | {"epochs": epochs, "checkpoint_every": 5}})


def test_a_setting_changed_above_a_job_stopped_by_sigterm_is_never_reported_up_to_date(run_copy, tmp_path):
    """The results exist; a training setting changes; the training job is stopped by SIGTERM mid-training (what SLURM
    sends at a time limit). The same command again must not say "Nothing to be done" over the old results: it resumes
    training from the checkpoint the signal saved and rebuilds the results with the new setting."""
    before = json.loads((run_copy / TARGET).read_text())
    changed = longer_training(tmp_path, epochs=30)  # 12 rows, batch 4: 90 steps
    command, env = snakemake_command(run_copy, TARGET, configfiles=[changed])
    running = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    checkpoints = run_copy / "work/act_patch/checkpoints/tiny_tiny"
    stopped = signal_job_when(run_copy, "train.py", lambda: any(checkpoints.glob("checkpoint-*")), signal.SIGTERM)
    output = running.communicate(timeout=600)[0]
    assert stopped and running.returncode != 0, output[-3000:]
    assert "TrainingStopped: stopped by SIGTERM" in (run_copy / "logs/act_patch_train/tiny_tiny.log").read_text()
    saved = [int(p.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*")]
    assert len(saved) == 1 and 5 <= saved[0] < 90
    assert json.loads((run_copy / TARGET).read_text()) == before  # still there, and stale:
    plan = planned_jobs(snakemake(run_copy, "-n", TARGET, configfiles=[changed]))
    assert plan == {"act_patch_train": 1, "act_patch_generate": 3, "act_patch_score": 1}
    rerun = snakemake(run_copy, TARGET, configfiles=[changed])
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    after = json.loads((run_copy / TARGET).read_text())
    assert after["training"]["steps"] == 90 and after["training"]["resumed_from_step"] == saved[0]
    assert planned_jobs(snakemake(run_copy, "-n", TARGET, configfiles=[changed])) == {}


def test_a_changed_setting_reaches_results_whose_intermediate_files_are_gone(run_copy, tmp_path):
    """Snakemake does not rerun a job whose output exists when only its inputs are missing (as failed or killed jobs
    leave them). Each rule's params carry the settings and code of every job above it, so a setting of the first
    stage (the facts) still reruns the whole chain down to the results with every intermediate file gone; and a
    setting that nothing reads changes nothing."""
    import shutil

    facts = yaml.safe_load((REPO / "tests" / "config_tiny.yaml").read_text())["facts"]
    for folder in ("work/act_patch", "work/alignment"):
        shutil.rmtree(run_copy / folder)
    assert planned_jobs(snakemake(run_copy, "-n", TARGET)) == {}  # unchanged settings: the results stand
    changed = override(tmp_path, "facts.yaml", {"facts": facts | {"few_shot": 2}})
    assert planned_jobs(snakemake(run_copy, "-n", TARGET, configfiles=[changed])) == {
        "act_patch_facts": 1, "act_patch_pairs": 2, "act_patch_label_chunk": 3, "act_patch_labels": 2, "alignment": 1,
        "act_patch_train": 1, "act_patch_generate": 4, "act_patch_score": 1}
    unread = override(tmp_path, "unread.yaml", {"input_ablation": {"seed": 3}})
    assert planned_jobs(snakemake(run_copy, "-n", TARGET, configfiles=[unread])) == {}


def test_every_file_a_run_writes_is_readable_as_the_umask_says(tiny_act_patch_run, run_copy, tmp_path):
    """Under the test process's umask (the session's finished run) and under 002 (a cluster group's): weights written by
    safetensors and save_pretrained (0600 by themselves) included."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    assert (tiny_act_patch_run / "resources/models/tiny/model.safetensors").is_file()
    assert modes_unlike(tiny_act_patch_run, umask) == []

    def under_002(workdir, *args):
        command, env = snakemake_command(workdir, *args)
        return subprocess.run(["sh", "-c", 'umask 002 && exec "$@"', "sh", *command], cwd=REPO, env=env,
                              capture_output=True, text=True)

    fresh = tmp_path / "fresh"
    for workdir, args in ((run_copy, ("-f", "work/act_patch/explainers/tiny_tiny")), (fresh, ("resources/models/tiny",))):
        done = under_002(workdir, *args)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert {p.name for p in (run_copy / "work/act_patch/explainers/tiny_tiny").iterdir()} >= {
        "adapter_model.safetensors", "projection.safetensors"}
    assert modes_unlike(run_copy / "work/act_patch/explainers", 0o002) == []
    assert modes_unlike(fresh / "resources", 0o002) == []


def test_nested_config_values_on_the_command_line_reach_the_settings_typed(tmp_path):
    """Snakemake reads `--config 'scoring={"seed": 3}'` as the string '3'; the workflow reads such values as YAML, as a
    config file's would be (they reach the results' settings as numbers), and names a value the schema refuses."""
    planned = snakemake(tmp_path, "-n", TARGET, "--config", 'scoring={"seed": 3, "bootstrap_samples": 60}')
    assert planned.returncode == 0, planned.stdout[-2000:] + planned.stderr[-2000:]
    refused = snakemake(tmp_path, "-n", TARGET, "--config", 'scoring={"seed": "three"}')
    said = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "scoring.seed: 'three' is not of type 'integer'" in said


def test_an_unreachable_lm_judge_stops_the_run_before_its_first_job(tmp_path):
    """features.judge.base_url at a port nothing listens on: the run stops before any job (not in the last one after
    an hour of work), naming the setting and the address; a dry run plans without asking it."""
    tiny = yaml.safe_load((REPO / "tests" / "config_tiny.yaml").read_text())["features"]
    judge = override(tmp_path, "judge.yaml", {"features": {"judge": tiny["judge"] | {
        "base_url": "http://127.0.0.1:9/v1"}}})
    target = "results/features/tiny_tiny.json"
    assert planned_jobs(snakemake(tmp_path, "-n", target, configfiles=[judge]))["features_score"] == 1
    stopped = snakemake(tmp_path, target, configfiles=[judge])
    said = stopped.stdout + stopped.stderr
    assert stopped.returncode != 0
    assert "features.judge: the server at http://127.0.0.1:9/v1 did not list its models" in said
    assert not (tmp_path / "resources").exists() and not (tmp_path / "work").exists()  # no job ran


def test_a_damaged_artifact_is_named_with_the_command_that_rebuilds_it_before_any_job(run_copy, tmp_path):
    """A labels table cut in half: the run stops while planning, naming the file and the command that rebuilds it,
    so no job starts on it and Snakemake removes no good artifact (it clears a job's outputs before the job runs);
    the command it names plans the rebuild."""
    labels = run_copy / "work/act_patch/labels/tiny/train.parquet"
    labels.write_bytes(labels.read_bytes()[: labels.stat().st_size // 2])
    changed = longer_training(tmp_path, epochs=2)  # training must run again, reading the damaged labels
    explainer = sorted(p.name for p in (run_copy / "work/act_patch/explainers/tiny_tiny").iterdir())
    stopped = snakemake(run_copy, TARGET, configfiles=[changed])
    said = stopped.stdout + stopped.stderr
    assert stopped.returncode != 0
    assert ("work/act_patch/labels/tiny/train.parquet is damaged (ArrowInvalid: Parquet magic bytes not found" in said
            and "run the same command with --forcerun act_patch_labels after the targets" in said)
    assert sorted(p.name for p in (run_copy / "work/act_patch/explainers/tiny_tiny").iterdir()) == explainer
    plan = planned_jobs(snakemake(run_copy, "-n", TARGET, "--forcerun", "act_patch_labels", configfiles=[changed]))
    assert plan == {"act_patch_labels": 2, "act_patch_train": 1, "act_patch_generate": 4, "act_patch_score": 1}


def test_a_seeds_table_of_one_seed_is_refused_naming_the_setting(tmp_path):
    training = yaml.safe_load((REPO / "tests" / "config_tiny.yaml").read_text())["training"]
    for seeds in (None, [3]):
        one = override(tmp_path, "one.yaml", {"training": training | {"seeds": seeds}})
        refused = snakemake(tmp_path, "-n", "results/act_patch/tiny_tiny.seeds.json", configfiles=[one])
        said = refused.stdout + refused.stderr
        assert refused.returncode != 0 and "which gives one seed" in said and "training.seeds: [0, 1, 2]" in said


def test_a_results_folder_that_cannot_be_written_stops_the_run_before_any_job(run_copy, tmp_path):
    """results/ on a read-only mount (as root: a read-only tmpfs; otherwise mode 555): the run that would rescore
    stops before computing, naming the folder, instead of failing when the finished job writes its results."""
    import os

    results = run_copy / "results"
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(results)], capture_output=True).returncode == 0
    if not mounted:
        if os.geteuid() == 0:
            pytest.skip("root, and a read-only tmpfs cannot be mounted here")
        results.chmod(0o555)
    try:
        changed = override(tmp_path, "scoring.yaml", {"scoring": {"bootstrap_samples": 60, "seed": 1}})
        stopped = snakemake(run_copy, TARGET, configfiles=[changed])
    finally:
        if mounted:
            subprocess.run(["umount", str(results)], check=True)
        else:
            results.chmod(0o755)
    said = stopped.stdout + stopped.stderr
    assert stopped.returncode != 0 and "could not write their outputs, so they would fail after computing" in said
    assert f"{results}: " + ("Read-only file system" if mounted else "Permission denied") in said
    assert "rule act_patch_score" not in said  # the job never started
