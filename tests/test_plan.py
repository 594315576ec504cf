"""The resource plan (pipeline.plan): its shapes count the parameters the real models have, LoRA's the ones peft
trains, and its act_patch jobs follow the settings' counts (the labels' own where they exist)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from workflow_runs import REPO


def paper_config(overrides: dict | None = None) -> dict:
    from pipeline.config import deep_merge, with_base_config

    overlay = yaml.safe_load((REPO / "config.paper.yaml").read_text())
    return with_base_config(deep_merge(overlay, overrides or {}), REPO / "config.yaml")


def test_a_shape_counts_the_parameters_of_the_model_it_describes(tiny, tiny_dir, tiny_gemma_dir):
    from pipeline.models import load_model
    from pipeline.plan import KNOWN_SHAPES, Shape, shape_of

    for folder, loaded in ((tiny_dir, tiny), (tiny_gemma_dir, None)):
        model = (loaded or load_model(folder))[0]
        shape, source = shape_of({}, folder)
        assert source.endswith("config.json")
        assert shape.params == sum(p.numel() for p in model.parameters()), folder
    # The published parameter count of Llama 3.1 8B, from its shape alone.
    assert Shape("llama", **KNOWN_SHAPES["meta-llama/Llama-3.1-8B"]).params == 8_030_261_248
    assert Shape("qwen", **KNOWN_SHAPES["Qwen/Qwen3-8B"]).params == pytest.approx(8.19e9, rel=5e-3)  # "8.2B"


def test_lora_params_are_those_peft_trains(tiny, tiny_dir):
    from peft import LoraConfig, get_peft_model

    from pipeline.plan import shape_of

    targets = ["q_proj", "v_proj", "down_proj"]
    model = get_peft_model(tiny[0], LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    try:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert shape_of({}, tiny_dir)[0].lora_params(4, targets) == trainable
    finally:
        model.unload()


def test_the_papers_act_patch_run_is_planned_from_its_settings(tmp_path):
    from pipeline.artifacts import provenance, write_table
    from pipeline.plan import DEVICES, MFU, plan

    one = plan(paper_config(), "llama_llama", "h100", 1, tmp_path)
    two = plan(paper_config(), "llama_llama", "h100", 2, tmp_path)
    train = {p["run"]: next(j for j in p["jobs"] if j["job"] == "act_patch_train") for p in (one,)}["llama_llama"]
    rows = 20_000 * 3 * 4  # pairs x token types x windows of a quarter of 32 layers (the published tables')
    assert train["note"].startswith(f"{rows} rows x 20 epochs")
    tokens = rows * 20 * (one["counts"]["question_tokens"]["value"] + one["counts"]["answer_tokens"]["value"])
    shape_params = 32 * 218_112_000 + 128_256 * 4096  # every layer and the output layer
    assert train["tflop"] * 1e12 == pytest.approx(4 * shape_params * tokens)
    assert train["gpu_hours"] == pytest.approx(train["tflop"] * 1e12 / (DEVICES["h100"]["peak"] * MFU["train"]) / 3600)
    two_train = next(j for j in two["jobs"] if j["job"] == "act_patch_train")
    assert two_train["gpu_hours"] == pytest.approx(train["gpu_hours"])  # the work, not the devices, sets GPU-hours
    assert two_train["wall_hours"] == pytest.approx(train["wall_hours"] / 2)
    assert two_train["peak_memory_gb"] < train["peak_memory_gb"]  # ZeRO-2 shards the state, a step's batch halves
    assert one["shapes"]["llama"]["from"].startswith("the published config.json")
    assert one["counts"]["pairs_train"] == {"value": 20_000, "from": "settings"}

    labels = tmp_path / "work/act_patch/labels/llama/train.parquet"  # the labels' own count replaces the setting
    import pandas as pd

    write_table(pd.DataFrame({"row_id": [0]}), labels, provenance({}) | {"counts": {"pairs": 812}})
    measured = plan(paper_config(), "llama_llama", "h100", 1, tmp_path)
    assert measured["counts"]["pairs_train"] == {"value": 812, "from": str(labels)}
    with pytest.raises(ValueError, match="no published shape known"):
        plan(paper_config({"models": {"llama": {"path": "someone/unknown-7b"}}}), "llama_llama", "h100", 1, tmp_path)


def test_the_command_prints_the_plan(tmp_path):
    command = subprocess.run([sys.executable, "-m", "pipeline.plan", "--configfile", "config.paper.yaml", "--run",
                              "qwen_qwen", "--device", "h200", "--gpus", "2", "--workdir", str(tmp_path), "--json"],
                             cwd=REPO, capture_output=True, text=True)
    assert command.returncode == 0, command.stderr[-2000:]
    planned = json.loads(command.stdout)
    assert [j["job"] for j in planned["jobs"]] == ["act_patch_facts", "act_patch_pairs", "act_patch_label_chunk",
                                                   "act_patch_train", "act_patch_train_baseline", "act_patch_generate"]
    baselines = planned["jobs"][4]
    assert baselines["jobs"] == 2 and baselines["note"].startswith("map_only, affine")  # config.yaml's baselines
    assert planned["total"]["gpu_hours"] == pytest.approx(sum(j["gpu_hours"] for j in planned["jobs"]))


def test_a_job_that_does_not_fit_says_what_would_and_the_slurm_requests_follow_the_plan(tmp_path):
    import math

    from pipeline.plan import plan, slurm_resources

    big = plan(paper_config({"training": {"batch_size": 128}}), "llama_llama", "h100", 1, tmp_path)
    train = next(j for j in big["jobs"] if j["job"] == "act_patch_train")
    assert not train["fits"] and train["peak_memory_gb"] > 80
    options = train["fits_with"]
    assert options["training.gradient_checkpointing: true"] < train["peak_memory_gb"]
    assert options["training.batch_size: 64, grad_accum: 2"] < train["peak_memory_gb"]
    assert min(options.values()) < 0.9 * 80  # one of them fits
    fits = plan(paper_config(), "llama_llama", "h100", 2, tmp_path)
    assert all(j["fits"] and j["fits_with"] is None for j in fits["jobs"])
    requests = slurm_resources(fits, margin=2.0)
    train = next(j for j in fits["jobs"] if j["job"] == "act_patch_train")
    assert requests["act_patch_train"] == {"gpu": 2, "mem_mb": int(math.ceil(train["host_gb"] * 1000)),
                                           "runtime": int(math.ceil(train["wall_hours"] * 60 * 2.0))}
    printed = subprocess.run([sys.executable, "-m", "pipeline.plan", "--configfile", "config.paper.yaml", "--run",
                              "llama_llama", "--gpus", "2", "--margin", "2", "--workdir", str(tmp_path), "--slurm"],
                             cwd=REPO, capture_output=True, text=True)
    assert printed.returncode == 0, printed.stderr[-2000:]
    assert yaml.safe_load(printed.stdout)["set-resources"] == requests
    assert requests["act_patch_train_seeded"] == requests["act_patch_train"]  # a seed's run is the run's work


@pytest.mark.parametrize("task", ["act_patch", "input_ablation"])
def test_the_slurm_profiles_requests_are_the_plans(task):
    """profiles/slurm/config.yaml asks for what the plan of config.paper.yaml's runs of the task needs, the largest over
    them (`python -m pipeline.plan ... --slurm`): a changed setting or formula shows here until the profile follows."""
    from pipeline.plan import plan, slurm_resources

    config = paper_config()
    runs = config["runs"][task]
    planned = slurm_resources(*[plan(config, run, "h100", 2, task=task) for run in runs])
    assert f"{task}_train" in planned and f"{task}_generate_seeded" in planned
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())["set-resources"]
    for rule, asked in planned.items():
        assert rule in profile, f"{rule}: not in the profile"
        assert {key: profile[rule].get(key) for key in asked} == asked, (
            f"{rule}: the profile asks {profile[rule]}, the plan {asked}: python -m pipeline.plan --configfile "
            f"config.paper.yaml --task {task} {' '.join('--run ' + r for r in runs)} --gpus 2 --slurm")


def test_input_ablations_plan_counts_its_questions_and_its_in_context_prompts(tmp_path):
    """The input_ablation plan: questions from the settings until the questions table exists, then its own split
    counts; an in-context variant's generation costs its k solved examples more than a plain one."""
    import pandas as pd

    from pipeline.plan import plan

    config = paper_config({"input_ablation": {"source": "mmlu", "path": "mmlu.parquet", "test_fraction": 0.5}})
    planned = plan(config, "instruct_instruct", "h100", 1, tmp_path, task="input_ablation")
    assert [j["job"] for j in planned["jobs"]] == ["input_ablation_labels", "input_ablation_train",
                                                   "input_ablation_generate"]
    assert planned["counts"]["questions_test"] == {"value": 7021, "from": "settings"}  # half the MMLU test split
    generate = planned["jobs"][2]
    assert generate["jobs"] == 4 and "in_context_8" in generate["note"]
    question, answer, new = 320, 32, config["input_ablation"]["generation"]["max_new_tokens"]
    lengths = question + new, question + new, 5 * question + 4 * answer + new, 9 * question + 8 * answer + new
    plain = plan(paper_config({"input_ablation": {"source": "mmlu", "path": "mmlu.parquet", "test_fraction": 0.5,
                                                  "baselines": []}}), "instruct_instruct", "h100", 1, tmp_path,
                 task="input_ablation")["jobs"][2]
    assert generate["tflop"] / plain["tflop"] == pytest.approx(sum(lengths) / sum(lengths[:2]))
    (tmp_path / "work" / "input_ablation").mkdir(parents=True)
    pd.DataFrame({"split": ["train"] * 30 + ["test"] * 12}).to_parquet(tmp_path / "work/input_ablation/questions.parquet")
    built = plan(config, "instruct_instruct", "h100", 1, tmp_path, task="input_ablation")
    assert built["counts"]["questions_test"]["value"] == 12 and built["jobs"][1]["note"].startswith("30 rows")


def test_the_bench_sets_each_stages_measured_memory_beside_the_plans_on_a_model_of_the_planned_shape(tiny_dir):
    """bench/bench_plan.py on the tiny shape (its figures at the 8B shapes are records: docs/results.md)."""
    done = subprocess.run([sys.executable, "bench/bench_plan.py", "--model-dir", str(tiny_dir), "--layers", "0",
                           "--rows", "2", "--length", "16", "--rank", "4", "--new-tokens", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("tiny: 4 layers of width 64")
    measured = {line.split()[0]: float(line.split("measured")[1].split()[0]) for line in lines[1:4]}
    assert set(measured) == {"forward", "train", "generate"} and all(v > 0 for v in measured.values())
