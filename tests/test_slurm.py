"""profiles/slurm on a real single-node SLURM cluster: jobs go through sbatch and match a local run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from slurm_cluster import PARTITION, missing_tools, start_cluster

REPO = Path(__file__).resolve().parent.parent
TARGET = "results/act_patch/tiny_tiny.json"
GPU_RULES = {"act_patch_facts", "act_patch_pairs", "act_patch_label_chunk", "act_patch_train", "act_patch_generate"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    missing = missing_tools()
    if missing:
        pytest.skip(f"SLURM is not installed here (missing {missing}); `bash envs/setup-slurm.sh` installs it")
    if os.geteuid() != 0:
        pytest.skip("slurmd has to run as root to start jobs")
    cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    yield cluster
    cluster.stop()


def cluster_profile(tmp_path: Path) -> Path:
    """profiles/slurm as it is, apart from what this one small node needs: squeue status checks (no
    slurmdbd here), short waits, and memory/CPU requests that fit 2 cores (one CPU a job, as the local run's one
    thread a job: tests/workflow_runs.py); every GPU request stays."""
    settings = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    assert settings["default-resources"]["slurm_partition"] == PARTITION
    settings |= {"slurm-status-command": "squeue", "slurm-init-seconds-before-status-checks": 1,
                 "latency-wait": 5, "retries": 0, "jobs": 4, "slurm-no-account": True}
    settings["default-resources"] |= {"mem_mb": 3000, "runtime": 20, "cpus_per_task": 1}
    settings["set-resources"] = {rule: {k: v for k, v in resources.items() if k == "gpu"}
                                 | {"mem_mb": 3000, "runtime": 20, "cpus_per_task": 1}
                                 for rule, resources in settings["set-resources"].items()}
    folder = tmp_path / "profile"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(settings))
    return folder


def snakemake_command(workdir: Path, *args: str, timeout: int, configfiles=(), target: str = TARGET) -> list[str]:
    return ["timeout", "-k", "10", str(timeout), sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
            "-d", str(workdir), *args, target, "--configfile", str(REPO / "tests/config_tiny.yaml"), *map(str, configfiles)]


def snakemake(workdir: Path, env: dict, *args: str, timeout: int, configfiles=(), target: str = TARGET) -> tuple:
    started = time.time()
    result = subprocess.run(snakemake_command(workdir, *args, timeout=timeout, configfiles=configfiles, target=target),
                            cwd=REPO,
                            env=env | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    return result, time.time() - started


def metrics(workdir: Path) -> dict:
    return json.loads((workdir / TARGET).read_text())["metrics"]


def test_a_training_job_cancelled_mid_way_resumes_where_its_sigterm_saved(cluster, tmp_path, tiny_act_patch_run):
    """A longer training (a changed setting over a finished run) goes to SLURM and is cancelled mid-training
    (`scancel`: SIGTERM, then SIGKILL after KillWait, as at a time limit). The job saves a checkpoint at the step in
    flight; the same command again resumes from that step, and its losses and weights equal those of the same
    settings trained locally without a stop. (The target is the trained explainer: what follows training is the same
    on SLURM as anywhere, and the sbatch test below runs it.)"""
    from safetensors.torch import load_file

    from workflow_runs import copy_tree, override

    training = yaml.safe_load((REPO / "tests/config_tiny.yaml").read_text())["training"]
    longer = override(tmp_path, "longer.yaml", {"training": training | {"epochs": 40, "checkpoint_every": 5}})
    explainer = "work/act_patch/explainers/tiny_tiny"
    local, remote = (copy_tree(tiny_act_patch_run, tmp_path / name) for name in ("local", "remote"))
    straight, _ = snakemake(local, os.environ, "--cores", "2", timeout=600, configfiles=[longer], target=explainer)
    assert straight.returncode == 0, straight.stderr[-3000:]

    profile = ("--profile", str(cluster_profile(tmp_path)))
    command = snakemake_command(remote, *profile, timeout=900, configfiles=[longer], target=explainer)
    env = cluster.env | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    running = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    checkpoints = remote / "work/act_patch/checkpoints/tiny_tiny"
    cancelled = None
    deadline = time.time() + 600
    while cancelled is None and time.time() < deadline and running.poll() is None:
        if any(checkpoints.glob("checkpoint-*")):
            queue = cluster.run("squeue", "-h", "-o", "%i %k").stdout.split("\n")
            training_jobs = [line.split()[0] for line in queue if "rule_act_patch_train" in line]
            if training_jobs:
                cancelled = training_jobs[0]
                cluster.run("scancel", cancelled)
        time.sleep(0.2)
    output = running.communicate(timeout=600)[0]
    assert cancelled and running.returncode != 0, output[-3000:]
    saved = [int(p.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*")]
    log = (remote / "logs/act_patch_train/tiny_tiny.log").read_text()
    assert len(saved) == 1 and "stopped by SIGTERM" in log, log[-2000:]
    assert not (remote / explainer / "explainer.json").exists()  # no half-written explainer

    resumed, _ = snakemake(remote, cluster.env, *profile, timeout=900, configfiles=[longer], target=explainer)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    after, reference = (json.loads((run / explainer / "training_log.json").read_text()) for run in (remote, local))
    assert after["resumed_from_step"] == saved[0] and after["steps"] == reference["steps"] == 120
    assert [e["loss"] for e in after["losses"]] == pytest.approx([e["loss"] for e in reference["losses"]],
                                                                 rel=1e-4, abs=1e-5)
    weights = [load_file(str(run / explainer / "adapter_model.safetensors")) for run in (remote, local)]
    assert weights[0].keys() == weights[1].keys()
    for name, tensor in weights[0].items():
        assert torch.allclose(tensor, weights[1][name], rtol=1e-4, atol=1e-6), name


def test_act_patch_runs_through_sbatch_and_matches_a_local_run(cluster, tmp_path, tiny_act_patch_run):
    """Every job from a bare folder (prepare_model included) through sbatch; the results equal the session's local
    run of the same target and settings (conftest.py)."""
    profile = cluster_profile(tmp_path)
    slurm_dir, local_dir = tmp_path / "on_slurm", tiny_act_patch_run
    on_slurm, slurm_seconds = snakemake(slurm_dir, cluster.env, "--profile", str(profile), timeout=1200)
    output = on_slurm.stdout + on_slurm.stderr
    assert on_slurm.returncode == 0, output[-4000:]

    # Every job was submitted with sbatch and left a SLURM log; the GPU rules asked SLURM for GPUs.
    submitted = dict(re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", output))
    assert len(submitted) >= 10, output[-3000:]
    logs = {part.removeprefix("rule_") for p in (slurm_dir / "logs/slurm").rglob("*.log")
            for part in p.relative_to(slurm_dir / "logs/slurm").parts if part.startswith("rule_")}
    assert {"prepare_model", "act_patch_facts", "act_patch_pairs", "act_patch_label_chunk", "act_patch_labels",
            "alignment", "act_patch_train", "act_patch_generate"} <= logs
    assert "act_patch_score" not in logs  # a localrule: it ran beside Snakemake, without sbatch
    gpu_jobs = 0
    for slurm_id in submitted.values():
        job = cluster.run("scontrol", "show", "job", slurm_id).stdout
        assert "JobState=COMPLETED" in job, job
        if "gres:gpu" in job:
            gpu_jobs += 1
    assert gpu_jobs == 1 + 2 + 3 + 1 + 1 + 4  # facts, pairs x2, label chunks (2 train, 1 test), alignment, train, generate x4

    assert metrics(slurm_dir) == metrics(local_dir)
    local_seconds = sum(float(p.read_text().splitlines()[1].split("\t")[0])
                        for p in (local_dir / "benchmarks").rglob("*.tsv"))
    print(f"\nSLURM run {slurm_seconds:.0f} s; the local run's jobs {local_seconds:.0f} s in all")
